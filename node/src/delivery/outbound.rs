//! Outbound delivery: submission -> [`sanitize`] -> [`protect`] -> [`expand`] -> queue; the
//! queue's runner then routes ([`super::route`]) and sends each recipient's copy.
//!
//! Stages that later work fills pass mail through unchanged today, with their place and
//! contract fixed here: [`protect`] signs and encrypts (the end-to-end issue), [`expand`]
//! turns a list address into its members (the list issue).

use std::sync::Arc;

use chrono::{TimeZone, Utc};

use crate::clock::Clock;
use crate::context::{Context, Hosted, Identities};
use crate::message::{SubmitError, message_id, sanitize_submission};
use crate::queue::Queue;
use crate::smtp::reply::{Reply, reply};
use crate::smtp::session::{Envelope, Policy};
use crate::store::{DedupeKey, DeliverOptions, Flags, Quota, SpecialUse};

/// Applies the header allow-list (see [`crate::message::sanitize`]) for the identity
/// `sender` at Unix time `now`. Pure.
pub fn sanitize(message: &[u8], sender: &Hosted, now: f64) -> Result<Vec<u8>, Reply> {
    let when = Utc
        .timestamp_opt(now as i64, 0)
        .single()
        .unwrap_or_else(Utc::now);
    sanitize_submission(
        message,
        &sender.identity.address(),
        &sender.identity.onion,
        when,
    )
    .map_err(|e| match e {
        SubmitError::WrongFrom(_) | SubmitError::SeveralFrom(_) => {
            reply(550, [5, 7, 1], format!("Error: {e}"))
        }
    })
}

/// Signs (and, where every recipient's key is known, encrypts) a message. Today: unchanged.
pub fn protect(message: Vec<u8>) -> Vec<u8> {
    message
}

/// Expands list addresses into their members. Today: unchanged.
pub fn expand(recipients: Vec<String>) -> Vec<String> {
    recipients
}

/// The outbound stages up to the queue, bound to the node.
pub struct Submission {
    ctx: Arc<Context>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
}

impl Submission {
    /// Submission into `queue` for the identities of `ctx`.
    pub fn new(ctx: Arc<Context>, queue: Arc<Queue>, clock: Arc<dyn Clock>) -> Self {
        Self { ctx, queue, clock }
    }

    /// The SMTP session policy of a submission connection.
    pub fn policy(&self) -> SubmissionPolicy {
        SubmissionPolicy {
            ids: self.ctx.identities(),
        }
    }

    /// Runs the stages and queues the message durably (the client's 250 waits for this).
    pub async fn accept(&self, env: Envelope) -> Result<(), Reply> {
        let Some(addr) = env.authenticated.as_deref() else {
            return Err(reply(530, [5, 7, 0], "Error: authentication required"));
        };
        let ids = self.ctx.identities();
        let Some(sender) = ids.by_address(addr).cloned() else {
            return Err(reply(
                554,
                [5, 7, 1],
                "Error: this identity no longer exists on the node",
            ));
        };
        let now = self.clock.now();
        // The user's copy goes to Sent under the client's own Message-ID, so the copy the
        // client APPENDs to Sent afterwards is recognised and not stored twice.
        let sent_key = message_id(&env.data).map(|id| DedupeKey::sent_copy(&id));
        let message = protect(sanitize(&env.data, &sender, now)?);
        let recipients = expand(env.recipients);
        let queue = self.queue.clone();
        let (name, from) = (sender.identity.name.clone(), addr.to_string());
        let sent = sender.mailboxes.special(SpecialUse::Sent);
        let queued = tokio::task::spawn_blocking(move || {
            let queued = queue.enqueue(&name, &from, &recipients, &message, now)?;
            if let Some(sent) = sent {
                let opts = DeliverOptions {
                    dedupe: sent_key,
                    flags: Flags::SEEN,
                    quota: Quota::Exempt,
                    ..Default::default()
                };
                // The mail is queued: a Sent copy that cannot be written costs the user a
                // copy, not the message.
                if let Err(e) = sent.deliver(&message, opts) {
                    tracing::warn!(identity = %name, "filing the sent copy: {e}");
                }
            }
            Ok::<_, std::io::Error>(queued)
        })
        .await;
        match queued {
            Ok(Ok(m)) => {
                tracing::info!(id = %m.id, rcpts = m.recipients.len(), "queued");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!("spooling: {e}");
                Err(reply(
                    451,
                    [4, 3, 0],
                    "Error: local storage error; try again later",
                ))
            }
            Err(e) => {
                tracing::error!("spool task: {e}");
                Err(reply(451, [4, 3, 0], "Error: local error; try again later"))
            }
        }
    }
}

/// The session policy of submission: AUTH PLAIN against the hosted identities.
#[derive(Debug)]
pub struct SubmissionPolicy {
    ids: Arc<Identities>,
}

impl Policy for SubmissionPolicy {
    fn accepts(&self, _address: &str) -> bool {
        false
    }

    fn authenticate(&self, user: &str, password: &str) -> Option<String> {
        self.ids.login(user, password).map(|h| h.identity.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::identity::IdentityStore;
    use crate::message::header_value;

    #[tokio::test]
    async fn submission_sanitizes_then_queues_durably() {
        let home = tempfile::tempdir().unwrap();
        let (alice, pw) = IdentityStore::new(home.path()).create("alice").unwrap();
        let ctx = Arc::new(Context::open(home.path(), Config::default()).unwrap());
        let queue = Arc::new(Queue::open(&home.path().join("spool")).unwrap());
        let clock = Arc::new(ManualClock::new(1_795_000_000.0));
        let sub = Submission::new(ctx.clone(), queue.clone(), clock);
        assert_eq!(
            sub.policy().authenticate("alice", &pw),
            Some(alice.address())
        );
        assert!(sub.policy().authenticate("alice", "bad").is_none());
        let bob = format!(
            "bob@{}",
            onionpost_proto::onion::OnionAddress::from_public_key([7; 32]).hostname()
        );
        let env = |data: &str| Envelope {
            from: alice.address(),
            recipients: vec![bob.clone()],
            data: data.as_bytes().to_vec(),
            authenticated: Some(alice.address()),
        };
        sub.accept(env("Subject: hi\r\nX-Mailer: leaky\r\n\r\nbody\r\n"))
            .await
            .unwrap();
        let (due, _) = queue.take_due(2e9);
        assert_eq!(due.len(), 1);
        let data = queue.data(&due[0].id).unwrap();
        assert!(header_value(&data, "X-Mailer").is_none());
        assert_eq!(
            header_value(&data, "Date").unwrap(),
            "Wed, 18 Nov 2026 11:06:40 +0000"
        );
        let forged = sub
            .accept(env(&format!("From: {bob}\r\n\r\nx")))
            .await
            .unwrap_err();
        assert_eq!((forged.code, forged.esc), (550, [5, 7, 1]));
        assert_eq!(queue.len(), 1, "nothing queued for the forgery");
        assert_eq!(expand(vec![bob.clone()]), vec![bob.clone()]);

        // The user's copy is filed in Sent once, even when the client submits it again.
        let sent = ctx
            .identities()
            .by_name("alice")
            .unwrap()
            .mailboxes
            .special(SpecialUse::Sent)
            .unwrap();
        assert_eq!(
            sent.snapshot().messages.len(),
            1,
            "the first message's copy"
        );
        let with_id = "Message-ID: <once@my-laptop.example>\r\nSubject: twice\r\n\r\nbody\r\n";
        sub.accept(env(with_id)).await.unwrap();
        sub.accept(env(with_id)).await.unwrap();
        let snap = sent.snapshot();
        assert_eq!(
            snap.messages.len(),
            2,
            "one copy of the resubmitted message"
        );
        assert!(snap.messages[1].flags.contains(Flags::SEEN));
        assert_eq!(
            sent.uid_of(DedupeKey::sent_copy("<once@my-laptop.example>")),
            Some(snap.messages[1].uid)
        );
        let filed = sent.read(snap.messages[1].uid).unwrap();
        assert!(String::from_utf8_lossy(&filed).contains("Subject: twice"));
        assert_eq!(protect(b"m".to_vec()), b"m");
    }
}
