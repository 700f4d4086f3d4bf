//! Sending TLS-RPT aggregate reports (RFC 8460 §5): for each policy domain with counted
//! sessions, the `rua` of its `_smtp._tls` record; `mailto:` destinations get an RFC 8460 §5.3
//! message queued in our own store (so it is as durable and retried as any mail), `https:`
//! destinations a POST of the JSON (§5.4). Owns the report period; the counts are
//! `deliver::tlsrpt`'s. Run daily by `serve`, and on demand by `POST /api/tlsrpt/send`.
//!
//! The JSON goes uncompressed (`application/tlsrpt+json`): RFC 8460 §5.3 makes gzip a SHOULD,
//! and no deflate crate is in the dependency tree.

use crate::deliver::TlsReportSource;
use crate::deliver::sts_fetch::parse_response;
use crate::deliver::tlsrpt::{Report, ReportMeta, Rua, select_record};
use crate::envelope::{Envelope, QueueId};
use crate::store::Store;
use crate::time::UnixTime;
use base64::Engine;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one `https:` POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one report run did, for the log and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// Policy domains that had counts.
    pub domains: Vec<String>,
    /// Reports queued as mail: (domain, address, queue id).
    pub mailed: Vec<(String, String, String)>,
    /// Reports posted: (domain, URL, HTTP status).
    pub posted: Vec<(String, String, u16)>,
    /// Domains without a usable `_smtp._tls` record, and failed deliveries, with why.
    pub skipped: Vec<(String, String)>,
}

/// Sends the reports. Share it (`Arc`).
pub struct TlsReporter {
    source: TlsReportSource,
    /// Our host name: `organization-name`, the submitter, the EHLO name of the mail.
    submitter: String,
    /// `contact-info` and the sender of report mail.
    contact: String,
    last_run: Mutex<UnixTime>,
}

impl std::fmt::Debug for TlsReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReporter")
            .field("submitter", &self.submitter)
            .finish_non_exhaustive()
    }
}

/// RFC 3339 in UTC.
fn rfc3339(t: UnixTime) -> String {
    format!("{}Z", crate::time::utc_timestamp(t).replace(' ', "T"))
}

impl TlsReporter {
    /// A reporter for the counts of `source`, submitted as `submitter` (our host name) with
    /// `contact` as contact and sender address.
    pub fn new(source: TlsReportSource, submitter: &str, contact: &str, now: UnixTime) -> Self {
        TlsReporter {
            source,
            submitter: submitter.to_owned(),
            contact: contact.to_owned(),
            last_run: Mutex::new(now),
        }
    }

    /// Reports everything counted since the last run, to every domain's `rua`, and starts a
    /// new period. Mail is queued in `store` (wake the runner afterwards).
    pub async fn run(&self, store: &Store, now: UnixTime) -> RunSummary {
        let start = {
            let mut last = match self.last_run.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *last, now)
        };
        let meta = ReportMeta {
            organization: self.submitter.clone(),
            contact: self.contact.clone(),
            start: rfc3339(start),
            end: rfc3339(now),
            report_id: format!("{}-{}", start.0, now.0),
            sending_ip: None,
        };
        let mut summary = RunSummary::default();
        for (domain, report) in self.source.collector.take_reports(&meta) {
            summary.domains.push(domain.clone());
            let destinations = match self.source.resolver.txt("_smtp._tls", &domain).await {
                Ok(Some((texts, _))) => select_record(&texts).map_err(|e| e.to_string()),
                Ok(None) => Err("no _smtp._tls record".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            let destinations = match destinations {
                Ok(d) => d,
                Err(why) => {
                    tracing::info!(%domain, reason = %why, "TLS-RPT report not sent");
                    summary.skipped.push((domain, why));
                    continue;
                }
            };
            let json = match serde_json::to_vec(&report) {
                Ok(json) => json,
                Err(e) => {
                    summary.skipped.push((domain, e.to_string()));
                    continue;
                }
            };
            for destination in destinations {
                match destination {
                    Rua::Mailto(address) => {
                        match self
                            .queue_mail(store, &domain, &address, &report, &json, now)
                            .await
                        {
                            Ok(id) => {
                                tracing::info!(%domain, to = %address, queue_id = %id, "TLS-RPT report queued");
                                summary
                                    .mailed
                                    .push((domain.clone(), address, id.to_string()));
                            }
                            Err(why) => {
                                tracing::warn!(%domain, to = %address, reason = %why, "TLS-RPT report not queued");
                                summary.skipped.push((domain.clone(), why));
                            }
                        }
                    }
                    Rua::Https(url) => match self.post(&url, &json).await {
                        Ok(status) => {
                            tracing::info!(%domain, %url, status, "TLS-RPT report posted");
                            summary.posted.push((domain.clone(), url, status));
                        }
                        Err(why) => {
                            tracing::warn!(%domain, %url, reason = %why, "TLS-RPT report not posted");
                            summary.skipped.push((domain.clone(), why));
                        }
                    },
                }
            }
        }
        summary
    }

    async fn queue_mail(
        &self,
        store: &Store,
        domain: &str,
        address: &str,
        report: &Report,
        json: &[u8],
        now: UnixTime,
    ) -> Result<QueueId, String> {
        let message = report_message(
            &self.submitter,
            &self.contact,
            domain,
            address,
            report,
            json,
            now,
        );
        let envelope = Envelope::local(
            self.contact.clone(),
            address.to_owned(),
            self.submitter.clone(),
            now.0,
        );
        store
            .append(envelope, message)
            .await
            .map_err(|e| e.to_string())
    }

    /// POSTs the JSON to `url` (RFC 8460 §5.4); the HTTP status on any answer.
    async fn post(&self, url: &str, json: &[u8]) -> Result<u16, String> {
        let (host, port, path) = parse_https_url(url).ok_or_else(|| format!("bad URL {url}"))?;
        let work = async {
            let addresses = self
                .source
                .resolver
                .addresses(&host)
                .await
                .map_err(|e| e.to_string())?;
            let ip = addresses
                .first()
                .ok_or_else(|| format!("{host} has no address"))?;
            let tcp = tokio::net::TcpStream::connect((*ip, port))
                .await
                .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| format!("{host:?} is not a TLS server name"))?;
            let mut tls = self
                .source
                .https
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/tlsrpt+json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                json.len()
            );
            tls.write_all(head.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(json).await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let (n, eof) = match tls.read(&mut chunk).await {
                    Ok(0) => (0, true),
                    Ok(n) => (n, false),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => (0, true),
                    Err(e) => return Err(e.to_string()),
                };
                buf.extend_from_slice(&chunk[..n]);
                match parse_response(&buf, eof) {
                    Ok(Some(response)) => return Ok(response.status),
                    Ok(None) if !eof && buf.len() < 256 * 1024 => {}
                    Ok(None) => return Err("truncated HTTP response".into()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let status = tokio::time::timeout(POST_TIMEOUT, work)
            .await
            .map_err(|_| format!("{url}: timed out"))??;
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(format!("{url} answered HTTP {status}"))
        }
    }
}

/// `https://host[:port]/path` → (host, port, path).
fn parse_https_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok().filter(|&p| p != 0)?),
        None => (authority, 443),
    };
    if host.is_empty() || host.contains(['@', '[', ']']) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port, path.to_owned()))
}

/// The report as mail (RFC 8460 §5.3): `multipart/report; report-type="tlsrpt"` with a short
/// text part and the JSON as `application/tlsrpt+json`, base64-encoded.
pub fn report_message(
    submitter: &str,
    contact: &str,
    domain: &str,
    to: &str,
    report: &Report,
    json: &[u8],
    now: UnixTime,
) -> Vec<u8> {
    let boundary = format!("tlsrpt-{}-{}", now.0, json.len());
    let mut m = String::new();
    let _ = write!(
        m,
        "From: <{contact}>\r\nTo: <{to}>\r\nDate: {}\r\nMessage-ID: <{}>\r\n\
         Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{}>\r\n\
         TLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {submitter}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\"\r\n\r\n",
        crate::time::rfc5322_date(now),
        report.report_id,
        report.report_id,
    );
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an aggregate TLS report (RFC 8460) from {submitter} for {domain},\r\n\
         {} to {}.\r\n\r\n",
        report.date_range.start_datetime, report.date_range.end_datetime
    );
    let filename = format!(
        "{submitter}!{domain}!{}!{}.json",
        report.date_range.start_datetime, report.date_range.end_datetime
    )
    .replace(':', "");
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Type: application/tlsrpt+json\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n"
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    for line in encoded.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(line));
        m.push_str("\r\n");
    }
    let _ = write!(m, "\r\n--{boundary}--\r\n");
    m.into_bytes()
}

/// Sends the reports every day at 00:00 UTC until `shutdown`, waking the runner for the mail.
pub async fn run_daily(
    reporter: std::sync::Arc<TlsReporter>,
    store: Store,
    runner: std::sync::Arc<crate::runner::QueueRunner>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let wait = until_midnight(UnixTime::now());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        let summary = reporter.run(&store, UnixTime::now()).await;
        tracing::info!(
            domains = summary.domains.len(),
            mailed = summary.mailed.len(),
            posted = summary.posted.len(),
            skipped = summary.skipped.len(),
            "daily TLS-RPT reports"
        );
        runner.wake();
    }
}

/// Seconds from `now` to the next 00:00 UTC (the daily report's schedule).
pub fn until_midnight(now: UnixTime) -> Duration {
    Duration::from_secs(86_400 - now.0 % 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_table() {
        for (url, want) in [
            (
                "https://r.example.net/v1",
                Some(("r.example.net", 443, "/v1")),
            ),
            (
                "https://R.example.net:8443",
                Some(("r.example.net", 8443, "/")),
            ),
            ("https://r.example.net:0/", None),
            ("https://u@r.example.net/", None),
            ("http://r.example.net/", None),
            ("https:///x", None),
        ] {
            assert_eq!(
                parse_https_url(url),
                want.map(|(h, p, path)| (h.to_owned(), p, path.to_owned())),
                "{url}"
            );
        }
    }

    #[test]
    fn midnight_and_rfc3339() {
        assert_eq!(
            until_midnight(UnixTime(86_400 * 3 + 60)),
            Duration::from_secs(86_340)
        );
        assert_eq!(rfc3339(UnixTime(1_796_083_200)), "2026-12-01T00:00:00Z");
    }
}
