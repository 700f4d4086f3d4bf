//! Real peers on loopback for the delivery and DNS tests: Postfix's smtp-sink and Knot DNS.
//! Each guard starts its own server on a free port and kills it on drop.

#![allow(dead_code)] // each test binary uses a different subset

mod gateway;
#[allow(unused_imports)]
pub use gateway::*;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Panics with an install hint when a tool is missing: these tests never skip silently.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file())
                || ["/usr/sbin", "/sbin"]
                    .iter()
                    .any(|dir| Path::new(dir).join(tool).is_file())
        })
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; install it with `apt-get install {package}` \
         (see shared/testbed/TESTBED.md)"
    );
}

fn tool_path(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let path = Path::new(dir).join(tool);
        if path.is_file() {
            return path;
        }
    }
    PathBuf::from(tool)
}

/// A loopback port free for both TCP and UDP right now.
///
/// Taken below the kernel's ephemeral range (32768-60999 here): a port the kernel hands out
/// for `bind(0)` is also what it picks as the source port of the next outgoing connection, and
/// the tests make many, so such a port could be taken again between this check and the
/// server's own bind. Each process starts at its own place in the range and walks it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// The shared test bed scripts.
pub fn testbed() -> PathBuf {
    // `shared/` is beside the repository in /work/main, one level up from a worktree in /work/wt.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["../shared/testbed", "../../shared/testbed"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.join("../shared/testbed"))
}

/// Kills the child on drop.
pub struct ChildGuard {
    child: Child,
    name: &'static str,
}

impl ChildGuard {
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.name;
    }
}

/// Postfix's smtp-sink on a free loopback port, dumping each transaction into its own file.
pub struct Sink {
    pub addr: SocketAddr,
    pub dump: tempfile::TempDir,
    /// smtp-sink's `-v` conversation log.
    pub log: tempfile::NamedTempFile,
    pub process: ChildGuard,
}

impl Sink {
    /// `flags` are smtp-sink options such as `["-r", "RCPT"]` or `["-L"]`.
    pub fn start(flags: &[&str]) -> Sink {
        Sink::start_on("127.0.0.1", flags)
    }

    pub fn start_on(ip: &str, flags: &[&str]) -> Sink {
        let addr: SocketAddr = format!("{ip}:{}", free_port())
            .parse()
            .expect("socket address");
        Sink::start_at(addr, flags)
    }

    pub fn start_at(addr: SocketAddr, flags: &[&str]) -> Sink {
        require_tool("smtp-sink", "postfix");
        let dump = tempfile::tempdir().expect("temp dir");
        // smtp-sink drops to `nobody`, which must be able to write the dump files.
        std::fs::set_permissions(
            dump.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod dump dir");
        let template = format!("{}/%H%M%S.", dump.path().display());
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(tool_path("smtp-sink"))
            .args(["-v", "-u", "nobody", "-d", &template])
            .args(flags)
            .arg(addr.to_string())
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("reopen log"))
            .spawn()
            .expect("start smtp-sink");
        let mut process = ChildGuard {
            child,
            name: "smtp-sink",
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(process.is_running(), "smtp-sink exited at start");
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sink {
            addr,
            dump,
            log,
            process,
        }
    }

    /// How many times `line` (e.g. `"connect ("`, `"RSET"`) occurs in the conversation log.
    pub fn count_in_log(&self, line: &str) -> usize {
        let text = std::fs::read_to_string(self.log.path()).expect("read smtp-sink log");
        text.lines()
            .filter(|l| {
                // Lines read "<argv[0]>: text", and argv[0] is a full path here.
                l.split_once(": ")
                    .is_some_and(|(_, text)| text.starts_with(line))
            })
            .count()
    }

    /// The dumped transactions that got as far as a message: smtp-sink also leaves an empty file
    /// for a transaction whose recipients were all refused.
    pub fn messages(&self) -> Vec<String> {
        self.dumps()
            .into_iter()
            .filter(|d| d.contains("X-Rcpt-Args:") && d.contains("Received: from"))
            .collect()
    }

    /// The dumped transactions, oldest first (file names sort by time, then random).
    pub fn dumps(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dump.path())
            .expect("read dump dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).expect("read dump")).into_owned())
            .collect()
    }
}

/// A Knot DNS authoritative server for `zone` on a free loopback port, serving `zone_text`
/// (signed automatically, as in TESTBED.md §3.2).
pub struct Knot {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub process: ChildGuard,
}

impl Knot {
    pub fn start(zone: &str, zone_text: &str) -> Knot {
        require_tool("knotd", "knot");
        require_tool("knotc", "knot");
        require_tool("dig", "bind9-dnsutils");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let status = Command::new("sh")
            .arg(testbed().join("mk-knot.sh"))
            .arg(dir.path())
            .arg(port.to_string())
            .arg(zone)
            .stdout(Stdio::null())
            .status()
            .expect("run mk-knot.sh");
        assert!(status.success(), "mk-knot.sh failed");
        std::fs::write(dir.path().join(format!("zones/{zone}.zone")), zone_text)
            .expect("write zone file");
        let log = std::fs::File::create(dir.path().join("knotd.log")).expect("knotd log");
        let child = Command::new(tool_path("knotd"))
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start knotd");
        let mut process = ChildGuard {
            child,
            name: "knotd",
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // Knot answers once the zone is loaded and signed: poll with dig for the SOA.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(process.is_running(), "knotd exited; see its log");
            let out = Command::new("dig")
                .args(["+short", "+norec", "+time=1", "+tries=1", "-p"])
                .arg(port.to_string())
                .arg("@127.0.0.1")
                .arg(zone)
                .arg("SOA")
                .output()
                .expect("run dig");
            if out.status.success() && !out.stdout.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "knotd did not serve {zone}");
            std::thread::sleep(Duration::from_millis(200));
        }
        Knot { addr, dir, process }
    }
}

/// One knotd serving the signed `test.` tree of TESTBED.md §3.7 (mk-knot-tree.sh): `secure.test`
/// and `other.test` (secure), `plain.test` (insecure), `bogus.test` (wrong DS), with `records`
/// (mk-knot-tree.sh's RECORDS_FILE lines) added before signing. Killed by its PID on drop.
pub struct KnotTree {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pid: i32,
}

impl KnotTree {
    pub fn start(records: &str) -> KnotTree {
        require_tool("knotd", "knot");
        require_tool("knotc", "knot");
        require_tool("keymgr", "knot");
        let dir = tempfile::tempdir().expect("temp dir");
        let records_file = dir.path().join("records.txt");
        std::fs::write(&records_file, records).expect("write records");
        let tree = dir.path().join("tree");
        // A port taken between free_port() and knotd's bind makes the script fail: try again.
        for _ in 0..5 {
            let port = free_port();
            let out = Command::new("bash")
                .arg(testbed().join("mk-knot-tree.sh"))
                .arg(&tree)
                .arg(port.to_string())
                .arg(&records_file)
                .stdin(Stdio::null())
                .output()
                .expect("run mk-knot-tree.sh");
            if out.status.success() {
                let pid = std::fs::read_to_string(tree.join("knotd.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .expect("knotd.pid");
                let addr = format!("127.0.0.1:{port}").parse().expect("addr");
                return KnotTree { addr, dir, pid };
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("address already in use"),
                "mk-knot-tree.sh failed: {stderr}"
            );
        }
        panic!("mk-knot-tree.sh found no free port in five tries");
    }

    /// All DNSKEYs of `test.`, for hickory's trust anchor.
    pub fn trust_anchor(&self) -> PathBuf {
        self.dir.path().join("tree/trust-anchor.keys")
    }
}

impl Drop for KnotTree {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the PID mk-knot-tree.sh wrote for the knotd it started.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

/// The test zone: mk-zone.sh's records plus the cases the MX tests need.
pub fn test_zone() -> String {
    let base = Command::new("sh")
        .arg(testbed().join("mk-zone.sh"))
        .arg("example.test")
        .output()
        .expect("run mk-zone.sh");
    assert!(base.status.success(), "mk-zone.sh failed");
    let mut zone = String::from_utf8(base.stdout).expect("zone is text");
    zone.push_str(
        "\
nullmx   IN MX   0 .
amail    IN A    127.0.0.1
amail    IN AAAA ::1
nodata   IN TXT  \"no mail here\"
equal    IN MX   10 mx2
equal    IN MX   10 mx1
equal    IN MX   5  mx3
mx3      IN A    127.0.0.3
failover IN MX   10 dead
failover IN MX   20 live
dead     IN A    127.0.0.3
live     IN A    127.0.0.1
noaddr   IN MX   10 nowhere
",
    );
    zone
}

/// Starts `command` (stdin, stdout and stderr discarded) and kills it on drop.
pub fn spawn_guarded(name: &'static str, command: &mut Command) -> ChildGuard {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    ChildGuard { child, name }
}

/// Polls `server` with dig until it answers an SOA query for `zone`.
pub fn wait_for_dns(server: SocketAddr, zone: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("dig")
            .args(["+short", "+time=1", "+tries=1", "-p"])
            .arg(server.port().to_string())
            .arg(format!("@{}", server.ip()))
            .arg(zone)
            .arg("SOA")
            .output()
            .expect("run dig");
        if out.status.success() && !out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{server} did not answer for {zone}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real Postfix (mk-postfix.sh, sink mode: everything into one Maildir) with STARTTLS offered
/// under a fresh self-signed certificate for `localhost`. Stopped by its master's PID on drop.
pub struct Postfix {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    master_pid: i32,
}

impl Postfix {
    pub fn start_with_tls() -> Postfix {
        Postfix::start(|dir| {
            let certified =
                rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
            let cert = dir.join("cert.pem");
            let key = dir.join("key.pem");
            std::fs::write(&cert, certified.cert.pem()).expect("write cert");
            std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
            vec![
                "smtpd_tls_security_level=may".to_owned(),
                format!("smtpd_tls_cert_file={}", cert.display()),
                format!("smtpd_tls_key_file={}", key.display()),
                "smtpd_tls_loglevel=1".to_owned(),
            ]
        })
    }

    /// A Postfix whose main.cf gets the `postconf -e` settings that `settings` returns (it is
    /// given the instance's temporary directory for any files it needs).
    pub fn start(settings: impl FnOnce(&Path) -> Vec<String>) -> Postfix {
        Postfix::start_mode(None, settings)
    }

    /// A Postfix in relay mode: everything it accepts goes to `relayhost` (`[ip]:port`).
    pub fn start_relay(relayhost: &str) -> Postfix {
        Postfix::start_mode(Some(relayhost), |_| Vec::new())
    }

    fn start_mode(relayhost: Option<&str>, settings: impl FnOnce(&Path) -> Vec<String>) -> Postfix {
        require_tool("postfix", "postfix");
        require_tool("postconf", "postfix");
        let dir = tempfile::tempdir().expect("temp dir");
        // Postfix's users must be able to reach the instance directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let port = free_port();
        let instance = dir.path().join("pf");
        let status = Command::new("sh")
            .arg(testbed().join("mk-postfix.sh"))
            .arg(&instance)
            .arg(port.to_string())
            .args(relayhost)
            .stdout(Stdio::null())
            .status()
            .expect("run mk-postfix.sh");
        assert!(status.success(), "mk-postfix.sh failed");
        let etc = instance.join("etc");
        let settings = settings(dir.path());
        if !settings.is_empty() {
            let status = Command::new(tool_path("postconf"))
                .arg("-c")
                .arg(&etc)
                .arg("-e")
                .args(settings)
                .status()
                .expect("run postconf");
            assert!(status.success(), "postconf failed");
        }
        let status = Command::new(tool_path("postfix"))
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run postfix start");
        assert!(
            status.success(),
            "postfix start failed; see {}",
            instance.display()
        );
        let pid_file = instance.join("spool/pid/master.pid");
        let master_pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("master.pid");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let postfix = Postfix {
            addr,
            dir,
            master_pid,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        postfix
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pf/maillog")).unwrap_or_default()
    }

    /// Messages delivered into the catch-all Maildir, waiting up to 15 s for `count` of them.
    pub fn wait_for_messages(&self, count: usize) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("pf/mail/catchall/new");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            if files.len() >= count || Instant::now() >= deadline {
                files.sort();
                return files
                    .iter()
                    .map(|f| std::fs::read(f).expect("read message"))
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Postfix {
    /// Waits up to 15 s for a delivered message containing `needle`.
    pub fn wait_for_message_containing(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .wait_for_messages(0)
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .find(|m| m.contains(needle));
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // SIGTERM to the master we started; it takes its children down with it.
        // SAFETY: kill(2) with a PID read from this instance's own pid file.
        unsafe {
            libc::kill(self.master_pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(self.master_pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The message in an smtp-sink dump: what follows smtp-sink's own three-line `Received:` header.
/// smtp-sink writes LF line ends and undoes dot-stuffing.
pub fn dumped_message(dump: &str) -> &str {
    let start = dump
        .find("Received: from")
        .expect("smtp-sink's Received header");
    let after = &dump[start..];
    let mut offset = 0;
    for _ in 0..3 {
        offset += after[offset..].find('\n').expect("line") + 1;
    }
    &after[offset..]
}

/// A TCP relay on loopback between a client under test and a real server, recording every chunk
/// the client wrote as the relay read it (a transcript that shows which commands went in one
/// write). Threads end when their connections close.
pub struct Recorder {
    pub addr: SocketAddr,
    chunks: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    pub fn start(upstream: SocketAddr) -> Recorder {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().expect("recorder address");
        let chunks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = chunks.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(mut client_w), Ok(mut server_r)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = server_r.read(&mut buf) {
                        if n == 0 || client_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client_w.shutdown(std::net::Shutdown::Both);
                });
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        record
                            .lock()
                            .expect("recorder lock")
                            .push(buf[..n].to_vec());
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Recorder { addr, chunks }
    }

    /// What the client wrote, one entry per read, as text.
    pub fn chunks(&self) -> Vec<String> {
        self.chunks
            .lock()
            .expect("recorder lock")
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }
}
