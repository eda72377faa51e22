//! Who made the call: executable, cgroup, container and fd, from /proc, read
//! when the finding arrives. The process may already be gone; then we say so
//! rather than guess.

use std::{
    collections::HashMap,
    fs, io,
    path::PathBuf,
    time::{Duration, Instant},
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Process {
    pub exe: Option<String>,
    pub exe_error: Option<String>,
    pub cgroup: Option<String>,
    pub container: Container,
    pub fd: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// 64-hex container id (docker, containerd, cri-o, podman).
    pub id: Option<String>,
    /// Kubernetes pod UID, dashed form.
    pub pod_uid: Option<String>,
}

/// How long a process's identity is remembered for its later findings.
const REMEMBER: Duration = Duration::from_secs(1);
/// Past this many remembered processes, the stale ones are forgotten.
const REMEMBER_MAX: usize = 4096;

/// Attributes findings to processes. Within a pass over queued findings
/// each process is read once (its identity, and all its socket fds: a burst
/// of findings costs one scan of its fds, not one per finding). A process is
/// remembered briefly: one that exits right after a finding keeps its exe
/// and cgroup on the findings that follow it within [`REMEMBER`]
/// (instrumenting it for call sites delays those by milliseconds).
#[derive(Default)]
pub struct Attributor {
    recent: HashMap<u32, (Instant, Process)>,
    pass: HashMap<u32, (Process, HashMap<u64, i32>)>,
}

impl Attributor {
    /// Starts a pass: processes are read afresh.
    pub fn new_pass(&mut self) {
        self.pass.clear();
    }

    /// Process `tgid`, with its fd for the socket `socket_inode`.
    pub fn attribute(&mut self, tgid: u32, socket_inode: u64) -> Process {
        if !self.pass.contains_key(&tgid) {
            let (found, fds) = read_process(&PathBuf::from(format!("/proc/{tgid}")));
            let identity = self.attribute_at(found, tgid, Instant::now());
            self.pass.insert(tgid, (identity, fds));
        }
        let (identity, fds) = &self.pass[&tgid];
        Process {
            fd: fds.get(&socket_inode).copied(),
            ..identity.clone()
        }
    }

    fn attribute_at(&mut self, found: Process, tgid: u32, now: Instant) -> Process {
        if found.exe.is_some() {
            if self.recent.len() >= REMEMBER_MAX {
                self.recent.retain(|_, (t, _)| now - *t < REMEMBER);
            }
            self.recent.insert(tgid, (now, found.clone()));
            return found;
        }
        let exited = found
            .exe_error
            .as_deref()
            .is_some_and(|e| e.starts_with(EXITED));
        match self.recent.get(&tgid) {
            Some((seen, known)) if exited && now - *seen < REMEMBER => Process {
                fd: None,
                ..known.clone()
            },
            _ => found,
        }
    }
}

const EXITED: &str = "process exited before it could be attributed";

/// A process's identity (fd unset), and its socket fds by inode.
fn read_process(proc_dir: &std::path::Path) -> (Process, HashMap<u64, i32>) {
    let (exe, exe_error) = match fs::read_link(proc_dir.join("exe")) {
        Ok(p) => (Some(p.to_string_lossy().into_owned()), None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Some(EXITED.to_owned())),
        Err(e) => (
            None,
            Some(format!("reading {}/exe: {e}", proc_dir.display())),
        ),
    };
    let cgroup = fs::read_to_string(proc_dir.join("cgroup"))
        .ok()
        .and_then(|s| unified_cgroup(&s).map(str::to_owned));
    let container = cgroup.as_deref().map(container).unwrap_or_default();
    let process = Process {
        exe,
        exe_error,
        cgroup,
        container,
        fd: None,
    };
    (process, socket_fds(proc_dir))
}

/// The cgroup v2 path from /proc/<pid>/cgroup (the `0::` line).
fn unified_cgroup(contents: &str) -> Option<&str> {
    contents.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The process's socket fds by socket inode (links `socket:[inode]`).
fn socket_fds(proc_dir: &std::path::Path) -> HashMap<u64, i32> {
    let Ok(dir) = fs::read_dir(proc_dir.join("fd")) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let link = fs::read_link(entry.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((inode, entry.file_name().to_str()?.parse().ok()?))
        })
        .collect()
}

/// Container id and pod UID from the shapes runtimes give cgroup paths:
/// `/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, cgroupfs `/kubepods/.../pod<uid>/<id>`
/// and systemd `kubepods-...-pod<uid_with_underscores>.slice`.
pub fn container(path: &str) -> Container {
    let mut found = Container::default();
    for part in path.split('/') {
        let stem = part
            .strip_suffix(".scope")
            .or(part.strip_suffix(".slice"))
            .unwrap_or(part);
        if let Some(uid) = stem
            .rsplit_once("-pod")
            .map(|(_, u)| u)
            .or(stem.strip_prefix("pod"))
            && is_pod_uid(uid)
        {
            found.pod_uid = Some(uid.replace('_', "-"));
        }
        let id = stem.rsplit(['-', ':']).next().unwrap_or(stem);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.id = Some(id.to_owned());
        }
    }
    found
}

fn is_pod_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_process_keeps_its_identity_briefly() {
        let mut a = Attributor::default();
        let t0 = Instant::now();
        let alive = Process {
            exe: Some("/usr/bin/client".into()),
            fd: Some(7),
            ..Process::default()
        };
        let gone = Process {
            exe_error: Some(EXITED.into()),
            ..Process::default()
        };
        assert_eq!(a.attribute_at(alive.clone(), 42, t0), alive);
        let later = a.attribute_at(gone.clone(), 42, t0 + Duration::from_millis(30));
        assert_eq!(later.exe.as_deref(), Some("/usr/bin/client"));
        assert_eq!(later.fd, None, "the fd is not remembered");
        assert_eq!(a.attribute_at(gone.clone(), 42, t0 + REMEMBER), gone);
        assert_eq!(a.attribute_at(gone.clone(), 43, t0), gone, "another pid");
        let denied = Process {
            exe_error: Some("reading /proc/42/exe: Permission denied".into()),
            ..Process::default()
        };
        assert_eq!(
            a.attribute_at(denied.clone(), 42, t0),
            denied,
            "only an exited process is filled in"
        );
    }

    const ID: &str = "3f4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "8d1a3c9e-2b4f-4e6a-9c7d-1f2e3d4c5b6a";

    #[test]
    fn container_ids_from_real_cgroup_path_shapes() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            (format!("/docker/{ID}"), Some(ID), None),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID), None),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(ID),
                None,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Some(ID),
                Some(UID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
                Some(UID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
                Some(ID),
                Some(UID),
            ),
            (
                format!("/kubepods/pod{UID}/cri-containerd:{ID}"),
                Some(ID),
                Some(UID),
            ),
            (
                "/user.slice/user-1000.slice/session-2.scope".into(),
                None,
                None,
            ),
            ("/".into(), None, None),
        ];
        for (path, id, uid) in cases {
            let c = container(&path);
            assert_eq!(c.id.as_deref(), id, "{path}");
            assert_eq!(c.pod_uid.as_deref(), uid, "{path}");
        }
    }

    #[test]
    fn unified_line_of_a_hybrid_host() {
        let s = "12:pids:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n";
        assert_eq!(unified_cgroup(s), Some("/user.slice/x.scope"));
    }

    #[test]
    fn this_process_and_a_gone_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        let me = Attributor::default().attribute(std::process::id(), inode);
        assert_eq!(
            me.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert_eq!(me.fd, Some(std::os::fd::AsRawFd::as_raw_fd(&listener)));
        let (gone, fds) = read_process(std::path::Path::new("/proc/does-not-exist"));
        assert_eq!((gone.exe, fds.len()), (None, 0));
        assert!(gone.exe_error.unwrap().contains("exited"));
    }
}
