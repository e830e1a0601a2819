//! Key changes on the ledger, judged (issue 14, point 6). Pure.
//!
//! * [`key_change`]: a correspondent's key history has entries the last message from it was
//!   not checked against -> the next message is marked `$KeyChanged`, with [`describe`]'s
//!   words in an `Onionpost-Key-Change:` field.
//! * [`foreign_bindings`]: entries of an identity's own history that bind a key this node
//!   does not hold -> an alert (someone with the identity's ed25519 key bound it).

use super::directory::{KeyEvent, KeyEventKind};
use super::watch::Correspondent;

/// What changed in a correspondent's keys since its last message, if anything, and what to
/// remember now. The first message from a correspondent is never marked (there is nothing
/// to compare with).
pub fn key_change<'a>(
    last: Option<&Correspondent>,
    events: &'a [KeyEvent],
    height: u64,
) -> (Option<&'a [KeyEvent]>, Correspondent) {
    let now = Correspondent {
        events: events.len() as u64,
        height,
    };
    match last {
        Some(l) if (l.events as usize) < events.len() => (Some(&events[l.events as usize..]), now),
        // Shorter than before cannot happen on a verified chain (the ledger client checks
        // that histories only grow); keep the earlier record then.
        Some(l) if l.events as usize > events.len() => (None, *l),
        _ => (None, now),
    }
}

/// One entry in words: `key X replaced key Y (RotateKey) at height H`.
fn one(event: &KeyEvent, before: Option<&KeyEvent>) -> String {
    let key = event.key_name();
    match event.kind {
        KeyEventKind::Bind => format!("key {key} bound (BindKey) at height {}", event.height),
        KeyEventKind::Rotate => format!(
            "key {key} replaced key {} (RotateKey) at height {}",
            before.map_or("(none)".to_string(), KeyEvent::key_name),
            event.height
        ),
        KeyEventKind::Revoke if event.reason.is_empty() => {
            format!("key {key} revoked (RevokeKey) at height {}", event.height)
        }
        KeyEventKind::Revoke => format!(
            "key {key} revoked (RevokeKey, reason: {}) at height {}",
            event
                .reason
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect::<String>(),
            event.height
        ),
    }
}

/// The entries of `history` from `from` on, in words, separated by `; `.
pub fn describe(history: &[KeyEvent], from: usize) -> String {
    (from..history.len())
        .map(|i| {
            let before = history[..i]
                .iter()
                .rev()
                .find(|e| e.kind != KeyEventKind::Revoke);
            one(&history[i], before)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The entries of `history` from `from` on that bind a key (BindKey, RotateKey) for which
/// `ours` is false (its fingerprint is not in this node's keyring; an unparsable key is
/// never ours).
pub fn foreign_bindings(
    history: &[KeyEvent],
    from: usize,
    ours: impl Fn(&str) -> bool,
) -> Vec<&KeyEvent> {
    history
        .iter()
        .skip(from)
        .filter(|e| e.kind != KeyEventKind::Revoke)
        .filter(|e| !e.fingerprint.as_deref().is_some_and(&ours))
        .collect()
}

/// The alert text for a foreign binding of `address`.
pub fn alert_text(address: &str, event: &KeyEvent, history: &[KeyEvent]) -> String {
    let i = history
        .iter()
        .position(|e| e == event)
        .unwrap_or(history.len());
    let told = if i < history.len() {
        describe(&history[..=i], i)
    } else {
        describe(std::slice::from_ref(event), 0)
    };
    format!("the ledger binds to {address} an OpenPGP key this node did not make: {told}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: KeyEventKind, fpr: Option<&str>, height: u64) -> KeyEvent {
        KeyEvent {
            seq,
            kind,
            fingerprint: fpr.map(str::to_string),
            key_id: "ab".repeat(32),
            height,
            reason: String::new(),
        }
    }

    fn history() -> Vec<KeyEvent> {
        vec![
            ev(0, KeyEventKind::Bind, Some("AAAA"), 5),
            ev(1, KeyEventKind::Rotate, Some("BBBB"), 9),
            ev(2, KeyEventKind::Revoke, Some("BBBB"), 12),
            ev(3, KeyEventKind::Bind, None, 15),
        ]
    }

    #[test]
    fn a_change_is_reported_once_and_the_first_message_is_not_marked() {
        let h = history();
        let (change, seen) = key_change(None, &h[..1], 6);
        assert!(change.is_none());
        assert_eq!(
            seen,
            Correspondent {
                events: 1,
                height: 6
            }
        );
        let (change, seen2) = key_change(Some(&seen), &h[..2], 10);
        assert_eq!(change.unwrap(), &h[1..2]);
        assert_eq!(seen2.events, 2);
        let (again, _) = key_change(Some(&seen2), &h[..2], 11);
        assert!(again.is_none(), "marked once");
        let (shrunk, kept) = key_change(Some(&seen2), &h[..1], 11);
        assert!(shrunk.is_none());
        assert_eq!(kept, seen2);
    }

    #[test]
    fn changes_are_told_with_keys_and_heights() {
        let h = history();
        assert_eq!(
            describe(&h, 1),
            format!(
                "key BBBB replaced key AAAA (RotateKey) at height 9; \
                 key BBBB revoked (RevokeKey) at height 12; \
                 key (unparsable, ledger key id {}) bound (BindKey) at height 15",
                "ab".repeat(32)
            )
        );
        assert_eq!(
            describe(&h, 0).split("; ").next().unwrap(),
            "key AAAA bound (BindKey) at height 5"
        );
        let mut r = h.clone();
        r[2].reason = "lost\r\nlaptop".into();
        assert!(describe(&r, 2).contains("reason: lostlaptop"));
    }

    #[test]
    fn bindings_of_keys_not_held_are_foreign() {
        let h = history();
        let ours = |f: &str| f == "AAAA";
        let foreign: Vec<u64> = foreign_bindings(&h, 0, ours)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            foreign,
            vec![1, 3],
            "BBBB is not ours, the unparsable key is never ours; revocations are not bindings"
        );
        assert!(foreign_bindings(&h, 4, ours).is_empty());
        let text = alert_text("alice@x.onion", &h[1], &h);
        assert!(
            text.contains("key BBBB replaced key AAAA (RotateKey) at height 9"),
            "{text}"
        );
        assert!(!text.contains("revoked"), "{text}");
    }
}
