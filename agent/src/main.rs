//! sockerr: flags processes that read SO_ERROR twice for one connection or
//! carry on with I/O after a failed connect, seen from the kernel.

mod attribution;
mod btf;
mod callsites;
mod check;
mod finding;
mod flagged;
mod http;
mod logging;
mod metrics;
mod pipeline;
mod privileges;
mod probes;
mod state;
mod web;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    log_format: logging::Format,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long = "log.level", default_value = "info", global = true)]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: attach the probes and serve metrics and findings.
    Run(RunArgs),
    /// Attach the probes and print findings as they happen.
    Trace(TraceArgs),
    /// Report whether this host can run the agent, and why not.
    Check,
    /// Print the bcrypt hash of the password read from standard input, for
    /// basic_auth_users in --web.config.file.
    HashPassword,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    web: web::WebArgs,
    /// How long a flagged process stays in /findings and sockerr_flagged_processes.
    #[arg(long, default_value = "15m", value_parser = positive_duration)]
    retention: Duration,
    /// Most flagged processes kept; the least recently seen are dropped first.
    #[arg(long = "max-processes", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_processes: u32,
    /// Distinct comm label values in metrics; the rest are reported as "other".
    #[arg(long = "metrics.max-comms", default_value_t = 100)]
    max_comms: usize,
    #[command(flatten)]
    call_sites: CallSiteArgs,
}

#[derive(Args)]
struct CallSiteArgs {
    /// Where findings' call sites come from: uprobes on the C library of
    /// each flagged process from its first finding on, of every process, or none.
    #[arg(long = "call-sites", value_enum, default_value = "flagged")]
    mode: callsites::uprobes::Mode,
    /// Most processes instrumented with call-site uprobes at once.
    #[arg(long = "call-sites.max-processes", default_value_t = 64)]
    max_instrumented: usize,
    /// Findings with call sites a process gives before its uprobes are
    /// detached (each probe hit costs it a trap); its later findings repeat
    /// those sites. 0 keeps them until the process exits.
    #[arg(long = "call-sites.findings", default_value_t = 3)]
    findings: u32,
}

#[derive(Args)]
struct TraceArgs {
    /// Print JSON lines instead of human-readable lines.
    #[arg(long)]
    json: bool,
    /// Only findings of these processes (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Only findings of processes with these comms (repeatable).
    #[arg(long)]
    comm: Vec<String>,
    /// Also print the captured user stack of each call site.
    #[arg(long)]
    stacks: bool,
    #[command(flatten)]
    call_sites: CallSiteArgs,
}

/// A duration above zero: none of the durations taken means anything at 0
/// (a retention of 0 would drop each finding as soon as it is recorded).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Check => Ok(check::report(&check::requirements(true))),
        Command::HashPassword => web::hash_password(std::io::stdin().lock()).map(|hash| {
            println!("{hash}");
            true
        }),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    match command {
                        Command::Run(args) => run(args).await,
                        Command::Trace(args) => trace(args).await,
                        Command::Check | Command::HashPassword => unreachable!(),
                    }
                })
            })
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sockerr: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    // Before attaching anything, so a bad web config or a busy port fails
    // fast and clean.
    let server = web::Server::bind(&args.web).await?;
    check::require()?;
    let probes::Probes {
        ebpf,
        findings,
        counters,
        stacks,
        attached,
    } = probes::Probes::attach()?;
    let collector = collector(ebpf, findings, stacks, &args.call_sites)?;
    // Loading parsed the kernel's BTF twice (megabytes, now freed): hand
    // that memory back to the system instead of keeping it in the heap.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let metrics = metrics::Metrics::new(args.max_comms);
    for collector in server.collectors() {
        metrics.register(collector);
    }
    metrics.probes_attached(&attached);
    let flagged = flagged::FlaggedTable::new(args.max_processes as usize, args.retention);
    let usage = collector.instrumenter.usage();
    let state = state::State::new(metrics, flagged, Some(counters), usage);
    let sink = state.clone();
    let pipeline = pipeline::run(collector, move |f| {
        pipeline::log(&f);
        sink.record(f);
    });
    let address = server.local_addr()?;
    tracing::info!(%address, path = args.web.telemetry_path, "sockerr running");
    let app = http::router(state, &args.web.telemetry_path);
    // The pipeline owns the programs: when select! drops it, every program
    // and link is detached and unloaded.
    tokio::select! {
        result = server.serve(app, shutdown()) => result?,
        result = pipeline => result.context("event pipeline")?,
    }
    tracing::info!("probes detached; bye");
    Ok(())
}

async fn trace(args: TraceArgs) -> Result<()> {
    check::require()?;
    let probes::Probes {
        ebpf,
        findings,
        stacks,
        ..
    } = probes::Probes::attach()?;
    let collector = collector(ebpf, findings, stacks, &args.call_sites)?;
    eprintln!("sockerr: tracing; Ctrl-C to stop");
    let pipeline = pipeline::run(collector, |f| {
        if (!args.pid.is_empty() && !args.pid.contains(&f.pid))
            || (!args.comm.is_empty() && !args.comm.contains(&f.comm))
        {
            return;
        }
        let line = if args.json {
            serde_json::to_string(&f).expect("serializable")
        } else if args.stacks {
            format!("{}\n{}", f.human(), f.call_sites.stacks(&f.so_error_reads))
        } else {
            f.human()
        };
        println!("{}", line.trim_end());
    });
    tokio::select! {
        result = pipeline => result?,
        () = shutdown() => {}
    }
    Ok(())
}

/// The finding pipeline's stages, owning the loaded programs; drops the
/// capabilities attaching needed (keeping those of per-process uprobes).
fn collector(
    ebpf: aya::Ebpf,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    stacks: aya::maps::StackTraceMap<aya::maps::MapData>,
    args: &CallSiteArgs,
) -> Result<pipeline::Collector> {
    let instrumenter = callsites::uprobes::Instrumenter::new(
        ebpf,
        args.mode,
        args.max_instrumented,
        args.findings,
    )?;
    // Per-process uprobes are created later, so their capability stays.
    privileges::drop_after_attach(args.mode == callsites::uprobes::Mode::Flagged)?;
    Ok(pipeline::Collector {
        ring,
        instrumenter,
        resolver: callsites::Resolver::new(stacks),
    })
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Cli;

    #[test]
    fn cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn zero_durations_are_refused() {
        for args in [
            &["--retention", "0"][..],
            &["--retention", "0s"],
            &["--web.header-timeout", "0ms"],
            &["--web.idle-timeout", "0"],
        ] {
            let err = Cli::try_parse_from(["sockerr", "run"].iter().chain(args))
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(err.to_string().contains("must be more than 0"), "{err}");
        }
        assert!(Cli::try_parse_from(["sockerr", "run", "--retention", "1s"]).is_ok());
    }
}
