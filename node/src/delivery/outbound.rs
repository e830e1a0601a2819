//! Outbound delivery: submission -> [`sanitize`] -> [`expand`] -> queue; the queue's runner
//! then routes ([`super::route`]), [`protect`]s and sends each copy.
//!
//! [`protect`] runs at each delivery attempt, not at submission, so that "the ledger gave no
//! verified answer about the recipient's key" is a temporary failure of that attempt: the
//! message stays queued (in the sender's spool, as submitted) and is retried, and bounces
//! with a DSN after the retry window, but never goes out in clear to a recipient that may
//! have a bound key. Its decision, [`protection`], is pure; the lookups are the edge's
//! ([`crate::e2e::E2e`]).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use onionpost_e2e::{Protect, PublicCert, SecretCert};
use rand::{CryptoRng, Rng};

use crate::clock::Clock;
use crate::context::{Context, Hosted, Identities};
use crate::lists::address::list_of;
use crate::lists::engine::Lists;
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

/// What the ledger says about one recipient's end-to-end key (the edge looks it up).
#[derive(Debug, Clone)]
pub enum RecipientKey {
    /// No key to encrypt to: no ledger configured, an address that is no onion identity, an
    /// identity not registered, with no key bound, or whose key was revoked.
    Unbound,
    /// The active bound certificate, read with a verified proof, holding the address.
    Bound(Box<PublicCert>),
    /// A key may be bound but cannot be used: no verified answer from the ledger, or the
    /// bound certificate does not parse or does not hold the address. Never send in clear.
    Unusable(String),
}

/// How one copy goes out.
#[derive(Debug, Clone)]
pub enum Protection<'a> {
    /// Signed only (RFC 3156 `multipart/signed`).
    Sign,
    /// Signed and encrypted to these certificates (and the sender's own).
    Encrypt(Vec<&'a PublicCert>),
    /// Not now: the reason a recipient's key is unknown or unusable.
    Defer(String),
}

impl PartialEq for Protection<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Protection::Sign, Protection::Sign) => true,
            (Protection::Defer(a), Protection::Defer(b)) => a == b,
            (Protection::Encrypt(a), Protection::Encrypt(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(x, y)| x.fingerprint() == y.fingerprint())
            }
            _ => false,
        }
    }
}

/// Decides how a copy to `keys` (one per recipient of the copy) goes out. Pure.
///
/// Any unusable key defers the copy (no silent downgrade); if every recipient has a bound
/// key the copy is encrypted; otherwise (some recipient has none) it is signed only.
pub fn protection(keys: &[RecipientKey]) -> Protection<'_> {
    let mut certs = Vec::new();
    let mut all_bound = !keys.is_empty();
    for k in keys {
        match k {
            RecipientKey::Unusable(why) => return Protection::Defer(why.clone()),
            RecipientKey::Bound(c) => certs.push(&**c),
            RecipientKey::Unbound => all_bound = false,
        }
    }
    if all_bound {
        Protection::Encrypt(certs)
    } else {
        Protection::Sign
    }
}

/// The temporary failure of a copy that cannot be protected now.
pub fn deferred(why: &str) -> Reply {
    reply(
        451,
        [4, 7, 0],
        format!("Error: not sent, to avoid sending it unencrypted: {why}; will retry"),
    )
}

/// Signs `message` with `signer` (and encrypts it, as `how` says), with an Autocrypt
/// header. Pure, but for the randomness.
pub fn protect<R: Rng + CryptoRng>(
    rng: R,
    message: &[u8],
    signer: &SecretCert,
    how: &Protection<'_>,
) -> Result<Vec<u8>, Reply> {
    let done = match how {
        Protection::Defer(why) => return Err(deferred(why)),
        Protection::Sign => onionpost_e2e::sign(rng, message, signer, Protect::default()),
        Protection::Encrypt(certs) => {
            onionpost_e2e::sign_and_encrypt(rng, message, signer, certs, Protect::default())
        }
    };
    done.map_err(|e| {
        tracing::error!(key = %signer.fingerprint(), "end-to-end protection failed: {e}");
        reply(
            451,
            [4, 7, 0],
            format!("Error: signing the message failed: {e}; will retry"),
        )
    })
}

/// Recipients after expansion: personal ones, and lists (each posted to its members by the
/// list engine, which reads the member set from the ledger).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// Personal recipients, queued as they are.
    pub personal: Vec<String>,
    /// Lists named by `<list>@list.invalid` (see [`crate::lists::address`]).
    pub lists: Vec<String>,
}

/// Splits list addresses from personal ones (each list once). Pure.
pub fn expand(recipients: Vec<String>) -> Expanded {
    let mut e = Expanded::default();
    for r in recipients {
        match list_of(&r) {
            Some(l) if !e.lists.contains(&l) => e.lists.push(l),
            Some(_) => {}
            None => e.personal.push(r),
        }
    }
    e
}

/// The outbound stages up to the queue, bound to the node.
pub struct Submission {
    ctx: Arc<Context>,
    queue: Arc<Queue>,
    clock: Arc<dyn Clock>,
    lists: Option<Arc<Lists>>,
}

impl Submission {
    /// Submission into `queue` for the identities of `ctx` (list posts refused).
    pub fn new(ctx: Arc<Context>, queue: Arc<Queue>, clock: Arc<dyn Clock>) -> Self {
        Self {
            ctx,
            queue,
            clock,
            lists: None,
        }
    }

    /// Submission whose list posts go to `lists`.
    pub fn with_lists(
        ctx: Arc<Context>,
        queue: Arc<Queue>,
        clock: Arc<dyn Clock>,
        lists: Arc<Lists>,
    ) -> Self {
        Self {
            ctx,
            queue,
            clock,
            lists: Some(lists),
        }
    }

    /// The SMTP session policy of a submission connection.
    pub fn policy(&self) -> SubmissionPolicy {
        SubmissionPolicy {
            ids: self.ctx.identities(),
            external: self.ctx.config().gateway.is_some(),
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
        // Signed and encrypted per copy by the queue's runner (see `protect`).
        let message = sanitize(&env.data, &sender, now)?;
        let Expanded {
            personal: recipients,
            lists,
        } = expand(env.recipients);
        // Every list check passes before anything is queued, so a refusal queues nothing.
        for list in &lists {
            let Some(engine) = &self.lists else {
                return Err(reply(
                    554,
                    [5, 3, 5],
                    "Error: list mail refused: this node has no [ledger] configuration; list mail needs one",
                ));
            };
            engine.post(&sender, list, &message).await?;
        }
        if recipients.is_empty() {
            return Ok(());
        }
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

/// The session policy of submission: AUTH PLAIN against the hosted identities; ordinary
/// addresses as recipients only with a `[gateway]` configured.
#[derive(Debug)]
pub struct SubmissionPolicy {
    ids: Arc<Identities>,
    external: bool,
}

impl Policy for SubmissionPolicy {
    fn accepts(&self, _address: &str) -> bool {
        false
    }

    fn external(&self) -> bool {
        self.external
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
        assert_eq!(expand(vec![bob.clone()]).personal, vec![bob.clone()]);
        let e = expand(vec![
            "Dev@list.invalid".into(),
            bob.clone(),
            "dev@list.invalid".into(),
        ]);
        assert_eq!(
            (e.personal, e.lists),
            (vec![bob.clone()], vec!["dev".to_string()])
        );
        let to_list = Envelope {
            recipients: vec!["dev@list.invalid".into(), "bob@x.onion".into()],
            ..env("Subject: to a list\r\n\r\nx")
        };
        let refused = sub.accept(to_list).await.unwrap_err();
        assert_eq!(refused.code, 554);
        assert!(refused.message.contains("[ledger]"), "{}", refused.message);
        assert_eq!(
            queue.len(),
            1,
            "a refused list post queues nothing, not even bob's copy"
        );

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
    }

    #[test]
    fn protection_never_downgrades_and_encrypts_only_when_every_key_is_known() {
        let onion = onionpost_proto::onion::OnionAddress::from_public_key([9; 32]);
        let me =
            SecretCert::generate(rand::rngs::OsRng, &format!("a@{}", onion.hostname())).unwrap();
        let bob_addr = format!(
            "bob@{}",
            onionpost_proto::onion::OnionAddress::from_public_key([8; 32]).hostname()
        );
        let bob = SecretCert::generate(rand::rngs::OsRng, &bob_addr).unwrap();
        let bound = RecipientKey::Bound(Box::new(bob.public().clone()));
        assert_eq!(protection(&[RecipientKey::Unbound]), Protection::Sign);
        assert_eq!(protection(&[]), Protection::Sign);
        assert!(
            matches!(protection(std::slice::from_ref(&bound)), Protection::Encrypt(c) if c.len() == 1)
        );
        assert_eq!(
            protection(&[bound.clone(), RecipientKey::Unbound]),
            Protection::Sign
        );
        let keys = [bound.clone(), RecipientKey::Unusable("ledger down".into())];
        let down = protection(&keys);
        assert_eq!(down, Protection::Defer("ledger down".into()));
        let msg = format!(
            "From: a@{}\r\nTo: {bob_addr}\r\nSubject: s\r\n\r\nsecret body\r\n",
            onion.hostname()
        );
        let r = protect(rand::rngs::OsRng, msg.as_bytes(), &me, &down).unwrap_err();
        assert_eq!((r.code, r.esc), (451, [4, 7, 0]));
        let signed = protect(rand::rngs::OsRng, msg.as_bytes(), &me, &Protection::Sign).unwrap();
        let text = String::from_utf8_lossy(&signed);
        assert!(text.contains("multipart/signed") && text.contains("secret body"));
        assert!(text.contains("Autocrypt: "), "{text}");
        let sealed = protect(
            rand::rngs::OsRng,
            msg.as_bytes(),
            &me,
            &protection(&[bound]),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&sealed);
        assert!(text.contains("multipart/encrypted") && !text.contains("secret body"));
        let opened = onionpost_e2e::decrypt(&sealed, &bob, &[me.public().clone()]).unwrap();
        assert!(opened.signature.is_ok() && opened.encrypted);
    }
}
