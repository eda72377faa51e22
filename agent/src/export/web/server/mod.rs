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

mod open;
mod phase;
#[cfg(test)]
mod tests;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware,
};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep, timeout},
};
use tower::ServiceExt as _;

use self::{
    open::{Client, Listed, Open},
    phase::{Phase, Sent, Tracked},
};
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
