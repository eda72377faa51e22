//! The accept loop: a cap on open connections, TLS, HTTP/1.1 with a
//! header-read and an idle keep-alive timeout, graceful shutdown.
//!
//! Slow clients cannot pile up: a connection must finish its TLS handshake
//! and send complete request headers within the header timeout of being
//! accepted, and on a kept-alive connection a request must start within
//! the idle timeout and then finish its headers within the header timeout.
//! Past `max_connections`, new connections are closed as soon as they are
//! accepted (and counted), so a flood costs no file descriptor for longer
//! than an accept; the connections already open carry on.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::Request, middleware};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGauge, Opts};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep, sleep_until, timeout, timeout_at},
};
use tower::ServiceExt as _;

use super::{Shared, auth};

#[derive(Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
}

/// Request headers (and unread request bytes) a connection may buffer.
/// Prometheus sends a few hundred bytes; hyper's default is ~400 KiB,
/// which a thousand slow clients would turn into ~400 MiB.
const MAX_BUF: usize = 16 * 1024;

/// After SIGTERM: how long responses in flight may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why the server closed a connection before the client did.
#[derive(Clone, Copy)]
enum Dropped {
    MaxConnections,
    TlsHandshake,
    HeaderTimeout,
    IdleTimeout,
}

impl Dropped {
    const ALL: [Self; 4] = [
        Self::MaxConnections,
        Self::TlsHandshake,
        Self::HeaderTimeout,
        Self::IdleTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::TlsHandshake => "tls_handshake",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

#[derive(Clone)]
pub struct ConnectionMetrics {
    open: IntGauge,
    dropped: IntCounterVec,
}

impl ConnectionMetrics {
    pub fn new() -> Self {
        let dropped = IntCounterVec::new(
            Opts::new(
                "sockerr_http_connections_dropped_total",
                "HTTP connections the agent closed, by reason: max_connections (refused at \
                 accept), tls_handshake (failed), header_timeout, idle_timeout.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in Dropped::ALL {
            dropped.with_label_values(&[reason.label()]);
        }
        Self {
            open: IntGauge::new(
                "sockerr_http_connections",
                "Open HTTP connections (at most --web.max-connections).",
            )
            .expect("valid metric"),
            dropped,
        }
    }

    pub fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 2] {
        [Box::new(self.open.clone()), Box::new(self.dropped.clone())]
    }

    fn dropped(&self, why: Dropped) {
        self.dropped.with_label_values(&[why.label()]).inc();
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(shared.clone(), auth::guard));
    let max = shared.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max as usize));
    let (stop, stopping) = watch::channel(());
    // `systemctl reload` sends SIGHUP; without a handler it would kill us.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangup.recv() => shared.config.reload(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(connection(
                            stream,
                            peer,
                            shared.clone(),
                            app.clone(),
                            permit,
                            stopping.clone(),
                        ));
                    }
                    Err(_) => {
                        drop(stream);
                        shared.metrics.dropped(Dropped::MaxConnections);
                        refusals.note(max);
                    }
                },
                // EMFILE and the like: the connections in flight will free
                // descriptors; retrying at once would spin.
                Err(e) => {
                    tracing::warn!("accepting an HTTP connection: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    drop(stop);
    // Every connection holds a permit until it ends.
    let _ = timeout(SHUTDOWN_GRACE, permits.acquire_many(max)).await;
    Ok(())
}

/// Logs refused connections at most every ten seconds.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, max: u32) {
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.since_log,
                "HTTP connections refused: {max} already open (--web.max-connections)"
            );
            self.since_log = 0;
            self.logged = Some(Instant::now());
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    app: Router,
    _permit: OwnedSemaphorePermit,
    stopping: watch::Receiver<()>,
) {
    shared.metrics.open.inc();
    let accepted = Instant::now();
    let limits = shared.limits;
    let phase = Arc::new(Phase::new(accepted + limits.header_timeout, limits));
    // In this order, so that a reload this very call makes does not close
    // the connection it is for.
    let tls = shared.config.current().tls.clone();
    let drain = Drain {
        stopping,
        reloaded: shared.config.subscribe(),
    };
    let dropped = match tls {
        None => http(stream, app, phase, drain).await,
        Some(tls) => {
            let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
            match timeout_at(accepted + limits.header_timeout, handshake).await {
                Ok(Ok(stream)) => http(stream, app, phase, drain).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    Some(Dropped::TlsHandshake)
                }
                Err(_) => Some(Dropped::HeaderTimeout),
            }
        }
    };
    if let Some(why) = dropped {
        tracing::debug!(%peer, reason = why.label(), "HTTP connection closed");
        shared.metrics.dropped(why);
    }
    shared.metrics.open.dec();
}

/// When a connection should stop keeping alive: the server stops, or a new
/// web configuration is in force.
struct Drain {
    stopping: watch::Receiver<()>,
    reloaded: watch::Receiver<()>,
}

impl Drain {
    async fn wanted(&mut self) {
        tokio::select! {
            _ = self.stopping.changed() => {}
            _ = self.reloaded.changed() => {}
        }
    }
}

/// Serves HTTP/1.1 on one connection until either side closes it or a
/// timeout drops it (then says which).
async fn http<S>(io: S, app: Router, phase: Arc<Phase>, mut drain: Drain) -> Option<Dropped>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let phase = phase.clone();
        service_fn(move |request: Request<hyper::body::Incoming>| {
            phase.busy();
            let (phase, app) = (phase.clone(), app.clone());
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                phase.waiting();
                response
            }
        })
    };
    let io = TokioIo::new(Tracked {
        io,
        phase: phase.clone(),
    });
    let conn = http1::Builder::new()
        .max_buf_size(MAX_BUF)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = phase.deadline();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection: {e}");
                }
                return None;
            }
            () = phase.changed.notified() => {}
            () = sleep_until(deadline.map_or_else(far_future, |(at, _)| at)), if deadline.is_some() => {
                // Dropping the connection closes it.
                return deadline.map(|(_, why)| why);
            }
            () = drain.wanted(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// Where a connection is between requests, and so which timeout applies.
struct Phase {
    state: Mutex<State>,
    /// Woken when the deadline moves.
    changed: Notify,
    limits: Limits,
}

#[derive(Clone, Copy)]
enum State {
    /// Waiting for a request's headers, until `deadline`.
    Waiting {
        deadline: Instant,
        why: Dropped,
        /// Idle keep-alive: the first byte of the next request starts
        /// the header timeout.
        idle: bool,
    },
    /// A request is being answered: no timeout (the handlers are quick).
    Busy {
        /// Bytes of a pipelined request arrived meanwhile.
        read_ahead: bool,
    },
}

impl Phase {
    fn new(header_deadline: Instant, limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::Waiting {
                deadline: header_deadline,
                why: Dropped::HeaderTimeout,
                idle: false,
            }),
            changed: Notify::new(),
            limits,
        }
    }

    fn set(&self, f: impl FnOnce(State) -> Option<State>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = f(*state) {
            *state = next;
            self.changed.notify_one();
        }
    }

    fn header_wait(&self) -> State {
        State::Waiting {
            deadline: Instant::now() + self.limits.header_timeout,
            why: Dropped::HeaderTimeout,
            idle: false,
        }
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.set(|state| match state {
            State::Waiting { idle: true, .. } => Some(self.header_wait()),
            State::Busy { read_ahead: false } => Some(State::Busy { read_ahead: true }),
            _ => None,
        });
    }

    /// The request's headers are in.
    fn busy(&self) {
        self.set(|_| Some(State::Busy { read_ahead: false }));
    }

    /// The response is on its way: the connection waits for the next request.
    fn waiting(&self) {
        self.set(|state| {
            Some(match state {
                State::Busy { read_ahead: true } => self.header_wait(),
                _ => State::Waiting {
                    deadline: Instant::now() + self.limits.idle_timeout,
                    why: Dropped::IdleTimeout,
                    idle: true,
                },
            })
        });
    }

    fn deadline(&self) -> Option<(Instant, Dropped)> {
        match *self.state.lock().unwrap_or_else(|e| e.into_inner()) {
            State::Waiting { deadline, why, .. } => Some((deadline, why)),
            State::Busy { .. } => None,
        }
    }
}

/// The connection's byte stream, telling its phase when bytes arrive.
struct Tracked<S> {
    io: S,
    phase: Arc<Phase>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.phase.read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
