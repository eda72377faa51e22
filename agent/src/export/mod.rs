//! Findings and the kernel's counters in; Prometheus metrics, log lines and HTTP responses out.
//!
//! What the daemon shares between the pipeline and the answers to the web
//! server ([`state`]), the kernel's counters folded into the metrics
//! ([`sampler`], [`metrics`], and the agent's own [`process`] metrics), the
//! log ([`logging`]); the web server, another process that holds no
//! privilege ([`web`]), started, answered and restarted by the collector
//! ([`serving`]) over a channel of its own format ([`channel`]).

pub mod channel;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod sampler;
pub mod serving;
pub mod state;
pub mod web;
