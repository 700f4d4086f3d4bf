//! How the legacy sender of a message about to be wrapped authenticated, as an
//! `Authentication-Results` value (RFC 8601) that the bridge seals into the message's headers, so
//! the DIME recipient sees it under the origin's signature: SPF (RFC 7208) for the client address,
//! HELO and MAIL FROM, DKIM (RFC 6376) signatures in the message, DMARC (RFC 7489) for its From
//! domain, all through mail-auth with our resolver; or `auth=pass` for an authenticated
//! submission, for which SPF says nothing.
//!
//! The checks run after the `250`, when the message is wrapped (DESIGN.md §1: work after the 250
//! is retried on a schedule); a DNS failure is a `temperror` result in the header, not a delay.

use crate::envelope::Envelope;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};

/// The sender checks, with their resolver.
#[derive(Clone)]
pub struct SenderChecks {
    authenticator: MessageAuthenticator,
    hostname: String,
}

impl std::fmt::Debug for SenderChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderChecks")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl SenderChecks {
    /// Checks that ask `resolver`'s servers and name `hostname` as the authserv-id.
    pub fn new(resolver: &crate::resolve::Resolver, hostname: String) -> SenderChecks {
        SenderChecks {
            authenticator: MessageAuthenticator(resolver.hickory()),
            hostname,
        }
    }

    /// The `Authentication-Results` value for `message` as received with `envelope`: one line
    /// (the bridge refuses header values with line breaks, so mail-auth's folding is undone).
    pub async fn results(&self, envelope: &Envelope, message: &[u8]) -> String {
        let mut results = AuthenticationResults::new(&self.hostname);
        if let Some(user) = &envelope.auth_user {
            // RFC 8601 §2.7.4: the submission's SMTP AUTH identity.
            let user: String = user.chars().filter(|c| c.is_ascii_graphic()).collect();
            return format!("{}; auth=pass smtp.auth={user}", self.hostname);
        }
        let ip = envelope.client.ip();
        let helo = envelope.helo.as_str();
        let spf = self
            .authenticator
            .verify_spf(SpfParameters::verify_mail_from(
                ip,
                helo,
                &self.hostname,
                &envelope.sender,
            ))
            .await;
        results = results.with_spf_mailfrom_result(&spf, ip, &envelope.sender, helo);
        if let Some(parsed) = AuthenticatedMessage::parse(message) {
            let dkim = self.authenticator.verify_dkim(&parsed).await;
            let mail_from_domain = envelope.sender.rsplit_once('@').map_or(helo, |(_, d)| d);
            let dmarc = self
                .authenticator
                .verify_dmarc(DmarcParameters::new(&parsed, &dkim, mail_from_domain, &spf))
                .await;
            results = results
                .with_dkim_results(&dkim, parsed.from())
                .with_dmarc_result(&dmarc);
        }
        unfold(&results.to_string())
    }
}

/// One line: folding whitespace (CRLF followed by blanks) becomes one space, and any other
/// control character goes.
fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.chars() {
        if c == '\r' || c == '\n' || c == '\t' {
            pending_space = true;
            continue;
        }
        if c.is_control() {
            continue;
        }
        if pending_space {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unfold;

    #[test]
    fn folded_results_become_one_line() {
        assert_eq!(
            unfold("mx.a.test;\r\n\tspf=none smtp.mailfrom=a@b;\r\n\tdkim=none"),
            "mx.a.test; spf=none smtp.mailfrom=a@b; dkim=none"
        );
        assert_eq!(unfold("a\u{7}b"), "ab");
    }
}
