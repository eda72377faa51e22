//! sockerr: flags processes that read SO_ERROR twice for one connection or
//! carry on with I/O after a failed connect, seen from the kernel.

mod check;
mod cli;
mod decode;
mod export;
mod kernel;
mod locks;
mod parse;
mod pipeline;
mod privileges;
mod proc;

use std::{
    io::{self, Write as _},
    process::ExitCode,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::{
    cli::{Cli, Command, ProbeArgs, RunArgs, TraceArgs},
    export::{logging, metrics, process, sampler, serving, state, web},
    pipeline::{attribution, callsites, cgroups, containers, table},
};

fn main() -> ExitCode {
    // `systemctl reload` sends SIGHUP at any moment, startup included. Its
    // default action ends the process, and caught, it would make the
    // kernel abort loading a program (the verifier gives up with EAGAIN
    // when a signal is pending). Blocked, it waits until `run` has attached
    // everything; threads started meanwhile inherit the mask. Other
    // commands end on it as usual (a closed terminal stops `trace`).
    hangup(SigmaskHow::SIG_BLOCK);
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        hangup(SigmaskHow::SIG_UNBLOCK);
    }
    logging::init(cli.log_format, &cli.log_level);
    // What the web server is started with, to log as the collector does.
    let global = vec![
        format!(
            "--log.format={}",
            clap::ValueEnum::to_possible_value(&cli.log_format)
                .expect("a named format")
                .get_name()
        ),
        format!("--log.level={}", cli.log_level),
    ];
    let result = match cli.command {
        Command::Check(args) => Ok(check::report(
            &check::requirements(
                &check::kernel_btf(),
                Some(
                    &args
                        .kernel
                        .options(Duration::ZERO, kernel::Counted::default()),
                ),
                Some(&args.server_user),
            ),
            io::stdout().lock(),
        )),
        Command::Serve(args) => web::serve(args.listen_fd, args.channel_fd).map(|()| true),
        Command::HashPassword => web::hash_password(io::stdin().lock()).and_then(|hash| {
            writeln!(io::stdout(), "{hash}").context("writing the hash to standard output")?;
            Ok(true)
        }),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    match command {
                        Command::Run(args) => run(args, global).await,
                        Command::Trace(args) => trace(args).await,
                        Command::Check(_) | Command::HashPassword | Command::Serve(_) => {
                            unreachable!()
                        }
                    }
                })
            })
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            // Not eprintln!, which panics when standard error is a closed pipe.
            let _ = writeln!(io::stderr(), "sockerr: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Blocks or unblocks SIGHUP in the calling thread.
pub fn hangup(how: SigmaskHow) {
    let set = SigSet::from(Signal::SIGHUP);
    if let Err(e) = pthread_sigmask(how, Some(&set), None) {
        tracing::warn!("{how:?} SIGHUP: {e}");
    }
}

async fn run(args: RunArgs, global: Vec<String>) -> Result<()> {
    // Before attaching anything, so a bad web config or a busy port fails
    // fast and clean.
    let listener = web::Listener::bind(&args.web).await?;
    let address = listener.local_addr()?;
    let counted = kernel::Counted {
        by_cgroup: args.pod_labels,
        max_comms: args.max_comms,
        max_remotes: args.max_remotes,
    };
    let options = args.probes.kernel.options(Duration::from_secs(10), counted);
    let started = start(
        &options,
        &args.probes,
        Duration::from_secs(1),
        pipeline::Selection::default(),
        Some(&args.web.server_user),
    )?;
    // Everything is loaded: a SIGHUP that came meanwhile, held back, goes
    // to the reload handler now (installed before the web configuration
    // was read).
    hangup(SigmaskHow::SIG_UNBLOCK);
    let metrics = metrics::Metrics::new(
        args.max_comms as usize,
        args.max_remotes as usize,
        args.pod_labels.then_some(metrics::PodCap {
            max: args.max_pods,
            idle: args.pod_idle,
        }),
    );
    for collector in listener.config.collectors() {
        metrics.register(collector);
    }
    let server_metrics = serving::metrics::ServerMetrics::new(!args.web.disable_exporter_metrics);
    for collector in server_metrics.collectors() {
        metrics.register(collector);
    }
    let server_pid = Arc::new(AtomicU32::new(0));
    if !args.web.disable_exporter_metrics {
        metrics.register(Box::new(process::ProcessMetrics::new(server_pid.clone())));
    }
    for (probe, hook) in started.attached.iter() {
        let hook = hook.as_ref().ok().map(|h| h.attach.to_string());
        metrics.probe(probe.name, hook.as_deref());
    }
    let findings = table::Findings::new(args.max_processes as usize, args.retention);
    let usage = started.pipeline.locator.usage();
    let state = state::State::new(findings, started.sampler, metrics, usage);
    let sink = state.clone();
    let mut pipeline =
        pipeline::Running::spawn(started.pipeline, move |output| sink.record(output))?;
    let periodic = periodic(state.clone(), args.summary_interval);
    let answerer = serving::answer::Answerer {
        state,
        config: listener.config.clone(),
        metrics: server_metrics,
        setup: args.web.setup(),
    };
    let shutdown = shutdown()?;
    let mut supervisor = serving::Supervisor::start(
        listener,
        args.web.server_user.clone(),
        global,
        answerer,
        server_pid,
    )?;
    tracing::info!(%address, path = args.web.telemetry_path, "sockerr running");
    tokio::select! {
        never = supervisor.run() => match never {},
        result = pipeline.ended() => result.context("event pipeline")?,
        () = periodic => {}
        () = shutdown => {}
    }
    supervisor.stop().await;
    // The pipeline owns the programs: stopping it detaches and unloads
    // every program and link.
    drop(pipeline);
    tracing::info!("probes detached; bye");
    Ok(())
}

/// Folds the kernel's counters into the metrics between scrapes (so its
/// maps never fill), and logs summaries of processes that go on misbehaving.
async fn periodic(state: state::State, summaries: Duration) {
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let mut summary = tokio::time::interval(summaries);
    loop {
        tokio::select! {
            _ = sample.tick() => {
                let state = state.clone();
                let _ = tokio::task::spawn_blocking(move || state.sample_kernel()).await;
            }
            _ = summary.tick() => state.log_summaries(),
        }
    }
}

async fn trace(args: TraceArgs) -> Result<()> {
    // Records of other processes are dropped before anything is done with
    // them: they are neither attributed nor instrumented.
    let selection = pipeline::Selection {
        pids: args.pid.clone(),
        comms: args.comm.clone(),
    };
    let started = start(
        &args
            .probes
            .kernel
            .options(Duration::ZERO, kernel::Counted::default()),
        &args.probes,
        Duration::ZERO,
        selection,
        None,
    )?;
    let shutdown = shutdown()?;
    let _ = writeln!(io::stderr(), "sockerr: tracing; Ctrl-C to stop");
    // A reader that goes away (`sockerr trace | head -1`) ends the trace,
    // the probes detached as on Ctrl-C.
    let (gone, reader_gone) = tokio::sync::oneshot::channel::<()>();
    let mut gone = Some(gone);
    let mut stdout = io::stdout();
    // Counts and first/last seen as `run` keeps them, so that a line of
    // `--json` is the process's /findings entry.
    let mut findings = table::Findings::new(10_000, Duration::from_secs(15 * 60));
    let mut pipeline = pipeline::Running::spawn(started.pipeline, move |output| {
        let now = std::time::Instant::now();
        let (pid, kind) = match output {
            pipeline::Output::Finding {
                finding,
                start_boot_ns,
                tally,
            } => {
                let key = (finding.pid, finding.kind);
                findings.record(*finding, start_boot_ns, tally, now);
                key
            }
            pipeline::Output::Tally {
                pid,
                kind,
                read,
                last,
            } => return findings.tally(pid, kind, read, last, now),
        };
        let Some(view) = findings.latest_view(pid, kind) else {
            return;
        };
        let f = view.finding;
        let line = if args.json {
            serde_json::to_string(&view).expect("serializable")
        } else if args.stacks {
            format!("{}\n{}", f.human(), f.call_sites.stacks(&f.so_error_reads))
        } else {
            f.human()
        };
        if gone.is_some()
            && let Err(e) = writeln!(stdout, "{}", line.trim_end()).and_then(|()| stdout.flush())
        {
            if e.kind() != io::ErrorKind::BrokenPipe {
                tracing::error!("writing to standard output: {e}; stopping");
            }
            let _ = gone.take().map(|gone| gone.send(()));
        }
    })?;
    tokio::select! {
        result = pipeline.ended() => result?,
        () = shutdown => {}
        _ = reader_gone => {}
    }
    Ok(())
}

/// The kernel side attached and the agent's side of it ready.
struct Started {
    pipeline: pipeline::Pipeline,
    sampler: sampler::Sampler,
    attached: kernel::Attached,
}

/// Checks the host, loads and attaches the probes, and drops the
/// capabilities that needed (keeping those of per-process uprobes, and of
/// starting the web server as `server`, when there is one).
/// `delay_default`: the call-site delay when `--call-sites.delay` is not
/// given; `selection`: the processes whose records are handled (trace's
/// `--pid`, `--comm`).
fn start(
    options: &kernel::Options,
    args: &ProbeArgs,
    delay_default: Duration,
    selection: pipeline::Selection,
    server: Option<&privileges::ServerUser>,
) -> Result<Started> {
    let (call_sites, containers) = (&args.call_sites, &args.containers);
    // Read once: checking, loading and attaching all use it.
    let btf = check::kernel_btf();
    check::require(&btf, server)?;
    let btf = btf.map_err(anyhow::Error::msg)?;
    let mut kernel = kernel::Kernel::load(&btf, options)?;
    let attached = kernel.attach(&btf, options)?;
    log_attached(&attached);
    match kernel.logger() {
        Ok(logger) => logging::forward_kernel_logs(logger),
        Err(e) => tracing::warn!("kernel log records unavailable: {e:#}"),
    }
    let uprobes = call_sites.mode != callsites::uprobes::Mode::Off;
    if uprobes {
        kernel.load_uprobes()?;
    }
    drop(btf);
    // Loading parsed the kernel's BTF (megabytes, now freed): hand that
    // memory back to the system instead of keeping it in the heap. (musl's
    // allocator, of the static release build, gives freed pages back by
    // itself and has no malloc_trim.)
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0)
    };
    let maps = kernel.take_maps()?;
    let locator = callsites::Locator::new(
        &mut kernel,
        (maps.stacks, maps.want_sites, maps.sites_on),
        call_sites.mode,
        call_sites.max_instrumented,
        call_sites.findings,
        call_sites.delay.unwrap_or(delay_default),
    )?;
    // Per-process uprobes are created later, so their capability stays.
    privileges::drop_after_attach(
        call_sites.mode == callsites::uprobes::Mode::Flagged,
        server.is_some_and(privileges::ServerUser::needs_set_id),
    )?;
    let cgroups = cgroups::CgroupNames::new(proc::cgroup2_root().ok());
    let containers = containers::Containers::new(containers.root.clone());
    let node: Option<Arc<str>> = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(proc::hostname)
        .map(Into::into);
    Ok(Started {
        pipeline: pipeline::Pipeline {
            kernel,
            ring: maps.findings,
            tallies: maps.tallies,
            locator,
            attributor: attribution::Attributor::new(cgroups.clone(), containers.clone(), node),
            selection,
        },
        sampler: sampler::Sampler::new(
            maps.counters,
            maps.remotes,
            maps.health,
            &options.counted,
            options.counted.by_cgroup.then_some(sampler::Pods {
                cgroups,
                containers,
            }),
        ),
        attached,
    })
}

/// One line naming the hook of each probe, and what this kernel cannot offer.
fn log_attached(attached: &kernel::Attached) {
    let hooks: Vec<String> = attached
        .iter()
        .filter_map(|(p, r)| r.as_ref().ok().map(|h| format!("{}={}", p.name, h.attach)))
        .collect();
    tracing::info!(hooks = hooks.join(" "), "probes attached");
    // Only optional probes can be missing here (a required one stops the
    // agent): a fact about this kernel, not a fault.
    for (probe, result) in attached.iter() {
        if let Err(why) = result {
            tracing::info!(
                probe = probe.name,
                "not observed on this kernel: {} ({why})",
                probe.observes
            );
        }
    }
}

/// Completes on SIGINT or SIGTERM. Both handlers are in place when this
/// returns, not when the future is first polled: a signal right after the
/// agent says it runs must stop it cleanly, not kill it.
fn shutdown() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
