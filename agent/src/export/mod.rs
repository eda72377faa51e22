//! Findings and the kernel's counters in; Prometheus metrics, log lines and HTTP responses out.
//!
//! What the daemon shares between the pipeline and the HTTP handlers
//! ([`state`]), the kernel's counters folded into the metrics ([`sampler`],
//! [`metrics`]), the log ([`logging`]) and the HTTP server with its routes
//! ([`web`]).

pub mod channel;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod sampler;
pub mod state;
pub mod web;
