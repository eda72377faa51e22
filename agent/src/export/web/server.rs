//! The accept loop: a cap on open connections, TLS, HTTP/1.1 with a
//! header-read, a write and an idle keep-alive timeout, graceful shutdown.
//!
//! Slow clients cannot pile up: a connection must finish its TLS handshake
//! and send complete request headers within the header timeout of being
//! accepted; a response must go out with the client taking some of it at
//! least once per write timeout (a slow reader of a large `/findings` is
//! served as long as it reads); once it is written, a kept-alive
//! connection's next request must start within the idle timeout and then
//! finish its headers within the header timeout.
//!
//! At `max_connections`, a new connection makes room by closing the oldest
//! one that is still waiting: first those that never finished a request's
//! headers (slow or silent clients), then idle kept-alive ones. Only when
//! every connection is busy answering (a response being written included)
//! is the new one closed at once. So a flood of idle or slow connections,
//! however large, holds at most `max_connections` descriptors, and a client
//! that sends its request promptly (a scrape: within milliseconds) is still
//! served: the flood would have to open `max_connections` connections in
//! that time.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::Request,
    http::{HeaderValue, header},
    middleware,
};
use hyper::{
    body::{Frame, SizeHint},
    server::conn::http1,
    service::service_fn,
};
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
    pub write_timeout: Duration,
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
#[derive(Clone, Copy, Debug, PartialEq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Dropped {
    MaxConnections,
    TlsHandshake,
    HeaderTimeout,
    IdleTimeout,
    WriteTimeout,
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
                 (failed), header_timeout, idle_timeout, write_timeout (the client took \
                 nothing of a response for --web.write-timeout).",
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
            Some(()) = hangup.recv() => drop(shared.config.reload()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    limit_send_buffer(&stream);
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

/// What the kernel may hold of a response beyond what the client has read.
/// Left alone, it grows the send buffer of a slow reader up to tcp_wmem's
/// maximum (4 MiB by default): memory charged to the agent's cgroup (cgroup
/// v2 counts socket buffers), so 30 slow readers of a large `/findings`
/// would hold 120 MiB there. The kernel doubles it for its bookkeeping
/// (socket(7)): 256 KiB in flight, which keeps a 10 ms path at 25 MB/s.
const SEND_BUFFER: libc::c_int = 128 << 10;

fn limit_send_buffer(stream: &TcpStream) {
    let size = SEND_BUFFER;
    // SAFETY: the socket the stream owns; an int option read from the stack.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(
            "SO_SNDBUF on an HTTP connection: {}",
            io::Error::last_os_error()
        );
    }
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
        tls_changed: shared.config.subscribe(),
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

/// When a connection should stop keeping alive: the server stops, or new
/// TLS terms are in force.
struct Drain {
    stopping: watch::Receiver<()>,
    tls_changed: watch::Receiver<()>,
}

impl Drain {
    /// True when the server stops: every connection closes once its
    /// response in flight is written. False for new TLS terms: a
    /// connection closes after answering the request it has (or is about
    /// to get), never before it, so that a scrape that connected just
    /// before is not failed.
    async fn wanted(&mut self) -> bool {
        tokio::select! {
            _ = self.stopping.changed() => true,
            _ = self.tls_changed.changed() => false,
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
                let Ok(mut response) = app.oneshot(request.map(axum::body::Body::new)).await;
                if phase.writing() {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|body| Sent { body, phase }))
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
            stop = drain.wanted(), if !draining => {
                draining = true;
                if stop || phase.close_when_answered() {
                    conn.as_mut().graceful_shutdown();
                }
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
    inner: Mutex<Inner>,
    /// Woken when the deadline moves earlier or appears.
    changed: Notify,
    limits: Limits,
}

struct Inner {
    state: State,
    /// New TLS terms came while the connection waited for a request or
    /// answered one: the response says `Connection: close`.
    close_after: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// The response is being written: the client must take some of it
    /// before `deadline`, which each write moves on.
    Writing {
        deadline: Instant,
        read_ahead: bool,
        /// The body is all handed to the connection; once it is flushed
        /// the connection waits for the next request.
        body_done: bool,
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
            inner: Mutex::new(Inner {
                state: State::header_wait(limits),
                close_after: false,
            }),
            changed: Notify::new(),
            limits,
        }
    }

    fn set(&self, f: impl FnOnce(State) -> Option<State>) {
        let mut inner = lock(&self.inner);
        if let Some(next) = f(inner.state) {
            inner.state = next;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.set(|state| match state {
            State::Waiting { idle: true, .. } => Some(State::header_wait(self.limits)),
            State::Busy { read_ahead: false } => Some(State::Busy { read_ahead: true }),
            State::Writing {
                deadline,
                read_ahead: false,
                body_done,
            } => Some(State::Writing {
                deadline,
                read_ahead: true,
                body_done,
            }),
            _ => None,
        });
    }

    /// The request's headers are in.
    fn busy(&self) {
        self.set(|_| Some(State::Busy { read_ahead: false }));
    }

    /// The response is ready to be written; true when it must close the
    /// connection after it (new TLS terms came meanwhile).
    fn writing(&self) -> bool {
        let mut inner = lock(&self.inner);
        let read_ahead = matches!(inner.state, State::Busy { read_ahead: true });
        inner.state = State::Writing {
            deadline: Instant::now() + self.limits.write_timeout,
            read_ahead,
            body_done: false,
        };
        self.changed.notify_one();
        inner.close_after
    }

    /// The client took bytes of the response: its write timeout starts
    /// again. The deadline only moves later: the timer finds that out
    /// when it fires, so no wake-up per write.
    fn wrote(&self) {
        let mut inner = lock(&self.inner);
        if let State::Writing { deadline, .. } = &mut inner.state {
            *deadline = Instant::now() + self.limits.write_timeout;
        }
    }

    /// The response's body is all handed to the connection.
    fn body_done(&self) {
        let mut inner = lock(&self.inner);
        if let State::Writing { body_done, .. } = &mut inner.state {
            *body_done = true;
        }
    }

    /// Everything handed to the connection is written: after a whole
    /// response, it waits for the next request.
    fn flushed(&self) {
        self.set(|state| match state {
            State::Writing {
                body_done: true,
                read_ahead,
                ..
            } => Some(if read_ahead {
                State::header_wait(self.limits)
            } else {
                State::Waiting {
                    deadline: Instant::now() + self.limits.idle_timeout,
                    why: Dropped::IdleTimeout,
                    idle: true,
                }
            }),
            _ => None,
        });
    }

    /// New TLS terms: true when the connection is to close now (idle
    /// keep-alive) or once its response is written; otherwise (waiting for
    /// a request's headers, or answering one) the response it gives next
    /// says `Connection: close`.
    fn close_when_answered(&self) -> bool {
        let mut inner = lock(&self.inner);
        match inner.state {
            State::Waiting { idle: true, .. } | State::Writing { .. } => true,
            State::Waiting { idle: false, .. } | State::Busy { .. } => {
                inner.close_after = true;
                false
            }
        }
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
        match lock(&self.inner).state {
            State::Waiting { deadline, why, .. } => Some((deadline, why)),
            State::Writing { deadline, .. } => Some((deadline, Dropped::WriteTimeout)),
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

/// A response's body, telling the connection's phase when it is all
/// handed over (hyper drops it then, or when the connection ends).
struct Sent {
    body: axum::body::Body,
    phase: Arc<Phase>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.phase.body_done();
    }
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's byte stream, telling its phase when bytes arrive, are
/// taken by the client, and are all written.
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
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.phase.wrote();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.phase.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            self.phase.flushed();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(30),
            max_connections: 1,
        }
    }

    /// A slow reader of a large response is under the write timeout, moved
    /// on by each write, and cannot be closed to make room; the idle
    /// timeout starts once the whole response is written.
    #[test]
    fn a_response_being_written_is_neither_idle_nor_evicted() {
        let phase = Phase::new(limits());
        assert_eq!(phase.deadline().unwrap().1, Dropped::HeaderTimeout);
        phase.busy();
        assert_eq!(phase.deadline(), None);
        assert!(!phase.writing());
        let (first, why) = phase.deadline().unwrap();
        assert_eq!(why, Dropped::WriteTimeout);
        std::thread::sleep(Duration::from_millis(5));
        phase.wrote();
        assert!(
            phase.deadline().unwrap().0 > first,
            "each write moves it on"
        );
        // Flushed mid-body (hyper flushes between chunks): still writing.
        phase.flushed();
        assert!(!phase.close_to_make_room(false) && !phase.close_to_make_room(true));
        assert_eq!(phase.deadline().unwrap().1, Dropped::WriteTimeout);
        phase.body_done();
        assert_eq!(
            phase.deadline().unwrap().1,
            Dropped::WriteTimeout,
            "not flushed yet"
        );
        phase.flushed();
        assert_eq!(phase.deadline().unwrap().1, Dropped::IdleTimeout);
        assert!(phase.close_to_make_room(true), "idle now: room can be made");
        // A pipelined request's bytes during the response: its headers are
        // timed from the end of the response.
        let phase = Phase::new(limits());
        phase.busy();
        phase.writing();
        phase.read();
        phase.body_done();
        phase.flushed();
        assert_eq!(phase.deadline().unwrap().1, Dropped::HeaderTimeout);
    }

    /// New TLS terms: an idle or writing connection closes after what it
    /// is doing; one waiting for or answering a request answers it first,
    /// with `Connection: close`.
    #[test]
    fn new_tls_terms_close_a_connection_only_after_its_answer() {
        let phase = Phase::new(limits());
        assert!(!phase.close_when_answered(), "no request yet");
        phase.busy();
        assert!(phase.writing(), "its response closes the connection");
        assert!(phase.close_when_answered());
        let idle = Phase::new(limits());
        idle.busy();
        assert!(!idle.writing());
        idle.body_done();
        idle.flushed();
        assert!(idle.close_when_answered());
        let busy = Phase::new(limits());
        busy.busy();
        assert!(!busy.close_when_answered());
        assert!(busy.writing());
    }

    #[test]
    fn drop_reasons_label_in_snake_case() {
        let labels: Vec<&str> = Dropped::iter().map(<&str>::from).collect();
        assert_eq!(
            labels,
            [
                "max_connections",
                "tls_handshake",
                "header_timeout",
                "idle_timeout",
                "write_timeout"
            ]
        );
    }
}
