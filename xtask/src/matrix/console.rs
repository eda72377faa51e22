//! The output of a VM's serial console, or of the runner on this host:
//! read line by line as it comes, cleaned of terminal escapes, timed,
//! logged, and searched for the runner's markers.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// A line of output and when it arrived.
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// Runs `command`, echoing its output prefixed with `[label] `, into `log`;
/// kills it after `timeout`. Returns the lines and whether it timed out.
pub fn stream(
    command: &mut Command,
    label: &str,
    timeout: Duration,
    log: &Path,
) -> Result<(Vec<Line>, bool)> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers = [
        pump(child.stdout.take().unwrap(), tx.clone()),
        pump(child.stderr.take().unwrap(), tx),
    ];
    let mut file = fs::File::create(log)?;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(text) => {
                writeln!(file, "{text}")?;
                println!("[{label}] {text}");
                lines.push(Line {
                    at: started.elapsed(),
                    text,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !timed_out && started.elapsed() > timeout {
            println!("xtask matrix: {label}: still running after {timeout:?}; killing it");
            let _ = child.kill();
            timed_out = true;
        }
    }
    child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    Ok((lines, timed_out))
}

/// Forwards lines (serial console output: CRs, escape sequences) as text.
fn pump(source: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let text = clean(&String::from_utf8_lossy(&buf));
            buf.clear();
            if !text.is_empty() && tx.send(text).is_err() {
                return;
            }
        }
    })
}

/// Drops terminal escape sequences and control characters.
fn clean(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params letter, or ESC letter.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// The first line holding `marker`, and its text from the marker on (the
/// firmware may leave a line unfinished: "Booting from ROM..MATRIX-INIT").
pub fn find<'a>(lines: &'a [Line], marker: &str) -> Option<(&'a Line, &'a str)> {
    lines
        .iter()
        .find_map(|l| l.text.find(marker).map(|i| (l, &l.text[i..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_after_unfinished_firmware_lines() {
        let line = |text: &str| Line {
            at: Duration::from_secs(1),
            text: text.into(),
        };
        let lines = [
            line("SeaBIOS"),
            line("Booting from ROM..MATRIX-INIT uptime=3.79 cpus=2"),
        ];
        let (_, text) = find(&lines, "MATRIX-INIT").unwrap();
        assert_eq!(text, "MATRIX-INIT uptime=3.79 cpus=2");
        assert!(find(&lines, "MATRIX ").is_none());
    }

    #[test]
    fn cleans_console_lines() {
        assert_eq!(clean("\u{1b}[2J\u{1b}[01;01Hhello\r\n"), "hello");
        assert_eq!(clean("\u{1b}cSeaBIOS"), "SeaBIOS");
    }
}
