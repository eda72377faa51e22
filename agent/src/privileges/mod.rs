//! Least privilege, by process (docs/design.md §5).
//!
//! - The collector (`sockerr run`): once the probes are attached it keeps
//!   only what reading its maps, attributing processes and (unless call
//!   sites are off) attaching uprobes to flagged processes needs, and,
//!   permitted but not effective, CAP_SETUID and CAP_SETGID, which the
//!   thread that starts the web server raises for that moment alone.
//! - The web server (`sockerr serve`, the only process that reads the
//!   network): another user ([`ServerUser`], not root), no capability,
//!   `no_new_privs`, not dumpable, and a seccomp filter ([`seccomp`]).

pub mod seccomp;

use std::{fmt, io, str::FromStr};

use anyhow::{Context as _, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};

/// Reading maps and ring buffers through the fds the agent already holds
/// needs no capability; CAP_SYS_PTRACE lets it read /proc/<pid>/exe,
/// /proc/<pid>/fd and /proc/<pid>/maps of the processes it flags.
const ATTRIBUTE: Capability = Capability::CAP_SYS_PTRACE;
/// Creating a uprobe needs CAP_SYS_ADMIN since Linux 6.16 (and 6.12.y,
/// 6.6.y stable: "perf: Require CAP_SYS_ADMIN for uprobes"); it also covers
/// attaching the BPF program to it.
pub const UPROBES: Capability = Capability::CAP_SYS_ADMIN;
/// Starting the web server as [`ServerUser`]: setgid(), setgroups() and
/// setuid() in the child before it executes.
const SET_ID: [Capability; 2] = [Capability::CAP_SETUID, Capability::CAP_SETGID];

/// Which of `wanted` this process does not hold effective, by name.
pub fn missing_effective(wanted: &[Capability]) -> Result<Vec<String>, String> {
    let effective = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
    Ok(wanted
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect())
}

/// Whether the agent can create uprobes now.
pub fn can_create_uprobes() -> bool {
    caps::has_cap(None, CapSet::Effective, UPROBES).unwrap_or(false)
}

/// Keeps what the collector needs from now on: CAP_SYS_PTRACE, CAP_SYS_ADMIN
/// when `keep_uprobes`, and CAP_SETUID and CAP_SETGID permitted only (not
/// effective) when `start_server`. Capabilities are per thread: this runs
/// before the collector starts any other thread, which inherit the sets.
pub fn drop_after_attach(keep_uprobes: bool, start_server: bool) -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let effective: CapsHashSet = permitted
        .iter()
        .copied()
        .filter(|c| *c == ATTRIBUTE || (keep_uprobes && *c == UPROBES))
        .collect();
    let kept: CapsHashSet = permitted
        .into_iter()
        .filter(|c| effective.contains(c) || (start_server && SET_ID.contains(c)))
        .collect();
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clearing {set:?} capabilities"))?;
    }
    caps::set(None, CapSet::Effective, &effective).context("dropping effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("dropping permitted capabilities")?;
    tracing::info!(
        effective = ?effective,
        permitted = ?kept,
        "dropped the other capabilities after attaching"
    );
    Ok(())
}

/// Makes CAP_SETUID and CAP_SETGID effective in the calling thread (the
/// one about to start the web server), or lowers them again.
pub fn set_id(raise: bool) -> io::Result<()> {
    for cap in SET_ID {
        let permitted = caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false);
        let result = match (raise, permitted) {
            (true, true) => caps::raise(None, CapSet::Effective, cap),
            (false, true) => caps::drop(None, CapSet::Effective, cap),
            (_, false) => Ok(()),
        };
        result.map_err(|e| io::Error::other(format!("{cap}: {e}")))?;
    }
    Ok(())
}

/// Who the web server runs as (`--web.server-user`): `UID[:GID]` or
/// `NAME[:GROUP]`, never root. Without a group, the user's own (for a
/// name) or the same number (for a uid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for ServerUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)
    }
}

impl FromStr for ServerUser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let (uid, own_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, uid),
            Err(_) => match nix::unistd::User::from_name(user) {
                Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
                Ok(None) => return Err(format!("no user {user:?}")),
                Err(e) => return Err(format!("looking user {user:?} up: {e}")),
            },
        };
        let gid = match group {
            None => own_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => match nix::unistd::Group::from_name(g) {
                    Ok(Some(g)) => g.gid.as_raw(),
                    Ok(None) => return Err(format!("no group {g:?}")),
                    Err(e) => return Err(format!("looking group {g:?} up: {e}")),
                },
            },
        };
        if uid == 0 || gid == 0 {
            return Err("the web server must not run as root (uid or gid 0)".into());
        }
        Ok(Self { uid, gid })
    }
}

impl ServerUser {
    /// Whether starting the server means changing user: not when the
    /// collector already runs as that user and group.
    pub fn needs_set_id(&self) -> bool {
        nix::unistd::geteuid().as_raw() != self.uid || nix::unistd::getegid().as_raw() != self.gid
    }
}

/// What `sockerr check` says of the web server, and what `run` requires:
/// that this process can start it as `user`, and that the kernel can
/// confine it.
pub fn server_requirement(user: &ServerUser) -> Result<String, String> {
    if !seccomp::supported() {
        return Err(
            "the kernel has no seccomp filters (CONFIG_SECCOMP_FILTER): the web server cannot \
             be confined"
                .into(),
        );
    }
    if user.needs_set_id() {
        let missing = missing_effective(&SET_ID)?;
        if !missing.is_empty() {
            return Err(format!(
                "missing {}: the web server is started as {user} (--web.server-user); run as \
                 root, or grant CAP_SETUID and CAP_SETGID",
                missing.join(", ")
            ));
        }
    }
    Ok(format!(
        "the web server (the only process reading the network) will run as {user} with no \
         capabilities, no_new_privs and a seccomp filter ({} system calls; any other kills it)",
        seccomp::allowed()
    ))
}

/// In the child between fork and exec (async-signal-safe calls only),
/// after the standard library's setgid/setgroups/setuid: no ambient
/// capabilities, SIGKILL when the thread that started it ends (the
/// collector's way to stop a server it may not signal: it runs as another
/// user, and the collector keeps no CAP_KILL), and no privilege from
/// executing anything.
///
/// # Safety
/// Only between fork and exec.
pub unsafe fn in_server_child(keep: [i32; 2]) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: prctl and fcntl on integers: async-signal-safe.
    unsafe {
        // EINVAL on kernels without ambient capabilities (before 4.3).
        let _ = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        // After the setuid: a change of credentials clears it.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        for fd in keep {
            check(libc::fcntl(fd, libc::F_SETFD, 0))?;
        }
    }
    Ok(())
}

/// In the web server, before it reads anything: closes every descriptor
/// but the standard streams and `keep` (whatever started the collector may
/// have left some open, and the server is to hold nothing else), refuses
/// to go on with any privilege left, and makes itself undumpable (no core
/// file with the TLS key in it; other processes of its user cannot ptrace
/// it or read its memory).
pub fn confine_server(keep: [i32; 2]) -> Result<()> {
    let close = |from: u32, to: u32| {
        // SAFETY: close_range(2) of descriptors nothing here uses.
        match unsafe { libc::syscall(libc::SYS_close_range, from, to, 0) } {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!(
                "closing inherited descriptors: {}",
                io::Error::last_os_error()
            )),
        }
    };
    let mut keep = keep.map(|fd| fd as u32);
    keep.sort_unstable();
    let mut from = 3;
    for fd in keep {
        if fd > from {
            close(from, fd - 1)?;
        }
        from = from.max(fd + 1);
    }
    close(from, u32::MAX)?;
    let (uid, euid) = (nix::unistd::getuid(), nix::unistd::geteuid());
    if uid.is_root() || euid.is_root() {
        bail!(
            "sockerr serve does not run as root: it is the web server that `sockerr run` starts \
             as --web.server-user"
        );
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Ambient] {
        let held = caps::read(None, set).context("reading capabilities")?;
        if !held.is_empty() {
            bail!("sockerr serve holds {set:?} capabilities {held:?}: refusing to serve");
        }
    }
    let groups = nix::unistd::getgroups().context("reading supplementary groups")?;
    let gid = nix::unistd::getgid();
    if groups.iter().any(|g| *g != gid) {
        bail!("sockerr serve has supplementary groups {groups:?}: refusing to serve");
    }
    // The standard library's handlers of SIGSEGV and SIGBUS (which tell a
    // stack overflow) reset themselves with sigaction, which the filter
    // refuses: a crash would end as SIGSYS, as if the filter had caught an
    // exploit. Without them a crash ends as the crash it is.
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: the default action, no handler.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        bail!("PR_SET_DUMPABLE: {}", io::Error::last_os_error());
    }
    // Its own name in ps and top (executed as /proc/self/exe it would be
    // "exe").
    // SAFETY: a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"sockerr-server".as_ptr(), 0, 0, 0) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_user_is_never_root() {
        assert_eq!(
            "65534".parse(),
            Ok(ServerUser {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(
            "1000:2000".parse(),
            Ok(ServerUser {
                uid: 1000,
                gid: 2000
            })
        );
        // Debian's nobody and nogroup.
        assert_eq!(
            "nobody:nogroup".parse(),
            Ok(ServerUser {
                uid: 65534,
                gid: 65534
            })
        );
        for root in ["0", "root", "65534:0", "nobody:root", "0:65534"] {
            let e = root.parse::<ServerUser>().unwrap_err();
            assert!(e.contains("must not run as root"), "{root}: {e}");
        }
        assert!(
            "no-such-user-here"
                .parse::<ServerUser>()
                .unwrap_err()
                .contains("no user")
        );
    }
}
