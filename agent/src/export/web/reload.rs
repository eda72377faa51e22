//! The web configuration in force, in the collector: files read and
//! validated (certificates loaded), and a non-loopback address refused
//! without TLS and authentication. The web server gets what was accepted
//! ([`Active::terms`]) over the channel: it cannot read the files (they
//! belong to root, mode 0600, and it may open none).
//!
//! The file, and the files it names, are read again when one of them
//! changes (looked at whenever the web server asks, on every connection
//! and request: a few `stat` calls, so a rotated certificate or a new
//! password needs no restart) and on SIGHUP. Each is read as a regular
//! file of at most 1 MiB (`config::read_file`).
//!
//! A reload cannot weaken what the listener promised: one that would turn
//! TLS off or on (clients reach the listener by its scheme) or serve
//! without authentication is refused like a broken file. So a file caught
//! half-written (`: > file` and a `cp` are both empty for an instant, which
//! parses as "no TLS, no users") never serves plain HTTP or anyone. A
//! configuration that fails to load or is refused leaves the last good one
//! in force, is logged once, and shows in
//! `sockerr_web_config_last_reload_successful` and
//! `sockerr_web_config_reloads_total{result}`.
//!
//! Only new TLS terms (certificates, client certificates, versions) close
//! kept-alive connections (the web server compares them), after the
//! response in flight, so that every client is under them from its next
//! connection on: a client scraping every few seconds would otherwise keep
//! a connection made under the old terms forever. Users and headers apply
//! to the next request as they are; a file read again unchanged (a SIGHUP,
//! a `touch`) changes nothing.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result, anyhow};
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::sync::watch;

use super::{
    config::{Config, parse, read_file},
    tls,
};
use crate::{export::channel::Terms, locks::lock};

/// A configuration in force, its certificates checked.
pub struct Active {
    tls: bool,
    /// Clients must prove who they are (basic auth, or a verified client
    /// certificate).
    authenticates: bool,
    /// What it was made from, to tell a configuration read again unchanged.
    source: Source,
}

impl Active {
    /// What the web server needs of it.
    pub fn terms(&self) -> Terms {
        let config = &self.source.config;
        Terms {
            tls: config.tls.clone().zip(self.source.pem.clone()),
            users: config.users.clone(),
            headers: config.headers.clone(),
        }
    }

    pub fn users(&self) -> usize {
        self.source.config.users.len()
    }
}

/// A configuration as read: the file's keys and the TLS files' contents.
#[derive(Default, PartialEq)]
struct Source {
    config: Config,
    pem: Option<tls::Pem>,
}

/// What became of a configuration read again, by
/// `sockerr_web_config_reloads_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// Put in force.
    Applied,
    /// The same as the one in force: nothing to do.
    Unchanged,
    /// Unreadable or invalid.
    Invalid,
    /// Valid, but weaker than the one in force (TLS or authentication
    /// off, or TLS on): refused.
    Refused,
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

/// Why `new` may not replace `old` while the agent runs, if it may not.
fn weakens(old: &Active, new: &Active) -> Option<&'static str> {
    match (old.tls, new.tls) {
        (true, false) => Some(
            "it has no tls_server_config, and the listener serves HTTPS: it would serve plain \
             HTTP",
        ),
        (false, true) => Some(
            "it has a tls_server_config, and the listener serves plain HTTP: clients reach it by \
             its scheme",
        ),
        _ if old.authenticates && !new.authenticates => Some(
            "it authenticates no one (no basic_auth_users, no client_auth_type \
             RequireAndVerifyClientCert), and the listener requires authentication",
        ),
        _ => None,
    }
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
    /// Counts the configurations put in force.
    generation: u64,
    /// The configuration file and the files it names, as last read.
    watched: Vec<PathBuf>,
    stamps: Vec<Stamp>,
}

/// The reloads' metrics.
#[derive(Clone)]
struct ReloadMetrics {
    successful: IntGauge,
    success_time: IntGauge,
    reloads: IntCounterVec,
}

impl ReloadMetrics {
    fn new() -> Self {
        let reloads = IntCounterVec::new(
            Opts::new(
                "sockerr_web_config_reloads_total",
                "Times --web.config.file was read again (on SIGHUP, or when it or a file it \
                 names changed), by result: applied, unchanged, invalid (unreadable or \
                 invalid), refused (it would turn TLS off or on, or authentication off).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for outcome in <Outcome as strum::IntoEnumIterator>::iter() {
            reloads.with_label_values(&[<&str>::from(outcome)]);
        }
        Self {
            successful: IntGauge::new(
                "sockerr_web_config_last_reload_successful",
                "1 when the web configuration was last read successfully (applied or \
                 unchanged), 0 when it was invalid or refused: the previous one is in force.",
            )
            .expect("valid metric"),
            success_time: IntGauge::new(
                "sockerr_web_config_last_reload_success_timestamp_seconds",
                "When the web configuration was last read successfully (at start, or again), \
                 in seconds since the Unix epoch.",
            )
            .expect("valid metric"),
            reloads,
        }
    }

    fn note(&self, outcome: Outcome) {
        self.reloads
            .with_label_values(&[<&str>::from(outcome)])
            .inc();
        let success = matches!(outcome, Outcome::Applied | Outcome::Unchanged);
        self.successful.set(i64::from(success));
        if success {
            self.succeeded();
        }
    }

    fn succeeded(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.success_time.set(now.as_secs() as i64);
    }
}

/// The web configuration in force, read again when its files change.
pub struct WebConfig {
    path: Option<PathBuf>,
    /// Set when the listen address is not loopback and --web.allow-remote
    /// was not given: only TLS with authentication may serve it.
    exposed: Option<SocketAddr>,
    loaded: Mutex<Loaded>,
    /// The generation of the configuration in force.
    applied: watch::Sender<u64>,
    metrics: ReloadMetrics,
}

impl WebConfig {
    /// Loads the file (none: plain HTTP, no authentication); an error names
    /// the file and the key.
    pub fn load(path: Option<PathBuf>, listen: SocketAddr, allow_remote: bool) -> Result<Self> {
        let exposed = (!listen.ip().is_loopback() && !allow_remote).then_some(listen);
        let (watched, stamps, source) = match &path {
            None => (Vec::new(), Vec::new(), Ok(Source::default())),
            Some(path) => read(path),
        };
        let active = source.and_then(|source| activate(source, exposed));
        let active = match &path {
            Some(path) => active.with_context(|| format!("web config {}", path.display()))?,
            None => active?,
        };
        if let Some(path) = &path {
            describe(path, &active, "web config loaded");
        }
        let metrics = ReloadMetrics::new();
        metrics.successful.set(1);
        metrics.succeeded();
        Ok(Self {
            path,
            exposed,
            loaded: Mutex::new(Loaded {
                active: Arc::new(active),
                generation: 0,
                watched,
                stamps,
            }),
            applied: watch::Sender::new(0),
            metrics,
        })
    }

    /// Completes its `changed()` when another configuration is put in
    /// force; holds its generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The reloads' metrics.
    pub fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 3] {
        let m = &self.metrics;
        [
            Box::new(m.successful.clone()),
            Box::new(m.success_time.clone()),
            Box::new(m.reloads.clone()),
        ]
    }

    /// The configuration in force and its generation, first read again if
    /// a file changed.
    pub fn current(&self) -> (u64, Arc<Active>) {
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
        (loaded.generation, loaded.active.clone())
    }

    /// Reads the file again even if nothing seems to have changed (SIGHUP).
    pub fn reload(&self) -> Option<Outcome> {
        if self.path.is_none() {
            tracing::info!("SIGHUP: no --web.config.file to reload");
            return None;
        }
        Some(self.reload_locked(&mut lock(&self.loaded)))
    }

    fn reload_locked(&self, loaded: &mut Loaded) -> Outcome {
        let path = self.path.as_deref().expect("a configuration file");
        let (watched, stamps, source) = read(path);
        // A broken file is reported once, not on every request.
        loaded.watched = watched;
        loaded.stamps = stamps;
        let outcome = match source {
            Ok(source) if source == loaded.active.source => {
                tracing::info!(file = %path.display(), "web config read again: unchanged");
                Outcome::Unchanged
            }
            Ok(source) => match activate(source, self.exposed) {
                Ok(active) => match weakens(&loaded.active, &active) {
                    Some(why) => {
                        tracing::error!(
                            file = %path.display(),
                            "web config {}: refusing to reload: {why}; restart the agent to \
                             change that; keeping the previous web config",
                            path.display()
                        );
                        Outcome::Refused
                    }
                    None => {
                        describe(path, &active, "web config reloaded");
                        loaded.active = Arc::new(active);
                        loaded.generation += 1;
                        self.applied.send_replace(loaded.generation);
                        Outcome::Applied
                    }
                },
                Err(e) => {
                    tracing::error!(
                        "web config {}: {e:#}; keeping the previous web config",
                        path.display()
                    );
                    Outcome::Invalid
                }
            },
            Err(e) => {
                tracing::error!(
                    "web config {}: {e:#}; keeping the previous web config",
                    path.display()
                );
                Outcome::Invalid
            }
        };
        self.metrics.note(outcome);
        outcome
    }
}

fn describe(path: &Path, active: &Active, message: &str) {
    tracing::info!(
        file = %path.display(),
        tls = active.tls,
        basic_auth_users = active.users(),
        "{message}"
    );
}

/// Reads the configuration at `path` and the files it names: the files to
/// watch, their stamps (taken before reading, so a change while reading is
/// seen next time), and what they hold or what is wrong with them.
fn read(path: &Path) -> (Vec<PathBuf>, Vec<Stamp>, Result<Source>) {
    let mut watched = vec![path.to_owned()];
    let mut stamps = vec![stamp(path)];
    let config = read_file(path).context("reading it").and_then(|bytes| {
        let text = String::from_utf8(bytes).context("not UTF-8")?;
        parse(&text, path.parent().unwrap_or(Path::new(".")))
    });
    let config = match config {
        Ok(config) => config,
        Err(e) => return (watched, stamps, Err(e)),
    };
    for file in config.files() {
        stamps.push(stamp(&file));
        watched.push(file);
    }
    let pem = config.tls.as_ref().map(tls::Pem::read).transpose();
    (watched, stamps, pem.map(|pem| Source { config, pem }))
}

fn activate(source: Source, exposed: Option<SocketAddr>) -> Result<Active> {
    let config = &source.config;
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
    // Built to be checked here, where a bad file is reported (at start,
    // before anything is attached), and built again by the web server.
    if let (Some(tls), Some(pem)) = (&config.tls, &source.pem) {
        tls::server_config(tls, pem)?;
    }
    Ok(Active {
        tls: config.tls.is_some(),
        authenticates: config.authenticates(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::web::config::tests::HASH;

    /// A scratch directory with the test certificates, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("sockerr-webconfig-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            for (file, text) in [
                ("a.crt", include_str!("testdata/a.crt")),
                ("a.key", include_str!("testdata/a.key")),
                ("b.crt", include_str!("testdata/b.crt")),
                ("b.key", include_str!("testdata/b.key")),
            ] {
                fs::write(dir.join(file), text).unwrap();
            }
            Self(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("web.yml")
        }

        fn write(&self, text: &str) {
            fs::write(self.file(), text).unwrap();
        }

        /// The file's web configuration, loaded for `listen`.
        fn load(&self, listen: &str) -> Result<WebConfig> {
            WebConfig::load(Some(self.file()), listen.parse().unwrap(), false)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const LOOPBACK: &str = "127.0.0.1:0";

    fn tls(pair: &str) -> String {
        format!("tls_server_config:\n  cert_file: {pair}.crt\n  key_file: {pair}.key\n")
    }

    fn users(names: &[&str]) -> String {
        let users: String = names.iter().map(|n| format!("  {n}: '{HASH}'\n")).collect();
        format!("basic_auth_users:\n{users}")
    }

    fn message(e: anyhow::Error) -> String {
        format!("{e:#}")
    }

    #[test]
    fn an_exposed_address_needs_tls_and_authentication() {
        let dir = Dir::new("exposed");
        let exposed = "0.0.0.0:9809";
        for (text, refused) in [
            (users(&["u"]), true),
            (tls("a"), true),
            (tls("a") + &users(&["u"]), false),
            // A verified client certificate is authentication enough; one
            // that is only checked when given is not.
            (
                tls("a")
                    + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: a.crt\n",
                false,
            ),
            (
                tls("a") + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: a.crt\n",
                true,
            ),
        ] {
            dir.write(&text);
            match dir.load(exposed) {
                Ok(_) => assert!(!refused, "{text}"),
                Err(e) => {
                    let message = message(e);
                    assert!(refused, "{text}: {message}");
                    assert!(
                        message.contains("refusing to serve on 0.0.0.0:9809")
                            && message.contains("--web.allow-remote"),
                        "{message}"
                    );
                }
            }
        }
        // Both, but the certificate is missing: named.
        dir.write(&(tls("nowhere") + &users(&["u"])));
        let message = message(dir.load(exposed).err().unwrap());
        assert!(
            message.contains("tls_server_config.cert_file: reading ")
                && message.contains("nowhere.crt"),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_fails_to_reload_keeps_the_last_good_one() {
        let dir = Dir::new("broken");
        dir.write(&users(&["a"]));
        let config = dir.load(LOOPBACK).unwrap();
        assert_eq!(config.current().1.users(), 1);
        // A different length: seen without a signal.
        dir.write(&users(&["a", "b"]));
        assert_eq!(config.current().1.users(), 2);
        dir.write("basic_auth_users:\n  a: plain\n");
        assert_eq!(
            config.current().1.users(),
            2,
            "the broken file is not applied"
        );
        assert_eq!(config.metrics.successful.get(), 0);
        fs::remove_file(dir.file()).unwrap();
        assert_eq!(config.current().1.users(), 2, "nor a missing one");
        dir.write(&users(&["a", "b"]));
        assert_eq!(config.reload(), Some(Outcome::Unchanged));
        assert_eq!(config.metrics.successful.get(), 1);
        let counted = |o: Outcome| {
            let label: &str = o.into();
            config.metrics.reloads.with_label_values(&[label]).get()
        };
        assert_eq!(
            [
                Outcome::Applied,
                Outcome::Unchanged,
                Outcome::Invalid,
                Outcome::Refused
            ]
            .map(counted),
            [1, 1, 2, 0]
        );
    }

    /// A half-written file (empty, or cut after a section) parses as a
    /// weaker configuration: never put in force while the agent runs.
    #[test]
    fn reloads_that_would_weaken_security_are_refused() {
        let dir = Dir::new("weaken");
        let full = tls("a") + &users(&["a", "b"]);
        dir.write(&full);
        let config = dir.load(LOOPBACK).unwrap();
        let applied = config.subscribe();
        let tls_terms = || config.current().1.terms().tls;
        let first = tls_terms();
        for weaker in ["", "# rewriting\n", &tls("a"), &users(&["a"])] {
            dir.write(weaker);
            assert_eq!(config.reload(), Some(Outcome::Refused), "{weaker:?}");
            let active = config.current().1;
            assert!(
                active.terms().tls.is_some() && active.users() == 2,
                "{weaker:?}"
            );
            assert_eq!(config.metrics.successful.get(), 0);
        }
        // The same again: nothing changes, nothing is sent to the server.
        dir.write(&full);
        assert_eq!(config.reload(), Some(Outcome::Unchanged));
        assert_eq!(config.reload(), Some(Outcome::Unchanged));
        assert!(!applied.has_changed().unwrap());
        assert_eq!(config.metrics.successful.get(), 1);
        // Fewer users, TLS the same: applied, the same TLS terms (the
        // server keeps its connections).
        dir.write(&(tls("a") + &users(&["a"])));
        assert_eq!(config.reload(), Some(Outcome::Applied));
        assert_eq!(config.current().0, 1);
        assert_eq!(config.current().1.users(), 1);
        assert!(applied.has_changed().unwrap());
        assert_eq!(tls_terms(), first);
        // A new certificate (the same paths, other contents): new TLS
        // terms, so the server closes kept-alive connections.
        for ext in ["crt", "key"] {
            fs::copy(
                dir.0.join(format!("b.{ext}")),
                dir.0.join(format!("a.{ext}")),
            )
            .unwrap();
        }
        assert_eq!(config.reload(), Some(Outcome::Applied));
        assert_eq!(config.current().0, 2);
        assert_ne!(tls_terms(), first);

        // Started in plain HTTP with basic auth: TLS on would change the
        // scheme clients use, and no users would let anyone in.
        dir.write(&users(&["a"]));
        let plain = dir.load(LOOPBACK).unwrap();
        for stronger_or_weaker in [tls("b") + &users(&["a"]), String::new()] {
            dir.write(&stronger_or_weaker);
            assert_eq!(
                plain.reload(),
                Some(Outcome::Refused),
                "{stronger_or_weaker:?}"
            );
            assert!(plain.current().1.terms().tls.is_none());
        }
        // Without authentication to begin with, adding it is fine.
        dir.write("");
        let open = dir.load(LOOPBACK).unwrap();
        dir.write(&users(&["a"]));
        assert_eq!(open.reload(), Some(Outcome::Applied));
    }

    /// A FIFO would block the reading thread in open(), with the lock every
    /// request takes; /dev/zero would be read until the agent is killed.
    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = Dir::new("files");
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let huge = dir.0.join("huge.yml");
        fs::write(
            &huge,
            "#".repeat(super::super::config::MAX_FILE_BYTES as usize + 1),
        )
        .unwrap();
        for (path, expected) in [
            (fifo.clone(), "not a regular file: a FIFO"),
            (PathBuf::from("/dev/zero"), "not a regular file: a device"),
            (dir.0.clone(), "not a regular file: a directory"),
            (huge, "larger than 1048576 bytes"),
        ] {
            let e = WebConfig::load(Some(path.clone()), LOOPBACK.parse().unwrap(), false);
            let message = message(e.err().unwrap());
            assert!(message.contains(expected), "{}: {message}", path.display());
        }
        // A certificate that is a FIFO: named by its key.
        dir.write("tls_server_config:\n  cert_file: fifo\n  key_file: a.key\n");
        let message = message(dir.load(LOOPBACK).err().unwrap());
        assert!(
            message.contains("tls_server_config.cert_file: reading") && message.contains("a FIFO"),
            "{message}"
        );
        // Turned into one while running: refused, and the old one stays.
        dir.write(&users(&["a"]));
        let config = dir.load(LOOPBACK).unwrap();
        fs::remove_file(dir.file()).unwrap();
        nix::unistd::mkfifo(&dir.file(), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(config.reload(), Some(Outcome::Invalid));
        assert_eq!(config.current().1.users(), 1);
    }
}
