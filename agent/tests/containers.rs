//! Findings of processes in real containers (root): runc creates each
//! container, its cgroup and namespaces from a bundle laid out and
//! annotated as containerd's CRI plugin or CRI-O does it, and the finding
//! must name the pod, namespace, container and image the runtime recorded,
//! in `/findings`, the log line and `sockerr trace`. A clean twin in
//! another pod produces nothing.

mod support;

use serde_json::Value;
use support::{
    Agent, PATIENCE, Tracer, closed_port,
    container::{CgroupDriver, Container, HostRoot, Pod, Runtime, Spec, so_error_client},
    require_root,
};

const MASKED: &str = "so_error_masked";
const IO: &str = "io_after_failed_connect";

/// The client's arguments: libevent's double read (`masked`) or one read
/// (`clean`) against `port`, then linger.
fn client(port: u16, mode: &str, linger_ms: u32) -> Vec<String> {
    vec![port.to_string(), mode.into(), linger_ms.to_string()]
}

fn run(container: &Container) {
    let out = container.run();
    assert!(
        out.status.success(),
        "runc run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kinds(found: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = found.iter().map(|f| f["kind"].as_str().unwrap()).collect();
    kinds.sort();
    kinds
}

/// `f` names `container`, running as `name` with `image` in `pod`.
fn assert_names(f: &Value, container: &Container, pod: &Pod, name: &str, image: &str) {
    assert_eq!(f["container_id"], container.id.as_str(), "{f}");
    assert_eq!(f["cgroup"], container.cgroup.as_str(), "{f}");
    assert_eq!(f["pod_uid"], pod.uid.as_str(), "{f}");
    assert_eq!(f["pod"], pod.name.as_str(), "{f}");
    assert_eq!(f["namespace"], pod.namespace.as_str(), "{f}");
    assert_eq!(f["container"], name, "{f}");
    assert_eq!(f["image"], image, "{f}");
    // The program as the container sees it (/program), or the file name
    // the kernel took if it had exited.
    assert!(
        f["exe"].as_str().is_some_and(|e| e.ends_with("program")),
        "{f}"
    );
}

#[test]
fn a_containerd_pod_is_named_in_findings_and_log_lines() {
    if !require_root() {
        return;
    }
    let host = HostRoot::new("containerd");
    let agent = Agent::logged(&["--log.format=json", &host.flag()]);
    let port = closed_port();
    let (shop, twin) = (Pod::new("shop", "web-0"), Pod::new("shop", "web-1"));
    let image = "docker.io/library/nginx:1.22";
    let spec = |pod, args| Spec {
        runtime: Runtime::Containerd,
        driver: CgroupDriver::Systemd,
        pod,
        name: "nginx",
        image,
        program: so_error_client(),
        args,
    };
    // They linger so that the agent finds them alive.
    let buggy = Container::new(&host, &spec(&shop, client(port, "masked", 1000)));
    let clean = Container::new(&host, &spec(&twin, client(port, "clean", 1000)));
    run(&buggy);
    run(&clean);
    agent.barrier();

    let findings = agent.findings();
    let of = |c: &Container| -> Vec<Value> {
        findings
            .iter()
            .filter(|f| f["container_id"] == c.id.as_str())
            .cloned()
            .collect()
    };
    let found = of(&buggy);
    assert_eq!(kinds(&found), [IO, MASKED], "{findings:#?}");
    for f in &found {
        assert_names(f, &buggy, &shop, "nginx", image);
    }
    assert_eq!(of(&clean), Vec::<Value>::new(), "the clean twin");

    let lines: Vec<Value> = agent
        .log()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &Value| l["container_id"] == buggy.id.as_str())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one log line per (process, kind): {lines:#?}"
    );
    for line in &lines {
        assert_eq!(line["container"], "nginx", "{line}");
        assert_eq!(line["image"], image, "{line}");
        assert_eq!(line["pod"], "web-0", "{line}");
        assert_eq!(line["namespace"], "shop", "{line}");
        assert_eq!(line["pod_uid"], shop.uid.as_str(), "{line}");
    }
}

#[test]
fn a_crio_pod_is_named_in_sockerr_trace() {
    if !require_root() {
        return;
    }
    let host = HostRoot::new("crio");
    let tracer = Tracer::start_with(&[&host.flag()]);
    let port = closed_port();
    let api = Pod::new("payments", "api-7d9f8b6c5d-x2kqp");
    let twin = Pod::new("payments", "api-7d9f8b6c5d-q8w4n");
    let image = "quay.io/acme/api:2.4.1";
    let spec = |pod, args| Spec {
        runtime: Runtime::CriO,
        driver: CgroupDriver::Cgroupfs,
        pod,
        name: "api",
        image,
        program: so_error_client(),
        args,
    };
    let buggy = Container::new(&host, &spec(&api, client(port, "masked", 1000)));
    let clean = Container::new(&host, &spec(&twin, client(port, "clean", 1000)));
    run(&buggy);
    run(&clean);
    tracer.barrier();

    let found = tracer.matching(|f| f["container_id"] == buggy.id.as_str());
    assert_eq!(kinds(&found), [IO, MASKED]);
    for f in &found {
        assert_names(f, &buggy, &api, "api", image);
    }
    assert_eq!(
        tracer.matching(|f| f["container_id"] == clean.id.as_str()),
        Vec::<Value>::new(),
        "the clean twin"
    );
}

/// Containerized clients that read SO_ERROR twice (libevent's mistake,
/// docs/design.md §1) and exit at once are named all the same, from the
/// cgroup id and executable name the kernel recorded with the finding
/// (docs/design.md §4): one job after another, as a CronJob's pods come,
/// each is named for itself.
#[test]
fn containers_that_exit_at_once_are_named() {
    if !require_root() {
        return;
    }
    let host = HostRoot::new("short-lived");
    let tracer = Tracer::start_with(&[&host.flag()]);
    let port = closed_port();
    let image = "registry.example/report:7";
    for (n, job) in ["report-29071540-kq2xw", "report-29071541-7hm5d"]
        .into_iter()
        .enumerate()
    {
        let pod = Pod::new("batch", job);
        let buggy = Container::new(
            &host,
            &Spec {
                runtime: Runtime::Containerd,
                driver: CgroupDriver::Cgroupfs,
                pod: &pod,
                name: "report",
                image,
                program: so_error_client(),
                args: client(port, "masked", 0),
            },
        );
        // The agent looks only once the process is gone: its findings wait
        // in the ring buffer meanwhile.
        tracer.pause();
        run(&buggy);
        tracer.resume();
        // Its findings, named or not: the program's, to this test's port
        // (the other tests run the same program in containers meanwhile).
        let remote = format!("127.0.0.1:{port}");
        let mine = |f: &Value| f["comm"] == "program" && f["remote"] == remote.as_str();
        tracer.wait_matching(&format!("the program to {remote}"), mine, 2 * (n + 1));
        tracer.barrier();
        let mut found = tracer.matching(mine);
        assert_eq!(found.len(), 2 * (n + 1), "{job}: {found:#?}");
        let found = found.split_off(2 * n);
        assert_eq!(kinds(&found), [IO, MASKED], "{job}: {found:#?}");
        for f in &found {
            assert_names(f, &buggy, &pod, "report", image);
            assert_eq!(
                (&f["exe"], &f["exe_source"]),
                (&"/program".into(), &"kernel".into())
            );
        }
    }
}

/// `--metrics.kubernetes-labels`: the per-process series carry namespace,
/// pod and container; past `--metrics.max-pods` pods the rest are `other`,
/// so a node with many pods keeps a bounded exposition.
#[test]
fn pod_labels_on_metrics_stay_within_the_cap() {
    if !require_root() {
        return;
    }
    let host = HostRoot::new("labels");
    let agent = Agent::with(&[
        &host.flag(),
        "--metrics.kubernetes-labels",
        "--metrics.max-pods=3",
    ]);
    let port = closed_port();
    let pods: Vec<Pod> = (0..6)
        .map(|i| Pod::new("shop", &format!("web-{i}")))
        .collect();
    // Kept (stopped, as a runtime keeps them until it handles the exit)
    // until counted: deleting one removes its cgroup, and the agent names
    // the pod from the cgroup, whenever it gets to the finding.
    let _containers: Vec<Container> = pods
        .iter()
        .map(|pod| {
            let spec = Spec {
                runtime: Runtime::Containerd,
                driver: CgroupDriver::Cgroupfs,
                pod,
                name: "nginx",
                image: "docker.io/library/nginx:1.22",
                program: so_error_client(),
                args: client(port, "masked", 0),
            };
            let container = Container::new(&host, &spec);
            run(&container);
            container
        })
        .collect();
    let series = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("sockerr_findings_total{") && l.contains("so_error_masked"))
            .map(str::to_owned)
            .collect()
    };
    let masked = support::eventually(PATIENCE, "six pods counted", || {
        let lines = series(&agent.metrics());
        let total: f64 = lines
            .iter()
            .filter(|l| l.contains(r#"namespace="shop""#) || l.contains(r#"pod="other""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (total >= 6.0).then_some(lines)
    });
    let named: Vec<&String> = masked
        .iter()
        .filter(|l| l.contains(r#"namespace="shop""#))
        .collect();
    assert_eq!(named.len(), 3, "three pods keep their labels: {masked:#?}");
    for line in &named {
        assert!(
            line.contains(r#"container="nginx""#) && line.contains(r#"pod="web-"#),
            "{line}"
        );
    }
    let other = masked
        .iter()
        .find(|l| l.contains(r#"pod="other""#))
        .expect("the rest as other");
    assert!(other.ends_with(" 3"), "{other}");
}
