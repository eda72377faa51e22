//! HTTP: the `--web.*` flags, the web configuration, and the web server.
//!
//! Two processes share this module (docs/design.md §5):
//!
//! - the collector (`sockerr run`) reads and reloads the web configuration
//!   (`config.rs`, `reload.rs`; the files of `tls.rs`) and binds the listen
//!   address ([`Listener`]), before it attaches anything;
//! - the web server (`sockerr serve`, [`serve`]), the only process that
//!   reads the network, accepts connections on it (`server/`: timeouts
//!   and connection caps, TLS, `auth.rs`) and answers the endpoints
//!   (`routes.rs`) by asking the collector over the channel
//!   (`collector.rs`).

mod auth;
mod collector;
pub(crate) mod config;
pub(crate) mod reload;
mod routes;
mod server;
pub(crate) mod tls;

use std::{
    net::SocketAddr,
    os::fd::{FromRawFd as _, RawFd},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    net::{TcpListener, TcpSocket},
    signal::unix::{Signal, SignalKind, signal},
};

pub use auth::hash_password;

use crate::{
    export::channel::{MAX_SHORT, Setup},
    privileges::{self, ServerUser},
};

#[derive(clap::Args)]
pub struct WebArgs {
    /// Address to serve /metrics, /findings and /healthz on: IP:PORT,
    /// HOST:PORT (resolved at start) or :PORT (every address).
    #[arg(long = "web.listen-address", default_value = "127.0.0.1:9809",
          value_parser = crate::parse::listen_address)]
    pub listen: SocketAddr,
    /// Path of the Prometheus metrics.
    #[arg(long = "web.telemetry-path", default_value = "/metrics", value_parser = telemetry_path)]
    pub telemetry_path: String,
    /// Allow a non-loopback listen address without TLS and authentication
    /// (metrics and findings name processes and endpoints of this host).
    #[arg(long = "web.allow-remote")]
    allow_remote: bool,
    /// Web configuration in Prometheus exporter-toolkit's format: TLS,
    /// basic auth, response headers. Read again when it or a file it names
    /// changes, and on SIGHUP. Empty: none.
    #[arg(long = "web.config.file", value_name = "FILE", value_parser = config_file)]
    config_file: Option<PathBuf>,
    /// Time a client has to send a request's headers: from connecting (TLS
    /// handshake included), or from the first byte of a later request.
    #[arg(long = "web.header-timeout", default_value = "10s", value_parser = crate::parse::positive_duration)]
    header_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request, once its
    /// last response is written.
    #[arg(long = "web.idle-timeout", default_value = "90s", value_parser = crate::parse::positive_duration)]
    idle_timeout: Duration,
    /// Time a response may go without the client taking any of it: a slow
    /// reader of a large response is served as long as it reads.
    #[arg(long = "web.write-timeout", default_value = "30s", value_parser = crate::parse::positive_duration)]
    write_timeout: Duration,
    /// Most open connections. At the cap, a new connection closes the oldest
    /// one still waiting for a request (or, if all are busy, is closed).
    #[arg(long = "web.max-connections", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Most open connections of one client (an IPv4 address, or an IPv6
    /// /64); past it, its new connection closes its own oldest one still
    /// waiting for a request (or, if all are busy, is closed). 0: no limit.
    #[arg(long = "web.max-connections-per-client", default_value_t = 64)]
    max_connections_per_client: u32,
    /// Most scrapes of the telemetry path answered at once; more get 503
    /// (node_exporter's in-flight limit). 0: no limit.
    #[arg(long = "web.max-requests", default_value_t = 40)]
    max_requests: u32,
    /// Leave out the agent's own process_* and promhttp_* metrics.
    #[arg(long = "web.disable-exporter-metrics")]
    pub disable_exporter_metrics: bool,
    /// The user (and group) the web server, the only process of the agent
    /// that reads the network, runs as: UID[:GID] or NAME[:GROUP], not
    /// root. Default: 65534 (nobody, nogroup).
    #[arg(
        long = "web.server-user",
        value_name = "USER",
        default_value = "65534:65534"
    )]
    pub server_user: ServerUser,
}

impl WebArgs {
    /// What the web server runs with.
    pub fn setup(&self) -> Setup {
        Setup {
            telemetry_path: self.telemetry_path.clone(),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            max_requests: self.max_requests,
        }
    }
}

/// Any path, the empty one included (clap's own parser refuses it): empty
/// means no file, as in exporter-toolkit, which the systemd unit relies on.
fn config_file(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// A literal path: the router reads `{name}`, `{*rest}` and segments
/// starting with `:` or `*` as patterns (or panics on them, after the probes
/// are attached), and the landing page links to it unescaped. So letters,
/// digits, `-`, `.`, `_`, `~` and `/` only, which are never special there.
fn telemetry_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s == "/" || s == "/findings" || s == "/healthz" {
        return Err("must start with / and not be /, /findings or /healthz".into());
    }
    if s.len() > MAX_SHORT {
        return Err(format!("at most {MAX_SHORT} bytes"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/".contains(*c)))
    {
        return Err(format!(
            "{c:?} is not allowed: a literal path of letters, digits, '-', '.', '_', '~' and '/'"
        ));
    }
    Ok(s.to_owned())
}

/// Connections the kernel may hold completed for us before we accept them.
/// `TcpListener::bind` asks for 128: a burst of connections (a slowloris
/// flood, many scrapers at once) overflows that, and the kernel then drops
/// the SYNs (`tcp_conn_request` in net/ipv4/tcp_input.c), which the client
/// retries only after a second: 650 connections took 4 s, and a scrape
/// behind them a second more. The kernel caps it at net.core.somaxconn
/// (4096 since Linux 5.4).
const BACKLOG: u32 = 4096;

/// The listen socket, as `TcpListener::bind` makes it (SO_REUSEADDR, so a
/// restart binds while the old connections linger in TIME_WAIT) but with a
/// backlog of [`BACKLOG`].
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The listen address bound and the web configuration loaded, in the
/// collector: the web server gets the socket and what the configuration
/// says, never the files.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub config: Arc<reload::WebConfig>,
    /// SIGHUPs since the web configuration was read.
    pub hangup: Signal,
}

impl Listener {
    /// Loads the web configuration and binds the listen address: a bad file
    /// or a busy port fails here, naming the key or the address.
    pub async fn bind(args: &WebArgs) -> Result<Self> {
        // `systemctl reload` may come at any moment of startup: SIGHUP is
        // blocked from main's first instruction until the probes are
        // attached (main.rs), and the handler that takes it then is
        // installed here, before the file is read: none is lost, none
        // kills us.
        let hangup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
        let file = args
            .config_file
            .clone()
            .filter(|f| !f.as_os_str().is_empty());
        let config = reload::WebConfig::load(file, args.listen, args.allow_remote)?;
        let socket = listen(args.listen)
            .and_then(TcpListener::into_std)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        Ok(Self {
            socket,
            config: Arc::new(config),
            hangup,
        })
    }

    /// The address actually bound (port 0 in the flag becomes a real port).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.socket
            .local_addr()
            .context("the listen socket's address")
    }
}

/// What every connection and request of the web server reads.
struct Shared {
    collector: Arc<collector::Collector>,
    verifier: auth::Verifier,
    limits: server::Limits,
}

/// `sockerr serve`: the web server, started by the collector as
/// `--web.server-user` with the listen socket and its end of the channel.
/// Confined before it reads a byte of either; ends when the collector
/// closes the channel.
pub fn serve(listen_fd: RawFd, channel_fd: RawFd) -> Result<()> {
    privileges::confine_server([listen_fd, channel_fd])?;
    // Its orders come over the channel: a terminal's Ctrl-C or a
    // `systemctl stop` reaches the collector, which closes it.
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: ignoring a signal installs no handler.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) }
            .with_context(|| format!("ignoring {sig}"))?;
    }
    crate::hangup(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
    // SAFETY: the collector passed these two descriptors for this process
    // to own; nothing else here uses them.
    let (listener, channel) = unsafe {
        (
            std::net::TcpListener::from_raw_fd(listen_fd),
            std::os::unix::net::UnixStream::from_raw_fd(channel_fd),
        )
    };
    listener
        .local_addr()
        .context("--listen-fd is not a listening socket")?;
    channel
        .set_nonblocking(true)
        .context("--channel-fd is not a socket")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).context("the listening socket")?;
        let channel = tokio::net::UnixStream::from_std(channel).context("the channel")?;
        // Before the first byte of either is read: from here on, only the
        // calls serving takes.
        privileges::seccomp::apply(listen_fd)?;
        let (collector, setup) = collector::Collector::connect(channel).await?;
        let shared = Arc::new(Shared {
            collector: collector.clone(),
            verifier: auth::Verifier::default(),
            limits: server::Limits {
                header_timeout: setup.header_timeout,
                idle_timeout: setup.idle_timeout,
                write_timeout: setup.write_timeout,
                max_connections: setup.max_connections,
                max_connections_per_client: setup.max_connections_per_client,
            },
        });
        let app = routes::router(collector.clone(), &setup);
        server::serve(
            listener,
            shared,
            app,
            async move { collector.closed().await },
        )
        .await
        .context("serving HTTP")
    })
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::Request, routing::get};
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn the_telemetry_path_is_literal() {
        for bad in [
            "metrics",
            "/",
            "/findings",
            "/healthz",
            "/{",
            "/{x}",
            "/{*rest}",
            "/:x",
            "/*x",
            "/a b",
            "/%7Bx%7D",
            "/m?x=1",
            "/m#x",
            "/<script>",
            "/é",
        ] {
            assert!(telemetry_path(bad).is_err(), "{bad} accepted");
        }
        // Every accepted path routes to itself, and nothing else to it.
        for good in ["/metrics", "/sockerr/metrics", "/m-1.x_y~z/", "/findingsx"] {
            assert_eq!(telemetry_path(good).as_deref(), Ok(good));
            let router = Router::new().route(good, get(|| async { "metrics" }));
            for (path, status) in [(good, 200), ("/x", 404), ("/metricsx", 404)] {
                let request = Request::get(path).body(Body::empty()).unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), status, "{good}: GET {path}");
            }
        }
    }
}
