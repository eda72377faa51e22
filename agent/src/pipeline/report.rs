//! A finding as users see it: a kernel finding record, decoded and
//! attributed to its process.

use std::{sync::Arc, time::SystemTime};

use serde::Serialize;
use sockerr_common::FindingKind;

use super::{
    attribution::{ExeSource, Process},
    callsites::CallSites,
    record::Record,
};
use crate::decode;

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: &'static str,
    /// Process (thread group) id.
    pub pid: u32,
    /// Thread that made the call.
    pub tid: u32,
    pub comm: String,
    /// The executable: a full path from /proc, or (`exe_source: kernel`) the
    /// file name the kernel took; null when neither is known (`exe_error`).
    pub exe: Option<String>,
    pub exe_source: Option<ExeSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_error: Option<String>,
    pub cgroup: Option<String>,
    /// Why `cgroup` (and so the container and pod) is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_error: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// The container's name (in its pod, for Kubernetes) and image, and the
    /// pod's name and namespace, from the container runtime's state.
    pub container: Option<String>,
    pub image: Option<String>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Why a container known by its id (`container_id`) has no name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_error: Option<String>,
    /// The node (host) the process runs on.
    pub node: Option<Arc<str>>,
    /// The process's fd for the socket; null if it was closed first.
    pub fd: Option<i32>,
    pub remote: String,
    /// The errno of the failed connect (e.g. `ECONNREFUSED`); null when the
    /// connect succeeded.
    pub errno: Option<String>,
    /// `SO_ERROR` values read after the outcome was decided, in order.
    pub so_error_reads: Vec<i32>,
    /// Total decided `SO_ERROR` reads (more may have happened than are kept).
    pub so_error_read_count: u8,
    /// The call that raised the finding: getsockopt, send or recv.
    pub syscall: &'static str,
    /// Where the attempt's connect() and SO_ERROR reads were made.
    pub call_sites: CallSites,
    #[serde(rename = "time", serialize_with = "decode::serialize_rfc3339")]
    pub at: SystemTime,
}

impl Finding {
    pub fn new(
        record: &Record,
        process: &Arc<Process>,
        fd: Option<i32>,
        call_sites: CallSites,
        at: SystemTime,
    ) -> Self {
        let raw = &record.raw;
        Self {
            kind: record.kind,
            severity: record.kind.severity(),
            pid: raw.tgid,
            tid: raw.tid,
            comm: decode::comm(&raw.comm),
            exe: process.exe.clone(),
            exe_source: process.exe_source,
            exe_error: process.exe_error.clone(),
            cgroup: process.cgroup.clone(),
            cgroup_error: process.cgroup_error.clone(),
            container_id: process.container.id.clone(),
            pod_uid: process.container.pod_uid.clone(),
            container: process.container.name.clone(),
            image: process.container.image.clone(),
            pod: process.container.pod.clone(),
            namespace: process.container.namespace.clone(),
            container_error: process.container_error.clone(),
            node: process.node.clone(),
            fd,
            remote: decode::endpoint(&raw.remote)
                .map_or_else(|| "unknown".into(), |a| a.to_string()),
            errno: (raw.errno != 0).then(|| decode::errno_name(raw.errno)),
            so_error_reads: record.reads().to_vec(),
            so_error_read_count: raw.nreads,
            syscall: record.trigger.into(),
            call_sites,
            at,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        self.kind.into()
    }

    /// One human line, e.g. for `sockerr trace`.
    pub fn human(&self) -> String {
        let reads: Vec<String> = self.so_error_reads.iter().map(i32::to_string).collect();
        format!(
            "{} {} {} pid={} comm={:?} exe={}{} fd={} remote={} errno={} so_error_reads=[{}] syscall={} sites: {}",
            decode::rfc3339(self.at),
            self.severity.to_uppercase(),
            self.kind_name(),
            self.pid,
            self.comm,
            self.exe
                .clone()
                .unwrap_or_else(|| format!("({})", self.exe_error.as_deref().unwrap_or("unknown"))),
            self.where_human(),
            self.fd.map_or_else(|| "-".into(), |fd| fd.to_string()),
            self.remote,
            self.errno.as_deref().unwrap_or("-"),
            reads.join(","),
            self.syscall,
            self.call_sites.summary(&self.so_error_reads),
        )
    }

    /// ` pod=<namespace>/<pod> container=<name> image=<image>`, each part
    /// only when known; a container known by its id only shows that.
    fn where_human(&self) -> String {
        let mut out = String::new();
        if let Some(pod) = &self.pod {
            let namespace = self.namespace.as_deref().unwrap_or("?");
            out += &format!(" pod={namespace}/{pod}");
        }
        match (&self.container, &self.container_id) {
            (Some(name), _) => out += &format!(" container={name}"),
            (None, Some(id)) => out += &format!(" container_id={}", &id[..id.len().min(12)]),
            (None, None) => {}
        }
        if let Some(image) = &self.image {
            out += &format!(" image={image}");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use sockerr_common::{FindingRecord, Trigger};

    use super::*;
    use crate::pipeline::containers::Container;

    /// A record as the kernel sends it.
    pub fn record(pid: u32, kind: FindingKind) -> Record {
        let mut raw = FindingRecord::zeroed();
        raw.tgid = pid;
        raw.tid = pid;
        raw.errno = 111;
        raw.reads = [111, 0, 0, 0];
        raw.nreads = 2;
        raw.kind = kind as u8;
        raw.trigger = Trigger::Getsockopt as u8;
        raw.comm[..6].copy_from_slice(b"client");
        Record::decode(bytemuck(&raw)).unwrap()
    }

    fn bytemuck(raw: &FindingRecord) -> &[u8] {
        // SAFETY: plain old data, read as bytes.
        unsafe {
            std::slice::from_raw_parts((raw as *const FindingRecord).cast(), size_of_val(raw))
        }
    }

    pub fn finding(pid: u32, kind: FindingKind, secs: u64) -> Finding {
        let process = Arc::new(Process {
            exe: Some("/usr/bin/client".into()),
            exe_source: Some(ExeSource::Proc),
            ..Default::default()
        });
        Finding::new(
            &record(pid, kind),
            &process,
            None,
            CallSites::default(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        )
    }

    #[test]
    fn a_finding_in_a_pod_names_it() {
        let container = Container {
            id: Some("90f4ab8492725c41e9516a37a4fab64932e4afad611fb05b3aacafe8f41fdee1".into()),
            pod_uid: Some("39a328fb-fd7e-416d-a003-073e2ba2aa4e".into()),
            name: Some("nginx".into()),
            image: Some("docker.io/library/nginx:1.22".into()),
            pod: Some("web-0".into()),
            namespace: Some("shop".into()),
        };
        let process = |container: Container| {
            Arc::new(Process {
                exe: Some("/usr/sbin/nginx".into()),
                exe_source: Some(ExeSource::Proc),
                container: Arc::new(container),
                ..Default::default()
            })
        };
        let record = record(42, FindingKind::SoErrorMasked);
        let f = Finding::new(
            &record,
            &process(container.clone()),
            None,
            CallSites::default(),
            record.at(),
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["container"], "nginx");
        assert_eq!(json["image"], "docker.io/library/nginx:1.22");
        assert_eq!(json["pod"], "web-0");
        assert_eq!(json["namespace"], "shop");
        assert_eq!(json["container_id"], container.id.clone().unwrap());
        assert_eq!(json["pod_uid"], "39a328fb-fd7e-416d-a003-073e2ba2aa4e");
        assert!(
            f.human().contains(
                "exe=/usr/sbin/nginx pod=shop/web-0 container=nginx \
                 image=docker.io/library/nginx:1.22 fd=-"
            ),
            "{}",
            f.human()
        );
        // Known by its cgroup ids only: the short id stands in.
        let ids_only = Container {
            id: container.id,
            pod_uid: container.pod_uid,
            ..Container::default()
        };
        let f = Finding::new(
            &record,
            &process(ids_only),
            None,
            CallSites::default(),
            record.at(),
        );
        assert!(
            f.human()
                .contains("exe=/usr/sbin/nginx container_id=90f4ab849272 fd=-"),
            "{}",
            f.human()
        );
        let json = serde_json::to_value(&f).unwrap();
        assert!(json["container"].is_null() && json["pod"].is_null());
    }

    #[test]
    fn a_finding_names_what_users_need() {
        let f = finding(42, FindingKind::SoErrorMasked, 5);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["kind"], "so_error_masked");
        assert_eq!(json["errno"], "ECONNREFUSED");
        assert_eq!(json["so_error_reads"], serde_json::json!([111, 0]));
        assert_eq!(json["syscall"], "getsockopt");
        assert_eq!(json["exe_source"], "proc");
        assert_eq!(json["time"], "1970-01-01T00:00:05.000Z");
        assert!(json.get("at").is_none() && json.get("exe_error").is_none());
        assert!(
            f.human().contains(
                "CRITICAL so_error_masked pid=42 comm=\"client\" exe=/usr/bin/client fd=-"
            )
        );
    }
}
