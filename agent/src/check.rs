//! `sockerr check`: can this host run the agent, which hook observes each
//! thing, and if something is missing, why.

use std::path::Path;

use caps::Capability;

use crate::{
    kernel::{self, Kernel, KernelBtf},
    privileges::{self, ServerUser},
    proc,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Optional, and not available here: the agent runs without it.
    Absent,
    /// The agent cannot run.
    Missing,
}

pub struct Requirement {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn req(name: impl Into<String>, result: Result<String, String>) -> Requirement {
    let (status, detail) = match result {
        Ok(d) => (Status::Ok, d),
        Err(d) => (Status::Missing, d),
    };
    Requirement {
        name: name.into(),
        status,
        detail,
    }
}

/// Capabilities loading and attaching the probes needs: tracing programs
/// need CAP_PERFMON, cgroup programs CAP_NET_ADMIN, both CAP_BPF.
const CAPABILITIES: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_NET_ADMIN,
];

fn privileges() -> Result<String, String> {
    let missing = privileges::missing_effective(&CAPABILITIES)?;
    if missing.is_empty() {
        Ok("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are effective".into())
    } else {
        Err(format!(
            "missing {}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
            missing.join(", ")
        ))
    }
}

/// The kernel's BTF, read once by whoever checks and then loads; an error
/// says what the kernel lacks.
pub fn kernel_btf() -> Result<KernelBtf, String> {
    KernelBtf::read()
        .and_then(|btf| btf.offsets.kernel_offsets().map(|_| btf))
        .map_err(|e| format!("{e:#} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"))
}

/// Every requirement, in order; with `server`, that the web server can be
/// started as that user and confined; with `options`, also loads the
/// programs into the kernel and attaches each probe through the hook it
/// would use (detached again at once).
pub fn requirements(
    btf: &Result<KernelBtf, String>,
    options: Option<&kernel::Options>,
    server: Option<&ServerUser>,
) -> Vec<Requirement> {
    let mut reqs = vec![req("privileges", privileges())];
    if let Some(user) = server {
        reqs.push(req("web server", privileges::server_requirement(user)));
    }
    reqs.push(req(
        "kernel BTF",
        btf.as_ref()
            .map(|_| {
                format!(
                    "{} describes the structs the probes read",
                    kernel::btf::VMLINUX
                )
            })
            .map_err(Clone::clone),
    ));
    reqs.push(req(
        "cgroup v2",
        proc::cgroup2_root()
            .map(|root| format!("mounted at {}", root.display()))
            .map_err(|e| format!("{e:#}")),
    ));
    let tracefs = Path::new("/sys/kernel/tracing/events").is_dir();
    reqs.push(req(
        "tracefs",
        Ok(format!(
            "{} (not required: the probes attach through BTF and cgroups)",
            if tracefs { "mounted" } else { "not mounted" }
        )),
    ));
    reqs.push(req(
        "call sites (optional)",
        Ok(match crate::pipeline::callsites::uprobes::unavailable() {
            None => "uprobes can be attached to flagged processes".into(),
            Some(why) => format!("findings will carry no call sites: {why}"),
        }),
    ));
    let Some(options) = options else {
        return reqs;
    };
    let (Ok(btf), true) = (btf, reqs.iter().all(|r| r.status == Status::Ok)) else {
        reqs.push(req(
            "eBPF load",
            Err("not tried: fix the requirements above first".into()),
        ));
        return reqs;
    };
    let attached =
        Kernel::load(btf, options).and_then(|mut kernel| kernel.try_attach(btf, options));
    match attached {
        Ok(attached) => {
            for (probe, result) in attached.iter() {
                reqs.push(Requirement {
                    name: format!("probe {}", probe.name),
                    status: match (result, probe.required) {
                        (Ok(_), _) => Status::Ok,
                        (Err(_), true) => Status::Missing,
                        (Err(_), false) => Status::Absent,
                    },
                    detail: match result {
                        Ok(hook) => format!("{}: {}", hook.attach, probe.observes),
                        Err(why) => format!("no hook works here ({why}); lost: {}", probe.observes),
                    },
                });
            }
        }
        Err(e) => reqs.push(req("eBPF load", Err(format!("{e:#}")))),
    }
    reqs
}

/// Writes every requirement to `out`; true when the agent can run. A
/// reader that went away (`sockerr check | head -5`) gets no more lines, and
/// the verdict stands.
pub fn report(reqs: &[Requirement], mut out: impl std::io::Write) -> bool {
    for r in reqs {
        let status = match r.status {
            Status::Ok => "ok",
            Status::Absent => "absent",
            Status::Missing => "MISSING",
        };
        if writeln!(out, "{status:<8} {:<28} {}", r.name, r.detail).is_err() {
            break;
        }
    }
    reqs.iter().all(|r| r.status != Status::Missing)
}

/// The static checks of `sockerr check`, as one error for `run` (with the
/// web server's user) and `trace`.
pub fn require(btf: &Result<KernelBtf, String>, server: Option<&ServerUser>) -> anyhow::Result<()> {
    let missing: Vec<_> = requirements(btf, None, server)
        .into_iter()
        .filter(|r| r.status == Status::Missing)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "this host cannot run sockerr:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// Standard output whose reader took `room` bytes and went away.
    struct ClosedAfter {
        room: usize,
        lines: usize,
    }

    impl io::Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.room {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.room -= buf.len();
            self.lines += buf.iter().filter(|&&b| b == b'\n').count();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_went_away_ends_the_report_not_the_verdict() {
        let reqs: Vec<Requirement> = (0..10)
            .map(|i| req(format!("requirement {i}"), Ok("fine".into())))
            .chain([req("last", Err("missing".into()))])
            .collect();
        let mut out = ClosedAfter {
            room: 200,
            lines: 0,
        };
        assert!(!report(&reqs, &mut out), "the missing one still counts");
        assert!(out.lines > 0 && out.lines < reqs.len(), "{}", out.lines);
        assert!(report(&reqs[..3], ClosedAfter { room: 0, lines: 0 }));
    }
}
