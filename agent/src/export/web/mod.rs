//! The daemon's state and the `--web.*` flags in; HTTP responses out.
//!
//! How the HTTP endpoints are served: the `--web.*` flags, the
//! exporter-toolkit web configuration (TLS, basic auth, response headers)
//! and an accept loop with timeouts and a connection cap. The endpoints
//! themselves are in [`routes`].

mod auth;
mod config;
mod reload;
mod routes;
mod server;
mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use axum::Router;
use tokio::{
    net::{TcpListener, TcpSocket},
    signal::unix::{Signal, SignalKind, signal},
};

pub use auth::hash_password;
pub use routes::router;

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

/// What every connection and request reads.
struct Shared {
    config: reload::WebConfig,
    verifier: auth::Verifier,
    limits: server::Limits,
    metrics: server::ConnectionMetrics,
}

/// The bound, configured HTTP server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// SIGHUPs since the web configuration was read.
    hangup: Signal,
}

impl Server {
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
        let listener =
            listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                config,
                verifier: auth::Verifier::default(),
                limits: server::Limits {
                    header_timeout: args.header_timeout,
                    idle_timeout: args.idle_timeout,
                    write_timeout: args.write_timeout,
                    max_connections: args.max_connections,
                },
                metrics: server::ConnectionMetrics::new(),
            }),
            hangup,
        })
    }

    /// The address actually bound (port 0 in the flag becomes a real port).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("the listen socket's address")
    }

    /// The server's own metrics: open connections, connections dropped,
    /// reloads of the web configuration.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let connections = self.shared.metrics.collectors();
        let reloads = self.shared.config.collectors();
        connections.into_iter().chain(reloads).collect()
    }

    /// Serves `app` until `shutdown` completes.
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()>) -> Result<()> {
        server::serve(self.listener, self.shared, self.hangup, app, shutdown)
            .await
            .context("serving HTTP")
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request, routing::get};
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
