//! Mailing lists without a server: posts are signed by their author, broadcast among the
//! list's members by their nodes, and checked against the ledger before every delivery.
//!
//! * [`address`]: list addresses (`<list>@list.invalid`) and member post addresses;
//! * [`post`]: the signed post on the wire and its id;
//! * [`folder`]: the folder per list (`Lists/<list>`) where a member's posts are filed;
//! * [`check`]: the ledger checks, as pure functions of verified answers, and their replies;
//! * [`broadcast`]: the relaying broadcast protocol, sans I/O;
//! * [`engine`]: the async part: ledger reads, the queue, the mailboxes, timers.

pub mod address;
pub mod broadcast;
pub mod check;
pub mod engine;
pub mod folder;
pub mod post;
