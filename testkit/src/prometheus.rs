//! A real Prometheus (Debian's, installed by `cargo xtask setup`).

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    PATIENCE,
    net::{closed_port, http_get},
};

/// Prometheus scraping every second with the given `scrape_configs`
/// entries (YAML, indented two spaces), in a directory of its own.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(scrape_configs: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sockerr-prometheus-{}-{}",
            std::process::id(),
            closed_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let port = closed_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let p = Self { child, port, dir };
        let deadline = Instant::now() + PATIENCE;
        while !ready(port) {
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready within {PATIENCE:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// Runs an instant query; panics unless Prometheus accepts it.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={}", encode(expr)));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
        assert_eq!(v["status"], "success", "query {expr} rejected: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ready(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get(port, "/-/ready").0 == 200
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
