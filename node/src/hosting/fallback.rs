//! The sender's side: when a recipient's onion has stayed unreachable long enough, the same
//! protected copy goes to one of the recipient's mailbox hosts, read from the ledger with a
//! proof, over SMTP to the host's onion with the recipient's own address in `RCPT TO`.
//!
//! Only a copy that is OpenPGP ciphertext is ever handed to a host (a recipient with no bound
//! key keeps waiting for its own onion). Only a host's `250` counts: any refusal, from every
//! host, leaves the recipient pending (its onion may come back) with the hosts' answers as
//! its last error, so the message bounces at the end of the retry window as any other.

use onionpost_ledger_client::{At, Ledger};
use onionpost_proto::onion::OnionAddress;

use crate::ledger::NodeLedger;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::ReplyExt;

/// When and how the runner goes to mailbox hosts.
#[derive(Debug, Clone)]
pub struct Fallback {
    ledger: NodeLedger,
    after: f64,
}

/// Whether a message queued at `created` goes to the recipient's hosts at `now` (its onion
/// being unreachable): once it has waited `after` seconds; never for a negative `after`.
/// Pure.
pub fn due(created: f64, now: f64, after: f64) -> bool {
    after >= 0.0 && now - created >= after
}

/// Whether a copy is OpenPGP ciphertext (PGP/MIME `multipart/encrypted`), the only kind a
/// host is handed. Pure (parses the copy).
pub fn is_ciphertext(wire: &[u8]) -> bool {
    onionpost_e2e::encrypted_to(wire).is_ok_and(|ids| !ids.is_empty())
}

impl Fallback {
    /// Mailbox hosts read from `ledger`, after `after` seconds (`[queue] hosts_after_secs`).
    pub fn new(ledger: NodeLedger, after: f64) -> Self {
        Self { ledger, after }
    }

    /// Whether a message queued at `created` goes to the hosts now.
    pub fn applies(&self, created: f64, now: f64) -> bool {
        due(created, now, self.after)
    }

    /// The hosts to try for `onion`, in the ledger's order, for the copy `wire`; `Err` is
    /// why none may be tried (the copy is not ciphertext, no verified answer, none named):
    /// the recipients stay pending with that as their last error.
    pub async fn hosts(
        &self,
        onion: &OnionAddress,
        wire: &[u8],
    ) -> Result<Vec<OnionAddress>, String> {
        let copy = wire.to_vec();
        let encrypted = tokio::task::spawn_blocking(move || is_ciphertext(&copy))
            .await
            .unwrap_or(false);
        if !encrypted {
            return Err(format!(
                "{} is unreachable; not handed to its mailbox hosts: this copy is not end-to-end encrypted (the recipient has no key bound on the ledger)",
                onion.hostname()
            ));
        }
        let client = self
            .ledger
            .client()
            .map_err(|e| format!("{} is unreachable, and {e}", onion.hostname()))?;
        let hosts = client
            .mailbox_hosts(&onion.public_key(), At::Latest)
            .await
            .map_err(|e| {
                format!(
                    "{} is unreachable, and the ledger gave no verified answer about its mailbox hosts: {e}",
                    onion.hostname()
                )
            })?;
        if hosts.value.is_empty() {
            return Err(format!(
                "{} is unreachable and names no mailbox hosts on the ledger (height {})",
                onion.hostname(),
                hosts.height
            ));
        }
        Ok(hosts
            .value
            .iter()
            .map(|k| OnionAddress::from_public_key(*k))
            .collect())
    }
}

/// Whether a host took the message for every recipient; otherwise its answer. Pure.
pub fn taken(outcomes: &[RcptOutcome]) -> Result<(), String> {
    match outcomes
        .iter()
        .find(|o| !matches!(o, RcptOutcome::Delivered))
    {
        None => Ok(()),
        Some(RcptOutcome::Refused(r)) => Err(r.one_line()),
        Some(RcptOutcome::Unreachable(w)) => Err(w.clone()),
        Some(RcptOutcome::Delivered) => unreachable!("filtered"),
    }
}

/// The outcome for `n` recipients at `onion` when no host took the message: pending, with
/// every host's answer. Pure.
pub fn not_taken(onion: &OnionAddress, answers: &[String], n: usize) -> Vec<RcptOutcome> {
    vec![
        RcptOutcome::Unreachable(format!(
            "{} is unreachable, and its mailbox hosts did not take it ({})",
            onion.hostname(),
            answers.join("; ")
        ));
        n
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_after_the_configured_wait_and_never_when_negative() {
        assert!(!due(100.0, 150.0, 60.0));
        assert!(due(100.0, 160.0, 60.0));
        assert!(due(100.0, 100.0, 0.0));
        assert!(!due(100.0, 1e9, -1.0));
        assert!(!is_ciphertext(b"Subject: clear\r\n\r\nhello\r\n"));
        let o = OnionAddress::from_public_key([1; 32]);
        assert!(taken(&[RcptOutcome::Delivered, RcptOutcome::Delivered]).is_ok());
        let r = crate::smtp::reply::reply(550, [5, 7, 1], "not a host");
        assert!(
            taken(&[RcptOutcome::Refused(r)])
                .unwrap_err()
                .contains("not a host")
        );
        let n = not_taken(&o, &["h: 550 no".into()], 2);
        assert_eq!(n.len(), 2);
        assert!(matches!(&n[0], RcptOutcome::Unreachable(w) if w.contains("h: 550 no")));
    }
}
