//! The command line: `sockerr run`, `trace`, `check`, `hash-password` and
//! the hidden `serve`, with the flags each takes (README, "Flags").

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    export::{logging, web},
    kernel, parse,
    pipeline::callsites,
    privileges,
};

/// `sockerr --version`: the release, the commit it was built from (see
/// build.rs) and the target it was built for.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("SOCKERR_REVISION"),
    ", ",
    env!("SOCKERR_TARGET"),
    ")"
);

#[derive(Parser)]
#[command(version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    pub log_format: logging::Format,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long = "log.level", default_value = "info", global = true)]
    pub log_level: String,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct ServeArgs {
    /// The listening socket `run` bound.
    #[arg(long = "listen-fd")]
    pub listen_fd: i32,
    /// This process's end of the channel to `run`.
    #[arg(long = "channel-fd")]
    pub channel_fd: i32,
}

/// What `run` and `trace` both start: the kernel side, call sites and
/// container naming.
#[derive(Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    #[command(flatten)]
    pub call_sites: CallSiteArgs,
    #[command(flatten)]
    pub containers: ContainerArgs,
    /// The node's name in findings (`node`). The DaemonSet sets NODE_NAME
    /// from the pod's spec.nodeName. Default: the host's name.
    #[arg(long = "findings.node-name", env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub web: web::WebArgs,
    /// How long a flagged process stays in /findings and sockerr_flagged_processes.
    /// (Formerly --retention.)
    #[arg(long = "findings.retention", alias = "retention", default_value = "15m",
          value_parser = parse::positive_duration)]
    pub retention: Duration,
    /// Most flagged processes kept; the least recently seen are dropped
    /// first. (Formerly --max-processes.)
    #[arg(long = "findings.max-processes", alias = "max-processes", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_processes: u32,
    /// Distinct comm label values in metrics; the rest are reported as
    /// "(over max-comms)", which no process's name can be.
    #[arg(long = "metrics.max-comms", default_value_t = sockerr_common::DEFAULT_MAX_COMMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_comms: u32,
    /// Distinct remote endpoints in sockerr_connect_failures_by_remote_total;
    /// the rest are reported as "other".
    #[arg(long = "metrics.max-remotes", default_value_t = sockerr_common::DEFAULT_MAX_REMOTES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_remotes: u32,
    /// Add namespace, pod and container labels (from the container
    /// runtime's state) to the per-process series: findings, attempts,
    /// failures and SO_ERROR reads.
    #[arg(long = "metrics.kubernetes-labels")]
    pub pod_labels: bool,
    /// With --metrics.kubernetes-labels: distinct pods that keep their
    /// labels; the rest are reported as "other".
    #[arg(long = "metrics.max-pods", default_value_t = 200)]
    pub max_pods: usize,
    /// With --metrics.kubernetes-labels: a pod that counted nothing for this
    /// long gives up its labels (its series are removed), freeing its place
    /// for new pods.
    #[arg(long = "metrics.pod-idle", default_value = "15m", value_parser = parse::positive_duration)]
    pub pod_idle: Duration,
    /// How often a process that goes on producing findings of a kind is
    /// summarised in the log (its first finding is logged in full at once).
    #[arg(long = "log.summary-interval", default_value = "1m", value_parser = parse::positive_duration)]
    pub summary_interval: Duration,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// The user `run` would start the web server as: checks that it can.
    #[arg(
        long = "web.server-user",
        value_name = "USER",
        default_value = "65534:65534"
    )]
    pub server_user: privileges::ServerUser,
}

#[derive(Args)]
pub struct KernelArgs {
    /// Connect attempts of live sockets the kernel side tracks at once
    /// (≈ 150 bytes each); past this the least recently used are dropped
    /// and counted (sockerr_kernel_drops_total{reason="attempt_untracked"}).
    #[arg(long = "kernel.max-attempts", default_value_t = sockerr_common::DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_attempts: u32,
    /// After the first finding of a (process, kind), at most one full finding
    /// record per this interval (every finding is still counted). Default:
    /// 10s for run, 0 (every finding) for trace.
    #[arg(long = "findings.detail-interval", value_parser = humantime::parse_duration)]
    pub detail_interval: Option<Duration>,
    /// Never use this hook (repeatable, as `sockerr check` names it, e.g.
    /// `fentry/tcp_sendmsg`): the probe falls back to its next hook. For a
    /// hook that misbehaves on some kernel, and for testing the fallbacks.
    #[arg(long = "kernel.disable-hook", value_name = "HOOK")]
    pub disable_hooks: Vec<String>,
}

#[derive(Args)]
pub struct CallSiteArgs {
    /// Where findings' call sites come from: uprobes on the C library of
    /// each flagged process from its first finding on, of every process, or
    /// none. Uprobes need CAP_SYS_ADMIN. (Formerly --call-sites.)
    #[arg(
        long = "call-sites.mode",
        alias = "call-sites",
        value_enum,
        default_value = "flagged"
    )]
    pub mode: callsites::uprobes::Mode,
    /// Most processes instrumented with call-site uprobes at once.
    #[arg(long = "call-sites.max-processes", default_value_t = 64)]
    pub max_instrumented: usize,
    /// Findings with call sites a process gives before its uprobes are
    /// detached (each probe hit costs it a trap); its later findings repeat
    /// those sites. 0 keeps them until the process exits.
    #[arg(long = "call-sites.findings", default_value_t = 1)]
    pub findings: u32,
    /// How long a flagged process must run on after its first finding
    /// before it is probed: attaching and detaching uprobes take the kernel
    /// hundreds of milliseconds, during which every connect and getsockopt
    /// of the process traps. 0 probes at once. Default: 1s for run, 0 for
    /// trace.
    #[arg(long = "call-sites.delay", value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
}

#[derive(Args)]
pub struct ContainerArgs {
    /// Where the host's root is: container names, images and pods are read
    /// from the runtimes' state under it (containerd, CRI-O, Docker, Podman),
    /// e.g. /host when the host's runtime directories are mounted there.
    #[arg(long = "containers.root", default_value = "/")]
    pub root: PathBuf,
}

#[derive(Args)]
pub struct TraceArgs {
    /// Print JSON lines instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
    /// Only findings of these processes (repeatable); no other process is
    /// instrumented for call sites.
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Only findings of processes with these comms (repeatable); no other
    /// process is instrumented for call sites.
    #[arg(long)]
    pub comm: Vec<String>,
    /// Also print the captured user stack of each call site.
    #[arg(long)]
    pub stacks: bool,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

impl KernelArgs {
    pub fn options(&self, detail_default: Duration, counted: kernel::Counted) -> kernel::Options {
        kernel::Options {
            max_attempts: self.max_attempts,
            detail_interval: self.detail_interval.unwrap_or(detail_default),
            disabled_hooks: self.disable_hooks.clone(),
            counted,
        }
    }
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
