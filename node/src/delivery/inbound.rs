//! Inbound delivery: session -> [`classify`] -> [`verify`] -> [`dedupe_key`] -> [`store`].
//!
//! Each stage is a plain function with its own tests; [`Inbound`] runs them for the SMTP edge
//! (mail arriving on an onion service, or on the loopback listener of a test node) and for
//! the queue (mail between identities of this node).
//!
//! Which identities a connection may deliver to is its [`Scope`]: an identity's onion service
//! accepts mail for that identity only. Asking A's service for B, hosted on the same node,
//! gets exactly the reply that any unknown address gets, so a sender cannot learn that A and B
//! share a node.

use std::sync::Arc;

use onionpost_proto::onion::OnionAddress;

use crate::context::{Context, Hosted, Identities};
use crate::lists::address::parse_member_address;
use crate::lists::engine::Lists;
use crate::message::message_id;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Reply, ReplyExt, reply};
use crate::smtp::session::{Envelope, Policy};
use crate::store::{DedupeKey, DeliverOptions, Delivered, MailStore, StoreError};

/// Which recipients a connection may deliver to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The onion service of this identity: mail for it alone.
    Identity(OnionAddress),
    /// Every hosted identity: the loopback SMTP listener of the direct (test) transport, and
    /// the node's own queue delivering between its identities.
    AllHosted,
}

/// Where mail for one recipient belongs.
#[derive(Debug, Clone)]
pub enum Class {
    /// An identity hosted here, within the connection's scope.
    Hosted(Arc<Hosted>),
    /// A list post for an identity hosted here, within the scope (`<list>+list@<onion>`,
    /// see [`crate::lists::address`]): checked against the ledger by [`Lists`].
    ListPost(Arc<Hosted>, String),
    /// Not for this connection: unknown, or hosted here but outside the scope (the same
    /// answer for both).
    Unknown,
}

/// Classifies a recipient address. Pure.
pub fn classify(ids: &Identities, scope: Scope, recipient: &str) -> Class {
    let in_scope =
        |h: &Arc<Hosted>| scope == Scope::AllHosted || scope == Scope::Identity(h.identity.onion);
    if let Some((list, onion)) = parse_member_address(recipient) {
        return match ids.by_onion(&onion) {
            Some(h) if in_scope(h) => Class::ListPost(h.clone(), list),
            _ => Class::Unknown,
        };
    }
    match ids.by_address(recipient) {
        Some(h) if scope == Scope::AllHosted || scope == Scope::Identity(h.identity.onion) => {
            Class::Hosted(h.clone())
        }
        _ => Class::Unknown,
    }
}

/// What verification decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store it.
    Accept,
    /// Refuse it for good with this reply.
    Refuse(Reply),
    /// Not now (for example the ledger is unreachable): the sender retries.
    Defer(Reply),
}

/// Checks a message for a hosted recipient before it is stored. Pure.
///
/// One-to-one mail between onion identities is accepted as it is today: the connection is
/// anonymous, and authenticity will come from end-to-end signatures checked here (the
/// end-to-end issue), as list posts will be checked against the ledger (the list issue).
pub fn verify(class: &Class, _message: &[u8]) -> Verdict {
    match class {
        Class::Hosted(_) => Verdict::Accept,
        // Checked against the ledger by the list engine before anything is stored.
        Class::ListPost(..) => Verdict::Refuse(reply(
            554,
            [5, 3, 5],
            "Error: list posts are checked by the list engine, not here",
        )),
        Class::Unknown => Verdict::Refuse(unknown_recipient()),
    }
}

/// The key under which a message is deduplicated: Message-ID and content. Messages without a
/// Message-ID are not deduplicated. Pure.
pub fn dedupe_key(message: &[u8]) -> Option<DedupeKey> {
    message_id(message).map(|id| DedupeKey::new(&id, message))
}

/// The reply for a recipient this connection does not serve.
pub fn unknown_recipient() -> Reply {
    reply(
        550,
        [5, 1, 1],
        "Error: recipient address rejected: no such mailbox here (no relaying)",
    )
}

/// Stores a message in a mailbox, deduplicated by `key`. Blocks on the disk.
pub fn store(mailbox: &dyn MailStore, message: &[u8], key: Option<DedupeKey>) -> Result<(), Reply> {
    let opts = DeliverOptions {
        dedupe: key,
        ..Default::default()
    };
    match mailbox.deliver(message, opts) {
        Ok(Delivered::Stored(uid)) => {
            tracing::info!(uid, "stored");
            Ok(())
        }
        Ok(Delivered::Duplicate) => {
            tracing::info!(?key, "duplicate dropped");
            Ok(())
        }
        Err(StoreError::OverQuota { used, limit, .. }) => {
            tracing::warn!(used, limit, "mailbox full; sender will retry");
            Err(reply(
                452,
                [4, 2, 2],
                "Error: mailbox full, try again later",
            ))
        }
        Err(e) => {
            tracing::error!("storing: {e}");
            Err(reply(
                451,
                [4, 3, 0],
                "Error: local storage error; try again later",
            ))
        }
    }
}

/// The per-recipient result of running the stages for one recipient. Blocks on the disk.
fn deliver_one(
    ids: &Identities,
    scope: Scope,
    recipient: &str,
    message: &[u8],
) -> Result<(), Reply> {
    let class = classify(ids, scope, recipient);
    match verify(&class, message) {
        Verdict::Accept => {}
        Verdict::Refuse(r) | Verdict::Defer(r) => return Err(r),
    }
    let Class::Hosted(h) = class else {
        return Err(unknown_recipient());
    };
    let span = tracing::info_span!("store", to = %recipient);
    let _e = span.enter();
    store(&*h.mailbox, message, dedupe_key(message))
}

/// The inbound stages, bound to the node's context.
#[derive(Debug, Clone)]
pub struct Inbound {
    ctx: Arc<Context>,
    lists: Option<Arc<Lists>>,
}

impl Inbound {
    /// Inbound delivery for the identities of `ctx`, refusing list posts (no list engine).
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx, lists: None }
    }

    /// Inbound delivery whose list posts go to `lists`.
    pub fn with_lists(ctx: Arc<Context>, lists: Arc<Lists>) -> Self {
        Self {
            ctx,
            lists: Some(lists),
        }
    }

    /// The SMTP session policy of a connection with this scope.
    pub fn policy(&self, scope: Scope) -> InboundPolicy {
        InboundPolicy {
            ids: self.ctx.identities(),
            scope,
        }
    }

    /// Runs the stages for a message received over SMTP: one reply for the whole message, as
    /// SMTP has. Any temporary failure makes the whole message temporary (the sender retries;
    /// recipients already served see the retry as a duplicate).
    pub async fn accept(&self, scope: Scope, env: Envelope) -> Result<(), Reply> {
        let ids = self.ctx.identities();
        let post = env
            .recipients
            .iter()
            .any(|r| matches!(classify(&ids, scope, r), Class::ListPost(..)));
        let outcomes = self.deliver(scope, env.recipients, env.data).await;
        if post {
            // A list post is judged on its content after DATA (signature, ledger checks):
            // a refusal is the verdict, said as it is. Each copy has one recipient.
            return outcomes.into_iter().find(|o| o.is_err()).unwrap_or(Ok(()));
        }
        let mut first_err = None;
        for o in outcomes {
            if let Err(r) = o {
                if !r.is_permanent() {
                    return Err(r);
                }
                first_err.get_or_insert(r);
            }
        }
        match first_err {
            // Every recipient was checked at RCPT time; a permanent refusal now means the
            // identity went away meanwhile. Ask for a retry: RCPT then refuses it on its own,
            // without bouncing the recipients that were stored.
            Some(r) => Err(reply(
                451,
                [4, 3, 0],
                format!(
                    "Error: a recipient changed meanwhile ({}); try again",
                    r.message
                ),
            )),
            None => Ok(()),
        }
    }

    /// Runs the stages for each recipient (on a blocking thread; list posts through the
    /// list engine first); one result per recipient.
    pub async fn deliver(
        &self,
        scope: Scope,
        recipients: Vec<String>,
        message: Vec<u8>,
    ) -> Vec<Result<(), Reply>> {
        let ids = self.ctx.identities();
        let mut posts = Vec::new();
        let mut plain = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            match classify(&ids, scope, r) {
                Class::ListPost(h, list) => posts.push((i, (h, list))),
                _ => plain.push((i, r.clone())),
            }
        }
        if posts.is_empty() {
            return self.deliver_plain(scope, recipients, message).await;
        }
        let mut results: Vec<Option<Result<(), Reply>>> = vec![None; recipients.len()];
        let (idx, targets): (Vec<usize>, Vec<_>) = posts.into_iter().unzip();
        let outcomes = match &self.lists {
            Some(lists) => lists.receive(&targets, &message).await,
            None => vec![
                Err(reply(
                    554,
                    [5, 3, 5],
                    "Error: list mail refused: this node has no [ledger] configuration; list mail needs one",
                ));
                targets.len()
            ],
        };
        for (i, o) in idx.into_iter().zip(outcomes) {
            results[i] = Some(o);
        }
        if !plain.is_empty() {
            let (idx, rcpts): (Vec<usize>, Vec<String>) = plain.into_iter().unzip();
            let outcomes = self.deliver_plain(scope, rcpts, message).await;
            for (i, o) in idx.into_iter().zip(outcomes) {
                results[i] = Some(o);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every recipient has a result"))
            .collect()
    }

    /// The stages for recipients that are not list posts, on a blocking thread.
    async fn deliver_plain(
        &self,
        scope: Scope,
        recipients: Vec<String>,
        message: Vec<u8>,
    ) -> Vec<Result<(), Reply>> {
        let ids = self.ctx.identities();
        let n = recipients.len();
        tokio::task::spawn_blocking(move || {
            recipients
                .iter()
                .map(|r| deliver_one(&ids, scope, r, &message))
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("delivery task failed: {e}");
            vec![Err(reply(451, [4, 3, 0], "Error: local delivery failed")); n]
        })
    }

    /// Delivers queued mail to identities of this node, as the queue wants it: one outcome
    /// per recipient.
    pub async fn deliver_local(&self, recipients: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        self.deliver(Scope::AllHosted, recipients.to_vec(), message.to_vec())
            .await
            .into_iter()
            .map(|r| match r {
                Ok(()) => RcptOutcome::Delivered,
                Err(r) => RcptOutcome::Refused(r),
            })
            .collect()
    }
}

/// The session policy of an inbound connection: recipients within its scope, no AUTH.
#[derive(Debug)]
pub struct InboundPolicy {
    ids: Arc<Identities>,
    scope: Scope,
}

impl Policy for InboundPolicy {
    fn accepts(&self, address: &str) -> bool {
        matches!(
            classify(&self.ids, self.scope, address),
            Class::Hosted(_) | Class::ListPost(..)
        )
    }

    fn authenticate(&self, _user: &str, _password: &str) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::IdentityStore;

    fn two_identities() -> (tempfile::TempDir, Arc<Context>, String, String) {
        let home = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(home.path());
        let (a, _) = store.create("alice").unwrap();
        let (b, _) = store.create("bob").unwrap();
        let ctx = Arc::new(Context::open(home.path(), Config::default()).unwrap());
        (home, ctx, a.address(), b.address())
    }

    #[test]
    fn a_service_accepts_only_its_own_identity() {
        let (_h, ctx, a, b) = two_identities();
        let ids = ctx.identities();
        let a_onion = ids.by_address(&a).unwrap().identity.onion;
        let scope = Scope::Identity(a_onion);
        assert!(matches!(classify(&ids, scope, &a), Class::Hosted(_)));
        assert!(matches!(classify(&ids, scope, &b), Class::Unknown));
        assert!(matches!(
            classify(&ids, scope, "x@nowhere.onion"),
            Class::Unknown
        ));
        assert!(matches!(
            classify(&ids, Scope::AllHosted, &b),
            Class::Hosted(_)
        ));
        // B's existence changes nothing in what A's service answers.
        let p = Inbound::new(ctx.clone()).policy(scope);
        assert!(p.accepts(&a) && !p.accepts(&b) && !p.accepts("x@y.onion"));
        assert_eq!(
            verify(&Class::Unknown, b""),
            Verdict::Refuse(unknown_recipient())
        );
    }

    #[tokio::test]
    async fn stages_store_once_and_dedupe_by_id_and_content() {
        let (_h, ctx, a, _b) = two_identities();
        let inbound = Inbound::new(ctx.clone());
        let msg = b"Message-ID: <m@x>\r\n\r\none".to_vec();
        let env = |data: &[u8]| Envelope {
            from: "s@x.onion".into(),
            recipients: vec![a.clone()],
            data: data.to_vec(),
            authenticated: None,
        };
        inbound.accept(Scope::AllHosted, env(&msg)).await.unwrap();
        inbound.accept(Scope::AllHosted, env(&msg)).await.unwrap();
        let other = b"Message-ID: <m@x>\r\n\r\ntwo".to_vec();
        inbound.accept(Scope::AllHosted, env(&other)).await.unwrap();
        let mb = ctx.identities().by_address(&a).unwrap().mailbox.clone();
        assert_eq!(
            mb.snapshot().messages.len(),
            2,
            "retry dropped, reused id kept"
        );
        assert!(dedupe_key(b"Subject: no id\r\n\r\nx").is_none());
    }

    #[tokio::test]
    async fn a_full_mailbox_defers_and_loses_nothing() {
        let home = tempfile::tempdir().unwrap();
        let (a, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let mut config = Config::default();
        config.limits.mailbox_quota_bytes = 40;
        let ctx = Arc::new(Context::open(home.path(), config).unwrap());
        let inbound = Inbound::new(ctx.clone());
        let env = |body: &str| Envelope {
            from: "s@x.onion".into(),
            recipients: vec![a.address()],
            data: format!("Message-ID: <{body}@x>\r\n\r\n{body}").into_bytes(),
            authenticated: None,
        };
        inbound
            .accept(Scope::AllHosted, env("first"))
            .await
            .unwrap();
        let r = inbound
            .accept(Scope::AllHosted, env("second"))
            .await
            .unwrap_err();
        assert_eq!((r.code, r.esc), (452, [4, 2, 2]));
        let out = inbound
            .deliver_local(
                &[a.address(), "gone@x.onion".into()],
                b"Message-ID: <l@x>\r\n\r\nz",
            )
            .await;
        assert!(matches!(&out[0], RcptOutcome::Refused(r) if r.code == 452));
        assert!(matches!(&out[1], RcptOutcome::Refused(r) if r.code == 550));
        assert_eq!(
            ctx.identities()
                .by_address(&a.address())
                .unwrap()
                .mailbox
                .snapshot()
                .messages
                .len(),
            1
        );
    }
}
