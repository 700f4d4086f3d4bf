//! Large message bodies are streamed from SMTP to the store: DATA (Python's smtplib) and BDAT
//! (a raw client in Python, smtplib has no CHUNKING) are written to the message's body file as
//! they arrive, the record is committed only after that file's fsync, and the message reaches a
//! real smtp-sink byte for byte. A message refused in the middle of its body (too big, bare LF
//! past the first chunk) leaves neither a record nor a body file behind.

mod common;

use common::{Gateway, Sink, free_port, require_tool, wait_until};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `program` with python3; its stdout.
fn python(program: &str, args: &[&str]) -> String {
    require_tool("python3", "python3");
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends the file at argv[2] over DATA (smtplib) and over BDAT in three chunks, to port argv[1];
/// prints each final reply. argv[3] is a message with a bare LF deep inside, argv[4] one over
/// the size limit: both must be refused.
const CLIENT: &str = r#"
import smtplib, socket, sys
port = int(sys.argv[1])
body = open(sys.argv[2], "rb").read()
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo("big.client.test")
s.sendmail("a@client.test", ["data@example.test"], body)
print("data ok")
for name in (sys.argv[3], sys.argv[4]):
    try:
        s.sendmail("a@client.test", ["refused@example.test"], open(name, "rb").read())
        print("accepted", name)
    except smtplib.SMTPException as e:
        print("refused", getattr(e, "smtp_code", e))
s.quit()

c = socket.create_connection(("127.0.0.1", port))
f = c.makefile("rb")
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b"-":
            return line
reply()
c.sendall(b"EHLO big.client.test\r\n"); reply()
c.sendall(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<bdat@example.test>\r\n"); reply(); reply()
third = len(body) // 3
parts = [body[:third], body[third:2 * third], body[2 * third:]]
for i, p in enumerate(parts):
    last = b" LAST" if i == 2 else b""
    c.sendall(b"BDAT %d%s\r\n" % (len(p), last) + p)
    r = reply()
print("bdat", r.decode().strip())
c.sendall(b"QUIT\r\n")
"#;

fn body_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("queue.bodies"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn large_bodies_stream_to_the_store_and_arrive_byte_for_byte() {
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{sink_addr}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\npoll_interval = \"100ms\"\n"
    ));
    // Close to the test gateway's 1 MiB limit, so several 256 KiB chunks: lines, some
    // dot-stuffed on the wire, with CRLFs falling on every kind of chunk boundary.
    let mut message = b"Subject: streamed\r\nFrom: a@client.test\r\n\r\n".to_vec();
    let mut i = 0u64;
    while message.len() < 1_000_000 {
        let dots = if i.is_multiple_of(7) { "." } else { "" };
        message.extend_from_slice(
            format!("{dots}line {i} {}\r\n", "z".repeat((i % 89) as usize)).as_bytes(),
        );
        i += 1;
    }
    let dir = gw.dir.path();
    std::fs::write(dir.join("big.eml"), &message).unwrap();
    let mut bare_lf = message.clone();
    let deep = 700_000;
    let at = deep + bare_lf[deep..].iter().position(|&b| b == b'\r').unwrap();
    bare_lf.remove(at);
    std::fs::write(dir.join("bare-lf.eml"), &bare_lf).unwrap();
    let mut huge = message.clone();
    huge.extend_from_slice(&message);
    std::fs::write(dir.join("huge.eml"), &huge).unwrap();

    let port = gw.smtp.port().to_string();
    let files = ["big.eml", "bare-lf.eml", "huge.eml"].map(|f| dir.join(f));
    let out = python(
        CLIENT,
        &[
            &port,
            files[0].to_str().unwrap(),
            files[1].to_str().unwrap(),
            files[2].to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "data ok",
            "refused 550",
            "refused 552",
            "bdat 250 2.0.0 Ok: queued as"
        ]
        .iter()
        .zip(out.lines())
        .map(|(want, got)| if got.starts_with(want) { got } else { want })
        .collect::<Vec<_>>(),
        "{out}\n{}",
        gw.log_text()
    );
    // Two messages queued, each with its body file; the refused ones left nothing.
    let queued = gw.queue_json();
    assert_eq!(queued.len(), 2, "{queued:#?}");
    let data_dir = dir.join("data");
    assert_eq!(body_files(&data_dir), 2);
    for m in &queued {
        assert_eq!(m["size"].as_u64(), Some(message.len() as u64), "{m:#?}");
    }

    // Mid-DATA, what has arrived is already in a body file, before any record exists; the
    // client going away removes it.
    let mut c = TcpStream::connect(gw.smtp).unwrap();
    let mut buf = [0u8; 4096];
    let _ = c.read(&mut buf).unwrap();
    c.write_all(b"EHLO c\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n")
        .unwrap();
    c.write_all(&bare_lf[..600_000]).unwrap();
    wait_until(
        Duration::from_secs(10),
        || body_files(&data_dir) == 3,
        || format!("{} body files mid-DATA", body_files(&data_dir)),
    );
    assert_eq!(gw.queue_json().len(), 2);
    drop(c);
    wait_until(
        Duration::from_secs(10),
        || body_files(&data_dir) == 2,
        || format!("{} body files after the client left", body_files(&data_dir)),
    );

    let sink = Sink::start_at(sink_addr, &[]);
    wait_until(
        Duration::from_secs(60),
        || gw.queue_json().is_empty(),
        || format!("queue {:#?}\nlog:\n{}", gw.queue_json(), gw.log_text()),
    );
    let want = String::from_utf8(message).unwrap().replace("\r\n", "\n") + "\n";
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 2);
    for rcpt in ["data@example.test", "bdat@example.test"] {
        let dump = dumps
            .iter()
            .find(|d| d.contains(&format!("X-Rcpt-Args: <{rcpt}>")))
            .unwrap_or_else(|| panic!("no delivery to {rcpt}"));
        assert!(dump.ends_with(&want), "{rcpt}: body differs");
    }
    assert_eq!(body_files(&data_dir), 0, "delivered bodies are unlinked");
}

/// Sends the file at argv[2] over DATA (smtplib, which dot-stuffs it) to port argv[1], once for
/// each recipient named after it; prints each final reply.
const SENDER: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
body = open(sys.argv[2], "rb").read()
for rcpt in sys.argv[3:]:
    s = smtplib.SMTP("127.0.0.1", port)
    s.ehlo("big.client.test")
    try:
        s.sendmail("a@client.test", [rcpt], body)
        print("ok", rcpt)
    except smtplib.SMTPException as e:
        print("refused", rcpt, e)
    s.quit()
"#;

/// The other direction: a multi-MiB message leaves the queue in 64 KiB chunks, dot-stuffed
/// chunk by chunk, and reaches a real smtp-sink byte for byte. The lines have every length
/// from 0 to 96 bytes and every seventh starts with a dot, so across the header's and the
/// chunks' offsets the chunk boundaries fall before, inside and after a stuffed dot and between
/// CR and LF. A body file cut short on disk is refused at load and never sent as a shorter
/// message: it stays queued.
#[test]
fn multi_mib_messages_are_delivered_in_chunks_byte_for_byte() {
    let sink_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let smtp_port = free_port();
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{sink_addr}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\npoll_interval = \"100ms\"\n\
         [smtp]\nlisten = \"127.0.0.1:{smtp_port}\"\nhostname = \"mx.example.test\"\n\
         max_message_size = \"8MiB\"\n\
         [[domain]]\nname = \"example.test\"\n"
    ));
    let mut message = b"Subject: six mebibytes\r\nFrom: a@client.test\r\n\r\n".to_vec();
    let mut i = 0u64;
    while message.len() < 6 << 20 {
        let dots = if i.is_multiple_of(7) { "." } else { "" };
        let fill = "y".repeat((i % 97) as usize);
        message.extend_from_slice(format!("{dots}{fill}\r\n").as_bytes());
        i += 1;
    }
    message.extend_from_slice(b".\r\n..\r\nlast line\r\n");
    let dir = gw.dir.path();
    let file = dir.join("six.eml");
    std::fs::write(&file, &message).unwrap();
    let out = python(
        SENDER,
        &[
            &smtp_port.to_string(),
            file.to_str().unwrap(),
            "one@example.test",
            "cut@example.test",
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ok one@example.test", "ok cut@example.test"],
        "{out}\n{}",
        gw.log_text()
    );
    let queued = gw.queue_json();
    assert_eq!(queued.len(), 2, "{queued:#?}");
    // Cut the second message's body file short before any attempt can reach a backend.
    let cut_id = queued
        .iter()
        .find(|m| m.to_string().contains("cut@example.test"))
        .and_then(|m| m["queue_id"].as_str())
        .expect("the second message")
        .to_owned();
    let bodies = dir.join("data").join("queue.bodies");
    let cut_file = std::fs::read_dir(&bodies)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.eq_ignore_ascii_case(&cut_id))
        })
        .unwrap_or_else(|| panic!("no body file for {cut_id} in {}", bodies.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut_file)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();

    let sink = Sink::start_at(sink_addr, &[]);
    wait_until(
        Duration::from_secs(60),
        || gw.queue_json().len() == 1 && !sink.messages().is_empty(),
        || format!("queue {:#?}\nlog:\n{}", gw.queue_json(), gw.log_text()),
    );
    // Give the cut one some retries: it must never go out.
    std::thread::sleep(Duration::from_secs(3));
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 1, "only the intact message is delivered");
    assert!(dumps[0].contains("X-Rcpt-Args: <one@example.test>"));
    // smtp-sink writes the message with LF line ends after its own X- lines and our Received:.
    let want = String::from_utf8(message).unwrap().replace("\r\n", "\n");
    assert!(
        dumps[0].ends_with(&format!("{want}\n")) || dumps[0].ends_with(&want),
        "the delivered body differs (dump of {} bytes, message of {} bytes)",
        dumps[0].len(),
        want.len()
    );
    let left = gw.queue_json();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["queue_id"].as_str(), Some(cut_id.as_str()));
    let log = gw.log_text();
    assert!(
        log.contains("its record says"),
        "the short body is named in the log:\n{log}"
    );
}
