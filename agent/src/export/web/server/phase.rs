//! Where a connection is (waiting for a request, answering it, writing
//! the response) and so which timeout applies; the body and byte stream
//! wrappers that tell it.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::body::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::{Instant, sleep_until},
};

use super::Limits;
use crate::{export::channel::Dropped, locks::lock};

/// Where a connection is between requests, and so which timeout applies.
pub(super) struct Phase {
    inner: Mutex<Inner>,
    /// Woken when the deadline moves earlier or appears.
    changed: Notify,
    limits: Limits,
}

pub(super) struct Inner {
    state: State,
    /// New TLS terms came while the connection waited for a request or
    /// answered one: the response says `Connection: close`.
    close_after: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum State {
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
    pub(super) fn header_wait(limits: Limits) -> Self {
        Self::Waiting {
            deadline: Instant::now() + limits.header_timeout,
            why: Dropped::HeaderTimeout,
            idle: false,
        }
    }
}

impl Phase {
    /// A new connection: waiting for its first request's headers.
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: State::header_wait(limits),
                close_after: false,
            }),
            changed: Notify::new(),
            limits,
        }
    }

    pub(super) fn set(&self, f: impl FnOnce(State) -> Option<State>) {
        let mut inner = lock(&self.inner);
        if let Some(next) = f(inner.state) {
            inner.state = next;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived from the client.
    pub(super) fn read(&self) {
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
    pub(super) fn busy(&self) {
        self.set(|_| Some(State::Busy { read_ahead: false }));
    }

    /// The response is ready to be written; true when it must close the
    /// connection after it (new TLS terms came meanwhile).
    pub(super) fn writing(&self) -> bool {
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
    pub(super) fn wrote(&self) {
        let mut inner = lock(&self.inner);
        if let State::Writing { deadline, .. } = &mut inner.state {
            *deadline = Instant::now() + self.limits.write_timeout;
        }
    }

    /// The response's body is all handed to the connection.
    pub(super) fn body_done(&self) {
        let mut inner = lock(&self.inner);
        if let State::Writing { body_done, .. } = &mut inner.state {
            *body_done = true;
        }
    }

    /// Everything handed to the connection is written: after a whole
    /// response, it waits for the next request.
    pub(super) fn flushed(&self) {
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
    pub(super) fn close_when_answered(&self) -> bool {
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
    pub(super) fn close_to_make_room(&self, idle: bool, reason: Dropped) -> bool {
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

    pub(super) fn deadline(&self) -> Option<(Instant, Dropped)> {
        match lock(&self.inner).state {
            State::Waiting { deadline, why, .. } => Some((deadline, why)),
            State::Writing { deadline, .. } => Some((deadline, Dropped::WriteTimeout)),
            State::Busy { .. } => None,
        }
    }

    /// Completes when the deadline of the current phase passes, with why.
    pub(super) async fn expired(&self) -> Dropped {
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
pub(super) struct Sent {
    pub(super) body: axum::body::Body,
    pub(super) phase: Arc<Phase>,
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
pub(super) struct Tracked<S> {
    pub(super) io: S,
    pub(super) phase: Arc<Phase>,
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
