//! Adapters from the delivery stages to the edges' traits: what each listener's sessions do.
//! Kept here, at the top, so the edges never import the stages and the stages never import
//! the runtime.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::context::Context;
use crate::delivery::inbound::{Inbound, InboundPolicy, Scope};
use crate::delivery::outbound::{Submission, SubmissionPolicy};
use crate::hosting::check::scope_hosts;
use crate::imap::session::Accounts;
use crate::smtp::reply::Reply;
use crate::smtp::server::Service;
use crate::smtp::session::Envelope;
use crate::store::Mailboxes;

/// Inbound SMTP for one scope (an identity's onion service, or the loopback listener).
pub struct InboundService {
    /// The stages.
    pub inbound: Inbound,
    /// Which identities this listener serves.
    pub scope: Scope,
}

impl Service for InboundService {
    type Policy = InboundPolicy;

    fn policy(&self) -> InboundPolicy {
        self.inbound.policy(self.scope)
    }

    async fn accept(&self, env: Envelope) -> Result<(), Reply> {
        self.inbound.accept(self.scope, env).await
    }

    async fn handover<S>(&self, stream: S, buffered: Vec<u8>) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(h) = self.inbound.hosting() else {
            return Ok(());
        };
        let hosts = scope_hosts(&self.inbound.identities(), self.scope);
        crate::hosting::serve::serve(stream, buffered, h.store().clone(), hosts).await
    }
}

/// SMTP submission.
pub struct SubmissionService(pub Arc<Submission>);

impl Service for SubmissionService {
    type Policy = SubmissionPolicy;

    fn policy(&self) -> SubmissionPolicy {
        self.0.policy()
    }

    async fn accept(&self, env: Envelope) -> Result<(), Reply> {
        self.0.accept(env).await
    }
}

/// IMAP logins against the hosted identities.
pub struct ContextAccounts(pub Arc<Context>);

impl Accounts for ContextAccounts {
    fn login(&self, user: &str, password: &str) -> Option<Arc<dyn Mailboxes>> {
        self.0
            .identities()
            .login(user, password)
            .map(|h| h.mailboxes.clone())
    }
}
