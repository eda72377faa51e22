//! The Grafana dashboard and the alert rules, checked against what the agent
//! really exports: a real Prometheus scrapes a real `sockerr run` (root), and
//! every panel query runs through Prometheus' HTTP API.

mod support;

use std::{collections::HashSet, process::Command};

use serde_json::Value;
use support::{
    Agent, PATIENCE, Prometheus, closed_port,
    container::{CgroupDriver, Container, HostRoot, Pod, Runtime, Spec, so_error_client},
    eventually, repo, require_root, run_ok, scenario,
};

fn dashboard() -> Value {
    let path = repo().join("dashboards/sockerr-overview.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is valid JSON")
}

/// Every panel, rows and their children included.
fn panels(dashboard: &Value) -> Vec<Value> {
    fn walk(p: &Value, out: &mut Vec<Value>) {
        out.push(p.clone());
        for c in p["panels"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        walk(p, &mut out);
    }
    out
}

/// (panel title, expr) of every query target.
fn targets(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{title}: target not bound to the datasource variable"
                );
                (
                    title.clone(),
                    t["expr"].as_str().expect("a PromQL expr").to_owned(),
                )
            })
        })
        .collect()
}

fn sockerr_metric_names(expr: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sockerr_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn dashboard_structure() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
    assert!(d.get("__inputs").is_none(), "imports as it is, no __inputs");
    let all = panels(&d);
    let mut ids = HashSet::new();
    for p in &all {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert!(
                !p["description"].as_str().unwrap_or_default().is_empty(),
                "{} has no description",
                p["title"]
            );
        }
    }
    let rect = |p: &Value| {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_i64().unwrap();
        (n("x"), n("y"), n("w"), n("h"))
    };
    for (i, a) in all.iter().enumerate() {
        let (ax, ay, aw, ah) = rect(a);
        assert!(ax + aw <= 24, "{} wider than the grid", a["title"]);
        for b in &all[i + 1..] {
            let (bx, by, bw, bh) = rect(b);
            let overlap = ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah;
            assert!(!overlap, "{} overlaps {}", a["title"], b["title"]);
        }
    }
    assert!(targets(&d).len() >= 20);
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "rules", "sockerr-alerts.yml"][..],
        &["test", "rules", "sockerr-alerts.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        run_ok(
            Command::new("promtool").args(args).current_dir(&dir),
            &format!("promtool {args:?} (cargo xtask setup installs prometheus)"),
        );
    }
}

/// Every alert links to its own section of the runbook, which exists, and
/// the README's alert table lists it.
#[test]
fn every_alert_has_its_runbook_section_and_a_readme_row() {
    let read = |path: &str| std::fs::read_to_string(repo().join(path)).unwrap();
    let rules = read("deploy/prometheus/sockerr-alerts.yml");
    let runbook = read("docs/runbook.md");
    let readme = read("README.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert_eq!(urls.len(), alerts.len(), "one runbook_url per alert");
    for (alert, url) in alerts.iter().zip(&urls) {
        assert!(
            url.ends_with(&format!("/docs/runbook.md#{}", alert.to_lowercase())),
            "{alert}: {url}"
        );
        assert!(
            runbook.lines().any(|l| l == format!("## {alert}")),
            "docs/runbook.md has no section {alert}"
        );
        assert!(
            readme.contains(&format!("| `{alert}` |")),
            "the README's alert table lacks {alert}"
        );
    }
}

/// Two agents scraped by one Prometheus, one with pod labels and a pod's
/// process flagged, one without: every variable and panel query must work
/// for both, and the namespace and pod variables list the pod.
#[test]
fn every_panel_query_works_against_a_scraped_agent() {
    if !require_root() {
        return;
    }
    let host = HostRoot::new("dashboards");
    let labelled = Agent::with(&["--metrics.kubernetes-labels", &host.flag()]);
    let plain = Agent::start();
    let job = |name: &str, agent: &Agent| {
        format!(
            "  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            agent.port()
        )
    };
    let prom = Prometheus::start(&(job("pods", &labelled) + &job("plain", &plain)));
    let pod = Pod::new("shop", "web-0");
    let container = Container::new(
        &host,
        &Spec {
            runtime: Runtime::Containerd,
            driver: CgroupDriver::Systemd,
            pod: &pod,
            name: "nginx",
            image: "docker.io/library/nginx:1.22",
            program: so_error_client(),
            args: vec![closed_port().to_string(), "masked".into(), "0".into()],
        },
    );
    let out = container.run();
    assert!(out.status.success(), "runc run: {out:?}");
    for args in [
        &["masked"][..],
        &["success-reread"],
        &["close-after-read"],
        &["success-io"],
    ] {
        assert!(scenario(args).1.status.success());
    }
    // Both jobs' findings scraped twice, so that rates have two points.
    eventually(PATIENCE, "both jobs' findings scraped twice", || {
        let twice = |series: &str| {
            prom.query(&format!("count_over_time({series}[5m])"))
                .iter()
                .any(|s| s["value"][1].as_str().is_some_and(|n| n != "1"))
        };
        (twice(r#"sockerr_findings_total{job="pods",namespace="shop",pod="web-0"}"#)
            && twice(r#"sockerr_findings_total{job="plain",kind="so_error_masked"}"#))
        .then_some(())
    });

    let d = dashboard();
    for (job, agent) in [("pods", &labelled), ("plain", &plain)] {
        let exposition = agent.get("/metrics").1;
        let instance = agent.address.to_string();
        let substitute = |expr: &str| {
            expr.replace("$__rate_interval", "30s")
                .replace("$__range", "5m")
                .replace("$instance", &instance)
                .replace("$job", job)
                .replace("$comm", ".*")
                .replace("$namespace", ".*")
                .replace("$pod", ".*")
        };
        for var in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = var["query"]
                .as_str()
                .and_then(|q| q.strip_prefix("label_values("))
            else {
                continue;
            };
            assert_eq!(var["definition"], var["query"], "{}", var["name"]);
            let (selector, label) = q.trim_end_matches(')').rsplit_once(',').unwrap();
            let label = label.trim();
            let expr = format!("count by ({label}) ({})", substitute(selector));
            let values: Vec<String> = prom
                .query(&expr)
                .iter()
                .filter_map(|r| r["metric"][label].as_str().map(str::to_owned))
                .collect();
            let expected = match (label, job) {
                ("namespace", "pods") => Some("shop"),
                ("pod", "pods") => Some("web-0"),
                // No such labels without --metrics.kubernetes-labels.
                ("namespace" | "pod", _) => None,
                _ => Some(""),
            };
            match expected {
                Some(value) => assert!(
                    values.iter().any(|v| !v.is_empty() && v.contains(value)),
                    "{job}: variable {label} lacks {value:?}: {values:?}"
                ),
                None => assert!(values.is_empty(), "{job}: {label}: {values:?}"),
            }
        }
        for (title, expr) in targets(&d) {
            for name in sockerr_metric_names(&expr) {
                assert!(
                    exposition.contains(&format!("# TYPE {name} ")),
                    "{title}: {name} is not exported"
                );
            }
            let expr = substitute(&expr);
            assert!(
                !expr.contains('$'),
                "{title}: unsubstituted variable in {expr}"
            );
            assert!(
                !prom.query(&expr).is_empty(),
                "{job}: {title}: no data for {expr}"
            );
        }
    }
}
