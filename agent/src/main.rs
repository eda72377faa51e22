//! sockerr: flags processes that read SO_ERROR twice for one connection or
//! carry on with I/O after a failed connect, seen from the kernel.

mod check;
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
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicU32},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::{
    export::{logging, metrics, process, sampler, serving, state, web},
    pipeline::{attribution, callsites, cgroups, containers, table},
};

/// `sockerr --version`: the release, the commit it was built from (see
/// build.rs) and the target it was built for.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("SOCKERR_REVISION"),
    ", ",
    env!("SOCKERR_TARGET"),
    ")"
);

#[derive(Parser)]
#[command(version = VERSION, about)]
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
    /// Report whether this host can run the agent, which hook each probe
    /// uses, and why something is missing.
    Check(CheckArgs),
    /// Print the bcrypt hash of the password read from standard input, for
    /// basic_auth_users in --web.config.file.
    HashPassword,
    /// The web server, started by `run` as --web.server-user with the
    /// listen socket and a channel to it (not for use by hand).
    #[command(hide = true)]
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// The listening socket `run` bound.
    #[arg(long = "listen-fd")]
    listen_fd: i32,
    /// This process's end of the channel to `run`.
    #[arg(long = "channel-fd")]
    channel_fd: i32,
}

/// What `run` and `trace` both start: the kernel side, call sites and
/// container naming.
#[derive(Args)]
struct ProbeArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    #[command(flatten)]
    call_sites: CallSiteArgs,
    #[command(flatten)]
    containers: ContainerArgs,
    /// The node's name in findings (`node`). The DaemonSet sets NODE_NAME
    /// from the pod's spec.nodeName. Default: the host's name.
    #[arg(long = "findings.node-name", env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    web: web::WebArgs,
    /// How long a flagged process stays in /findings and sockerr_flagged_processes.
    /// (Formerly --retention.)
    #[arg(long = "findings.retention", alias = "retention", default_value = "15m",
          value_parser = parse::positive_duration)]
    retention: Duration,
    /// Most flagged processes kept; the least recently seen are dropped
    /// first. (Formerly --max-processes.)
    #[arg(long = "findings.max-processes", alias = "max-processes", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_processes: u32,
    /// Distinct comm label values in metrics; the rest are reported as
    /// "(over max-comms)", which no process's name can be.
    #[arg(long = "metrics.max-comms", default_value_t = sockerr_common::DEFAULT_MAX_COMMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_comms: u32,
    /// Distinct remote endpoints in sockerr_connect_failures_by_remote_total;
    /// the rest are reported as "other".
    #[arg(long = "metrics.max-remotes", default_value_t = sockerr_common::DEFAULT_MAX_REMOTES,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_remotes: u32,
    /// Add namespace, pod and container labels (from the container
    /// runtime's state) to the per-process series: findings, attempts,
    /// failures and SO_ERROR reads.
    #[arg(long = "metrics.kubernetes-labels")]
    pod_labels: bool,
    /// With --metrics.kubernetes-labels: distinct pods that keep their
    /// labels; the rest are reported as "other".
    #[arg(long = "metrics.max-pods", default_value_t = 200)]
    max_pods: usize,
    /// With --metrics.kubernetes-labels: a pod that counted nothing for this
    /// long gives up its labels (its series are removed), freeing its place
    /// for new pods.
    #[arg(long = "metrics.pod-idle", default_value = "15m", value_parser = parse::positive_duration)]
    pod_idle: Duration,
    /// How often a process that goes on producing findings of a kind is
    /// summarised in the log (its first finding is logged in full at once).
    #[arg(long = "log.summary-interval", default_value = "1m", value_parser = parse::positive_duration)]
    summary_interval: Duration,
    #[command(flatten)]
    probes: ProbeArgs,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    kernel: KernelArgs,
    /// The user `run` would start the web server as: checks that it can.
    #[arg(
        long = "web.server-user",
        value_name = "USER",
        default_value = "65534:65534"
    )]
    server_user: privileges::ServerUser,
}

#[derive(Args)]
struct KernelArgs {
    /// Connect attempts of live sockets the kernel side tracks at once
    /// (≈ 150 bytes each); past this the least recently used are dropped
    /// and counted (sockerr_kernel_drops_total{reason="attempt_untracked"}).
    #[arg(long = "kernel.max-attempts", default_value_t = sockerr_common::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1024..))]
    max_attempts: u32,
    /// After the first finding of a (process, kind), at most one full finding
    /// record per this interval (every finding is still counted). Default:
    /// 10s for run, 0 (every finding) for trace.
    #[arg(long = "findings.detail-interval", value_parser = humantime::parse_duration)]
    detail_interval: Option<Duration>,
    /// Never use this hook (repeatable, as `sockerr check` names it, e.g.
    /// `fentry/tcp_sendmsg`): the probe falls back to its next hook. For a
    /// hook that misbehaves on some kernel, and for testing the fallbacks.
    #[arg(long = "kernel.disable-hook", value_name = "HOOK")]
    disable_hooks: Vec<String>,
}

#[derive(Args)]
struct CallSiteArgs {
    /// Where findings' call sites come from: uprobes on the C library of
    /// each flagged process from its first finding on, of every process, or
    /// none. Uprobes need CAP_SYS_ADMIN. (Formerly --call-sites.)
    #[arg(
        long = "call-sites.mode",
        alias = "call-sites",
        value_enum,
        default_value = "flagged"
    )]
    mode: callsites::uprobes::Mode,
    /// Most processes instrumented with call-site uprobes at once.
    #[arg(long = "call-sites.max-processes", default_value_t = 64)]
    max_instrumented: usize,
    /// Findings with call sites a process gives before its uprobes are
    /// detached (each probe hit costs it a trap); its later findings repeat
    /// those sites. 0 keeps them until the process exits.
    #[arg(long = "call-sites.findings", default_value_t = 1)]
    findings: u32,
    /// How long a flagged process must run on after its first finding
    /// before it is probed: attaching and detaching uprobes take the kernel
    /// hundreds of milliseconds, during which every connect and getsockopt
    /// of the process traps. 0 probes at once. Default: 1s for run, 0 for
    /// trace.
    #[arg(long = "call-sites.delay", value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
}

#[derive(Args)]
struct ContainerArgs {
    /// Where the host's root is: container names, images and pods are read
    /// from the runtimes' state under it (containerd, CRI-O, Docker, Podman),
    /// e.g. /host when the host's runtime directories are mounted there.
    #[arg(long = "containers.root", default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
struct TraceArgs {
    /// Print JSON lines instead of human-readable lines.
    #[arg(long)]
    json: bool,
    /// Only findings of these processes (repeatable); no other process is
    /// instrumented for call sites.
    #[arg(long)]
    pid: Vec<u32>,
    /// Only findings of processes with these comms (repeatable); no other
    /// process is instrumented for call sites.
    #[arg(long)]
    comm: Vec<String>,
    /// Also print the captured user stack of each call site.
    #[arg(long)]
    stacks: bool,
    #[command(flatten)]
    probes: ProbeArgs,
}

impl KernelArgs {
    fn options(&self, detail_default: Duration, counted: kernel::Counted) -> kernel::Options {
        kernel::Options {
            max_attempts: self.max_attempts,
            detail_interval: self.detail_interval.unwrap_or(detail_default),
            disabled_hooks: self.disable_hooks.clone(),
            counted,
        }
    }
}

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
        result = supervisor.run() => result?,
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
            &["--findings.retention", "0"][..],
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

    /// The flags renamed into their namespaces still take their old names,
    /// which `--help` no longer shows.
    #[test]
    fn old_flag_names_are_hidden_aliases() {
        for (old, new) in [
            ("--retention=5m", "--findings.retention=5m"),
            ("--max-processes=7", "--findings.max-processes=7"),
            ("--call-sites=off", "--call-sites.mode=off"),
        ] {
            for flag in [old, new] {
                assert!(
                    Cli::try_parse_from(["sockerr", "run", flag]).is_ok(),
                    "{flag} refused"
                );
            }
            let mut run = <Cli as clap::CommandFactory>::command();
            let help = run
                .find_subcommand_mut("run")
                .unwrap()
                .render_long_help()
                .to_string();
            let name = old.split('=').next().unwrap();
            assert!(
                help.contains(new.split('=').next().unwrap())
                    && !help
                        .lines()
                        .any(|l| l.trim_start().starts_with(&format!("{name} "))
                            || l.trim_start().starts_with(&format!("{name}="))),
                "{help}"
            );
        }
    }
}
