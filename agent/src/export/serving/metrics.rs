//! The web server's metrics, kept by the collector: the server reports its
//! counts ([`Stats`]) and the collector adds what they grew by, so a server
//! that dies and is started again loses none of them.

use prometheus::{IntCounterVec, IntGauge, Opts, core::Collector};
use strum::IntoEnumIterator as _;

use crate::export::channel::{Dropped, Scrape, Stats};

/// Why a web server was started again, by
/// `sockerr_web_server_restarts_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Restart {
    /// It exited.
    Exited,
    /// Killed by its seccomp filter (SIGSYS): a system call outside its
    /// list, a bug or an exploit.
    Seccomp,
    /// Killed by another signal: a crash, or someone killed it.
    Signal,
    /// It sent what the channel's format does not allow, or its counts went
    /// down: the collector ended it.
    ProtocolError,
}

#[derive(Clone)]
pub struct ServerMetrics {
    open: IntGauge,
    dropped: IntCounterVec,
    restarts: IntCounterVec,
    /// promhttp's, which node_exporter has: with the exporter metrics only.
    in_flight: IntGauge,
    scrapes: IntCounterVec,
    exporter: bool,
}

impl ServerMetrics {
    /// `exporter`: with the promhttp_* metrics (not
    /// `--web.disable-exporter-metrics`).
    pub fn new(exporter: bool) -> Self {
        let dropped = IntCounterVec::new(
            Opts::new(
                "sockerr_http_connections_dropped_total",
                "HTTP connections the agent closed, by reason: max_connections (closed to \
                 make room for a new one, or the new one when none could be), \
                 max_connections_per_client (the same within one client's share), \
                 tls_handshake (failed), header_timeout, idle_timeout, write_timeout (the \
                 client took nothing of a response for --web.write-timeout).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in Dropped::iter() {
            dropped.with_label_values(&[<&str>::from(reason)]);
        }
        let restarts = IntCounterVec::new(
            Opts::new(
                "sockerr_web_server_restarts_total",
                "Times the web server (the unprivileged process serving HTTP) was started \
                 again, by why it ended: exited, seccomp (killed by its system call filter), \
                 signal (crashed or killed), protocol_error (sent the collector what its \
                 channel does not allow).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in Restart::iter() {
            restarts.with_label_values(&[<&str>::from(reason)]);
        }
        let scrapes = IntCounterVec::new(
            Opts::new(
                "promhttp_metric_handler_requests_total",
                "Total number of scrapes by HTTP status code.",
            ),
            &["code"],
        )
        .expect("valid metric");
        for scrape in Scrape::iter() {
            scrapes.with_label_values(&[scrape.code()]);
        }
        Self {
            open: IntGauge::new(
                "sockerr_http_connections",
                "Open HTTP connections (at most --web.max-connections).",
            )
            .expect("valid metric"),
            dropped,
            restarts,
            in_flight: IntGauge::new(
                "promhttp_metric_handler_requests_in_flight",
                "Current number of scrapes being served.",
            )
            .expect("valid metric"),
            scrapes,
            exporter,
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let mut all: Vec<Box<dyn Collector>> = vec![
            Box::new(self.open.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.restarts.clone()),
        ];
        if self.exporter {
            all.push(Box::new(self.in_flight.clone()));
            all.push(Box::new(self.scrapes.clone()));
        }
        all
    }

    /// Takes the counts a server reported after `last` (its counts before,
    /// as reported): what they grew by is added.
    pub fn update(&self, last: &Stats, now: &Stats) {
        self.open.set(i64::from(now.open));
        self.in_flight.set(i64::from(now.scrapes_in_flight));
        for (reason, (was, is)) in Dropped::iter().zip(last.dropped.iter().zip(&now.dropped)) {
            self.dropped
                .with_label_values(&[<&str>::from(reason)])
                .inc_by(is - was);
        }
        for (scrape, (was, is)) in Scrape::iter().zip(last.scrapes.iter().zip(&now.scrapes)) {
            self.scrapes
                .with_label_values(&[scrape.code()])
                .inc_by(is - was);
        }
    }

    /// The server is gone: none of its connections is open any more.
    pub fn gone(&self) {
        self.open.set(0);
        self.in_flight.set(0);
    }

    pub fn restarted(&self, why: Restart) {
        self.restarts.with_label_values(&[<&str>::from(why)]).inc();
    }
}
