//! The collector's side of one web server's channel: it sends the server
//! its setup and the web configuration (again whenever another is put in
//! force), and answers its requests from the daemon's state.
//!
//! What the server sends is read as hostile (`export::channel`): a frame
//! that does not decode, the next chunk of a `/findings` response that is
//! not being written, a `/findings` id used twice while its response is
//! written, or counts that go down end the channel, and the supervisor ends the server. Everything the server can
//! make the collector hold is bounded: one metrics rendering at a time
//! (scrapes that come meanwhile share the next), at most
//! [`FINDINGS_IN_FLIGHT`] `/findings` responses, each its order of at most
//! `LIMIT_MAX` entries.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{UnixStream, unix::OwnedReadHalf},
    sync::mpsc,
    task::JoinHandle,
};

use super::metrics::ServerMetrics;
use crate::{
    export::{
        channel::{self, BODY_CHUNK, Reply, Request, Setup, Stats},
        state::State,
        web::reload::WebConfig,
    },
    locks::lock,
    pipeline::table::{EntryKey, Findings},
};

/// Most bytes of one `/findings` body: entries past it are left out (the
/// array stays whole). A flagged process's entry is about 600 bytes, a few
/// KiB with call sites, so this is reached only by thousands of entries
/// with long stacks.
pub const BODY_MAX: usize = 32 << 20;

/// Bytes of a `/findings` body made at a time: sent when the server asks
/// for the next, once its client has taken the one before.
const CHUNK: usize = 32 << 10;

/// `/findings` responses being written at once (the server holds itself
/// to the same bound, `web::routes::FINDINGS_IN_FLIGHT`).
pub const FINDINGS_IN_FLIGHT: usize = 32;

/// Scrapes waiting for the next rendering; more are answered with an
/// error (the server holds itself to `--web.max-requests`).
const SCRAPES_WAITING: usize = 4096;

/// How a channel ended.
#[derive(Debug)]
pub enum Ended {
    /// The server closed it: it exited, or is exiting.
    Closed,
    /// It sent what the format does not allow.
    Malformed(String),
    /// Writing to it failed.
    Io(io::Error),
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Io(e)
    }
}

/// What answering needs, shared by every server the collector starts.
pub struct Answerer {
    pub state: State,
    pub config: Arc<WebConfig>,
    pub metrics: ServerMetrics,
    pub setup: Setup,
}

/// A `/findings` response being written: its entries in order, and how far.
struct Cursor {
    order: Vec<EntryKey>,
    /// The first entry of `order` not written yet.
    next: usize,
    /// No entry written yet (no comma before the next).
    first: bool,
    /// Bytes made so far.
    sent: usize,
}

impl Cursor {
    fn new(order: Vec<EntryKey>) -> Self {
        Self {
            order,
            next: 0,
            first: true,
            sent: 0,
        }
    }

    /// The next chunk of the JSON array, and whether it is the last: the
    /// entries of `order` that still exist, each as it stands now.
    fn chunk(&mut self, table: &Mutex<Findings>, body_max: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 4);
        if self.sent == 0 {
            out.push(b'[');
        }
        // Room for the closing bracket.
        let most = body_max - self.sent - 1;
        let (used, full) = lock(table).write(
            &self.order[self.next..],
            &mut out,
            &mut self.first,
            (CHUNK, most),
        );
        self.next += used;
        let last = full || self.next == self.order.len();
        if last {
            out.push(b']');
        }
        self.sent += out.len();
        (out, last)
    }
}

/// Ends a task when dropped.
struct Aborting<T>(JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads and decodes requests until the server closes the channel or
/// sends something that is not one.
async fn read_requests(mut rd: OwnedReadHalf, requests: mpsc::Sender<Result<Request, Ended>>) {
    loop {
        let request = match channel::read_frame(&mut rd, channel::MAX_REQUEST).await {
            Ok(Some(body)) => Request::decode(&body).map_err(|e| Ended::Malformed(e.0)),
            Ok(None) => Err(Ended::Closed),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(Ended::Malformed(e.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(Ended::Malformed("the channel closed inside a frame".into()))
            }
            Err(e) => Err(Ended::Io(e)),
        };
        let end = request.is_err();
        if requests.send(request).await.is_err() || end {
            return;
        }
    }
}

/// One server's channel: what it was sent, what it is owed.
struct Session<'a> {
    answerer: &'a Answerer,
    wr: tokio::net::unix::OwnedWriteHalf,
    /// The generation of the web configuration it has.
    generation: u64,
    /// Its counts as last reported.
    last: Stats,
    cursors: HashMap<u32, Cursor>,
    /// Scrapes waiting for the next rendering.
    waiting: Vec<u32>,
}

impl Session<'_> {
    async fn send(&mut self, reply: &Reply) -> Result<(), Ended> {
        Ok(self.wr.write_all(&reply.encode()).await?)
    }

    /// Sends the web configuration in force if the server has another.
    async fn terms(&mut self) -> Result<(), Ended> {
        let (generation, active) = self.answerer.config.current();
        if generation != self.generation {
            self.generation = generation;
            self.send(&Reply::Terms(Box::new(active.terms()))).await?;
        }
        Ok(())
    }

    /// Takes the server's counts: they only grow, and no more connections
    /// are open or scrapes answered than it may have.
    fn stats(&mut self, now: Stats) -> Result<(), Ended> {
        let last = &self.last;
        let max = self.answerer.setup.max_connections;
        let grew = last.dropped.iter().zip(&now.dropped).all(|(a, b)| a <= b)
            && last.scrapes.iter().zip(&now.scrapes).all(|(a, b)| a <= b);
        if !grew || now.open > max || now.scrapes_in_flight > max {
            return Err(Ended::Malformed(format!(
                "counts that cannot be: {now:?} after {last:?}"
            )));
        }
        self.answerer.metrics.update(last, &now);
        self.last = now;
        Ok(())
    }

    /// One body frame: its header, then `bytes` as they are (a large body
    /// is not copied into a frame first).
    async fn chunk(&mut self, id: u32, last: bool, bytes: &[u8]) -> Result<(), Ended> {
        let header = channel::body_header(id, last, bytes.len());
        self.wr.write_all(&header).await?;
        Ok(self.wr.write_all(bytes).await?)
    }

    /// A whole body, in frames of at most [`BODY_CHUNK`].
    async fn body(&mut self, id: u32, text: &[u8]) -> Result<(), Ended> {
        let mut chunks = text.chunks(BODY_CHUNK).peekable();
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let last = chunks.peek().is_none();
            self.chunk(id, last, chunk).await?;
            if last {
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, request: Request) -> Result<(), Ended> {
        // Every new request looks at the web configuration's files first,
        // and sends a new configuration ahead of its answer: the server
        // answers each request under the files as they stand after it came
        // (`web::auth::guard`), for the price of the round trip it takes
        // anyway.
        if matches!(
            request,
            Request::CheckConfig { .. }
                | Request::Health { .. }
                | Request::Metrics { .. }
                | Request::Findings { .. }
        ) {
            self.terms().await?;
        }
        match request {
            Request::CheckConfig { id } => self.send(&Reply::Done { id }).await,
            Request::Health { id } => self.body(id, b"ok\n").await,
            Request::Metrics { id, stats } => {
                self.stats(stats)?;
                if self.waiting.len() >= SCRAPES_WAITING {
                    let message = format!("{SCRAPES_WAITING} scrapes are waiting already");
                    return self.send(&Reply::Failed { id, message }).await;
                }
                self.waiting.push(id);
                Ok(())
            }
            Request::Findings { id, filter, limit } => {
                if self.cursors.contains_key(&id) {
                    return Err(Ended::Malformed(format!(
                        "/findings response {id} asked for twice"
                    )));
                }
                if self.cursors.len() >= FINDINGS_IN_FLIGHT {
                    return self.send(&Reply::Busy { id }).await;
                }
                let table = self.answerer.state.findings();
                let now = (Instant::now(), SystemTime::now());
                let order = lock(&table).order(now, &filter, limit as usize);
                let mut cursor = Cursor::new(order);
                let (bytes, last) = cursor.chunk(&table, BODY_MAX);
                if !last {
                    self.cursors.insert(id, cursor);
                }
                self.chunk(id, last, &bytes).await
            }
            Request::FindingsNext { id } => {
                let Some(cursor) = self.cursors.get_mut(&id) else {
                    return Err(Ended::Malformed(format!(
                        "the next chunk of /findings response {id}, which is not being written"
                    )));
                };
                let (bytes, last) = cursor.chunk(&self.answerer.state.findings(), BODY_MAX);
                if last {
                    self.cursors.remove(&id);
                }
                self.chunk(id, last, &bytes).await
            }
            // Unknown ids too: the end may cross the last chunk.
            Request::FindingsCancel { id } => {
                self.cursors.remove(&id);
                Ok(())
            }
            Request::Stats(stats) => self.stats(stats),
        }
    }
}

impl Answerer {
    /// Answers one server until the channel ends; why it ended.
    pub async fn answer(&self, stream: UnixStream) -> Ended {
        let (rd, wr) = stream.into_split();
        let (requests_tx, mut requests) = mpsc::channel(16);
        let _reader = Aborting(tokio::spawn(read_requests(rd, requests_tx)));
        let mut applied = self.config.subscribe();
        let (generation, active) = self.config.current();
        let mut session = Session {
            answerer: self,
            wr,
            generation,
            last: Stats::default(),
            cursors: HashMap::new(),
            waiting: Vec::new(),
        };
        let start = async {
            session.send(&Reply::Setup(self.setup.clone())).await?;
            session.send(&Reply::Terms(Box::new(active.terms()))).await
        };
        if let Err(ended) = start.await {
            return ended;
        }
        // The rendering under way, and the scrapes it is for.
        let mut rendering: Option<(Aborting<String>, Vec<u32>)> = None;
        let ended = loop {
            if rendering.is_none() && !session.waiting.is_empty() {
                let state = self.state.clone();
                let task = tokio::task::spawn_blocking(move || state.render_metrics());
                rendering = Some((Aborting(task), std::mem::take(&mut session.waiting)));
            }
            let rendered = async {
                match &mut rendering {
                    Some((task, _)) => (&mut task.0).await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                request = requests.recv() => match request {
                    Some(Ok(request)) => session.handle(request).await,
                    Some(Err(ended)) => Err(ended),
                    None => Err(Ended::Closed),
                },
                _ = applied.changed() => session.terms().await,
                text = rendered => {
                    let (_, ids) = rendering.take().expect("a rendering");
                    let text = text.unwrap_or_else(|e| format!("# rendering metrics: {e}\n"));
                    let mut sent = Ok(());
                    for id in ids {
                        sent = session.body(id, text.as_bytes()).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    sent
                }
            };
            if let Err(ended) = result {
                break ended;
            }
        };
        self.metrics.gone();
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sockerr_common::FindingKind;

    use super::*;
    use crate::pipeline::report::tests::finding;
    use crate::pipeline::table::Filter;

    fn table(n: u32) -> Arc<Mutex<Findings>> {
        let mut t = Findings::new(100_000, Duration::from_secs(60));
        let tally = crate::pipeline::table::TallyRead {
            since_ns: 1,
            total: 1,
        };
        for pid in 1..=n {
            t.record(
                finding(pid, FindingKind::SoErrorReread, pid.into()),
                7,
                tally,
                Instant::now(),
            );
        }
        Arc::new(Mutex::new(t))
    }

    /// The whole body, chunk by chunk, with `body_max`.
    fn body(table: &Arc<Mutex<Findings>>, limit: usize, body_max: usize) -> (Vec<u8>, usize) {
        let now = (Instant::now(), SystemTime::now());
        let order = lock(table).order(now, &Filter::default(), limit);
        let mut cursor = Cursor::new(order);
        let (mut all, mut chunks) = (Vec::new(), 0);
        loop {
            let (chunk, last) = cursor.chunk(table, body_max);
            assert!(chunk.len() <= CHUNK + CHUNK / 4, "{} bytes", chunk.len());
            assert!(chunk.len() <= channel::BODY_CHUNK);
            all.extend_from_slice(&chunk);
            chunks += 1;
            if last {
                return (all, chunks);
            }
        }
    }

    #[test]
    fn findings_are_one_json_array_made_a_chunk_at_a_time() {
        let t = table(2000);
        let (all, chunks) = body(&t, channel::LIMIT_MAX as usize, BODY_MAX);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed.len(), 2000);
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(parsed[0]["pid"], 2000, "newest first");
        let (all, _) = body(&t, 3, BODY_MAX);
        assert_eq!(
            serde_json::from_slice::<Vec<serde_json::Value>>(&all)
                .unwrap()
                .len(),
            3
        );
        // Nothing flagged: an empty array.
        assert_eq!(
            body(&table(0), channel::LIMIT_MAX as usize, BODY_MAX).0,
            b"[]"
        );
    }

    #[test]
    fn a_body_past_its_bound_leaves_entries_out_whole() {
        let t = table(2000);
        let body_max = 100_000;
        let (all, _) = body(&t, channel::LIMIT_MAX as usize, body_max);
        assert!(all.len() <= body_max, "{} bytes", all.len());
        assert!(all.len() > body_max - 1000, "{} bytes", all.len());
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&all).unwrap();
        assert!(parsed.len() < 2000 && parsed[0]["pid"] == 2000);
    }
}
