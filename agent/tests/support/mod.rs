//! Shared by the integration tests: the harness of `sockerr-testkit` (the
//! agent and tracer as child processes, the scenario programs, loopback
//! helpers, a real Prometheus), and what only these tests need: the
//! repository's files, the libevent client fixture, real containers.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod container;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

pub use sockerr_testkit::*;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Compiles the evhttp client fixture against Debian's libevent.
pub fn build_evhttp_client() -> PathBuf {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evhttp_client.c");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("evhttp_client");
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-levent"])
        .status()
        .expect("running gcc (cargo xtask setup installs gcc and libevent-dev)");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// A fresh scratch directory `name` of this test binary (`binary`: its
/// name, e.g. `web`), under cargo's target tmpdir.
pub fn scratch(binary: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{binary}-{}", std::process::id()))
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `openssl ARGS` in `dir`, which must succeed.
pub fn openssl(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {args:?} (cargo xtask setup installs it)"),
    );
}

/// Signs the request `csr` in `dir` with the test CA there (`ca.crt`,
/// `ca.key`) for two days, with the extensions in the file `ext`, into `crt`.
pub fn ca_sign(dir: &Path, csr: &str, ext: &str, crt: &str) {
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            crt,
        ],
    );
}

/// The bcrypt hash of `password`, from `sockerr hash-password`.
pub fn bcrypt_hash(password: &str) -> String {
    let mut child = Command::new(agent_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// [`web_server`], waited for (it starts once the probes are attached).
pub fn wait_web_server(collector: u32) -> u32 {
    eventually(PATIENCE, "the web server", || web_server(collector))
}
