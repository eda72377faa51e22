//! The web server's side of the channel (`export::channel`): what it asks
//! the collector, the web configuration the collector sends it, and the
//! counts it reports.
//!
//! One task reads the collector's frames and hands each answer to the
//! request it is for (by id); one writes requests in the order they are
//! made. A request whose client went away leaves its answer unread: the
//! reader drops it.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use axum::{body::Bytes, http::HeaderMap};
use hyper::body::Frame;
use tokio::{
    io::AsyncWriteExt as _,
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{Notify, OwnedSemaphorePermit, mpsc, watch},
};

use super::tls;
use crate::{
    export::channel::{self, Dropped, Reply, Request, Setup, Stats, Terms},
    locks::lock,
    pipeline::table::Filter,
};

/// At most this often the server's counts are sent by themselves (each
/// scrape sends them too): a server killed loses at most this much of them.
const STATS_EVERY: Duration = Duration::from_millis(100);

/// The web configuration in force in the server.
pub struct Served {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    terms: Terms,
}

impl Served {
    fn new(terms: Terms) -> Result<Self> {
        let tls = terms
            .tls
            .as_ref()
            .map(|(tls, pem)| tls::server_config(tls, pem))
            .transpose()?;
        Ok(Self { tls, terms })
    }

    pub fn users(&self) -> &BTreeMap<String, String> {
        &self.terms.users
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.terms.headers
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Unanswered {
    /// The collector is answering as many `/findings` as it takes.
    Busy,
    /// It said why.
    Failed(String),
    /// The channel is closed: the collector stops, or ended this server.
    Closed,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::Busy => f.write_str("busy"),
            Unanswered::Failed(why) => f.write_str(why),
            Unanswered::Closed => f.write_str("the collector is gone"),
        }
    }
}

pub struct Collector {
    /// Frames to write, in order.
    out: mpsc::UnboundedSender<Vec<u8>>,
    /// Requests waiting for answers, by id: the request's place in the
    /// order they were made, and where its answers go.
    pending: Mutex<HashMap<u32, (u64, mpsc::UnboundedSender<Reply>)>>,
    /// The place of the next request.
    next: AtomicU64,
    /// The latest place of a request answered: the collector looked at the
    /// web configuration's files when it read that request, and every one
    /// before (it reads them in order).
    checked: AtomicU64,
    served: watch::Sender<Arc<Served>>,
    tls_changed: watch::Sender<()>,
    stats: Mutex<Stats>,
    stats_changed: Notify,
    closed: watch::Sender<bool>,
}

async fn read(rd: &mut OwnedReadHalf) -> Result<Reply> {
    let body = channel::read_frame(rd, channel::MAX_REPLY)
        .await?
        .ok_or_else(|| anyhow!("the collector closed the channel"))?;
    Ok(Reply::decode(&Bytes::from(body))?)
}

impl Collector {
    /// Takes the channel: reads what the server runs with and the web
    /// configuration, then starts reading and writing.
    pub async fn connect(stream: UnixStream) -> Result<(Arc<Self>, Setup)> {
        let (mut rd, wr) = stream.into_split();
        let Reply::Setup(setup) = read(&mut rd).await.context("the setup")? else {
            bail!("the collector sent no setup first");
        };
        let Reply::Terms(terms) = read(&mut rd).await.context("the web configuration")? else {
            bail!("the collector sent no web configuration second");
        };
        let served = Served::new(*terms).context("the web configuration")?;
        let (out, frames) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            out,
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            checked: AtomicU64::new(0),
            served: watch::Sender::new(Arc::new(served)),
            tls_changed: watch::Sender::new(()),
            stats: Mutex::default(),
            stats_changed: Notify::new(),
            closed: watch::Sender::new(false),
        });
        tokio::spawn(this.clone().write(wr, frames));
        tokio::spawn(this.clone().read(rd));
        tokio::spawn(this.clone().push_stats());
        Ok((this, setup))
    }

    async fn write(
        self: Arc<Self>,
        mut wr: OwnedWriteHalf,
        mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        while let Some(frame) = frames.recv().await {
            if let Err(e) = wr.write_all(&frame).await {
                tracing::error!("writing to the collector: {e}");
                break;
            }
        }
        self.close();
    }

    async fn read(self: Arc<Self>, mut rd: OwnedReadHalf) {
        loop {
            let body = match channel::read_frame(&mut rd, channel::MAX_REPLY).await {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading from the collector: {e}");
                    break;
                }
            };
            match Reply::decode(&Bytes::from(body)) {
                Ok(reply) => self.receive(reply),
                Err(e) => {
                    tracing::error!("the collector sent a malformed frame: {e}");
                    break;
                }
            }
        }
        self.close();
    }

    fn receive(&self, reply: Reply) {
        let id = match reply {
            Reply::Terms(terms) => return self.apply(*terms),
            Reply::Setup(_) => {
                tracing::error!("the collector sent a second setup; ignored");
                return;
            }
            Reply::Done { id }
            | Reply::Body { id, .. }
            | Reply::Busy { id }
            | Reply::Failed { id, .. } => id,
        };
        // None: the request was given up (its client went away).
        if let Some((place, waiting)) = lock(&self.pending).get(&id) {
            self.checked.fetch_max(*place, Ordering::Relaxed);
            let _ = waiting.send(reply);
        }
    }

    /// Puts a web configuration in force; new TLS terms close kept-alive
    /// connections (`server::Drain`).
    fn apply(&self, terms: Terms) {
        match Served::new(terms) {
            Ok(served) => {
                let new_tls = served.terms.tls != self.served.borrow().terms.tls;
                self.served.send_replace(Arc::new(served));
                if new_tls {
                    self.tls_changed.send_replace(());
                }
            }
            Err(e) => tracing::error!(
                "the web configuration the collector sent: {e:#}; keeping the previous one"
            ),
        }
    }

    fn close(&self) {
        self.closed.send_replace(true);
        // Every request waiting gets its end.
        lock(&self.pending).clear();
    }

    /// Completes when the channel is closed: the collector stops (or ended
    /// this server), and the server with it.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    /// Sends the counts whenever they change, at most every [`STATS_EVERY`].
    async fn push_stats(self: Arc<Self>) {
        let mut closed = self.closed.subscribe();
        loop {
            tokio::select! {
                () = self.stats_changed.notified() => {}
                _ = closed.wait_for(|c| *c) => return,
            }
            {
                // Taken and queued under the lock: frames go out in the
                // order their counts were taken, so they only grow.
                let stats = lock(&self.stats);
                let _ = self.out.send(Request::Stats(*stats).encode());
            }
            tokio::time::sleep(STATS_EVERY).await;
        }
    }

    /// Changes the counts.
    pub fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
        self.stats_changed.notify_one();
    }

    pub fn dropped(&self, why: Dropped) {
        self.count(|s| s.dropped[why as usize] += 1);
    }

    fn ask(self: &Arc<Self>, request: impl FnOnce(u32) -> Request) -> Asked {
        let place = self.next.fetch_add(1, Ordering::Relaxed);
        // Unique among the requests waiting (4 billion apart).
        let id = place as u32;
        let (tx, answers) = mpsc::unbounded_channel();
        lock(&self.pending).insert(id, (place, tx));
        if *self.closed.borrow() {
            lock(&self.pending).remove(&id);
        }
        let _ = self.out.send(request(id).encode());
        Asked {
            collector: self.clone(),
            id,
            answers,
            findings_open: false,
        }
    }

    /// Where the requests made from now on start: see [`Self::checked_since`].
    pub fn mark(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Whether the collector has looked at the web configuration's files
    /// for a request made since `mark`, and the server has what it found.
    pub fn checked_since(&self, mark: u64) -> bool {
        self.checked.load(Ordering::Relaxed) >= mark
    }

    /// The web configuration in force, once the collector has looked at
    /// its files (they may have changed since it last did).
    pub async fn current(self: &Arc<Self>) -> Arc<Served> {
        let mut asked = self.ask(|id| Request::CheckConfig { id });
        // Done (after the new terms, if any), or the channel's end.
        let _ = asked.answers.recv().await;
        self.served.borrow().clone()
    }

    /// The web configuration in force, as last sent (its files may have
    /// changed since).
    pub fn served(&self) -> Arc<Served> {
        self.served.borrow().clone()
    }

    /// Completes its `changed()` when new TLS terms are put in force.
    pub fn subscribe_tls(&self) -> watch::Receiver<()> {
        self.tls_changed.subscribe()
    }

    /// Whether the collector answers.
    pub async fn health(self: &Arc<Self>) -> bool {
        let mut asked = self.ask(|id| Request::Health { id });
        matches!(
            asked.answers.recv().await,
            Some(Reply::Body { last: true, .. })
        )
    }

    /// The exposition, the server's counts as of now included.
    pub async fn metrics(self: &Arc<Self>) -> Result<Bytes, Unanswered> {
        let mut asked = {
            let stats = lock(&self.stats);
            self.ask(|id| Request::Metrics { id, stats: *stats })
        };
        let mut text = Vec::new();
        loop {
            match asked.answers.recv().await {
                // All in one chunk (up to 1 MiB): as it was read.
                Some(Reply::Body {
                    last: true, bytes, ..
                }) if text.is_empty() => return Ok(bytes),
                Some(Reply::Body { last, bytes, .. }) => {
                    text.extend_from_slice(&bytes);
                    if last {
                        return Ok(Bytes::from(text));
                    }
                }
                Some(Reply::Failed { message, .. }) => return Err(Unanswered::Failed(message)),
                Some(_) => return Err(Unanswered::Failed("an unexpected answer".into())),
                None => return Err(Unanswered::Closed),
            }
        }
    }

    /// A `/findings` response, from its first chunk on.
    pub async fn findings(
        self: &Arc<Self>,
        filter: Filter,
        limit: u32,
        permit: OwnedSemaphorePermit,
    ) -> Result<FindingsBody, Unanswered> {
        let mut asked = self.ask(|id| Request::Findings { id, filter, limit });
        // From here on: a handler dropped while it waits (the client went
        // away) gives the response's place back too.
        asked.findings_open = true;
        let first = asked.answers.recv().await;
        asked.findings_open = matches!(first, Some(Reply::Body { last: false, .. }));
        match first {
            Some(Reply::Body { last, bytes, .. }) => Ok(FindingsBody {
                asked,
                first: Some(bytes),
                done: last,
                waiting: false,
                _permit: permit,
            }),
            Some(Reply::Busy { .. }) => Err(Unanswered::Busy),
            Some(Reply::Failed { message, .. }) => Err(Unanswered::Failed(message)),
            Some(_) => Err(Unanswered::Failed("an unexpected answer".into())),
            None => Err(Unanswered::Closed),
        }
    }
}

/// A request and its answers; given up when dropped.
struct Asked {
    collector: Arc<Collector>,
    id: u32,
    answers: mpsc::UnboundedReceiver<Reply>,
    /// A `/findings` response the collector may still hold a place for:
    /// cancelled when dropped, whenever that is (before its first chunk
    /// came included), so no place is kept by a client that went away.
    findings_open: bool,
}

impl Drop for Asked {
    fn drop(&mut self) {
        lock(&self.collector.pending).remove(&self.id);
        if self.findings_open {
            let id = self.id;
            let _ = self
                .collector
                .out
                .send(Request::FindingsCancel { id }.encode());
        }
    }
}

/// A `/findings` body: each chunk asked for once the client has taken the
/// one before, so a response costs the server a chunk at a time however
/// slowly it is read.
pub struct FindingsBody {
    asked: Asked,
    first: Option<Bytes>,
    /// The last chunk was received.
    done: bool,
    /// The next chunk was asked for.
    waiting: bool,
    /// A place among `routes::FINDINGS_IN_FLIGHT` until dropped.
    _permit: OwnedSemaphorePermit,
}

impl hyper::body::Body for FindingsBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.waiting {
            let id = this.asked.id;
            let _ = this
                .asked
                .collector
                .out
                .send(Request::FindingsNext { id }.encode());
            this.waiting = true;
        }
        let reply = ready!(this.asked.answers.poll_recv(cx));
        this.waiting = false;
        match reply {
            Some(Reply::Body { last, bytes, .. }) => {
                this.done = last;
                this.asked.findings_open = !last;
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            _ => {
                // The rest cannot come: the client gets a cut response.
                this.done = true;
                this.asked.findings_open = false;
                Poll::Ready(Some(Err(io::Error::other(
                    "the collector ended the /findings response",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{net::UnixStream, sync::Semaphore};

    use super::*;

    /// The collector's end: sends the setup and an empty configuration,
    /// then gives the requests the server writes.
    async fn collector_end() -> (Arc<Collector>, OwnedReadHalf, OwnedWriteHalf) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (rd, mut wr) = ours.into_split();
        let setup = Setup {
            telemetry_path: "/metrics".into(),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_connections_per_client: 0,
            max_requests: 0,
        };
        wr.write_all(&Reply::Setup(setup).encode()).await.unwrap();
        wr.write_all(&Reply::Terms(Box::default()).encode())
            .await
            .unwrap();
        let (collector, _) = Collector::connect(theirs).await.unwrap();
        (collector, rd, wr)
    }

    /// The next request the server sent, its counts aside.
    async fn next_request(rd: &mut OwnedReadHalf) -> Request {
        loop {
            let body = channel::read_frame(rd, channel::MAX_REQUEST)
                .await
                .unwrap()
                .expect("a request");
            match Request::decode(&body).unwrap() {
                Request::Stats(_) => {}
                request => return request,
            }
        }
    }

    /// A client that goes away before the first chunk of its `/findings`
    /// came: the collector is told, so the place it may keep for the
    /// response is given back (32 such clients took every place).
    #[tokio::test]
    async fn a_findings_request_given_up_before_its_first_chunk_is_cancelled() {
        let (collector, mut rd, _wr) = collector_end().await;
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let asking = tokio::spawn({
            let collector = collector.clone();
            async move { collector.findings(Filter::default(), 10, permit).await }
        });
        let Request::Findings { id, .. } = next_request(&mut rd).await else {
            panic!("no /findings request");
        };
        asking.abort();
        // Bounded only so that a missing cancel fails instead of hanging.
        let next = tokio::time::timeout(Duration::from_secs(60), next_request(&mut rd))
            .await
            .expect("a cancel, not silence");
        assert_eq!(next, Request::FindingsCancel { id });
    }
}
