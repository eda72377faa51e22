//! How `sockerr run` serves HTTP, end to end (root).

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use support::{agent_bin, raw_response, require_root, stop};

/// `sockerr run` with its log collected; `address` is the one it reports.
struct Running {
    child: Child,
    address: SocketAddr,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockerr run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (running, started) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("sockerr: {line}");
                if line.contains("message=\"sockerr running\"") {
                    let _ = running.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = started
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("sockerr run did not start: {:?}", log.lock().unwrap()));
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .expect("the address in the log")
            .parse()
            .expect("a socket address");
        Self { child, address }
    }

    fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[test]
fn logs_the_address_it_bound() {
    if !require_root() {
        return;
    }
    let agent = Running::start(&["--web.listen-address", "[::1]:0"]);
    assert_eq!(
        agent.address.ip(),
        "::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_ne!(
        agent.port(),
        0,
        "logged the port asked for, not the one bound"
    );
    let mut s = TcpStream::connect(agent.address).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(raw_response(&mut s), (200, "ok\n".into()));
}
