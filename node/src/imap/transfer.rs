//! COPY and MOVE (RFC 6851) with UIDPLUS's COPYUID (RFC 4315).
//!
//! A copy is stored in the destination durably before anything is reported; a move then
//! expunges the originals. A crash between the two leaves the message in both mailboxes,
//! never in neither. When a copy fails half-way, the copies already made are expunged again,
//! so a failed COPY or MOVE changes nothing the client can see.

use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::sequence::SequenceSet;

use super::session::{Accounts, Session};
use crate::store::{DeliverOptions, Delivered, Quota, StoreError};

/// A UID list in IMAP sequence-set form, keeping the order (`3:5,9`).
pub(super) fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

impl<A: Accounts> Session<A> {
    /// COPY (`is_move` false) or MOVE.
    pub(super) fn transfer(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        is_move: bool,
    ) {
        let cmd = if is_move { "MOVE" } else { "COPY" };
        let Some(mbs) = self.mailboxes.clone() else {
            return self.bad(tag, "Log in first");
        };
        let Some(src) = self.selected.as_ref().map(|s| s.store.clone()) else {
            return self.bad(tag, "No mailbox selected");
        };
        if is_move && self.selected.as_ref().is_some_and(|s| s.read_only) {
            return self.no(tag, "[READ-ONLY] Mailbox is read-only");
        }
        let Some(dest) = self.target(tag, &mbs, mailbox, "TRYCREATE") else {
            return;
        };
        let targets = self.resolve(set, uid);
        let mut from = Vec::with_capacity(targets.len());
        let mut to = Vec::with_capacity(targets.len());
        let mut failure: Option<StoreError> = None;
        for (_, meta) in &targets {
            let opts = DeliverOptions {
                flags: meta.flags,
                internal_date: Some(meta.internal_date),
                // A move does not add to what the identity stores; a copy does.
                quota: if is_move {
                    Quota::Exempt
                } else {
                    Quota::Enforce
                },
                ..Default::default()
            };
            let bytes = match src.read(meta.uid) {
                Ok(b) => b,
                // Expunged by another session meanwhile: nothing to copy.
                Err(StoreError::NoSuchMessage(_)) => continue,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            match dest.deliver(&bytes, opts) {
                Ok(Delivered::Stored(new)) => {
                    from.push(meta.uid);
                    to.push(new);
                }
                Ok(Delivered::Duplicate) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            let undone = dest.expunge(&to);
            let code = if matches!(e, StoreError::OverQuota { .. }) {
                "OVERQUOTA"
            } else {
                "SERVERBUG"
            };
            return match undone {
                Ok(_) => self.no(tag, &format!("[{code}] {cmd} failed, nothing copied: {e}")),
                Err(u) => self.no(
                    tag,
                    &format!("[SERVERBUG] {cmd} failed ({e}) and undoing it failed ({u})"),
                ),
            };
        }
        let v = dest.snapshot().uidvalidity;
        let copyuid = if from.is_empty() {
            String::new()
        } else {
            format!("[COPYUID {v} {} {}] ", uid_set(&from), uid_set(&to))
        };
        if !is_move {
            self.sync(false);
            return self.ok(tag, &format!("{copyuid}COPY completed"));
        }
        // RFC 6851 §4.3: COPYUID comes in an untagged OK before the EXPUNGEs.
        self.line(&format!("* OK {copyuid}Moved"));
        if let Err(e) = src.expunge(&from) {
            self.sync(true);
            return self.no(
                tag,
                &format!("[SERVERBUG] Copied, but removing the originals failed: {e}"),
            );
        }
        self.sync(true);
        self.ok(tag, "MOVE completed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5, 3]), "5,3");
    }
}
