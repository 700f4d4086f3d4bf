//! Start the real `dimegate` binary with a temporary configuration and data directory, and
//! drive it with real clients (swaks, Python, the dimegate CLI).

use super::free_port;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dimegate")
}

/// The path of a third-party tool the tests need. Panics with the install hint when absent:
/// these tests are the evidence that dimegate works with real peers, so they never skip.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; scripts/test installs the test peers (apt-get install postfix swaks openssl prometheus)"
    );
}

/// A world-searchable temporary directory (Postfix's users must traverse it).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("dimegate-test")
        .tempdir()
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

/// A running gateway.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub tls_smtp: SocketAddr,
    pub admin: SocketAddr,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `extra` appended to a configuration that serves `example.test`
    /// and `localhost` on fresh loopback ports. Without a `[backend]` in `extra`, mail for those
    /// domains stays queued (deferred), so tests can inspect what ingress stored.
    pub fn start(extra: &str) -> Gateway {
        let dir = tempdir();
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("dimegate.toml");
        // `extra` may start with its own `data_dir = ...` (e.g. on a small file system).
        let data_line = if extra.trim_start().starts_with("data_dir") {
            String::new()
        } else {
            format!("data_dir = {:?}\n", dir.path().join("data"))
        };
        let text = format!(
            "{data_line}{extra}\n[smtp]\nlisten = \"{smtp}\"\ntls_listen = \"{tls_smtp}\"\nhostname = \"mx.example.test\"\nmax_message_size = \"1MiB\"\nmax_recipients = 50\n[admin]\nlisten = \"{admin}\"\n[[domain]]\nname = \"example.test\"\n[[domain]]\nname = \"localhost\"\n",
        );
        // `extra` may carry its own [smtp] keys; the test passes them in full instead then.
        let text = if extra.contains("[smtp]") {
            format!("{data_line}{extra}\n[admin]\nlisten = \"{admin}\"\n")
        } else {
            text
        };
        // Every gateway gets its own DMTP port unless the test places it.
        let text = if extra.contains("[dmtp]") {
            text
        } else {
            format!("{text}[dmtp]\nlisten = \"127.0.0.1:{}\"\n", free_port())
        };
        // Without a [dns] of its own, the test's outbound mail must not wander off to the
        // system resolver: a dead server makes every MX lookup fail temporarily, so relayed
        // mail stays deferred in the queue where the test can look at it.
        // With that dead server no `_dx` lookup can be answered either, and DIME's policy holds
        // what it cannot look up: such a test speaks legacy SMTP only, unless it says otherwise.
        let text = if extra.contains("[dns]") {
            text
        } else if extra.contains("[bridge]") {
            format!("{text}[dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n")
        } else {
            format!(
                "{text}[dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n[bridge]\ndime = \"off\"\n"
            )
        };
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("gateway.log");
        let mut gw = Gateway {
            dir,
            config,
            smtp,
            tls_smtp,
            admin,
            child: None,
            log,
        };
        gw.spawn();
        gw
    }

    /// (Re)starts the process on the same configuration and data.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dimegate");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(self.admin, "/readyz") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dimegate exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "dimegate not ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "dimegate did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dimegate queue ARGS --config ...`.
    pub fn queue(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("queue")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// The queue as JSON (`queue list --json`).
    pub fn queue_json(&self) -> Vec<serde_json::Value> {
        let out = self.queue(&["list", "--json"]);
        assert!(
            out.status.success(),
            "queue list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("queue list --json prints a JSON array")
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").expect("metrics").1
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// The value of a metric line that starts with `prefix` (e.g. `dimegate_smtp_messages_accepted_total`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A plain HTTP/1.1 GET.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs swaks against `addr` with extra arguments; returns (exit ok, transcript).
pub fn swaks(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("swaks"))
        .arg("--server")
        .arg(addr.to_string())
        .args(["--helo", "client.test", "--timeout", "20"])
        .args(args)
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The queue id from a `250 2.0.0 Ok: queued as ID` line in a transcript.
pub fn queued_ids(transcript: &str) -> Vec<String> {
    transcript
        .lines()
        .filter_map(|l| l.split("queued as ").nth(1))
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Where the test scripts live.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

/// One SMTP transaction with a minimal client: EHLO, MAIL, RCPT for each of `rcpts` (an entry
/// may carry parameters after a space: `"bob@example.test NOTIFY=SUCCESS"`), DATA with
/// `data` (CRLF line ends; dot-stuffed here). Returns the reply to the end of data, or the first
/// reply that was not a success.
pub fn smtp_send(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    data: &str,
) -> Result<String, String> {
    use std::io::BufRead;
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = std::io::BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut reply = move || -> Result<String, String> {
        let mut last = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("connection closed after {last:?}"));
            }
            let done = line.as_bytes().get(3) != Some(&b'-');
            last = line.trim_end().to_owned();
            if done {
                return Ok(last);
            }
        }
    };
    let expect = |r: String, class: char| if r.starts_with(class) { Ok(r) } else { Err(r) };
    expect(reply()?, '2')?;
    let mut send = |w: &str| writer.write_all(w.as_bytes()).map_err(|e| e.to_string());
    send("EHLO client.test\r\n")?;
    expect(reply()?, '2')?;
    send(&format!("MAIL FROM:<{from}>\r\n"))?;
    expect(reply()?, '2')?;
    for rcpt in rcpts {
        // "address PARAM=..." sends the parameters after the path.
        let rcpt = match rcpt.split_once(' ') {
            Some((address, params)) => format!("<{address}> {params}"),
            None => format!("<{rcpt}>"),
        };
        send(&format!("RCPT TO:{rcpt}\r\n"))?;
        expect(reply()?, '2')?;
    }
    send("DATA\r\n")?;
    expect(reply()?, '3')?;
    let mut stuffed = String::new();
    for line in data.split_inclusive("\r\n") {
        if line.starts_with('.') {
            stuffed.push('.');
        }
        stuffed.push_str(line);
    }
    if !stuffed.ends_with("\r\n") {
        stuffed.push_str("\r\n");
    }
    stuffed.push_str(".\r\n");
    send(&stuffed)?;
    let done = expect(reply()?, '2')?;
    let _ = send("QUIT\r\n");
    Ok(done)
}

/// Polls `check` every 100 ms until it returns true; panics with `what()` after `timeout`.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` must accept the exposition (exit 0: valid and lint-clean).
pub fn promtool_check(text: &str) {
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
