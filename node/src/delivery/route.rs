//! The route stage: where a recipient's mail goes next. Pure.
//!
//! It runs for every delivery attempt, not once at submission, because the best route can
//! change while a message waits: today an identity of this node (local) or the recipient's
//! own onion service; the mailbox-host issue adds the recipient's mailbox hosts (named on the
//! ledger) after its onion has been unreachable for a while, and the gateway issue a gateway
//! for external addresses.

use onionpost_proto::onion::OnionAddress;

use crate::context::Identities;
use crate::queue::schedule::domain_of;
use crate::smtp::reply::{Reply, reply};

/// The next hop for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// An identity hosted by this node: through the inbound stages, no network.
    Local,
    /// The recipient's own onion service, port 25.
    Onion(OnionAddress),
    /// Not an address anything can reach (submission accepts only onion domains, so only a
    /// corrupt spool record gets here).
    Invalid,
}

/// Routes one recipient address.
pub fn route(recipient: &str, ids: &Identities) -> Route {
    match domain_of(recipient).parse::<OnionAddress>() {
        Ok(onion) if ids.by_onion(&onion).is_some() => Route::Local,
        Ok(onion) => Route::Onion(onion),
        Err(_) => Route::Invalid,
    }
}

/// The permanent refusal for [`Route::Invalid`].
pub fn invalid_destination() -> Reply {
    reply(
        550,
        [5, 1, 2],
        "bad destination: not name@<v3 onion address>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::context::Context;
    use crate::identity::IdentityStore;

    #[test]
    fn local_onion_or_invalid() {
        let home = tempfile::tempdir().unwrap();
        let (a, _) = IdentityStore::new(home.path()).create("alice").unwrap();
        let ctx = Context::open(home.path(), Config::default()).unwrap();
        let ids = ctx.identities();
        assert_eq!(route(&a.address(), &ids), Route::Local);
        let other = OnionAddress::from_public_key([5; 32]);
        assert_eq!(
            route(&format!("x@{}", other.hostname().to_uppercase()), &ids),
            Route::Onion(other)
        );
        assert_eq!(route("x@example.com", &ids), Route::Invalid);
        assert_eq!(route("no-at-sign", &ids), Route::Invalid);
        assert_eq!(invalid_destination().esc, [5, 1, 2]);
    }
}
