//! The demo's stand-in for the provider's MTA behind gateway B: an SMTP receiver (the project's
//! own sans-I/O [`Session`], with thin glue) that writes each message it accepts to
//! `<dir>/new/<unique>`, Maildir style (written under `tmp/`, then renamed into `new/`).

use crate::envelope::QueueId;
use crate::smtp::session::{Limits, Output, Policy, Session, StoreFailure};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A Maildir the receiver delivers into.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    counter: Arc<AtomicU64>,
}

impl Maildir {
    /// Creates `root/{tmp,new,cur}`.
    pub fn create(root: &Path) -> io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        Ok(Maildir {
            root: root.to_owned(),
            counter: Arc::default(),
        })
    }

    /// Writes one message; returns its path under `new/`.
    pub fn deliver(&self, body: &[u8]) -> io::Result<PathBuf> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.P{}Q{n}.dimegate-demo",
            crate::time::UnixTime::now().0,
            std::process::id()
        );
        let tmp = self.root.join("tmp").join(&name);
        std::fs::write(&tmp, body)?;
        let new = self.root.join("new").join(&name);
        std::fs::rename(&tmp, &new)?;
        Ok(new)
    }
}

/// Accepts SMTP on `listener` for `domain` until dropped; every message written is announced on
/// `delivered`.
pub async fn serve(
    listener: TcpListener,
    domain: String,
    maildir: Maildir,
    delivered: mpsc::UnboundedSender<PathBuf>,
) {
    while let Ok((stream, peer)) = listener.accept().await {
        let policy = Policy {
            hostname: format!("mailbox.{domain}"),
            served_domains: vec![domain.clone()],
            relay_allowed: false,
            tls_available: false,
            auth_available: false,
            dmtp_dual_mode: false,
        };
        let maildir = maildir.clone();
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let session = Session::new(
                policy,
                Limits::default(),
                peer,
                Instant::now(),
                crate::time::UnixTime::now().0,
            );
            if let Err(e) = run(stream, session, &maildir, &delivered).await {
                tracing::debug!(error = %e, "demo mailbox session ended");
            }
        });
    }
}

async fn run(
    mut stream: TcpStream,
    mut session: Session,
    maildir: &Maildir,
    delivered: &mpsc::UnboundedSender<PathBuf>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                Output::Send(bytes) => stream.write_all(&bytes).await?,
                Output::Enqueue { body, .. } => {
                    let result = match maildir.deliver(&body) {
                        Ok(path) => {
                            let _ = delivered.send(path);
                            Ok(QueueId(maildir.counter.load(Ordering::Relaxed)))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "demo mailbox write failed");
                            Err(StoreFailure::Failed)
                        }
                    };
                    session.handle_stored(Instant::now(), result);
                }
                Output::Close(_) => {
                    stream.flush().await?;
                    return Ok(());
                }
                // None of these is offered (no TLS, AUTH or dual mode; bodies are not streamed).
                Output::StartTls
                | Output::Authenticate { .. }
                | Output::UpgradeToDmtp { .. }
                | Output::BodyStart
                | Output::BodyChunk(_) => return Ok(()),
            }
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            read = stream.read(&mut buf) => match read? {
                0 => return Ok(()),
                n => session.handle_input(Instant::now(), &buf[..n]),
            },
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => session.handle_timeout(Instant::now()),
        }
    }
}
