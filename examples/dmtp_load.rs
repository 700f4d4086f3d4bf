//! DMTP load client for `benches/dmtp-ingest.sh`: SESSIONS concurrent DMTP sessions, each
//! sending PER_SESSION transfers, through dimegate's own client session
//! and connection glue (the outbound path a gateway runs). The server's certificate is checked
//! against the `_dx` record text given (its `tls=` pin, taken as DNSSEC-secure: the script made
//! that record itself). Prints `delivered N failed M seconds S rate R`.
//!
//! MESSAGE is a sealed message, sent again and again, or a directory of them, each sent once
//! (session k takes the files k, k + SESSIONS, ...; PER_SESSION of them). A receiver that
//! de-duplicates transfers, as dimegate does, answers a message it has stored with its first
//! transaction id: only distinct messages measure ingest.
//!
//! usage: dmtp_load ADDR DX_HOST RECORD_TXT ORIGIN ORIGIN_FP DEST DEST_FP MESSAGE SESSIONS PER_SESSION

use dimegate::dime::DxRecord;
use dimegate::discovery::connection::{self, Transport};
use dimegate::dmtp::client::{ClientConfig, ClientEvent, ClientSession, Delivery, Job};
use dimegate::dmtp::codec::Domain;
use dimegate::dmtp::trust::DxCertVerifier;
use dimegate::resolve::Verdict;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 10 {
        eprintln!(
            "usage: dmtp_load ADDR DX_HOST RECORD_TXT ORIGIN ORIGIN_FP DEST DEST_FP MESSAGE SESSIONS PER_SESSION"
        );
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dmtp_load: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<usize, Box<dyn std::error::Error>> {
    let addr: SocketAddr = args[0].parse()?;
    let host = args[1].clone();
    let record = DxRecord::parse_str(args[2].trim().trim_matches('"'))?;
    let origin = Domain::parse(&args[3])?;
    let origin_fp = args[4].parse()?;
    let dest = Domain::parse(&args[5])?;
    let dest_fp = args[6].parse()?;
    let sessions: usize = args[8].parse()?;
    let per_session: usize = args[9].parse()?;
    let messages = if std::path::Path::new(&args[7]).is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&args[7])?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        if files.len() < sessions * per_session {
            return Err(format!(
                "{} holds {} messages, fewer than SESSIONS x PER_SESSION",
                args[7],
                files.len()
            )
            .into());
        }
        files
            .iter()
            .map(std::fs::read)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![std::fs::read(&args[7])?]
    };
    // The pin decides; the Web roots are only what the verifier is built with.
    let roots = Arc::new(dimegate::dmtp::trust::root_store(None)?);
    let delivery = Delivery {
        origin: origin.clone(),
        origin_fingerprint: origin_fp,
        destination: dest,
        destination_fingerprint: Some(dest_fp),
        ret: None,
        data_type: None,
        message: Vec::new(),
    };
    // One thread, like smtp-source's event loop: the client shares the machine's cores with
    // the gateway it measures, so it should cost as little CPU per message as the SMTP side's
    // load generator (no work stealing, no cross-thread wake-ups).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (delivered, failed) = rt.block_on(async {
        let mut tasks = Vec::new();
        for k in 0..sessions {
            let verifier = Arc::new(DxCertVerifier::new(
                record.clone(),
                Verdict::Secure,
                roots.clone(),
            )?);
            let connector = connection::connector(verifier)?;
            let name = ServerName::try_from(host.clone())?;
            let jobs = (0..per_session)
                .map(|i| {
                    let message = &messages[(k + i * sessions) % messages.len()];
                    Job::Deliver(Delivery {
                        message: message.clone(),
                        ..delivery.clone()
                    })
                })
                .collect();
            let session = ClientSession::new(ClientConfig::new(origin.clone()), Instant::now());
            tasks.push(tokio::spawn(connection::run(
                addr,
                Transport::Tls,
                name,
                connector,
                session,
                jobs,
                Duration::from_secs(30),
            )));
        }
        let (mut ok, mut bad) = (0usize, 0usize);
        for t in tasks {
            match t.await? {
                Ok(events) => {
                    let d = events
                        .iter()
                        .filter(|e| matches!(e, ClientEvent::Delivered { .. }))
                        .count();
                    if let Some(ClientEvent::Failed { error, .. }) = events
                        .iter()
                        .find(|e| matches!(e, ClientEvent::Failed { .. }))
                    {
                        eprintln!("dmtp_load: {error}");
                    }
                    ok += d;
                    bad += per_session - d.min(per_session);
                }
                Err(e) => {
                    eprintln!("dmtp_load: {e}");
                    bad += per_session;
                }
            }
        }
        Ok::<_, Box<dyn std::error::Error>>((ok, bad))
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "delivered {delivered} failed {failed} seconds {secs:.3} rate {:.1}",
        delivered as f64 / secs
    );
    Ok(failed)
}
