//! The route stage: where a recipient's mail goes next. Pure.
//!
//! It runs for every delivery attempt, not once at submission, because the best route can
//! change while a message waits: today an identity of this node (local) or the recipient's
//! own onion service; the mailbox-host issue adds the recipient's mailbox hosts (named on the
//! ledger) after its onion has been unreachable for a while, and the configured gateway
//! (`[gateway]`, docs/gateway.md) for addresses outside `.onion`.

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
    /// An ordinary e-mail address: the configured gateway's onion service, port 25, with
    /// the copy signed by the sending identity for that gateway (`gateway::auth`).
    Gateway(OnionAddress),
    /// Not an address anything can reach: no local part or domain, or an ordinary address
    /// while no gateway is configured (submission refuses both, so only a corrupt spool
    /// record or a changed configuration gets here).
    Invalid,
}

/// Routes one recipient address; `gateway` is the configured gateway's onion, if any.
pub fn route(recipient: &str, ids: &Identities, gateway: Option<&OnionAddress>) -> Route {
    let domain = domain_of(recipient);
    match domain.parse::<OnionAddress>() {
        Ok(onion) if ids.by_onion(&onion).is_some() => Route::Local,
        Ok(onion) => Route::Onion(onion),
        Err(_) if domain.ends_with(".onion") => Route::Invalid,
        Err(_) => match gateway {
            Some(g) if is_external(recipient) => Route::Gateway(*g),
            _ => Route::Invalid,
        },
    }
}

/// Whether `address` is a plausible ordinary e-mail address (`local@domain.tld`, no onion,
/// no list address): what a gateway relays. Pure.
pub fn is_external(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let domain = domain.to_ascii_lowercase();
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.ends_with(".onion")
        && !domain.ends_with(".invalid")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
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
        assert_eq!(route(&a.address(), &ids, None), Route::Local);
        let other = OnionAddress::from_public_key([5; 32]);
        assert_eq!(
            route(
                &format!("x@{}", other.hostname().to_uppercase()),
                &ids,
                None
            ),
            Route::Onion(other)
        );
        assert_eq!(route("x@example.com", &ids, None), Route::Invalid);
        assert_eq!(route("no-at-sign", &ids, None), Route::Invalid);
        let gw = OnionAddress::from_public_key([6; 32]);
        assert_eq!(route("x@example.com", &ids, Some(&gw)), Route::Gateway(gw));
        assert_eq!(
            route(&a.address(), &ids, Some(&gw)),
            Route::Local,
            "onion mail never goes to the gateway"
        );
        for bad in [
            "x@bad.onion",
            "x@list.invalid",
            "@example.com",
            "x@localhost",
            "x@a b.com",
        ] {
            assert_eq!(route(bad, &ids, Some(&gw)), Route::Invalid, "{bad}");
        }
        assert_eq!(invalid_destination().esc, [5, 1, 2]);
    }
}
