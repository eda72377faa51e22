//! The Grafana dashboard and the alert rules, checked against what the agent
//! really exports: a real Prometheus scrapes a real `sockerr run` (root), and
//! every panel query runs through Prometheus' HTTP API.

mod support;

use std::{
    collections::HashSet,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Agent, Prometheus, repo, require_root, scenario};

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
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (cargo xtask setup installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_panel_query_works_against_a_scraped_agent() {
    if !require_root() {
        return;
    }
    // Pod labels on: the queries must work with and without them.
    let agent = Agent::with(&["--metrics.kubernetes-labels"]);
    let prom = Prometheus::start(&format!(
        "  - job_name: sockerr\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        agent.port
    ));
    for args in [
        &["masked"][..],
        &["success-reread"],
        &["close-after-read"],
        &["success-io"],
    ] {
        assert!(scenario(args).1.status.success());
    }
    // Wait for the findings to be scraped, then for two more scrapes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom
        .query(r#"sockerr_findings_total{kind="so_error_masked"}"#)
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "findings never reached Prometheus"
        );
        thread::sleep(Duration::from_millis(250));
    }
    thread::sleep(Duration::from_millis(2500));

    let exposition = agent.get("/metrics").1;
    let instance = format!("127.0.0.1:{}", agent.port);
    let substitute = |expr: &str| {
        expr.replace("$__rate_interval", "30s")
            .replace("$__range", "5m")
            .replace("$instance", &instance)
            .replace("$job", "sockerr")
            .replace("$comm", ".*")
            .replace("$namespace", ".*")
            .replace("$pod", ".*")
    };
    let d = dashboard();
    for var in d["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
        else {
            continue;
        };
        let (selector, label) = q.trim_end_matches(')').rsplit_once(',').unwrap();
        let expr = format!("count by ({}) ({})", label.trim(), substitute(selector));
        assert!(
            !prom.query(&expr).is_empty(),
            "variable {} has no values",
            var["name"]
        );
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
        assert!(!prom.query(&expr).is_empty(), "{title}: no data for {expr}");
    }
}
