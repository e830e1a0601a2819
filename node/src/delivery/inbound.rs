//! Inbound delivery: session -> [`classify`] -> [`verify`] -> [`authenticate`] ->
//! [`dedupe_key`] -> [`store`].
//!
//! [`authenticate`] is the end-to-end stage: it decrypts and verifies the message against
//! the keys the ledger binds to its From identity (the whole key history, looked up by the
//! edge with a verified proof), replaces any `Authentication-Results` the message came with
//! by the node's own (RFC 8601), and gives the IMAP keywords to store it with (`$Verified`,
//! `$Unverified`, `$Encrypted`). A message that cannot be decrypted is stored as received,
//! marked `pgp=fail`: nothing is lost.
//!
//! Each stage is a plain function with its own tests; [`Inbound`] runs them for the SMTP edge
//! (mail arriving on an onion service, or on the loopback listener of a test node) and for
//! the queue (mail between identities of this node).
//!
//! Which identities a connection may deliver to is its [`Scope`]: an identity's onion service
//! accepts mail for that identity only. Asking A's service for B, hosted on the same node,
//! gets exactly the reply that any unknown address gets, so a sender cannot learn that A and B
//! share a node.

use std::borrow::Cow;
use std::sync::Arc;

use onionpost_e2e::{Opened, SecretCert, SignatureError, Signer};
use onionpost_proto::onion::OnionAddress;

use crate::config::UnverifiedPolicy;
use crate::e2e::E2e;
use crate::e2e::changes::{describe, key_change};
use crate::e2e::directory::{BoundKeys, Ended};
use crate::e2e::trust::{Trust, onion};
use crate::e2e::watch::UpdateError;
use crate::message::{HeaderField, split_header};
use crate::store::Flags;

use crate::context::{Context, Hosted, Identities};
use crate::hosting::Hosting;
use crate::hosting::check::{held_candidate, scope_hosts};
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

/// What the ledger says about the keys of a message's From identity (the edge looks it up).
#[derive(Debug, Clone)]
pub enum SenderKeys {
    /// Nothing to check signatures against, and why: no ledger configured, or the From is
    /// not at an onion.
    Unchecked(&'static str),
    /// The From identity's keys as verified on the ledger.
    Ledger(Box<BoundKeys>),
}

/// How far (seconds) a signature's creation time may lie after the block time at which its
/// key was replaced (clocks differ; the sender signs at each delivery attempt). A revoked
/// key gets no such allowance: nothing it signs at or after its revocation verifies.
pub const SIGNATURE_SKEW_SECS: u64 = 3600;

/// The outcome of [`authenticate`] for one recipient.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Store it, or refuse it (the configured policy for forged From).
    pub verdict: Verdict,
    /// What to store: the readable message with the node's `Authentication-Results`.
    pub message: Vec<u8>,
    /// The keywords to store it with.
    pub flags: Flags,
    /// The dedupe key, of the message before the node's header (the same for every retry of
    /// the sender, even re-encrypted ones).
    pub dedupe: Option<DedupeKey>,
}

/// The field that says what changed in the sender's keys since its previous message.
pub const KEY_CHANGE_FIELD: &str = "Onionpost-Key-Change";

/// What the edge found besides the sender's keys, for [`authenticate_with`].
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    /// What the receiving identity's trust statements say about the From identity (None:
    /// not evaluated, for example no ledger).
    pub trust: Option<Trust>,
    /// The sender's key changes since its previous message here, in words (None: none, or
    /// its first message).
    pub key_change: Option<String>,
    /// The configured gateway's `Authentication-Results` (SPF, DKIM, DMARC of mail from
    /// the internet), kept after the node's own because the gateway signed the copy
    /// ([`gateway_copy`]); CRLF-terminated fields.
    pub gateway: Option<String>,
}

/// A copy that may come from the node's configured gateway (`[gateway]`): when it starts
/// with the gateway's `Onionpost-Gateway` signature for these recipients (their onion's key)
/// and it verifies (within an hour of `now`, Unix seconds), the copy without the field and
/// the gateway's `Authentication-Results` fields; otherwise the message without any such
/// field and `None` (anybody can write `Authentication-Results`). Pure.
pub fn gateway_copy(
    gateway: Option<&OnionAddress>,
    recipients: &[String],
    message: Vec<u8>,
    now: u64,
) -> (Vec<u8>, Option<String>) {
    use crate::gateway::auth::{FIELD, verify_forward};
    let starts = message.len() > FIELD.len()
        && message[..FIELD.len()].eq_ignore_ascii_case(FIELD.as_bytes());
    if !starts {
        return (message, None);
    }
    let target = recipients.first().and_then(|r| {
        crate::queue::schedule::domain_of(r)
            .parse::<OnionAddress>()
            .ok()
    });
    let verified = match (gateway, target) {
        (Some(g), Some(t)) => verify_forward(
            &t.public_key(),
            &g.public_key(),
            recipients,
            &message,
            now,
            3600,
        )
        .ok(),
        _ => None,
    };
    match verified {
        Some(v) => {
            let (fields, _) = split_header(&v.copy);
            let results: Vec<u8> = fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("Authentication-Results"))
                .flat_map(|f| f.raw.iter().copied())
                .collect();
            let results = String::from_utf8_lossy(&results).into_owned();
            (v.copy, (!results.is_empty()).then_some(results))
        }
        None => (strip_fields(&message, FIELD).into_owned(), None),
    }
}

/// The RFC 8601 result of the `pgp` method.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PgpResult {
    /// Signed by a key bound to the From identity, valid at the signature's time.
    Pass(Signer),
    /// Not validly signed by a bound key (or not decryptable): why.
    Fail(String),
    /// Not signed.
    None,
    /// Signed, but there is nothing to check against: why.
    Neutral(String),
}

impl PgpResult {
    fn name(&self) -> &'static str {
        match self {
            PgpResult::Pass(_) => "pass",
            PgpResult::Fail(_) => "fail",
            PgpResult::None => "none",
            PgpResult::Neutral(_) => "neutral",
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A value usable as an RFC 8601 quoted `reason`: no quotes, backslashes or line breaks, at
/// most 200 characters.
fn quoted(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .take(200)
        .collect();
    format!("\"{clean}\"")
}

/// The message without any field called `name` (borrowed, unchanged, if it has none).
pub fn strip_fields<'a>(message: &'a [u8], name: &str) -> Cow<'a, [u8]> {
    strip_any(message, &[name])
}

/// The message without any field called one of `names` (borrowed, unchanged, if it has
/// none): one pass over the header, one copy at most.
fn strip_any<'a>(message: &'a [u8], names: &[&str]) -> Cow<'a, [u8]> {
    let (fields, body) = split_header(message);
    let named = |f: &HeaderField<'_>| names.iter().any(|n| f.name.eq_ignore_ascii_case(n));
    if !fields.iter().any(named) {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len());
    for f in fields.iter().filter(|f| !named(f)) {
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Cow::Owned(out)
}

/// Opens with each of the recipient's keys until one is the one it was encrypted to.
fn open_with(
    message: &[u8],
    secrets: &[SecretCert],
    certs: &[onionpost_e2e::PublicCert],
) -> Result<Opened, onionpost_e2e::Error> {
    let mut last = None;
    for me in secrets {
        match onionpost_e2e::open(message, Some(me), certs) {
            Err(e @ onionpost_e2e::Error::NotForUs { .. }) => last = Some(e),
            other => return other,
        }
    }
    match last {
        Some(e) => Err(e),
        None => onionpost_e2e::open(message, None, certs),
    }
}

/// Judges a signature verdict against the From identity's key history. Pure.
fn judge(signature: &Result<Signer, SignatureError>, sender: &SenderKeys) -> PgpResult {
    match (signature, sender) {
        (Err(SignatureError::Unsigned { .. }), _) => PgpResult::None,
        (Err(SignatureError::UnknownKey { .. }), SenderKeys::Unchecked(why)) => {
            PgpResult::Neutral(format!("signed, but {why}"))
        }
        (Err(SignatureError::UnknownKey { issuer }), SenderKeys::Ledger(k))
            if k.history.is_empty() =>
        {
            PgpResult::Neutral(format!(
                "signed by {issuer}, but the From identity has no key bound on the ledger at height {}",
                k.height
            ))
        }
        (Err(e), SenderKeys::Ledger(k)) => PgpResult::Fail(format!(
            "{e} (checked against the keys bound on the ledger at height {})",
            k.height
        )),
        (Err(e), SenderKeys::Unchecked(_)) => PgpResult::Fail(e.to_string()),
        (Ok(signer), SenderKeys::Unchecked(why)) => {
            // Not reachable (no certificates were given), but never a pass.
            PgpResult::Neutral(format!("signed by {}, but {why}", signer.cert))
        }
        (Ok(signer), SenderKeys::Ledger(k)) => {
            let Some(key) = k
                .history
                .iter()
                .find(|h| h.cert.fingerprint() == signer.cert)
            else {
                return PgpResult::Fail(format!("key {} is not bound on the ledger", signer.cert));
            };
            // A replaced key is given the clock skew; a revoked one none (a revocation is
            // for a key that must not sign any more).
            let too_late = |end: Ended, created: u32| {
                let created = u64::from(created);
                if end.revoked {
                    created >= end.time
                } else {
                    created > end.time.saturating_add(SIGNATURE_SKEW_SECS)
                }
            };
            match (key.ended, signer.created) {
                (Some(end), Some(created)) if too_late(end, created) => PgpResult::Fail(format!(
                    "signed at {created} by key {}, which was {} on the ledger at height {} (time {})",
                    signer.cert,
                    if end.revoked { "revoked" } else { "replaced" },
                    end.height,
                    end.time
                )),
                _ => PgpResult::Pass(signer.clone()),
            }
        }
    }
}

/// Whether a refusal is the end-to-end policy's verdict on the content (550 5.7.1), not a
/// recipient that went away.
pub fn is_content_verdict(r: &Reply) -> bool {
    (r.code, r.esc) == (550, [5, 7, 1])
}

/// The node's `Authentication-Results` field (RFC 8601), CRLF-terminated.
fn results_field(
    authserv: &str,
    result: &PgpResult,
    from: Option<&str>,
    height: Option<u64>,
    encrypted: bool,
    trust: Option<&Trust>,
) -> String {
    let mut f = format!(
        "Authentication-Results: {authserv};\r\n\tpgp={}",
        result.name()
    );
    match result {
        PgpResult::Fail(why) | PgpResult::Neutral(why) => {
            f += &format!(" reason={}", quoted(why));
        }
        PgpResult::Pass(_) | PgpResult::None => {}
    }
    if let Some(from) = from {
        f += &format!("\r\n\theader.from={from}");
    }
    if let PgpResult::Pass(s) = result {
        f += &format!("\r\n\tpolicy.key={} policy.cert={}", s.key, s.cert);
    }
    if let Some(h) = height {
        f += &format!("\r\n\tpolicy.ledger-height={h}");
    }
    // Trust in an identity says nothing about a message it did not validly sign.
    if let (PgpResult::Pass(_), Some(t)) = (result, trust) {
        f += &trust_properties(t);
    }
    f += &format!(
        "\r\n\tpolicy.encrypted={}\r\n",
        if encrypted { "yes" } else { "no" }
    );
    f
}

/// The `policy.trust` properties (folded lines) of a trust verdict.
fn trust_properties(t: &Trust) -> String {
    match t {
        Trust::Own => "\r\n\tpolicy.trust=self".into(),
        Trust::Path { level, hops } => {
            let path: Vec<String> = hops
                .iter()
                .map(|h| format!("{}:{}", onion(&h.to), h.level.name()))
                .collect();
            format!(
                "\r\n\tpolicy.trust={} policy.trust-depth={}\r\n\tpolicy.trust-path=\"{}\"",
                level.name(),
                hops.len(),
                path.join("\r\n\t ")
            )
        }
        Trust::NoPath { depth, complete } => format!(
            "\r\n\tpolicy.trust=none policy.trust-depth={depth}{}",
            if *complete {
                ""
            } else {
                " policy.trust-search=partial"
            }
        ),
        Trust::Unknown(why) => format!("\r\n\tpolicy.trust=unknown reason={}", quoted(why)),
    }
}

/// The end-to-end stage for one recipient: decrypt with the recipient's `secrets` (current
/// key first), verify against the From identity's bound keys, and say what to store with
/// which keywords, or refuse (only under [`UnverifiedPolicy::Refuse`], only for a From whose
/// identity has bound a key, and never for a message that fails to decrypt). Pure.
pub fn authenticate(
    message: &[u8],
    secrets: &[SecretCert],
    sender: &SenderKeys,
    policy: UnverifiedPolicy,
    authserv: &str,
) -> Authenticated {
    authenticate_with(
        message,
        secrets,
        sender,
        policy,
        authserv,
        &Annotations::default(),
    )
}

/// [`authenticate`], reporting the trust path (in `Authentication-Results`, for a `pass`)
/// and the sender's key change (`$KeyChanged` and an [`KEY_CHANGE_FIELD`] field) that the
/// edge found. Pure.
pub fn authenticate_with(
    message: &[u8],
    secrets: &[SecretCert],
    sender: &SenderKeys,
    policy: UnverifiedPolicy,
    authserv: &str,
    notes: &Annotations,
) -> Authenticated {
    let message = strip_any(message, &["Authentication-Results", KEY_CHANGE_FIELD]);
    let change = notes
        .key_change
        .as_ref()
        .map(|c| format!("{KEY_CHANGE_FIELD}: {}\r\n", field_value(c)));
    let change_flag = if change.is_some() {
        Flags::KEY_CHANGED
    } else {
        Flags::default()
    };
    let certs: Vec<_> = match sender {
        SenderKeys::Ledger(k) => k.history.iter().map(|h| h.cert.clone()).collect(),
        SenderKeys::Unchecked(_) => Vec::new(),
    };
    let height = match sender {
        SenderKeys::Ledger(k) => Some(k.height),
        SenderKeys::Unchecked(_) => None,
    };
    let opened = match open_with(&message, secrets, &certs) {
        Ok(o) => o,
        Err(e) => {
            // Kept as it came, marked: a message that cannot be opened is never lost.
            let from = crate::message::header_value(&message, "From");
            let result = PgpResult::Fail(chain(&e));
            let field = results_field(authserv, &result, from.as_deref(), height, false, None);
            let change = change.unwrap_or_default();
            let gw = notes.gateway.as_deref().unwrap_or_default();
            return Authenticated {
                verdict: Verdict::Accept,
                dedupe: dedupe_key(&message),
                message: [
                    field.as_bytes(),
                    gw.as_bytes(),
                    change.as_bytes(),
                    &*message,
                ]
                .concat(),
                flags: Flags::UNVERIFIED.with(change_flag),
            };
        }
    };
    let result = judge(&opened.signature, sender);
    let mut flags = match result {
        PgpResult::Pass(_) => Flags::VERIFIED,
        _ => Flags::UNVERIFIED,
    };
    if opened.encrypted {
        flags = flags.with(Flags::ENCRYPTED);
    }
    flags = flags.with(change_flag);
    let bound = matches!(sender, SenderKeys::Ledger(k) if k.ever_bound);
    let verdict = match (&result, bound, policy) {
        (PgpResult::Pass(_), _, _) | (_, false, _) | (_, true, UnverifiedPolicy::Mark) => {
            Verdict::Accept
        }
        (r, true, UnverifiedPolicy::Refuse) => {
            let why = match r {
                PgpResult::Fail(w) | PgpResult::Neutral(w) => w.clone(),
                _ => "it is not signed".to_string(),
            };
            Verdict::Refuse(reply(
                550,
                [5, 7, 1],
                format!(
                    "Error: the From address {} has an end-to-end key bound on the ledger, but this message is not validly signed by it ({why})",
                    opened.from.as_deref().unwrap_or("(none)")
                ),
            ))
        }
    };
    let field = results_field(
        authserv,
        &result,
        opened.from.as_deref(),
        height,
        opened.encrypted,
        notes.trust.as_ref(),
    );
    let readable = strip_any(
        &opened.message,
        &["Authentication-Results", KEY_CHANGE_FIELD],
    );
    let change = change.unwrap_or_default();
    let gw = notes.gateway.as_deref().unwrap_or_default();
    Authenticated {
        verdict,
        dedupe: dedupe_key(&readable),
        message: [
            field.as_bytes(),
            gw.as_bytes(),
            change.as_bytes(),
            &*readable,
        ]
        .concat(),
        flags,
    }
}

/// A field value on one line: control characters (line breaks) become spaces. Lines are
/// long (one per change, fingerprints and heights), but never broken inside a word.
fn field_value(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one.replace("; ", ";\r\n\t")
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
    store_flagged(mailbox, message, key, Flags::default())
}

/// Stores a message with initial flags (the end-to-end keywords), deduplicated by `key`.
/// Blocks on the disk.
pub fn store_flagged(
    mailbox: &dyn MailStore,
    message: &[u8],
    key: Option<DedupeKey>,
    flags: Flags,
) -> Result<(), Reply> {
    let opts = DeliverOptions {
        dedupe: key,
        flags,
        ..Default::default()
    };
    match mailbox.deliver(message, opts) {
        Ok(Delivered::Stored(uid)) => {
            tracing::info!(uid, flags = %flags.to_imap(), "stored");
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

/// The per-recipient result of running the stages for one recipient, with what the
/// recipient's trust statements say about the sender. Blocks on the disk.
fn deliver_one(
    ids: &Identities,
    scope: Scope,
    recipient: &str,
    message: &[u8],
    sender: &SenderKeys,
    (trust, gateway): (Option<Trust>, Option<String>),
    e2e: &E2e,
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
    open_and_store(
        &h,
        &Filing {
            mailbox: &*h.mailbox,
            prefix: b"",
            dedupe: None,
        },
        message,
        sender,
        Annotations {
            trust,
            key_change: None,
            gateway,
        },
        e2e,
    )
}

/// Where [`open_and_store`] files a message, and how.
pub struct Filing<'a> {
    /// The mailbox (INBOX, or a list's folder).
    pub mailbox: &'a dyn MailStore,
    /// Header fields put before the node's `Authentication-Results` (a list's verification
    /// field), raw with CRLFs.
    pub prefix: &'a [u8],
    /// The dedupe key to store under (None: the readable message's own).
    pub dedupe: Option<DedupeKey>,
}

/// The end-to-end stage and the store for hosted recipient `h`: opens `message` with its
/// keys, verifies it against `sender`'s, reports what `notes` says (the trust path, the
/// gateway's results), marks a change of the sender's keys since its previous message here
/// (`$KeyChanged`, remembered once stored), and files it as `filing` says, or refuses it as
/// the policy says. Blocks on the disk.
pub fn open_and_store(
    h: &Hosted,
    filing: &Filing<'_>,
    message: &[u8],
    sender: &SenderKeys,
    notes: Annotations,
    e2e: &E2e,
) -> Result<(), Reply> {
    let secrets = e2e.secrets(&h.identity).map_err(|e| {
        tracing::error!("reading the recipient's OpenPGP keys: {e}");
        local_error()
    })?;
    // Only identities that have bound a key are remembered: anyone can put an unbound
    // onion address in From, and the state must not grow with them.
    let keys = match sender {
        SenderKeys::Ledger(keys) if !keys.events.is_empty() => keys,
        _ => return judge_and_store(h, filing, message, &secrets, sender, &notes, e2e),
    };
    // The sender's key history against what its previous message here was checked
    // against: marked once, remembered only once the message is stored.
    let who = onion(&keys.identity);
    let updated = e2e.watches.update(&h.identity, |st| {
        let (change, seen) = key_change(st.correspondents.get(&who), &keys.events, keys.height);
        let notes = Annotations {
            key_change: change.map(|c| {
                format!(
                    "{}: since its previous message here (checked at height {}): {}",
                    keys.address,
                    st.correspondents.get(&who).map_or(0, |c| c.height),
                    describe(&keys.events, keys.events.len() - c.len())
                )
            }),
            ..notes.clone()
        };
        judge_and_store(h, filing, message, &secrets, sender, &notes, e2e)?;
        st.correspondents.insert(who.clone(), seen);
        Ok(())
    });
    match updated {
        Ok(()) => Ok(()),
        Err(UpdateError::Inner(r)) => Err(r),
        Err(UpdateError::Watch(e)) => {
            tracing::error!("{e}");
            Err(local_error())
        }
    }
}

fn local_error() -> Reply {
    reply(
        451,
        [4, 3, 0],
        "Error: local key store error; try again later",
    )
}

/// [`authenticate_with`], then the policy's refusal or [`store_flagged`] as `filing` says.
fn judge_and_store(
    h: &Hosted,
    filing: &Filing<'_>,
    message: &[u8],
    secrets: &[SecretCert],
    sender: &SenderKeys,
    notes: &Annotations,
    e2e: &E2e,
) -> Result<(), Reply> {
    let a = authenticate_with(
        message,
        secrets,
        sender,
        e2e.policy(),
        &h.identity.onion.hostname(),
        notes,
    );
    match a.verdict {
        Verdict::Accept => {}
        Verdict::Refuse(r) | Verdict::Defer(r) => {
            tracing::info!("refused by the end-to-end policy: {}", r.message);
            return Err(r);
        }
    }
    if a.flags.contains(Flags::KEY_CHANGED) {
        tracing::info!(from = %crate::message::header_value(message, "From").unwrap_or_default(), "the sender's keys changed since its previous message: marked $KeyChanged");
    }
    let stored: Cow<'_, [u8]> = if filing.prefix.is_empty() {
        Cow::Borrowed(&a.message)
    } else {
        Cow::Owned([filing.prefix, &a.message].concat())
    };
    store_flagged(filing.mailbox, &stored, filing.dedupe.or(a.dedupe), a.flags)
}

/// The inbound stages, bound to the node's context.
#[derive(Debug, Clone)]
pub struct Inbound {
    ctx: Arc<Context>,
    lists: Option<Arc<Lists>>,
    e2e: Arc<E2e>,
    hosting: Option<Arc<Hosting>>,
}

impl Inbound {
    /// Inbound delivery for the identities of `ctx`, refusing list posts (no list engine),
    /// with no ledger to check signatures against.
    pub fn new(ctx: Arc<Context>) -> Self {
        let e2e = E2e::new(crate::ledger::NodeLedger::none(), ctx.config().e2e.clone());
        Self {
            ctx,
            lists: None,
            e2e,
            hosting: None,
        }
    }

    /// The same stages, holding mail for identities that name ours as mailbox hosts.
    pub fn with_hosting(self, hosting: Arc<Hosting>) -> Self {
        Self {
            hosting: Some(hosting),
            ..self
        }
    }

    /// The current identities.
    pub fn identities(&self) -> Arc<Identities> {
        self.ctx.identities()
    }

    /// The host's side, if this node holds mail for others.
    pub fn hosting(&self) -> Option<&Arc<Hosting>> {
        self.hosting.as_ref()
    }

    /// Inbound delivery whose list posts go to `lists`.
    pub fn with_lists(ctx: Arc<Context>, lists: Arc<Lists>) -> Self {
        Self {
            lists: Some(lists),
            ..Self::new(ctx)
        }
    }

    /// The same stages, checking end-to-end signatures through `e2e`.
    pub fn with_e2e(self, e2e: Arc<E2e>) -> Self {
        Self { e2e, ..self }
    }

    /// The SMTP session policy of a connection with this scope.
    pub fn policy(&self, scope: Scope) -> InboundPolicy {
        InboundPolicy {
            ids: self.ctx.identities(),
            scope,
            hosting: self.hosting.is_some(),
        }
    }

    /// Runs the stages for a message received over SMTP: one reply for the whole message, as
    /// SMTP has. Any temporary failure makes the whole message temporary (the sender retries;
    /// recipients already served see the retry as a duplicate).
    pub async fn accept(&self, scope: Scope, env: Envelope) -> Result<(), Reply> {
        let ids = self.ctx.identities();
        if let Some(h) = &self.hosting
            && env
                .recipients
                .iter()
                .any(|r| held_candidate(&ids, scope, r).is_some())
        {
            return self.accept_held(h, &ids, scope, env).await;
        }
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
            // The end-to-end policy judged the content: said as it is.
            Some(r) if is_content_verdict(&r) => Err(r),
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

    /// A transaction with recipients this node may hold mail for ([`Hosting::hold`]); the
    /// others go through the usual stages. Each refusal is said as it is (the first).
    async fn accept_held(
        &self,
        hosting: &Hosting,
        ids: &Identities,
        scope: Scope,
        env: Envelope,
    ) -> Result<(), Reply> {
        let ours = scope_hosts(ids, scope);
        let mut results = Vec::new();
        let mut rest = Vec::new();
        for r in &env.recipients {
            match held_candidate(ids, scope, r) {
                Some(onion) => {
                    results.push(hosting.hold(&ours, &env.from, r, &onion, &env.data).await)
                }
                None => rest.push(r.clone()),
            }
        }
        if !rest.is_empty() {
            results.extend(self.deliver(scope, rest, env.data).await);
        }
        results.into_iter().find(|o| o.is_err()).unwrap_or(Ok(()))
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let gateway = self.ctx.config().gateway.as_ref().and_then(|g| g.address());
        let (message, via_gateway) = gateway_copy(gateway.as_ref(), &recipients, message, now);
        let sender = match self.e2e.sender_keys(&message).await {
            Ok(s) => s,
            Err(r) => {
                tracing::info!("deferred: {}", r.message);
                return vec![Err(r); n];
            }
        };
        let mut trust = Vec::with_capacity(n);
        for r in &recipients {
            trust.push(self.trust(&ids, scope, r, &sender).await);
        }
        let e2e = self.e2e.clone();
        tokio::task::spawn_blocking(move || {
            recipients
                .iter()
                .zip(trust)
                .map(|(r, t)| {
                    let notes = (t, via_gateway.clone());
                    deliver_one(&ids, scope, r, &message, &sender, notes, &e2e)
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("delivery task failed: {e}");
            vec![Err(reply(451, [4, 3, 0], "Error: local delivery failed")); n]
        })
    }

    /// What a hosted recipient's trust statements say about a sender with keys on the
    /// ledger (None for anyone else, and for a sender that never bound a key: nothing it
    /// sends can pass).
    async fn trust(
        &self,
        ids: &Identities,
        scope: Scope,
        recipient: &str,
        sender: &SenderKeys,
    ) -> Option<Trust> {
        let SenderKeys::Ledger(k) = sender else {
            return None;
        };
        let Class::Hosted(h) = classify(ids, scope, recipient) else {
            return None;
        };
        if k.history.is_empty() {
            return None;
        }
        let me = h.identity.onion.public_key();
        Some(self.e2e.trust(&me, &k.identity, k.height).await)
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
    /// Whether this node holds mail for others (checked on the ledger after DATA).
    hosting: bool,
}

impl Policy for InboundPolicy {
    fn accepts(&self, address: &str) -> bool {
        matches!(
            classify(&self.ids, self.scope, address),
            Class::Hosted(_) | Class::ListPost(..)
        ) || (self.hosting && held_candidate(&self.ids, self.scope, address).is_some())
    }

    fn collection(&self) -> bool {
        self.hosting
    }

    fn authenticate(&self, _user: &str, _password: &str) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_gateway_signature_keeps_the_gateway_results() {
        use crate::gateway::auth::attach_forward;
        let gw_key = ed25519_consensus::SigningKey::new(rand_core::OsRng);
        let gw = OnionAddress::from_public_key(gw_key.verification_key().to_bytes());
        let me = OnionAddress::from_public_key([5; 32]);
        let rcpts = vec![format!("alice@{}", me.hostname())];
        let copy = b"Authentication-Results: mx.gw.test;\r\n\tspf=pass\r\nFrom: <x@example.com>\r\n\r\nhi\r\n";
        let signed = attach_forward(&gw_key, &me.public_key(), &rcpts, 1000, copy);
        let (m, ar) = gateway_copy(Some(&gw), &rcpts, signed.clone(), 1000);
        assert_eq!(m, copy);
        assert_eq!(
            ar.as_deref(),
            Some("Authentication-Results: mx.gw.test;\r\n\tspf=pass\r\n")
        );
        // Another gateway's signature, none configured, too old, or for someone else: the
        // field goes and the results are not kept.
        let other = OnionAddress::from_public_key([6; 32]);
        for (g, r, now) in [
            (Some(&other), &rcpts, 1000),
            (None, &rcpts, 1000),
            (Some(&gw), &rcpts, 1000 + 7200),
            (Some(&gw), &vec![format!("bob@{}", other.hostname())], 1000),
        ] {
            let (m, ar) = gateway_copy(g, r, signed.clone(), now);
            assert_eq!(ar, None);
            assert!(!String::from_utf8_lossy(&m).contains("Onionpost-Gateway"));
        }
        let plain = b"From: <x@example.com>\r\n\r\nhi\r\n".to_vec();
        assert_eq!(
            gateway_copy(Some(&gw), &rcpts, plain.clone(), 1000),
            (plain, None)
        );
    }
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
        // One small message with the node's Authentication-Results fits, two do not.
        config.limits.mailbox_quota_bytes = 200;
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

    mod e2e {
        use super::super::*;
        use crate::e2e::directory::{BoundKeys, Ended, HistoryKey};
        use onionpost_e2e::{Protect, SecretCert};

        fn addr(name: &str, seed: u8) -> String {
            format!(
                "{name}@{}",
                OnionAddress::from_public_key([seed; 32]).hostname()
            )
        }

        fn key(a: &str) -> SecretCert {
            SecretCert::generate(rand::rngs::OsRng, a).unwrap()
        }

        fn history(keys: &[(&SecretCert, Option<u64>)]) -> SenderKeys {
            SenderKeys::Ledger(Box::new(BoundKeys {
                address: String::new(),
                identity: [1; 32],
                events: Vec::new(),
                height: 42,
                active: None,
                history: keys
                    .iter()
                    .map(|(k, ended)| HistoryKey {
                        cert: k.public().clone(),
                        height: 1,
                        time: 0,
                        ended: ended.map(|time| Ended {
                            revoked: false,
                            height: 7,
                            time,
                        }),
                    })
                    .collect(),
                ever_bound: !keys.is_empty(),
            }))
        }

        fn mail(from: &str, to: &str, body: &str) -> Vec<u8> {
            format!(
                "Authentication-Results: evil.example; pgp=pass\r\nFrom: {from}\r\nTo: {to}\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n\r\n{body}\r\n"
            )
            .into_bytes()
        }

        fn text(a: &Authenticated) -> String {
            String::from_utf8_lossy(&a.message).into_owned()
        }

        #[test]
        fn signed_and_encrypted_by_the_bound_key_is_verified_and_readable() {
            let (a, b) = (addr("alice", 1), addr("bob", 2));
            let (ka, kb) = (key(&a), key(&b));
            let plain = mail(&a, &b, "the secret");
            let sealed = onionpost_e2e::sign_and_encrypt(
                rand::rngs::OsRng,
                &plain,
                &ka,
                &[kb.public()],
                Protect::default(),
            )
            .unwrap();
            let got = authenticate(
                &sealed,
                std::slice::from_ref(&kb),
                &history(&[(&ka, None)]),
                UnverifiedPolicy::Refuse,
                "me.onion",
            );
            assert_eq!(got.verdict, Verdict::Accept);
            assert_eq!(got.flags, Flags::VERIFIED.with(Flags::ENCRYPTED));
            let t = text(&got);
            assert!(
                t.starts_with("Authentication-Results: me.onion;\r\n\tpgp=pass\r\n"),
                "{t}"
            );
            assert!(
                t.contains(&format!("policy.cert={}", ka.fingerprint())),
                "{t}"
            );
            assert!(
                t.contains("policy.ledger-height=42") && t.contains("policy.encrypted=yes"),
                "{t}"
            );
            assert!(
                t.contains("the secret") && t.contains("Subject: hello"),
                "{t}"
            );
            assert!(
                !t.contains("evil.example"),
                "incoming results are removed: {t}"
            );
            // A retry, encrypted afresh, is the same message for dedupe.
            let again = onionpost_e2e::sign_and_encrypt(
                rand::rngs::OsRng,
                &plain,
                &ka,
                &[kb.public()],
                Protect::default(),
            )
            .unwrap();
            let got2 = authenticate(
                &again,
                &[kb],
                &history(&[(&ka, None)]),
                UnverifiedPolicy::Mark,
                "me.onion",
            );
            assert_eq!(got.dedupe, got2.dedupe);
            assert!(got.dedupe.is_some());
        }

        #[test]
        fn forged_from_is_never_verified_and_may_be_refused() {
            let (a, b) = (addr("alice", 1), addr("bob", 2));
            let (ka, kb) = (key(&a), key(&b));
            let bound = history(&[(&ka, None)]);
            let forged = mail(&a, &b, "send money");
            let got = authenticate(
                &forged,
                std::slice::from_ref(&kb),
                &bound,
                UnverifiedPolicy::Mark,
                "me.onion",
            );
            assert_eq!(got.verdict, Verdict::Accept);
            assert_eq!(got.flags, Flags::UNVERIFIED);
            assert!(text(&got).contains("pgp=none"), "{}", text(&got));
            let refused = authenticate(
                &forged,
                std::slice::from_ref(&kb),
                &bound,
                UnverifiedPolicy::Refuse,
                "me.onion",
            );
            assert!(
                matches!(&refused.verdict, Verdict::Refuse(r) if r.code == 550 && r.esc == [5, 7, 1]),
                "{:?}",
                refused.verdict
            );
            // Signed by a key that claims alice's address but is not the bound one.
            let mallory = key(&a);
            let signed =
                onionpost_e2e::sign(rand::rngs::OsRng, &forged, &mallory, Protect::default())
                    .unwrap();
            let got = authenticate(
                &signed,
                std::slice::from_ref(&kb),
                &bound,
                UnverifiedPolicy::Mark,
                "me.onion",
            );
            assert_eq!(got.flags, Flags::UNVERIFIED);
            assert!(text(&got).contains("pgp=fail reason="), "{}", text(&got));
            // Unsigned mail from an identity with no binding: unverified, never refused.
            let c = addr("carol", 3);
            let plain = mail(&c, &b, "hi");
            let got = authenticate(
                &plain,
                &[kb],
                &history(&[]),
                UnverifiedPolicy::Refuse,
                "me.onion",
            );
            assert_eq!(
                (got.verdict, got.flags),
                (Verdict::Accept, Flags::UNVERIFIED)
            );
        }

        #[test]
        fn an_earlier_key_verifies_what_it_signed_while_it_was_bound() {
            let (a, b) = (addr("alice", 1), addr("bob", 2));
            let (old, new, kb) = (key(&a), key(&a), key(&b));
            let signed = onionpost_e2e::sign(
                rand::rngs::OsRng,
                &mail(&a, &b, "x"),
                &old,
                Protect::default(),
            )
            .unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            // Replaced after it signed: still verifies.
            let later = history(&[(&old, Some(now + 10)), (&new, None)]);
            let got = authenticate(
                &signed,
                std::slice::from_ref(&kb),
                &later,
                UnverifiedPolicy::Refuse,
                "me.onion",
            );
            assert_eq!(got.flags, Flags::VERIFIED, "{}", text(&got));
            // Replaced long before the signature's time: a stolen old key cannot sign now.
            let earlier = history(&[(&old, Some(now - 10 * SIGNATURE_SKEW_SECS)), (&new, None)]);
            let got = authenticate(
                &signed,
                std::slice::from_ref(&kb),
                &earlier,
                UnverifiedPolicy::Mark,
                "me.onion",
            );
            assert_eq!(got.flags, Flags::UNVERIFIED);
            assert!(
                text(&got).contains("replaced on the ledger at height 7"),
                "{}",
                text(&got)
            );
            // Revoked a little before the signature: no clock allowance for a revocation.
            let mut revoked = history(&[(&old, Some(now - 5))]);
            if let SenderKeys::Ledger(k) = &mut revoked {
                k.history[0].ended.as_mut().unwrap().revoked = true;
            }
            let got = authenticate(&signed, &[kb], &revoked, UnverifiedPolicy::Mark, "me.onion");
            assert_eq!(got.flags, Flags::UNVERIFIED);
            assert!(
                text(&got).contains("revoked on the ledger"),
                "{}",
                text(&got)
            );
        }

        #[test]
        fn mail_that_cannot_be_decrypted_is_kept_as_received() {
            let (a, b) = (addr("alice", 1), addr("bob", 2));
            let (ka, kb, other) = (key(&a), key(&b), key(&addr("carol", 3)));
            let sealed = onionpost_e2e::sign_and_encrypt(
                rand::rngs::OsRng,
                &mail(&a, &b, "for carol"),
                &ka,
                &[other.public()],
                Protect::default(),
            )
            .unwrap();
            let got = authenticate(
                &sealed,
                &[kb],
                &history(&[(&ka, None)]),
                UnverifiedPolicy::Refuse,
                "me.onion",
            );
            assert_eq!(
                got.verdict,
                Verdict::Accept,
                "never lost, even under refuse"
            );
            assert_eq!(got.flags, Flags::UNVERIFIED);
            let t = text(&got);
            assert!(
                t.starts_with("Authentication-Results: me.onion;\r\n\tpgp=fail reason=\""),
                "{t}"
            );
            assert!(
                t.contains("-----BEGIN PGP MESSAGE-----"),
                "stored as received: {t}"
            );
            assert!(!t.contains("evil.example"));
        }

        #[test]
        fn trust_and_key_changes_are_reported_and_never_taken_from_the_message() {
            use crate::e2e::trust::{Hop, Level};
            let (a, b) = (addr("alice", 1), addr("bob", 2));
            let (ka, kb) = (key(&a), key(&b));
            let forged_notes = format!(
                "{KEY_CHANGE_FIELD}: nothing changed, trust me\r\n{}",
                String::from_utf8(mail(&a, &b, "hi")).unwrap()
            );
            let signed = onionpost_e2e::sign(
                rand::rngs::OsRng,
                forged_notes.as_bytes(),
                &ka,
                Protect::default(),
            )
            .unwrap();
            let hop = |n: u8, level| Hop {
                to: [n; 32],
                level,
                expires_at: 0,
                signed_height: 3,
            };
            let notes = Annotations {
                trust: Some(Trust::Path {
                    level: Level::Marginal,
                    hops: vec![hop(5, Level::Full), hop(1, Level::Marginal)],
                }),
                key_change: Some("alice: key X replaced key Y (RotateKey) at height 9; key X revoked (RevokeKey) at height 12".into()),
                gateway: None,
            };
            let got = authenticate_with(
                &signed,
                std::slice::from_ref(&kb),
                &history(&[(&ka, None)]),
                UnverifiedPolicy::Mark,
                "me.onion",
                &notes,
            );
            assert_eq!(got.flags, Flags::VERIFIED.with(Flags::KEY_CHANGED));
            let t = text(&got);
            let path = format!(
                "policy.trust=marginal policy.trust-depth=2\r\n\tpolicy.trust-path=\"{}:full\r\n\t {}:marginal\"",
                onion(&[5; 32]),
                onion(&[1; 32])
            );
            assert!(t.contains(&path), "{t}");
            assert!(
                t.contains(&format!("\r\n{KEY_CHANGE_FIELD}: alice: key X replaced key Y (RotateKey) at height 9;\r\n\tkey X revoked")),
                "{t}"
            );
            assert!(
                !t.contains("trust me"),
                "the sender's own field is removed: {t}"
            );

            // No path, a partial search, and an unknown answer are said as such.
            for (trust, want) in [
                (
                    Trust::NoPath {
                        depth: 4,
                        complete: true,
                    },
                    "policy.trust=none policy.trust-depth=4\r\n",
                ),
                (
                    Trust::NoPath {
                        depth: 4,
                        complete: false,
                    },
                    "policy.trust-search=partial",
                ),
                (
                    Trust::Unknown("down".into()),
                    "policy.trust=unknown reason=\"down\"",
                ),
                (Trust::Own, "policy.trust=self"),
            ] {
                let notes = Annotations {
                    trust: Some(trust),
                    key_change: None,
                    gateway: None,
                };
                let got = authenticate_with(
                    &signed,
                    std::slice::from_ref(&kb),
                    &history(&[(&ka, None)]),
                    UnverifiedPolicy::Mark,
                    "me.onion",
                    &notes,
                );
                assert!(text(&got).contains(want), "{want}: {}", text(&got));
                assert_eq!(got.flags, Flags::VERIFIED);
            }

            // A message that does not pass says nothing about trust, but is marked changed.
            let unsigned = mail(&a, &b, "unsigned");
            let got = authenticate_with(
                &unsigned,
                std::slice::from_ref(&kb),
                &history(&[(&ka, None)]),
                UnverifiedPolicy::Mark,
                "me.onion",
                &notes,
            );
            assert_eq!(got.flags, Flags::UNVERIFIED.with(Flags::KEY_CHANGED));
            assert!(!text(&got).contains("policy.trust"), "{}", text(&got));
        }

        #[test]
        fn a_correspondents_key_change_is_marked_once_and_remembered_across_restarts() {
            use crate::e2e::directory::{KeyEvent, KeyEventKind};
            let (home, ctx, alice, _bob) = super::two_identities();
            let e2e = || E2e::new(crate::ledger::NodeLedger::none(), Default::default());
            let sender = addr("sam", 9);
            let ks = key(&sender);
            let event = |seq: u64, kind| KeyEvent {
                seq,
                kind,
                fingerprint: Some(format!("F{seq}")),
                key_id: String::new(),
                height: 10 * (seq + 1),
                reason: String::new(),
            };
            let keys = |events: Vec<KeyEvent>| {
                let mut k = match history(&[(&ks, None)]) {
                    SenderKeys::Ledger(k) => k,
                    SenderKeys::Unchecked(_) => unreachable!(),
                };
                k.identity = [9; 32];
                k.address = sender.clone();
                k.events = events;
                SenderKeys::Ledger(k)
            };
            let ids = ctx.identities();
            let deliver = |e2e: &E2e, n: u32, sender: &SenderKeys| {
                let msg = onionpost_e2e::sign(
                    rand::rngs::OsRng,
                    format!(
                        "From: {}\r\nTo: {alice}\r\nMessage-ID: <k{n}@x>\r\n\r\n{n}\r\n",
                        addr("sam", 9)
                    )
                    .as_bytes(),
                    &ks,
                    Protect::default(),
                )
                .unwrap();
                deliver_one(
                    &ids,
                    Scope::AllHosted,
                    &alice,
                    &msg,
                    sender,
                    (None, None),
                    e2e,
                )
                .unwrap();
            };
            let flags = || -> Vec<bool> {
                let mb = ctx.identities().by_address(&alice).unwrap().mailbox.clone();
                mb.snapshot()
                    .messages
                    .iter()
                    .map(|m| m.flags.contains(Flags::KEY_CHANGED))
                    .collect()
            };
            let one = vec![event(0, KeyEventKind::Bind)];
            let two = vec![event(0, KeyEventKind::Bind), event(1, KeyEventKind::Rotate)];
            let first = e2e();
            deliver(&first, 1, &keys(one.clone()));
            deliver(&first, 2, &keys(one));
            // A restart: a new edge, the state from the disk.
            let again = e2e();
            deliver(&again, 3, &keys(two.clone()));
            deliver(&again, 4, &keys(two));
            assert_eq!(flags(), [false, false, true, false]);
            let mb = ctx.identities().by_address(&alice).unwrap().mailbox.clone();
            let third = String::from_utf8(mb.read(mb.snapshot().messages[2].uid).unwrap()).unwrap();
            assert!(
                third.contains(&format!("{KEY_CHANGE_FIELD}: {sender}: since its previous message here (checked at height 42): key F1 replaced key F0 (RotateKey) at height 20\r\n")),
                "{third}"
            );
            // An identity that never bound a key is not remembered.
            let state =
                crate::e2e::watch::path_of(&ctx.identities().by_address(&alice).unwrap().identity);
            let before = std::fs::read(&state).unwrap();
            deliver(&again, 5, &keys(vec![]));
            assert_eq!(std::fs::read(&state).unwrap(), before);
            drop(home);
        }
    }
}
