//! The accept loop: a cap on open connections, TLS, HTTP/1.1 with a
//! header-read and an idle keep-alive timeout, graceful shutdown.
//!
//! Slow clients cannot pile up: a connection must finish its TLS handshake
//! and send complete request headers within the header timeout of being
//! accepted, and on a kept-alive connection a request must start within
//! the idle timeout and then finish its headers within the header timeout.
//!
//! At `max_connections`, a new connection makes room by closing the oldest
//! one that is still waiting: first those that never finished a request's
//! headers (slow or silent clients), then idle kept-alive ones. Only when
//! every connection is busy answering is the new one closed at once. So a
//! flood of idle or slow connections, however large, holds at most
//! `max_connections` descriptors, and a client that sends its request
//! promptly (a scrape: within milliseconds) is still served: the flood
//! would have to open `max_connections` connections in that time.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::Request, middleware};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGauge, Opts};
use strum::IntoEnumIterator as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    signal::unix::Signal,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep, sleep_until, timeout},
};
use tower::ServiceExt as _;

use super::{Shared, auth};
use crate::locks::lock;

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

/// How long a new connection may wait for the one closed to make room for
/// it to end (it ends as soon as it runs).
const HANDOVER: Duration = Duration::from_secs(1);

/// After SIGTERM: how long responses in flight may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why the server closed a connection before the client did; the label
/// is the snake_case name.
#[derive(Clone, Copy, PartialEq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Dropped {
    MaxConnections,
    TlsHandshake,
    HeaderTimeout,
    IdleTimeout,
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
                "HTTP connections the agent closed, by reason: max_connections (closed to \
                 make room for a new one, or the new one when none could be), tls_handshake \
                 (failed), header_timeout, idle_timeout.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in Dropped::iter() {
            dropped.with_label_values(&[<&str>::from(reason)]);
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
        self.dropped.with_label_values(&[<&str>::from(why)]).inc();
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut hangup: Signal,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(shared.clone(), auth::guard));
    let max = shared.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max as usize));
    let open = Arc::new(Open::default());
    let (stop, stopping) = watch::channel(());
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangup.recv() => shared.config.reload(),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let permit = match permits.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        // The connection closed to make room hands its
                        // permit over when it next runs, in a moment.
                        // Waiting for it here keeps the accept loop from
                        // outrunning the closing, and the descriptors
                        // within the cap.
                        Err(_) if open.make_room() => {
                            timeout(HANDOVER, permits.clone().acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        }
                        Err(_) => None,
                    };
                    match permit {
                        Some(permit) => {
                            tokio::spawn(connection(
                                stream,
                                peer,
                                shared.clone(),
                                app.clone(),
                                open.clone(),
                                permit,
                                stopping.clone(),
                            ));
                        }
                        None => {
                            drop(stream);
                            shared.metrics.dropped(Dropped::MaxConnections);
                            refusals.note(max);
                        }
                    }
                }
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
                "HTTP connections refused: {max} open (--web.max-connections), all busy answering"
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
    open: Arc<Open>,
    _permit: OwnedSemaphorePermit,
    stopping: watch::Receiver<()>,
) {
    shared.metrics.open.inc();
    let limits = shared.limits;
    let phase = Arc::new(Phase::new(limits));
    let _listed = open.insert(&phase);
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
            // The header timeout (or making room) covers the handshake too.
            let handshake = tokio::select! {
                biased;
                why = phase.expired() => Err(why),
                handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream) => Ok(handshake),
            };
            match handshake {
                Ok(Ok(stream)) => http(stream, app, phase, drain).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    Some(Dropped::TlsHandshake)
                }
                Err(why) => Some(why),
            }
        }
    };
    if let Some(why) = dropped {
        tracing::debug!(%peer, reason = <&str>::from(why), "HTTP connection closed");
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
    let expired = phase.expired();
    tokio::pin!(expired);
    let mut draining = false;
    loop {
        tokio::select! {
            // First: a connection closed to make room must not start
            // answering a request that arrived meanwhile.
            biased;
            // Dropping the connection closes it.
            why = &mut expired => return Some(why),
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection: {e}");
                }
                return None;
            }
            () = drain.wanted(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The open connections by age, to find which to close at the cap.
#[derive(Default)]
struct Open(Mutex<(u64, BTreeMap<u64, Weak<Phase>>)>);

/// A connection's place in [`Open`], left when dropped.
struct Listed {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.open.0).1.remove(&self.id);
    }
}

impl Open {
    fn insert(self: &Arc<Self>, phase: &Arc<Phase>) -> Listed {
        let mut inner = lock(&self.0);
        let id = inner.0;
        inner.0 += 1;
        inner.1.insert(id, Arc::downgrade(phase));
        Listed {
            open: self.clone(),
            id,
        }
    }

    /// Closes the oldest connection still waiting for its request's
    /// headers or, failing that, the oldest idle kept-alive one; false
    /// when every connection is busy answering.
    fn make_room(&self) -> bool {
        let mut inner = lock(&self.0);
        for idle in [false, true] {
            let oldest = inner.1.iter().find_map(|(id, phase)| {
                let phase = phase.upgrade()?;
                phase.close_to_make_room(idle).then_some(*id)
            });
            if let Some(id) = oldest {
                inner.1.remove(&id);
                return true;
            }
        }
        false
    }
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

impl State {
    /// Waiting for a request's headers, from now.
    fn header_wait(limits: Limits) -> Self {
        Self::Waiting {
            deadline: Instant::now() + limits.header_timeout,
            why: Dropped::HeaderTimeout,
            idle: false,
        }
    }
}

impl Phase {
    /// A new connection: waiting for its first request's headers.
    fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State::header_wait(limits)),
            changed: Notify::new(),
            limits,
        }
    }

    fn set(&self, f: impl FnOnce(State) -> Option<State>) {
        let mut state = lock(&self.state);
        if let Some(next) = f(*state) {
            *state = next;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.set(|state| match state {
            State::Waiting { idle: true, .. } => Some(State::header_wait(self.limits)),
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
                State::Busy { read_ahead: true } => State::header_wait(self.limits),
                _ => State::Waiting {
                    deadline: Instant::now() + self.limits.idle_timeout,
                    why: Dropped::IdleTimeout,
                    idle: true,
                },
            })
        });
    }

    /// Closes the connection now if it waits for a request (`idle`: kept
    /// alive, no byte of the next request yet) and is not closing already.
    fn close_to_make_room(&self, idle: bool) -> bool {
        let mut closed = false;
        self.set(|state| match state {
            State::Waiting { idle: i, why, .. }
                if i == idle && !matches!(why, Dropped::MaxConnections) =>
            {
                closed = true;
                Some(State::Waiting {
                    deadline: Instant::now(),
                    why: Dropped::MaxConnections,
                    idle,
                })
            }
            _ => None,
        });
        closed
    }

    fn deadline(&self) -> Option<(Instant, Dropped)> {
        match *lock(&self.state) {
            State::Waiting { deadline, why, .. } => Some((deadline, why)),
            State::Busy { .. } => None,
        }
    }

    /// Completes when the deadline of the current phase passes, with why.
    async fn expired(&self) -> Dropped {
        loop {
            match self.deadline() {
                // At once, not at the timer's next tick: a connection
                // closed to make room is waited for by the accept loop.
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, why)) => tokio::select! {
                    () = sleep_until(at) => if self.deadline() == Some((at, why)) { return why },
                    () = self.changed.notified() => {}
                },
                None => self.changed.notified().await,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_label_in_snake_case() {
        let labels: Vec<&str> = Dropped::iter().map(<&str>::from).collect();
        assert_eq!(
            labels,
            [
                "max_connections",
                "tls_handshake",
                "header_timeout",
                "idle_timeout"
            ]
        );
    }
}
