//! `--web.config.file`: the web configuration format of Prometheus'
//! exporter-toolkit, so the file SREs already write for their exporters
//! works here: `tls_server_config`, `basic_auth_users` (bcrypt hashes) and
//! `http_server_config.headers`. As in exporter-toolkit, unknown keys are
//! errors and relative paths are relative to the file's directory; every
//! error names the key.
//!
//! The file, and the files it names, are read again when one of them
//! changes (looked at on every connection and request: a few `stat` calls,
//! so a rotated certificate or a new password needs no restart) and on
//! SIGHUP. A configuration that fails to load leaves the last good one in
//! force and is logged. A new one closes kept-alive connections (after the
//! response in flight), so that every client is under its terms from its
//! next connection on: a client scraping every few seconds would otherwise
//! keep a connection made under the old TLS terms forever.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::sync::watch;

use super::tls;
use crate::locks::lock;

/// The file as written. Every level is optional and may be empty (`key:`
/// with no value), as exporter-toolkit accepts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<HttpFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct HttpFile {
    headers: Option<BTreeMap<String, String>>,
    http2: Option<bool>,
}

/// A validated configuration; certificates are not read yet.
#[derive(Debug, Default, PartialEq)]
pub struct Config {
    pub tls: Option<Tls>,
    /// User name → bcrypt hash.
    pub users: BTreeMap<String, String>,
    pub headers: HeaderMap,
}

#[derive(Debug, PartialEq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: Version,
    pub max_version: Version,
}

/// Go's `tls.ClientAuthType`, by exporter-toolkit's names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClientAuth {
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified (the client only proves it holds the key).
    RequireAnyClientCert,
    /// Verified against `client_ca_file` when the client sends one.
    VerifyClientCertIfGiven,
    /// Required and verified against `client_ca_file`: authentication.
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub enum Version {
    Tls12,
    Tls13,
}

/// The headers exporter-toolkit lets a file set, with their allowed values
/// (empty: any). The same list, so a file is accepted by both or by neither.
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Parses and validates a configuration; relative paths are taken from `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Config> {
    // One-line errors ("line 2 column 3: unknown field ..."): they also go
    // to the log when a reload fails.
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let file: File =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| anyhow!("{e}"))?;
    let users = file.basic_auth_users.unwrap_or_default();
    for (name, hash) in &users {
        if name.contains(':') {
            bail!("basic_auth_users.{name}: a user name cannot contain ':' (HTTP basic auth)");
        }
        hash.parse::<bcrypt::HashParts>().map_err(|e| {
            anyhow!(
                "basic_auth_users.{name}: not a bcrypt hash ({e}); make one with \
                 `sockerr hash-password`"
            )
        })?;
    }
    let http = file.http_server_config.unwrap_or_default();
    if http.http2 == Some(true) {
        bail!(
            "http_server_config.http2: sockerr serves HTTP/1.1 only; remove the key or set it to false"
        );
    }
    let headers = headers(http.headers.unwrap_or_default())?;
    let tls = file
        .tls_server_config
        .map(|t| tls_config(t, dir))
        .transpose()?
        .flatten();
    Ok(Config {
        tls,
        users,
        headers,
    })
}

fn headers(configured: BTreeMap<String, String>) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in configured {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = HEADERS.iter().map(|(n, _)| *n).collect();
            bail!(
                "{key}: this header cannot be set; one of {}",
                names.join(", ")
            );
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            bail!("{key}: {value:?} is not one of {allowed:?}");
        }
        let value = HeaderValue::from_str(&value).with_context(|| format!("{key}: {value:?}"))?;
        map.insert(HeaderName::from_bytes(name.as_bytes())?, value);
    }
    Ok(map)
}

/// `None` when no TLS key is set: exporter-toolkit serves plain HTTP then.
fn tls_config(file: TlsFile, dir: &Path) -> Result<Option<Tls>> {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    let cert_file = set(file.cert_file);
    let key_file = set(file.key_file);
    let client_auth_type = set(file.client_auth_type);
    let client_ca_file = set(file.client_ca_file);
    if cert_file.is_none()
        && key_file.is_none()
        && client_auth_type.is_none()
        && client_ca_file.is_none()
    {
        return Ok(None);
    }
    let path = |key: &str, value: Option<String>| {
        value.map(|v| dir.join(v)).ok_or_else(|| {
            anyhow!("tls_server_config.{key}: missing (TLS needs cert_file and key_file)")
        })
    };
    let client_auth = match client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // exporter-toolkit still accepts the older name.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => bail!(
            "tls_server_config.client_auth_type: unknown value {other:?}; expected NoClientCert, \
             RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or \
             RequireAndVerifyClientCert"
        ),
    };
    let verifies = matches!(
        client_auth,
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
    );
    match (&client_ca_file, verifies) {
        (None, true) => bail!(
            "tls_server_config.client_ca_file: missing; client_auth_type {client_auth:?} \
             verifies client certificates against it"
        ),
        (Some(_), false) => bail!(
            "tls_server_config.client_ca_file: only used with client_auth_type \
             VerifyClientCertIfGiven or RequireAndVerifyClientCert, not {client_auth:?}"
        ),
        _ => {}
    }
    let min_version = version("min_version", file.min_version, Version::Tls12)?;
    let max_version = version("max_version", file.max_version, Version::Tls13)?;
    if min_version > max_version {
        bail!(
            "tls_server_config.min_version: {min_version:?} is above max_version {max_version:?}"
        );
    }
    Ok(Some(Tls {
        cert_file: path("cert_file", cert_file)?,
        key_file: path("key_file", key_file)?,
        client_auth,
        client_ca_file: client_ca_file.map(|f| dir.join(f)),
        min_version,
        max_version,
    }))
}

fn version(key: &str, value: Option<String>, default: Version) -> Result<Version> {
    match value.as_deref().unwrap_or_default() {
        "" => Ok(default),
        "TLS12" => Ok(Version::Tls12),
        "TLS13" => Ok(Version::Tls13),
        old @ ("TLS10" | "TLS11") => {
            bail!("tls_server_config.{key}: {old} is not supported; TLS12 or TLS13")
        }
        other => {
            bail!("tls_server_config.{key}: unknown version {other:?}; expected TLS12 or TLS13")
        }
    }
}

impl Config {
    /// Whether a client must prove who it is: basic auth, or a client
    /// certificate verified against a CA.
    pub fn authenticates(&self) -> bool {
        !self.users.is_empty()
            || self
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth == ClientAuth::RequireAndVerifyClientCert)
    }

    /// The files it reads.
    fn files(&self) -> Vec<PathBuf> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [&tls.cert_file, &tls.key_file]
            .into_iter()
            .chain(&tls.client_ca_file)
            .cloned()
            .collect()
    }
}

/// A configuration in force, certificates loaded.
pub struct Active {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: BTreeMap<String, String>,
    pub headers: HeaderMap,
}

/// The refusal to serve a non-loopback address in the clear or to anyone.
fn exposed_error(address: SocketAddr) -> anyhow::Error {
    anyhow!(
        "refusing to serve on {address} (not loopback) without TLS and authentication: findings \
         name processes and endpoints of this host. Set tls_server_config with basic_auth_users \
         or client_auth_type RequireAndVerifyClientCert in --web.config.file, or pass \
         --web.allow-remote to accept plain HTTP"
    )
}

/// What identifies a version of a file: a change of any part means it was
/// rewritten or replaced (Kubernetes swaps a Secret's symlinks: new inode).
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

struct Loaded {
    active: Arc<Active>,
    /// The configuration file and the files it names, as last read.
    watched: Vec<PathBuf>,
    stamps: Vec<Stamp>,
}

/// The web configuration in force, read again when its files change.
pub struct WebConfig {
    path: Option<PathBuf>,
    /// Set when the listen address is not loopback and --web.allow-remote
    /// was not given: only TLS with authentication may serve it.
    exposed: Option<SocketAddr>,
    loaded: Mutex<Loaded>,
    /// Told of every new configuration put in force.
    reloaded: watch::Sender<()>,
}

impl WebConfig {
    /// Loads the file (none: plain HTTP, no authentication); an error names
    /// the file and the key.
    pub fn load(path: Option<PathBuf>, listen: SocketAddr, allow_remote: bool) -> Result<Self> {
        let exposed = (!listen.ip().is_loopback() && !allow_remote).then_some(listen);
        let (watched, stamps, active) = match &path {
            None => (Vec::new(), Vec::new(), activate(Config::default(), exposed)),
            Some(path) => read(path, exposed),
        };
        let active = active?;
        if let Some(path) = &path {
            describe(path, &active, "web config loaded");
        }
        Ok(Self {
            path,
            exposed,
            loaded: Mutex::new(Loaded {
                active: Arc::new(active),
                watched,
                stamps,
            }),
            reloaded: watch::Sender::new(()),
        })
    }

    /// Completes its `changed()` when a new configuration is put in force.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.reloaded.subscribe()
    }

    /// The configuration in force, first read again if a file changed.
    pub fn current(&self) -> Arc<Active> {
        let mut loaded = lock(&self.loaded);
        if self.path.is_some()
            && loaded
                .watched
                .iter()
                .map(|p| stamp(p))
                .ne(loaded.stamps.iter().copied())
        {
            self.reload_locked(&mut loaded);
        }
        loaded.active.clone()
    }

    /// Reads the file again even if nothing seems to have changed (SIGHUP).
    pub fn reload(&self) {
        if self.path.is_none() {
            tracing::info!("SIGHUP: no --web.config.file to reload");
            return;
        }
        self.reload_locked(&mut lock(&self.loaded));
    }

    fn reload_locked(&self, loaded: &mut Loaded) {
        let path = self.path.as_deref().expect("a configuration file");
        let (watched, stamps, active) = read(path, self.exposed);
        // A broken file is reported once, not on every request.
        loaded.watched = watched;
        loaded.stamps = stamps;
        match active {
            Ok(active) => {
                describe(path, &active, "web config reloaded");
                loaded.active = Arc::new(active);
                self.reloaded.send_replace(());
            }
            Err(e) => tracing::error!("{e:#}; keeping the previous web config"),
        }
    }
}

fn describe(path: &Path, active: &Active, message: &str) {
    tracing::info!(
        file = %path.display(),
        tls = active.tls.is_some(),
        basic_auth_users = active.users.len(),
        "{message}"
    );
}

/// Reads the configuration at `path`: the files to watch, their stamps
/// (taken before reading, so a change while reading is seen next time),
/// and the configuration or what is wrong with it.
fn read(path: &Path, exposed: Option<SocketAddr>) -> (Vec<PathBuf>, Vec<Stamp>, Result<Active>) {
    let mut watched = vec![path.to_owned()];
    let mut stamps = vec![stamp(path)];
    let config = fs::read_to_string(path)
        .with_context(|| format!("reading web config {}", path.display()))
        .and_then(|text| {
            parse(&text, path.parent().unwrap_or(Path::new(".")))
                .with_context(|| format!("web config {}", path.display()))
        });
    let config = match config {
        Ok(config) => config,
        Err(e) => return (watched, stamps, Err(e)),
    };
    for file in config.files() {
        stamps.push(stamp(&file));
        watched.push(file);
    }
    let active =
        activate(config, exposed).with_context(|| format!("web config {}", path.display()));
    (watched, stamps, active)
}

fn activate(config: Config, exposed: Option<SocketAddr>) -> Result<Active> {
    if let Some(address) = exposed
        && !(config.tls.is_some() && config.authenticates())
    {
        return Err(exposed_error(address));
    }
    if config.tls.is_none() && !config.users.is_empty() {
        tracing::warn!(
            "basic_auth_users without tls_server_config: passwords cross the network in the clear"
        );
    }
    Ok(Active {
        tls: config.tls.as_ref().map(tls::server_config).transpose()?,
        users: config.users,
        headers: config.headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `echo secret | sockerr hash-password`
    const HASH: &str = "$2b$10$2XY.vFVYj0WSNTOd31USSeHG6EjMQmCnYH2C5M.30BjePaA6/CzpK";

    fn error(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("/etc/sockerr")).unwrap_err())
    }

    #[test]
    fn a_full_file_parses_with_paths_relative_to_its_directory() {
        let config = parse(
            &format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
                 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
                 min_version: TLS13\nbasic_auth_users:\n  prometheus: '{HASH}'\n\
                 http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
            ),
            Path::new("/etc/sockerr"),
        )
        .unwrap();
        assert_eq!(
            config.tls,
            Some(Tls {
                cert_file: "/etc/sockerr/server.crt".into(),
                key_file: "/abs/server.key".into(),
                client_auth: ClientAuth::RequireAndVerifyClientCert,
                client_ca_file: Some("/etc/sockerr/ca.crt".into()),
                min_version: Version::Tls13,
                max_version: Version::Tls13,
            })
        );
        assert_eq!(config.users.keys().collect::<Vec<_>>(), ["prometheus"]);
        assert_eq!(config.headers["x-frame-options"], "deny");
        assert!(config.authenticates());
        assert_eq!(
            config.files(),
            [
                PathBuf::from("/etc/sockerr/server.crt"),
                "/abs/server.key".into(),
                "/etc/sockerr/ca.crt".into()
            ]
        );
    }

    #[test]
    fn the_example_file_is_valid_once_its_placeholder_is_replaced() {
        let example = include_str!("../../../../deploy/web-config.example.yml");
        let message = format!(
            "{:#}",
            parse(example, Path::new("/etc/sockerr")).unwrap_err()
        );
        assert!(
            message.contains("basic_auth_users.prometheus: not a bcrypt hash"),
            "{message}"
        );
        let config = parse(
            &example.replace("REPLACE-WITH-A-BCRYPT-HASH", HASH),
            Path::new("/etc/sockerr"),
        )
        .unwrap();
        assert!(config.tls.is_some() && config.authenticates());
        assert_eq!(config.headers.len(), 2);
    }

    #[test]
    fn empty_sections_mean_plain_http_without_authentication() {
        for text in [
            "",
            "# nothing\n",
            "tls_server_config:\nbasic_auth_users:\n",
            "tls_server_config:\n  cert_file: ''\n",
        ] {
            let config = parse(text, Path::new("/")).unwrap();
            assert_eq!(config, Config::default(), "{text:?}");
            assert!(!config.authenticates());
        }
        // A certificate alone encrypts but does not authenticate.
        let tls_only = parse(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n",
            Path::new("/"),
        )
        .unwrap();
        assert!(tls_only.tls.is_some() && !tls_only.authenticates());
    }

    #[test]
    fn every_error_names_the_key() {
        for (text, key) in [
            (
                "tls_server_config:\n  cert_fil: x\n",
                "unknown field `cert_fil`",
            ),
            (
                "tls_server_config:\n  cert_file: x\n",
                "tls_server_config.key_file: missing",
            ),
            (
                "tls_server_config:\n  key_file: x\n",
                "tls_server_config.cert_file: missing",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Always\n",
                "tls_server_config.client_auth_type: unknown value \"Always\"",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "tls_server_config.client_ca_file: missing",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "tls_server_config.client_ca_file: only used with",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "tls_server_config.min_version: TLS10 is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  max_version: TLS2\n",
                "tls_server_config.max_version: unknown version",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "tls_server_config.min_version: Tls13 is above max_version",
            ),
            (
                "basic_auth_users:\n  alice: hunter2\n",
                "basic_auth_users.alice: not a bcrypt hash",
            ),
            (
                &format!("basic_auth_users:\n  'a:b': '{HASH}'\n"),
                "basic_auth_users.a:b: a user name cannot contain ':'",
            ),
            ("basic_auth_users:\n  alice: ~\n", "line 2"),
            ("basic_auth_users: [alice]\n", "line 1"),
            (
                "http_server_config:\n  headers:\n    X-Powered-By: me\n",
                "http_server_config.headers.X-Powered-By: this header cannot be set",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "http_server_config.headers.X-Frame-Options: \"allow\" is not one of",
            ),
            (
                "http_server_config:\n  http2: true\n",
                "http_server_config.http2: sockerr serves HTTP/1.1 only",
            ),
            ("rate_limit:\n  burst: 1\n", "unknown field `rate_limit`"),
        ] {
            let message = error(text);
            assert!(message.contains(key), "{text:?}: {message}");
        }
    }

    #[test]
    fn an_exposed_address_needs_tls_and_authentication() {
        let exposed = Some("0.0.0.0:9809".parse().unwrap());
        let users = || BTreeMap::from([("u".to_owned(), HASH.to_owned())]);
        let auth_only = Config {
            users: users(),
            ..Config::default()
        };
        let message = format!("{:#}", activate(auth_only, exposed).err().unwrap());
        assert!(
            message.contains("refusing to serve on 0.0.0.0:9809"),
            "{message}"
        );
        assert!(message.contains("--web.allow-remote"), "{message}");
        let tls_only = parse(
            "tls_server_config:\n  cert_file: /nonexistent/c\n  key_file: k\n",
            Path::new("/"),
        )
        .unwrap();
        assert!(format!("{:#}", activate(tls_only, exposed).err().unwrap()).contains("refusing"));
        // Both: gets as far as reading the certificate.
        let mut both = parse(
            "tls_server_config:\n  cert_file: /nonexistent/c\n  key_file: k\n",
            Path::new("/"),
        )
        .unwrap();
        both.users = users();
        let message = format!("{:#}", activate(both, exposed).err().unwrap());
        assert!(
            message.contains("tls_server_config.cert_file: reading /nonexistent/c"),
            "{message}"
        );
        // A verified client certificate is authentication enough; one that
        // is only checked when given is not.
        let certificates = |client_auth: &str| {
            parse(
                &format!(
                    "tls_server_config:\n  cert_file: /nonexistent/c\n  key_file: k\n  \
                     client_auth_type: {client_auth}\n  client_ca_file: ca\n"
                ),
                Path::new("/"),
            )
            .unwrap()
        };
        let required = certificates("RequireAndVerifyClientCert");
        assert!(required.authenticates());
        let message = format!("{:#}", activate(required, exposed).err().unwrap());
        assert!(message.contains("reading /nonexistent/c"), "{message}");
        let optional = certificates("VerifyClientCertIfGiven");
        assert!(!optional.authenticates());
        let message = format!("{:#}", activate(optional, exposed).err().unwrap());
        assert!(message.contains("refusing"), "{message}");
    }

    #[test]
    fn a_file_that_fails_to_reload_keeps_the_last_good_one() {
        let dir = std::env::temp_dir().join(format!("sockerr-webconfig-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yml");
        fs::write(&file, format!("basic_auth_users:\n  a: '{HASH}'\n")).unwrap();
        let config =
            WebConfig::load(Some(file.clone()), "127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert_eq!(config.current().users.len(), 1);
        // A different length: seen without a signal.
        fs::write(
            &file,
            format!("basic_auth_users:\n  a: '{HASH}'\n  b: '{HASH}'\n"),
        )
        .unwrap();
        assert_eq!(config.current().users.len(), 2);
        fs::write(&file, "basic_auth_users:\n  a: plain\n").unwrap();
        assert_eq!(
            config.current().users.len(),
            2,
            "the broken file is not applied"
        );
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(config.current().users.len(), 2, "nor a missing one");
    }
}
