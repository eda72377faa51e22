//! The agent's log: logfmt or JSON lines on stderr. Findings are logged
//! once per (process, kind) in full, then as periodic summaries with counts,
//! so a process flagged on every connect cannot flood the journal.

use clap::ValueEnum;
use tokio::io::{Interest, unix::AsyncFd};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{
    decode,
    pipeline::{report::Finding, table::Summary},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Logfmt,
    Json,
}

/// `RUST_LOG` wins over `--log.level` when set.
pub fn init(format: Format, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .init(),
        Format::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
}

/// The first finding of a (process, kind), in full.
pub fn finding(f: &Finding) {
    tracing::warn!(
        target: "sockerr::finding",
        kind = f.kind_name(),
        severity = f.severity,
        pid = f.pid,
        tid = f.tid,
        comm = f.comm.as_str(),
        exe = f.exe.as_deref().unwrap_or_default(),
        exe_error = f.exe_error.as_deref().unwrap_or_default(),
        cgroup = f.cgroup.as_deref().unwrap_or(""),
        cgroup_error = f.cgroup_error.as_deref().unwrap_or(""),
        container_id = f.container_id.as_deref().unwrap_or(""),
        pod_uid = f.pod_uid.as_deref().unwrap_or(""),
        container = f.container.as_deref().unwrap_or(""),
        image = f.image.as_deref().unwrap_or(""),
        pod = f.pod.as_deref().unwrap_or(""),
        namespace = f.namespace.as_deref().unwrap_or(""),
        fd = f.fd.unwrap_or(-1),
        remote = f.remote.as_str(),
        errno = f.errno.as_deref().unwrap_or(""),
        so_error_reads = ?f.so_error_reads,
        syscall = f.syscall,
        call_sites = f.call_sites.summary(&f.so_error_reads),
        "finding"
    );
}

/// A (process, kind) that went on producing findings since its last line.
pub fn summary(s: &Summary<'_>) {
    let f = s.latest;
    tracing::warn!(
        target: "sockerr::finding",
        kind = f.kind_name(),
        severity = f.severity,
        pid = f.pid,
        comm = f.comm.as_str(),
        exe = f.exe.as_deref().unwrap_or_default(),
        container = f.container.as_deref().unwrap_or(""),
        pod = f.pod.as_deref().unwrap_or(""),
        namespace = f.namespace.as_deref().unwrap_or(""),
        new = s.new,
        count = s.count,
        since = decode::rfc3339(s.first_seen).as_str(),
        last = decode::rfc3339(s.last_seen).as_str(),
        remote = f.remote.as_str(),
        errno = f.errno.as_deref().unwrap_or(""),
        "findings continue"
    );
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
