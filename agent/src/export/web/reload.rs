//! The web configuration in force: certificates loaded, and a non-loopback
//! address refused without TLS and authentication.
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

use anyhow::{Context as _, Result, anyhow};
use axum::http::HeaderMap;
use tokio::sync::watch;

use super::{
    config::{Config, parse},
    tls,
};
use crate::locks::lock;

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
    use crate::export::web::config::tests::HASH;

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
