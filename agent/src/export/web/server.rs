//! The accept loop: caps on open connections (in all, and per client),
//! TLS, HTTP/1.1 with a header-read, a write and an idle keep-alive
//! timeout, graceful shutdown.
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
//! that time. The same rule holds within each client's share
//! (`max_connections_per_client`, a client being an IPv4 address or an
//! IPv6 /64): a client at its share makes room among its own connections,
//! or its new one is closed, so one client cannot take every place.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
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
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep, sleep_until, timeout},
};
use tower::ServiceExt as _;

use super::{Shared, auth, collector::Served};
use crate::{export::channel::Dropped, locks::lock};

#[derive(Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: u32,
    /// 0: no limit.
    pub max_connections_per_client: u32,
}

/// Request headers (and unread request bytes) a connection may buffer.
/// Prometheus sends a few hundred bytes; hyper's default is ~400 KiB,
/// which a thousand slow clients would turn into ~400 MiB.
const MAX_BUF: usize = 16 * 1024;

/// How long a new connection may wait for the one closed to make room for
/// it to end (it ends as soon as it runs).
const HANDOVER: Duration = Duration::from_secs(1);

/// After the collector closes the channel (it stops): how long responses
/// in flight may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Who a connection's limit is counted against: an IPv4 address, or the
/// /64 of an IPv6 one (a host is given a /64, not an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    V6(u64),
}

impl Client {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Client::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.into()),
                None => Client::V6((u128::from(v6) >> 64) as u64),
            },
        }
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
    let limits = shared.limits;
    let max = limits.max_connections;
    let permits = Arc::new(Semaphore::new(max as usize));
    let open = Arc::new(Open::default());
    let (stop, stopping) = watch::channel(());
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    limit_send_buffer(&stream);
                    let client = Client::of(peer.ip());
                    // At its share, a client makes room among its own
                    // connections; the one closed then gives its permit.
                    let per_client = limits.max_connections_per_client;
                    let made_room = if per_client > 0 && open.count(client) >= per_client {
                        if !open.make_room(Some(client)) {
                            drop(stream);
                            shared.collector.dropped(Dropped::MaxConnectionsPerClient);
                            refusals.note(&peer, "--web.max-connections-per-client", per_client);
                            continue;
                        }
                        true
                    } else {
                        false
                    };
                    let permit = match permits.clone().try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        // The connection closed to make room hands its
                        // permit over when it next runs, in a moment.
                        // Waiting for it here keeps the accept loop from
                        // outrunning the closing, and the descriptors
                        // within the cap.
                        Err(_) if made_room || open.make_room(None) => {
                            timeout(HANDOVER, permits.clone().acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        }
                        Err(_) => None,
                    };
                    match permit {
                        Some(permit) => {
                            let phase = Arc::new(Phase::new(limits));
                            let listed = open.insert(&phase, client);
                            tokio::spawn(connection(
                                stream,
                                peer,
                                shared.clone(),
                                app.clone(),
                                phase,
                                (listed, permit),
                                stopping.clone(),
                            ));
                        }
                        None => {
                            drop(stream);
                            shared.collector.dropped(Dropped::MaxConnections);
                            refusals.note(&peer, "--web.max-connections", max);
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
    fn note(&mut self, peer: &SocketAddr, flag: &str, max: u32) {
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.since_log,
                last = %peer.ip(),
                "HTTP connections refused: {max} open ({flag}), all busy answering"
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
    phase: Arc<Phase>,
    _held: (Listed, OwnedSemaphorePermit),
    stopping: watch::Receiver<()>,
) {
    let collector = shared.collector.clone();
    collector.count(|s| s.open += 1);
    // A TLS connection's handshake is made under the configuration in
    // force, its files looked at now (a new certificate applies from the
    // next connection on); its first request is authenticated under the
    // same, looked at a moment ago. A plain one has no handshake (no
    // reload can turn TLS on): its requests look on their own. In this
    // order, so that a reload this very call makes does not close the
    // connection it is for.
    let fresh = match collector.served().tls {
        Some(_) => Some(collector.current().await),
        None => None,
    };
    let tls = fresh.as_ref().and_then(|served| served.tls.clone());
    let drain = Drain {
        stopping,
        tls_changed: collector.subscribe_tls(),
    };
    let dropped = match tls {
        None => http(stream, app, phase, drain, fresh).await,
        Some(tls) => {
            // The header timeout (or making room) covers the handshake too.
            let handshake = tokio::select! {
                biased;
                why = phase.expired() => Err(why),
                handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream) => Ok(handshake),
            };
            match handshake {
                Ok(Ok(stream)) => http(stream, app, phase, drain, fresh).await,
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
        collector.dropped(why);
    }
    collector.count(|s| s.open -= 1);
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
async fn http<S>(
    io: S,
    app: Router,
    phase: Arc<Phase>,
    mut drain: Drain,
    fresh: Option<Arc<Served>>,
) -> Option<Dropped>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let phase = phase.clone();
        let fresh = Mutex::new(fresh.map(auth::Fresh));
        service_fn(move |request: Request<hyper::body::Incoming>| {
            phase.busy();
            let (phase, app) = (phase.clone(), app.clone());
            let mut request = request.map(axum::body::Body::new);
            if let Some(fresh) = lock(&fresh).take() {
                request.extensions_mut().insert(fresh);
            }
            async move {
                let Ok(mut response) = app.oneshot(request).await;
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

/// The open connections by age (to find which to close at a cap), and how
/// many each client has.
#[derive(Default)]
struct Open(Mutex<Connections>);

#[derive(Default)]
struct Connections {
    next: u64,
    by_age: BTreeMap<u64, (Weak<Phase>, Client)>,
    by_client: HashMap<Client, u32>,
}

impl Connections {
    fn remove(&mut self, id: u64) {
        if let Some((_, client)) = self.by_age.remove(&id)
            && let Some(n) = self.by_client.get_mut(&client)
        {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&client);
            }
        }
    }
}

/// A connection's place in [`Open`], left when dropped.
struct Listed {
    open: Arc<Open>,
    id: u64,
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.open.0).remove(self.id);
    }
}

impl Open {
    fn insert(self: &Arc<Self>, phase: &Arc<Phase>, client: Client) -> Listed {
        let mut inner = lock(&self.0);
        let id = inner.next;
        inner.next += 1;
        inner.by_age.insert(id, (Arc::downgrade(phase), client));
        *inner.by_client.entry(client).or_default() += 1;
        Listed {
            open: self.clone(),
            id,
        }
    }

    /// Open connections of `client`.
    fn count(&self, client: Client) -> u32 {
        lock(&self.0).by_client.get(&client).copied().unwrap_or(0)
    }

    /// Closes the oldest connection (of `client` only, if given) still
    /// waiting for its request's headers or, failing that, the oldest idle
    /// kept-alive one; false when every such connection is busy answering.
    fn make_room(&self, client: Option<Client>) -> bool {
        let mut inner = lock(&self.0);
        for idle in [false, true] {
            let oldest = inner.by_age.iter().find_map(|(id, (phase, of))| {
                if client.is_some_and(|c| c != *of) {
                    return None;
                }
                let phase = phase.upgrade()?;
                let why = match client {
                    Some(_) => Dropped::MaxConnectionsPerClient,
                    None => Dropped::MaxConnections,
                };
                phase.close_to_make_room(idle, why).then_some(*id)
            });
            if let Some(id) = oldest {
                inner.remove(id);
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
    fn close_to_make_room(&self, idle: bool, reason: Dropped) -> bool {
        let mut closed = false;
        self.set(|state| match state {
            State::Waiting { idle: i, why, .. }
                if i == idle
                    && !matches!(
                        why,
                        Dropped::MaxConnections | Dropped::MaxConnectionsPerClient
                    ) =>
            {
                closed = true;
                Some(State::Waiting {
                    deadline: Instant::now(),
                    why: reason,
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
            max_connections_per_client: 0,
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
        let at_cap = Dropped::MaxConnections;
        assert!(
            !phase.close_to_make_room(false, at_cap) && !phase.close_to_make_room(true, at_cap)
        );
        assert_eq!(phase.deadline().unwrap().1, Dropped::WriteTimeout);
        phase.body_done();
        assert_eq!(
            phase.deadline().unwrap().1,
            Dropped::WriteTimeout,
            "not flushed yet"
        );
        phase.flushed();
        assert_eq!(phase.deadline().unwrap().1, Dropped::IdleTimeout);
        assert!(
            phase.close_to_make_room(true, at_cap),
            "idle now: room can be made"
        );
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

    /// At a client's share, room is made among that client's waiting
    /// connections only, oldest first, and a client's connections are
    /// counted until they end; an IPv6 client is its /64.
    #[test]
    fn a_client_makes_room_among_its_own_connections() {
        let open = Arc::new(Open::default());
        let (a, b) = (
            Client::of("10.0.0.1".parse().unwrap()),
            Client::of("::ffff:10.0.0.2".parse().unwrap()),
        );
        assert_eq!(b, Client::of("10.0.0.2".parse().unwrap()));
        assert_eq!(
            Client::of("2001:db8::1".parse().unwrap()),
            Client::of("2001:db8::ffff:1".parse().unwrap())
        );
        assert_ne!(
            Client::of("2001:db8::1".parse().unwrap()),
            Client::of("2001:db8:0:1::1".parse().unwrap())
        );
        let phases: Vec<(Arc<Phase>, Client)> = [b, a, a, b]
            .into_iter()
            .map(|c| (Arc::new(Phase::new(limits())), c))
            .collect();
        let listed: Vec<Listed> = phases.iter().map(|(p, c)| open.insert(p, *c)).collect();
        assert_eq!((open.count(a), open.count(b)), (2, 2));
        // a's oldest (the second connection) is closed, for a.
        phases[1].0.busy();
        assert!(open.make_room(Some(a)));
        assert_eq!(phases[1].0.deadline(), None, "busy: not closed");
        assert_eq!(
            phases[2].0.deadline().map(|d| d.1),
            Some(Dropped::MaxConnectionsPerClient)
        );
        assert_eq!((open.count(a), open.count(b)), (1, 2));
        assert!(!open.make_room(Some(a)), "a's other one is busy");
        // At the global cap: anyone's oldest waiting, b's first.
        assert!(open.make_room(None));
        assert_eq!(
            phases[0].0.deadline().map(|d| d.1),
            Some(Dropped::MaxConnections)
        );
        drop(listed);
        assert_eq!((open.count(a), open.count(b)), (0, 0));
        assert!(lock(&open.0).by_client.is_empty());
    }
}
