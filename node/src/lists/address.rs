//! List addresses, for mail clients and between nodes. Pure.
//!
//! - **A list's address** is `<list>@list.invalid`: what a person writes to in Thunderbird
//!   or mutt, what `List-Post` names and reply-to-list uses. `.invalid` is reserved
//!   (RFC 2606, RFC 6761): no resolver anywhere answers for it, so the address can never be
//!   routed outside the system; only a node's submission knows what it means (the list of
//!   that name on the node's ledger).
//! - **Its List-Id** (RFC 2919) is `<list>.list.invalid`, for filters.
//! - **Between nodes**, a member's copy of a post goes to `<list>+list@<member onion>.onion`.
//!   The `+list` suffix cannot occur in an identity name (a-z, 0-9, '.', '_', '-'), so a
//!   node tells a post from personal mail at RCPT time, and the sender needs no name of the
//!   member, only its key, which the ledger has.

use onionpost_proto::onion::OnionAddress;

/// The domain of list addresses.
pub const LIST_DOMAIN: &str = "list.invalid";

/// The local-part suffix of a member's copy of a post.
pub const MEMBER_SUFFIX: &str = "+list";

/// The list an address like `dev@list.invalid` names (case-insensitive domain), if it is one.
pub fn list_of(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if !domain.eq_ignore_ascii_case(LIST_DOMAIN) {
        return None;
    }
    let list = local.to_ascii_lowercase();
    onionpost_proto::keys::is_valid_list_name(&list).then_some(list)
}

/// Whether an address is in the list domain at all (a valid list name or not).
pub fn is_list_domain(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(LIST_DOMAIN))
}

/// A list's address.
pub fn list_address(list: &str) -> String {
    format!("{list}@{LIST_DOMAIN}")
}

/// A list's List-Id value.
pub fn list_id(list: &str) -> String {
    format!("<{list}.{LIST_DOMAIN}>")
}

/// Where a member's copy of a post to `list` goes.
pub fn member_address(list: &str, member: &OnionAddress) -> String {
    format!("{list}{MEMBER_SUFFIX}@{}", member.hostname())
}

/// `(list, onion)` of a member's post address, if `address` is one.
pub fn parse_member_address(address: &str) -> Option<(String, OnionAddress)> {
    let (local, domain) = address.rsplit_once('@')?;
    let list = local.strip_suffix(MEMBER_SUFFIX)?.to_ascii_lowercase();
    if !onionpost_proto::keys::is_valid_list_name(&list) {
        return None;
    }
    let onion = domain.parse().ok()?;
    Some((list, onion))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_member_addresses_round_trip() {
        assert_eq!(list_of("dev@list.invalid"), Some("dev".into()));
        assert_eq!(list_of("Dev@LIST.INVALID"), Some("dev".into()));
        assert_eq!(list_of("dev@list.invalid.example"), None);
        assert_eq!(list_of("a/b@list.invalid"), None);
        assert!(is_list_domain("a/b@list.invalid"));
        assert_eq!(list_address("dev"), "dev@list.invalid");
        assert_eq!(list_id("dev"), "<dev.list.invalid>");
        let o = OnionAddress::from_public_key([4; 32]);
        let a = member_address("dev", &o);
        assert_eq!(parse_member_address(&a), Some(("dev".into(), o)));
        assert_eq!(parse_member_address(&format!("dev@{}", o.hostname())), None);
        assert_eq!(parse_member_address("dev+list@example.com"), None);
    }
}
