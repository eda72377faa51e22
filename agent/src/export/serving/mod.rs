//! The daemon's state in; a web server (another process, unprivileged)
//! answered over a channel out.
//!
//! The collector (`sockerr run`, which holds the kernel side, the
//! findings and the counts) starts the web server ([`spawn`]) with the
//! listen socket it bound and one end of a socket pair, answers what the
//! server asks ([`answer`]) and keeps the server's counts ([`metrics`]).
//! It starts another when one dies: at once the first time, then after
//! a delay that doubles (up to [`BACKOFF_MAX`]) while servers keep dying
//! within [`STEADY`] of starting. Connections made meanwhile wait in the
//! listen socket's backlog. The counts are the collector's: a server's
//! death loses no finding and no kernel count, only the connections it
//! held and at most its last 100 ms of HTTP counts. SIGHUP (the web configuration read again) is taken here.

pub mod answer;
pub mod metrics;
pub mod spawn;

use std::{
    convert::Infallible,
    os::{fd::AsFd as _, unix::process::ExitStatusExt as _},
    process::ExitStatus,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::Signal;

use self::{
    answer::{Answerer, Ended},
    metrics::Restart,
    spawn::Server,
};
use crate::{export::web::Listener, privileges::ServerUser};

/// A server that lived this long had nothing wrong with starting: the next
/// one starts at once.
const STEADY: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long the answering of a server that exited may take to see its
/// channel end (at once: the server's end is closed with it).
const CHANNEL_END: Duration = Duration::from_secs(1);

/// How long a server may take to finish its responses once the channel
/// is closed (its own grace is 1 s), before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// A server and the task answering it.
struct Running {
    server: Server,
    answering: tokio::task::JoinHandle<Ended>,
    started: Instant,
}

/// Starts web servers, answers them, and starts another when one dies.
pub struct Supervisor {
    listener: std::net::TcpListener,
    hangup: Signal,
    user: ServerUser,
    /// The flags the server shares with the collector (the log's).
    global: Vec<String>,
    answerer: Arc<Answerer>,
    /// The running server's pid (0: none), for the process_* metrics.
    pid: Arc<AtomicU32>,
    running: Option<Running>,
    backoff: Duration,
}

impl Supervisor {
    /// Starts the first web server: an error here (the user cannot be
    /// taken, the executable is gone) ends `run`.
    pub fn start(
        listener: Listener,
        user: ServerUser,
        global: Vec<String>,
        answerer: Answerer,
        pid: Arc<AtomicU32>,
    ) -> Result<Self> {
        let mut this = Self {
            listener: listener.socket,
            hangup: listener.hangup,
            user,
            global,
            answerer: Arc::new(answerer),
            pid,
            running: None,
            backoff: Duration::ZERO,
        };
        this.spawn()
            .with_context(|| format!("starting the web server as {}", this.user))?;
        Ok(this)
    }

    fn spawn(&mut self) -> Result<()> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().context("making the channel")?;
        let server = spawn::start(
            &self.user,
            self.listener.as_fd(),
            theirs.into(),
            &self.global,
        )?;
        ours.set_nonblocking(true).context("the channel")?;
        let ours = tokio::net::UnixStream::from_std(ours).context("the channel")?;
        let answerer = self.answerer.clone();
        let answering = tokio::spawn(async move { answerer.answer(ours).await });
        tracing::info!(
            pid = server.pid,
            uid = self.user.uid,
            gid = self.user.gid,
            "web server started"
        );
        self.pid.store(server.pid, Ordering::Relaxed);
        self.running = Some(Running {
            server,
            answering,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Keeps a web server running, and reads the web configuration again
    /// on SIGHUP, until the collector stops: a server that cannot be
    /// started is tried again after the backoff, so this never returns.
    pub async fn run(&mut self) -> Infallible {
        loop {
            let Some(running) = &mut self.running else {
                tokio::select! {
                    () = tokio::time::sleep(self.backoff) => {}
                    Some(()) = self.hangup.recv() => {
                        let _ = self.answerer.config.reload();
                        continue;
                    }
                }
                if let Err(e) = self.spawn() {
                    tracing::error!("starting the web server: {e:#}; trying again");
                    self.backoff = (self.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX);
                }
                continue;
            };
            let ended = tokio::select! {
                _ = running.server.exited() => None,
                ended = &mut running.answering => Some(ended.unwrap_or(Ended::Closed)),
                Some(()) = self.hangup.recv() => {
                    // The answering task sends the server what was applied.
                    let _ = self.answerer.config.reload();
                    continue;
                }
            };
            let mut running = self.running.take().expect("a server");
            // A server ended for what it sent exits as soon as its channel
            // closes, maybe before the collector has seen the answering
            // end: how the channel ended decides why, so it is waited for
            // (it ends once the server's end is closed).
            let why = match ended {
                Some(ended) => Gone::Channel(ended),
                None => match tokio::time::timeout(CHANNEL_END, &mut running.answering).await {
                    Ok(ended) => Gone::Channel(ended.unwrap_or(Ended::Closed)),
                    Err(_) => Gone::Exited,
                },
            };
            running.answering.abort();
            running.server.kill();
            let status = running.server.exited().await;
            self.pid.store(0, Ordering::Relaxed);
            self.answerer.metrics.gone();
            let reason = why.reason(status);
            tracing::error!(
                pid = running.server.pid,
                %status,
                reason = <&str>::from(reason),
                "the web server ended ({}); starting another",
                why.describe(status),
            );
            self.answerer.metrics.restarted(reason);
            self.backoff = if running.started.elapsed() >= STEADY {
                Duration::ZERO
            } else {
                (self.backoff * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX)
            };
        }
    }

    /// Stops the server: the channel closed, it finishes its responses and
    /// exits; killed if it has not within [`STOP_WAIT`].
    pub async fn stop(mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        running.answering.abort();
        let _ = running.answering.await;
        let status = match tokio::time::timeout(STOP_WAIT, running.server.exited()).await {
            Ok(status) => status,
            Err(_) => {
                running.server.kill();
                running.server.exited().await
            }
        };
        self.pid.store(0, Ordering::Relaxed);
        tracing::info!(pid = running.server.pid, %status, "web server stopped");
    }
}

/// How a server was seen to end.
enum Gone {
    Exited,
    Channel(Ended),
}

impl Gone {
    fn reason(&self, status: ExitStatus) -> Restart {
        match self {
            Gone::Channel(Ended::Malformed(_)) => Restart::ProtocolError,
            _ => match status.signal() {
                Some(libc::SIGSYS) => Restart::Seccomp,
                Some(_) => Restart::Signal,
                None => Restart::Exited,
            },
        }
    }

    fn describe(&self, status: ExitStatus) -> String {
        match self {
            Gone::Channel(Ended::Malformed(what)) => {
                format!("it sent what the channel does not allow: {what}; ended")
            }
            Gone::Channel(Ended::Io(e)) => format!("its channel failed: {e}"),
            _ if status.signal() == Some(libc::SIGSYS) => "killed by its seccomp filter: a \
                 system call outside its list (the kernel log names it: audit type=1326)"
                .into(),
            _ => format!("{status}"),
        }
    }
}
