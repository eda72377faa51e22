//! `--web.config.file`: the web configuration format of Prometheus'
//! exporter-toolkit, so the file SREs already write for their exporters
//! works here: `tls_server_config` (files, client authentication, versions,
//! `cipher_suites`, `curve_preferences`, `prefer_server_cipher_suites`),
//! `basic_auth_users` (bcrypt hashes) and `http_server_config`. Every key of
//! exporter-toolkit's schema is known: the few sockerr cannot honour
//! (inline PEM, `client_allowed_sans`, `rate_limit`) are refused with the
//! alternative, never ignored. As in exporter-toolkit, unknown keys are
//! errors and relative paths are relative to the file's directory; every
//! error names the key.
//!
//! This is the format and its validation; putting a configuration in force
//! and reading it again when it changes is `reload.rs`.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::export::channel::MAX_SHORT;

/// The file as written. Every level is optional and may be empty (`key:`
/// with no value), as exporter-toolkit accepts.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    http_server_config: Option<HttpFile>,
    rate_limit: Option<RateLimitFile>,
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
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    // Known, refused (see `refuse`).
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RateLimitFile {
    interval: Option<String>,
    burst: Option<u64>,
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

#[derive(Clone, Debug, PartialEq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: Version,
    pub max_version: Version,
    /// TLS 1.2 suites offered, in the server's order of preference; empty:
    /// all of rustls'. (TLS 1.3 suites are not configurable, as in Go.)
    pub cipher_suites: Vec<rustls::CipherSuite>,
    /// Key exchange groups, in order of preference; empty: all.
    pub curves: Vec<rustls::NamedGroup>,
    /// Choose the server's most preferred suite rather than the client's.
    pub prefer_server_cipher_suites: bool,
}

/// Go's names of the suites (`tls.CipherSuites()`) that rustls offers,
/// with Go's alias names of the ChaCha20 suites.
const CIPHER_SUITES: &[(&str, rustls::CipherSuite)] = {
    use rustls::CipherSuite as C;
    &[
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        // TLS 1.3: accepted, as Go accepts them, and always offered.
        ("TLS_AES_128_GCM_SHA256", C::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", C::TLS13_AES_256_GCM_SHA384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// Go's names of the curves (`tls.CurveID`) rustls' ring provider offers.
const CURVES: &[(&str, rustls::NamedGroup)] = &[
    ("X25519", rustls::NamedGroup::X25519),
    ("CurveP256", rustls::NamedGroup::secp256r1),
    ("CurveP384", rustls::NamedGroup::secp384r1),
];

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

/// A TLS 1.2 suite the web configuration can name, by its code point
/// (what the channel carries).
pub fn known_suite(code: u16) -> Option<rustls::CipherSuite> {
    CIPHER_SUITES
        .iter()
        .map(|(_, suite)| *suite)
        .find(|suite| u16::from(*suite) == code)
}

/// A key exchange group the web configuration can name, by its code point.
pub fn known_curve(code: u16) -> Option<rustls::NamedGroup> {
    CURVES
        .iter()
        .map(|(_, group)| *group)
        .find(|group| u16::from(*group) == code)
}

/// Most bytes read from the file and from each file it names: a web
/// configuration is a few KiB, a certificate chain tens. `--web.config.file
/// /dev/zero` must not read until the agent is killed.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// The contents of a regular file of at most [`MAX_FILE_BYTES`]. Opened
/// non-blocking, so that a FIFO there is refused at once instead of
/// blocking the server in open() (with the configuration's lock held);
/// what is refused is decided on the opened file, not on its name.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "a socket"
        };
        bail!("not a regular file: {what}");
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("larger than {MAX_FILE_BYTES} bytes");
    }
    Ok(bytes)
}

/// Parses and validates a configuration; relative paths are taken from `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Config> {
    // One-line errors ("line 2 column 3: unknown field ..."): they also go
    // to the log when a reload fails.
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let file: File =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| anyhow!("{e}"))?;
    if let Some(limit) = file.rate_limit {
        // An interval of 0 is exporter-toolkit's "disabled".
        let disabled = limit
            .interval
            .as_deref()
            .is_none_or(|i| humantime::parse_duration(i).is_ok_and(|d| d.is_zero()));
        if !disabled {
            bail!(
                "rate_limit: sockerr does not limit request rates; leave it out (or set \
                 interval: 0) and bound connections with --web.max-connections"
            );
        }
    }
    let users = file.basic_auth_users.unwrap_or_default();
    for (name, hash) in &users {
        if name.len() > MAX_SHORT {
            bail!(
                "basic_auth_users: a user name of {} bytes, at most {MAX_SHORT}",
                name.len()
            );
        }
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
        if value.len() > MAX_SHORT {
            bail!("{key}: {} bytes, at most {MAX_SHORT}", value.len());
        }
        let value = HeaderValue::from_str(&value).with_context(|| format!("{key}: {value:?}"))?;
        map.insert(HeaderName::from_bytes(name.as_bytes())?, value);
    }
    Ok(map)
}

/// `None` when no TLS key is set: exporter-toolkit serves plain HTTP then.
fn tls_config(file: TlsFile, dir: &Path) -> Result<Option<Tls>> {
    let set = |v: Option<String>| v.filter(|s| !s.is_empty());
    for (key, inline) in [
        ("cert", &file.cert),
        ("key", &file.key),
        ("client_ca", &file.client_ca),
    ] {
        if inline.as_deref().is_some_and(|v| !v.is_empty()) {
            bail!(
                "tls_server_config.{key}: inline PEM is not supported; put it in a file and \
                 name it with {key}_file (the agent reads it again when it changes)"
            );
        }
    }
    if file
        .client_allowed_sans
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        bail!(
            "tls_server_config.client_allowed_sans: sockerr cannot restrict client \
             certificates by SAN; give the clients a CA of their own in client_ca_file \
             (RequireAndVerifyClientCert) instead"
        );
    }
    let cipher_suites = named("cipher_suites", file.cipher_suites, CIPHER_SUITES)?;
    let curves = named("curve_preferences", file.curve_preferences, CURVES)?;
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
        cipher_suites,
        curves,
        // exporter-toolkit's default.
        prefer_server_cipher_suites: file.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

/// Go's names in `names` to rustls' values, in the order given; names Go
/// knows but rustls does not offer are errors naming those it does.
fn named<T: Copy + PartialEq>(
    key: &str,
    names: Option<Vec<String>>,
    known: &[(&str, T)],
) -> Result<Vec<T>> {
    let mut values = Vec::new();
    for name in names.unwrap_or_default() {
        let Some((_, value)) = known.iter().find(|(n, _)| *n == name) else {
            let offered: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            bail!(
                "tls_server_config.{key}: {name:?} is not one sockerr offers (its TLS library \
                 implements no CBC or RSA key exchange suites, and no P-521); one of {}",
                offered.join(", ")
            );
        };
        if !values.contains(value) {
            values.push(*value);
        }
    }
    Ok(values)
}

impl Tls {
    /// rustls' ring provider with only the suites and groups configured,
    /// in their order: the order of preference.
    pub fn provider(&self) -> rustls::crypto::CryptoProvider {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let all = std::mem::take(&mut provider.cipher_suites);
            // TLS 1.3's are always offered, as Go offers them.
            let tls13 = all
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13);
            let chosen = self
                .cipher_suites
                .iter()
                .filter_map(|id| all.iter().find(|s| s.suite() == *id));
            for suite in chosen.chain(tls13) {
                if !provider
                    .cipher_suites
                    .iter()
                    .any(|s| s.suite() == suite.suite())
                {
                    provider.cipher_suites.push(*suite);
                }
            }
        }
        if !self.curves.is_empty() {
            let all = std::mem::take(&mut provider.kx_groups);
            provider.kx_groups = self
                .curves
                .iter()
                .filter_map(|id| all.iter().find(|g| g.name() == *id).copied())
                .collect();
        }
        provider
    }
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
    pub fn files(&self) -> Vec<PathBuf> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // `echo secret | sockerr hash-password`
    pub(crate) const HASH: &str = "$2b$10$2XY.vFVYj0WSNTOd31USSeHG6EjMQmCnYH2C5M.30BjePaA6/CzpK";

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
                cipher_suites: Vec::new(),
                curves: Vec::new(),
                prefer_server_cipher_suites: true,
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

    /// The TLS policy keys node_exporter's files carry: suites and curves in
    /// the order of preference, TLS 1.3's always offered, as in Go.
    #[test]
    fn cipher_suites_and_curves_in_the_order_given() {
        let config = parse(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites:\n    \
             - TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305\n    \
             - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n  \
             prefer_server_cipher_suites: false\n  curve_preferences: [CurveP384, X25519]\n\
             rate_limit:\n  interval: 0s\n",
            Path::new("/"),
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert!(!tls.prefer_server_cipher_suites);
        let provider = tls.provider();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        use rustls::CipherSuite as C;
        assert_eq!(
            suites[..2],
            [
                C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            ]
        );
        assert!(
            suites[2..]
                .iter()
                .all(|s| format!("{s:?}").starts_with("TLS13_"))
        );
        assert_eq!(suites.len(), 5, "{suites:?}");
        let groups: Vec<_> = provider.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            [rustls::NamedGroup::secp384r1, rustls::NamedGroup::X25519]
        );
        // Unset: everything rustls offers, the server's order preferred.
        let plain = parse(
            "tls_server_config:\n  cert_file: c\n  key_file: k\n",
            Path::new("/"),
        )
        .unwrap()
        .tls
        .unwrap();
        assert!(plain.prefer_server_cipher_suites);
        assert_eq!(
            plain.provider().cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
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
            (
                // An explicit key: YAML's implicit ones end at 1,024 characters.
                &format!(
                    "basic_auth_users:\n  ? {}\n  : '{HASH}'\n",
                    "a".repeat(MAX_SHORT + 1)
                ),
                "basic_auth_users: a user name of 4097 bytes, at most 4096",
            ),
            (
                &format!(
                    "http_server_config:\n  headers:\n    Content-Security-Policy: {}\n",
                    "a".repeat(MAX_SHORT + 1)
                ),
                "http_server_config.headers.Content-Security-Policy: 4097 bytes, at most 4096",
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
            (
                "rate_limit:\n  interval: 1s\n  burst: 1\n",
                "rate_limit: sockerr does not limit request rates",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n",
                "tls_server_config.cipher_suites: \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not one sockerr offers",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  curve_preferences: [CurveP521]\n",
                "tls_server_config.curve_preferences: \"CurveP521\" is not one",
            ),
            (
                "tls_server_config:\n  cert: '-----BEGIN CERTIFICATE-----'\n",
                "tls_server_config.cert: inline PEM is not supported; put it in a file",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [prometheus]\n",
                "tls_server_config.client_allowed_sans: sockerr cannot restrict",
            ),
            (
                "tls_server_config:\n  cipher_suite: []\n",
                "unknown field `cipher_suite`",
            ),
        ] {
            let message = error(text);
            assert!(message.contains(key), "{text:?}: {message}");
        }
    }
}
