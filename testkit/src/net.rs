//! Loopback ports and servers (ours, and real ones: openssl's TLS server,
//! nginx), network namespaces, and HTTP GET.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use crate::{
    PATIENCE, eventually,
    programs::{run_ok, stop},
};

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback HTTP server answering every request with 200 "ok".
pub fn http_server(v6: bool) -> u16 {
    let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// A server process, its output discarded, stopped (SIGTERM, then waited
/// for) when dropped.
pub struct Server(Child);

impl Server {
    pub fn start(cmd: &mut Command) -> Self {
        Self(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting a server (cargo xtask setup installs it)"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Waits until something accepts connections on the loopback port.
pub fn listening(port: u16) {
    eventually(PATIENCE, "the server to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
    });
}

/// An HTTPS server (`openssl s_server -www`) with a self-signed certificate
/// made in `dir`, listening on the port returned.
pub fn tls_server(dir: &Path) -> (Server, u16) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("running openssl (cargo xtask setup installs it)");
    assert!(ok.success(), "openssl req");
    let port = closed_port();
    let server = Server::start(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null()),
    );
    listening(port);
    (server, port)
}

/// nginx, configured in `dir`, proxying each loopback port of `proxies` to
/// its upstream URL; returned once all of them listen.
pub fn nginx(dir: &Path, proxies: &[(u16, String)]) -> Server {
    nginx_as(Path::new("nginx"), dir, proxies)
}

/// [`nginx`] run as `program` (e.g. [`crate::renamed`], for a comm of its
/// own).
pub fn nginx_as(program: &Path, dir: &Path, proxies: &[(u16, String)]) -> Server {
    let servers: String = proxies
        .iter()
        .map(|(port, upstream)| {
            format!(
                " server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass {upstream}; }} }}\n"
            )
        })
        .collect();
    let conf: PathBuf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{}}\nhttp {{\n access_log off;\n\
             client_body_temp_path {d}; proxy_temp_path {d};\n{servers}}}\n",
            d = dir.display()
        ),
    )
    .expect("writing nginx.conf");
    let server = Server::start(
        Command::new(program)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    );
    for (port, _) in proxies {
        listening(*port);
    }
    server
}

/// GET `path` from a loopback port over plain HTTP; (status, body), with
/// status 0 when no response came.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    get(([127, 0, 0, 1], port).into(), path)
}

/// GET `path` from `address` over plain HTTP; (status, body), with status 0
/// when no response came.
pub fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    match agent.get(&format!("http://{address}{path}")).call() {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap_or_default();
            (status, body)
        }
        Err(_) => (0, String::new()),
    }
}

/// Reads a whole raw HTTP/1.1 response (for requests no client library
/// would send: garbage, oversized headers, another address family); the
/// server closes the connection. (status, body), status 0 for none.
pub fn raw_response(s: &mut TcpStream) -> (u16, String) {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A network namespace of the test's own (loopback up), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Self {
        let name = format!("sockerr-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (cargo xtask setup installs iproute2)");
        assert!(ok.success(), "ip netns add {name}");
        let ns = Self(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn run(&self, args: &[&str]) {
        run_ok(
            self.command(args[0]).args(&args[1..]),
            &format!("{args:?} in {}", self.0),
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gets_from_a_loopback_server_and_says_when_nothing_answers() {
        assert_eq!(http_get(http_server(false), "/"), (200, "ok".into()));
        assert_eq!(http_get(closed_port(), "/").0, 0);
    }
}
