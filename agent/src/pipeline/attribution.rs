//! Who made the call: executable, cgroup and container of a finding's
//! process, resolved once per process and kept by (pid, start time), so a
//! reused pid is a new process and a steady stream of findings costs no
//! /proc reads. While the process lives, /proc gives the executable's path;
//! once it has exited, the identity the kernel took with the finding record
//! (the executable's path, its cgroup id) stands in, and the finding says
//! which (`exe_source`).

use std::{collections::HashMap, sync::Arc, time::Instant};

use serde::Serialize;
use sockerr_common::FindingRecord;

use super::{
    cgroups::CgroupNames,
    containers::{self, Container, Containers},
};
use crate::{
    decode,
    proc::{Proc, Unreadable},
};

/// Where a finding's `exe` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExeSource {
    /// /proc/<pid>/exe while the process ran: the full path.
    Proc,
    /// Taken by the kernel with the finding (the process had exited, or
    /// /proc could not be read): the path within the process's mount
    /// namespace, or its end when it was too long (`exe_error` says so).
    Kernel,
}

/// A process as findings name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub exe: Option<String>,
    pub exe_source: Option<ExeSource>,
    /// Why `exe` is missing, or why it is only the end of the path.
    pub exe_error: Option<String>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Why `cgroup` is missing.
    pub cgroup_error: Option<String>,
    pub container: Arc<Container>,
    /// Why a container known by its id has no name, image or pod.
    pub container_error: Option<String>,
    /// The node the process runs on (`--findings.node-name`).
    pub node: Option<Arc<str>>,
}

/// Processes remembered; past this the least recently used are forgotten.
const MAX_PROCESSES: usize = 8192;

pub struct Attributor {
    processes: HashMap<(u32, u64), (Instant, Arc<Process>)>,
    cgroups: CgroupNames,
    containers: Containers,
    node: Option<Arc<str>>,
}

impl Attributor {
    /// `node`: the name of the node every process here runs on.
    pub fn new(cgroups: CgroupNames, containers: Containers, node: Option<Arc<str>>) -> Self {
        Self {
            processes: HashMap::new(),
            cgroups,
            containers,
            node,
        }
    }

    /// The process that made the call of `record`.
    pub fn attribute(&mut self, record: &FindingRecord, now: Instant) -> Arc<Process> {
        let key = (record.tgid, record.start_boot_ns);
        if let Some((seen, known)) = self.processes.get_mut(&key) {
            *seen = now;
            return known.clone();
        }
        let process = Arc::new(self.resolve(record, now));
        if self.processes.len() >= MAX_PROCESSES {
            containers::forget_older_half(&mut self.processes, |(used, _)| *used);
        }
        self.processes.insert(key, (now, process.clone()));
        process
    }

    /// `now` is no later than the record was read: its cgroup was in use.
    fn resolve(&mut self, record: &FindingRecord, now: Instant) -> Process {
        let live = Proc::open_started(record.tgid, record.start_boot_ns).map(|p| p.identity());
        let kernel_exe = decode::exe_path(record);
        let (proc_exe, cgroup) = match live {
            Ok(identity) => (identity.exe, identity.cgroup),
            Err(why) => (Err(why), None),
        };
        let (exe, exe_source, exe_error) = match (proc_exe, kernel_exe) {
            (Ok(path), _) => (Some(path), Some(ExeSource::Proc), None),
            (Err(why), None) => (None, None, Some(exe_note(record.tgid, &why))),
            (Err(why), Some(kernel)) => {
                // Having exited is no error when the kernel named it.
                let error = match (kernel.truncated, why) {
                    (true, _) => Some(decode::TRUNCATED_EXE.to_owned()),
                    (false, Unreadable::Exited) => None,
                    (false, why) => Some(exe_note(record.tgid, &why)),
                };
                (Some(kernel.path), Some(ExeSource::Kernel), error)
            }
        };
        // A process exiting while it is read may lose its cgroup file
        // first: the kernel's cgroup id names it then. One read from /proc
        // names the id for whoever asks after the cgroup is gone.
        let cgroup = match cgroup {
            Some(path) => {
                self.cgroups.remember(record.cgroup_id, &path);
                Some(path)
            }
            None => self.cgroups.name(record.cgroup_id, now),
        };
        let cgroup_error = cgroup.is_none().then(|| match record.cgroup_id {
            0 => "the kernel did not record the process's cgroup".to_owned(),
            id => {
                tracing::debug!(
                    pid = record.tgid,
                    cgroup_id = id,
                    "cgroup not in the v2 tree"
                );
                "the process's cgroup was removed before it could be named, and with it its \
                 container and pod"
                    .to_owned()
            }
        });
        let container = cgroup
            .as_deref()
            .map(|path| self.containers.resolve(path))
            .unwrap_or_default();
        let container_error = (container.id.is_some()
            && container.name.is_none()
            && container.pod.is_none())
        .then(|| {
            "no container runtime state on this node names this container (the agent reads \
             containerd's, CRI-O's, Docker's and Podman's under --containers.root)"
                .to_owned()
        });
        Process {
            exe,
            exe_source,
            exe_error,
            cgroup,
            cgroup_error,
            container,
            container_error,
            node: self.node.clone(),
        }
    }
}

/// Why the executable's full path is unknown, in a sentence; the error
/// itself goes to the debug log.
fn exe_note(pid: u32, why: &Unreadable) -> String {
    match why {
        Unreadable::Exited => "the process exited before the agent could name it".into(),
        Unreadable::Denied(what) => {
            tracing::debug!(pid, "{what}: permission denied");
            "permission denied reading /proc/<pid>/exe: the agent needs CAP_SYS_PTRACE for the \
             full path"
                .into()
        }
        Unreadable::Other(e) => {
            tracing::debug!(pid, "reading /proc/<pid>/exe: {e}");
            "the agent could not read /proc/<pid>/exe (its debug log says why)".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::proc;

    /// Container runtime state is read from a root holding none.
    fn attributor(cgroup_root: Option<std::path::PathBuf>) -> Attributor {
        Attributor::new(
            CgroupNames::new(cgroup_root),
            Containers::new("/nonexistent".into()),
            Some("node-1".into()),
        )
    }

    const CLIENT: &str = "/usr/local/bin/client";

    fn record(pid: u32) -> FindingRecord {
        let mut r = FindingRecord::zeroed();
        r.tgid = pid;
        r.exe[..CLIENT.len()].copy_from_slice(CLIENT.as_bytes());
        r.exe_len = CLIENT.len() as u16;
        r
    }

    #[test]
    fn a_live_process_is_read_from_proc_once() {
        let root = proc::cgroup2_root().ok();
        let mut a = attributor(root);
        let me = record(std::process::id());
        let p = a.attribute(&me, Instant::now());
        assert_eq!(p.exe_source, Some(ExeSource::Proc));
        assert_eq!(
            p.exe.as_deref().map(std::path::Path::new),
            std::env::current_exe().ok().as_deref()
        );
        assert!(p.cgroup.is_some());
        let again = a.attribute(&me, Instant::now());
        assert!(Arc::ptr_eq(&p, &again), "cached by (pid, start)");
    }

    #[test]
    fn an_exited_process_is_named_by_what_the_kernel_took() {
        let root = proc::cgroup2_root().unwrap();
        let own = Proc::open(std::process::id())
            .unwrap()
            .identity()
            .cgroup
            .unwrap();
        let mut gone = record(u32::MAX >> 1);
        gone.cgroup_id = std::fs::metadata(root.join(own.trim_start_matches('/')))
            .unwrap()
            .ino();
        let p = attributor(Some(root)).attribute(&gone, Instant::now());
        assert_eq!(p.exe.as_deref(), Some(CLIENT));
        assert_eq!(p.exe_source, Some(ExeSource::Kernel));
        assert_eq!(p.exe_error, None, "an exited process is not an error");
        assert_eq!(p.cgroup.as_deref(), Some(own.as_str()));
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let mut me = record(std::process::id());
        me.start_boot_ns = 1_000_000_000; // started a second after boot: not us
        let p = attributor(None).attribute(&me, Instant::now());
        assert_eq!(p.exe_source, Some(ExeSource::Kernel));
        assert_eq!(p.exe.as_deref(), Some(CLIENT));
    }

    #[test]
    fn a_path_too_long_for_the_kernel_says_so() {
        let mut gone = record(u32::MAX >> 1);
        gone.exe_truncated = 1;
        let p = attributor(None).attribute(&gone, Instant::now());
        assert_eq!(
            p.exe.as_deref(),
            Some(concat!("…", "/usr/local/bin/client"))
        );
        assert_eq!(p.exe_error.as_deref(), Some(decode::TRUNCATED_EXE));
    }

    #[test]
    fn nothing_known_says_why() {
        let mut gone = record(u32::MAX >> 1);
        gone.exe_len = 0;
        let p = attributor(None).attribute(&gone, Instant::now());
        assert_eq!((p.exe.as_deref(), p.exe_source), (None, None));
        assert_eq!(
            p.exe_error.as_deref(),
            Some("the process exited before the agent could name it")
        );
        assert_eq!(p.cgroup, None);
    }
}
