//! The ledger checks of list posts, as pure functions of verified ledger answers, and the
//! SMTP replies that name each failed check.
//!
//! A receiving node delivers a post to its member only if, through the ledger client (every
//! answer checked against a proof and a certified root):
//!
//! 1. **signature**: the author's signature covers the list, H, the Message-ID and the exact
//!    bytes ([`super::post`]);
//! 2. **height**: H is at most the node's latest verified height L (a post from the future
//!    is deferred until the node has verified H) and at least `L - window`
//!    (`[ledger] height_window`, default 100,000 blocks: a post cannot claim a member set
//!    or posting policy older than that; it must outlast a post's way to an offline member);
//! 3. **list**: the list exists at H;
//! 4. **author at H**: the author was a member at H, allowed to post under the list's policy;
//! 5. **author now**: the author is still a member at L (a member removed at R gets nothing
//!    delivered by a node that has verified R);
//! 6. **recipient**: the recipient identity is a member at L.
//!
//! Every failure is a 5xx naming its check; nothing is delivered. No verified answer (the
//! ledger unreachable, a height not yet certified) is a 4xx: the sender retries, and the post
//! is delivered once the ledger answers.

use onionpost_ledger_client::List;

use crate::smtp::reply::{Reply, reply};

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The post is malformed or its signature does not verify.
    Signature(String),
    /// H is older than the window allows.
    HeightTooOld {
        /// The post's height.
        height: u64,
        /// The node's latest verified height.
        latest: u64,
        /// The window.
        window: u64,
    },
    /// No such list at H.
    UnknownList {
        /// The list.
        list: String,
        /// The height.
        height: u64,
    },
    /// The author was not a member at H.
    AuthorNotMember {
        /// The height.
        height: u64,
    },
    /// The author was a member but the policy does not let it post.
    AuthorMayNotPost {
        /// The height.
        height: u64,
    },
    /// The author is no longer a member at the latest height.
    AuthorRemoved {
        /// The latest verified height.
        latest: u64,
    },
    /// The recipient is not a member at the latest height.
    RecipientNotMember {
        /// The latest verified height.
        latest: u64,
    },
    /// The message is larger than the list's policy allows.
    TooLarge {
        /// The message's size.
        size: usize,
        /// The policy's limit.
        limit: u64,
    },
}

impl Refusal {
    /// The name of the check that failed, as the reply says it.
    pub fn check(&self) -> &'static str {
        match self {
            Refusal::Signature(_) => "signature",
            Refusal::HeightTooOld { .. } => "height window",
            Refusal::UnknownList { .. } => "unknown list",
            Refusal::AuthorNotMember { .. } => "author membership",
            Refusal::AuthorMayNotPost { .. } => "posting policy",
            Refusal::AuthorRemoved { .. } => "author still a member",
            Refusal::RecipientNotMember { .. } => "recipient membership",
            Refusal::TooLarge { .. } => "size",
        }
    }

    /// The permanent SMTP reply.
    pub fn reply(&self, list: &str) -> Reply {
        let what = match self {
            Refusal::Signature(why) => why.clone(),
            Refusal::HeightTooOld {
                height,
                latest,
                window,
            } => format!(
                "height {height} is more than {window} blocks below the latest verified height {latest}"
            ),
            Refusal::UnknownList { list, height } => {
                format!("there is no list {list:?} on the ledger at height {height}")
            }
            Refusal::AuthorNotMember { height } => {
                format!("the author is not a member of {list} at height {height}")
            }
            Refusal::AuthorMayNotPost { height } => {
                format!("the policy of {list} at height {height} lets only admins post")
            }
            Refusal::AuthorRemoved { latest } => format!(
                "the author is no longer a member of {list} at the latest verified height {latest}"
            ),
            Refusal::RecipientNotMember { latest } => {
                format!("the recipient is not a member of {list} at height {latest}")
            }
            Refusal::TooLarge { size, limit } => {
                format!("{size} bytes is over the {limit}-byte limit of {list}")
            }
        };
        let (code, esc) = match self {
            Refusal::RecipientNotMember { .. } => (550, [5, 1, 1]),
            Refusal::UnknownList { .. } => (550, [5, 1, 1]),
            Refusal::TooLarge { .. } => (552, [5, 3, 4]),
            _ => (550, [5, 7, 1]),
        };
        reply(
            code,
            esc,
            format!("Error: list post refused ({} check): {what}", self.check()),
        )
    }
}

/// What a post's author and its node may do: the checks at posting time (list exists at
/// H, author a member allowed to post, size). Pure.
pub fn may_post(
    list_name: &str,
    at_h: Option<&List>,
    height: u64,
    author: &[u8; 32],
    size: usize,
) -> Result<(), Refusal> {
    let list = at_h.ok_or_else(|| Refusal::UnknownList {
        list: list_name.to_string(),
        height,
    })?;
    if !list.is_member(author) {
        return Err(Refusal::AuthorNotMember { height });
    }
    let policy = list.policy();
    let posting = onionpost_proto::v1::list_policy::Posting::try_from(policy.posting)
        .unwrap_or(onionpost_proto::v1::list_policy::Posting::Members);
    if posting == onionpost_proto::v1::list_policy::Posting::Admins && !list.is_admin(author) {
        return Err(Refusal::AuthorMayNotPost { height });
    }
    if policy.max_message_bytes > 0 && size as u64 > policy.max_message_bytes {
        return Err(Refusal::TooLarge {
            size,
            limit: policy.max_message_bytes,
        });
    }
    Ok(())
}

/// What a post claims: its list, height, author and size.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The list.
    pub list: &'a str,
    /// The height whose member set it went to.
    pub height: u64,
    /// The author's key.
    pub author: &'a [u8; 32],
    /// The message's size in bytes.
    pub size: usize,
}

/// What the receiving node verified on the ledger.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The list at the post's height (`None`: no such list).
    pub at_h: Option<&'a List>,
    /// The node's latest verified height.
    pub latest: u64,
    /// The list at `latest`.
    pub now: Option<&'a List>,
    /// How far below `latest` a post's height may be.
    pub window: u64,
}

/// The checks a receiving node makes (2-6 above; the signature is checked when the post is
/// parsed) for `recipient`. Pure.
pub fn may_deliver(
    claim: Claim<'_>,
    recipient: &[u8; 32],
    ev: Evidence<'_>,
) -> Result<(), Refusal> {
    let Claim {
        list,
        height,
        author,
        size,
    } = claim;
    let latest = ev.latest;
    if latest.saturating_sub(height) > ev.window {
        return Err(Refusal::HeightTooOld {
            height,
            latest,
            window: ev.window,
        });
    }
    may_post(list, ev.at_h, height, author, size)?;
    let now = ev.now.ok_or_else(|| Refusal::UnknownList {
        list: list.to_string(),
        height: latest,
    })?;
    if !now.is_member(author) {
        return Err(Refusal::AuthorRemoved { latest });
    }
    if !now.is_member(recipient) {
        return Err(Refusal::RecipientNotMember { latest });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use onionpost_proto::v1 as pb;

    fn list(members: &[u8], admins: &[u8], admins_only: bool) -> List {
        let mut m: Vec<[u8; 32]> = members.iter().map(|&i| [i; 32]).collect();
        m.sort();
        List {
            record: pb::ListRecord {
                name: "dev".into(),
                admins: admins.iter().map(|&i| vec![i; 32]).collect(),
                policy: Some(pb::ListPolicy {
                    posting: if admins_only { 1 } else { 0 },
                    max_message_bytes: 1000,
                    ..Default::default()
                }),
                created_height: 1,
            },
            members: m,
        }
    }

    #[test]
    fn every_check_refuses_with_its_own_reason() {
        let l = list(&[1, 2, 3], &[1], false);
        let ok = |a: u8, r: u8, at_h: Option<&List>, latest, now: Option<&List>| {
            let claim = Claim {
                list: "dev",
                height: 10,
                author: &[a; 32],
                size: 10,
            };
            let ev = Evidence {
                at_h,
                latest,
                now,
                window: 100,
            };
            may_deliver(claim, &[r; 32], ev)
        };
        assert_eq!(ok(2, 3, Some(&l), 20, Some(&l)), Ok(()));
        assert!(matches!(
            ok(2, 3, Some(&l), 111, Some(&l)),
            Err(Refusal::HeightTooOld { .. })
        ));
        assert!(matches!(
            ok(2, 3, None, 20, Some(&l)),
            Err(Refusal::UnknownList { .. })
        ));
        assert_eq!(
            ok(9, 3, Some(&l), 20, Some(&l)),
            Err(Refusal::AuthorNotMember { height: 10 })
        );
        let removed = list(&[1, 3], &[1], false);
        assert_eq!(
            ok(2, 3, Some(&l), 20, Some(&removed)),
            Err(Refusal::AuthorRemoved { latest: 20 })
        );
        assert_eq!(
            ok(1, 2, Some(&l), 20, Some(&removed)),
            Err(Refusal::RecipientNotMember { latest: 20 })
        );
        let admins = list(&[1, 2, 3], &[1], true);
        assert_eq!(
            ok(2, 3, Some(&admins), 20, Some(&admins)),
            Err(Refusal::AuthorMayNotPost { height: 10 })
        );
        assert_eq!(ok(1, 3, Some(&admins), 20, Some(&admins)), Ok(()));
        assert!(matches!(
            may_post("dev", Some(&l), 10, &[1; 32], 5000),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn replies_are_permanent_and_name_the_check() {
        let r = Refusal::AuthorRemoved { latest: 7 }.reply("dev");
        assert_eq!((r.code, r.esc), (550, [5, 7, 1]));
        assert!(
            r.message.contains("author still a member check"),
            "{}",
            r.message
        );
        let r = Refusal::RecipientNotMember { latest: 7 }.reply("dev");
        assert_eq!(r.code, 550);
        assert!(r.message.contains("recipient membership"), "{}", r.message);
        let r = Refusal::Signature("signature check failed".into()).reply("dev");
        assert!(r.message.contains("(signature check)"), "{}", r.message);
    }
}
