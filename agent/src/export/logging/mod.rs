//! The agent's log: logfmt (go-logfmt's dialect, what Loki and Promtail
//! read) or JSON lines on stderr, each with `ts`, `level`, `target` and
//! `msg` first ([`line`], written by a tracing layer of our own, [`layer`]).
//! Findings are logged once per (process, kind) in full, then as periodic
//! summaries with counts, so a process flagged on every connect cannot flood
//! the journal; both lines carry the fields of the process's `/findings`
//! entry (the same object in JSON: arrays stay arrays).

mod layer;
mod line;

use std::sync::OnceLock;

use clap::ValueEnum;
use serde_json::Value;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::Level;
use tracing_subscriber::{EnvFilter, prelude::*};

use crate::pipeline::table::FindingView;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Logfmt,
    Json,
}

/// The format [`init`] set, for the finding lines written beside tracing.
static FORMAT: OnceLock<Format> = OnceLock::new();

/// The target of finding lines: `RUST_LOG=sockerr::finding=off` silences them.
const FINDINGS: &str = "sockerr::finding";

/// `RUST_LOG` wins over `--log.level` when set.
pub fn init(format: Format, level: &str) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::registry()
        .with(filter)
        .with(layer::Layer { format })
        .init();
}

/// The first finding of a (process, kind), in full: its `/findings` entry.
pub fn finding(view: &FindingView<'_>) {
    finding_line(view, "finding", None);
}

/// A (process, kind) that went on producing findings since its last line:
/// its `/findings` entry, and `new`, the findings since that line.
pub fn summary(view: &FindingView<'_>, new: u64) {
    finding_line(view, "findings continue", Some(new));
}

fn finding_line(view: &FindingView<'_>, msg: &str, new: Option<u64>) {
    if !tracing::enabled!(target: FINDINGS, Level::WARN) {
        return;
    }
    let Some(&format) = FORMAT.get() else {
        return;
    };
    let Ok(Value::Object(fields)) = serde_json::to_value(view) else {
        return;
    };
    let mut line = layer::start(format, Level::WARN, FINDINGS, msg);
    for (key, value) in fields {
        // In logfmt the call sites are their one-line summary, not a tree.
        let value = if format == Format::Logfmt && key == "call_sites" {
            Value::String(
                view.finding
                    .call_sites
                    .summary(&view.finding.so_error_reads),
            )
        } else {
            value
        };
        line.field(&key, value);
    }
    if let Some(new) = new {
        line.field("new", new.into());
    }
    layer::write(line);
}

/// Forwards aya-log records from the eBPF programs to the agent's log.
pub fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns it.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        tracing::warn!("cannot poll kernel log records");
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
