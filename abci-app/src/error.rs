//! Why the ledger rejected a transaction: a stable numeric code (the ABCI `code`) and a
//! message that tells a person what to do about it.

use onionpost_proto::tx::EnvelopeError;

/// A rejected transaction. [`TxError::code`] is stable across versions; clients match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The encoded transaction is larger than the ledger accepts.
    #[error("transaction is {size} bytes; the ledger accepts at most {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a well-formed signed transaction.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Signed for another ledger.
    #[error("transaction is for chain {got:?} but this ledger is {want:?}")]
    WrongChain {
        /// This ledger's chain id.
        want: String,
        /// The transaction's.
        got: String,
    },
    /// The signature does not verify.
    #[error(
        "signature does not verify for signer {signer}: the transaction was altered or signed with another key"
    )]
    BadSignature {
        /// The claimed signer's onion address.
        signer: String,
    },
    /// A nonce that was used already: a replay, or a transaction sent twice.
    #[error(
        "nonce {got} was already used by {signer}; its next nonce is {expected} (replayed or duplicate transaction)"
    )]
    NonceReplayed {
        /// The signer.
        signer: String,
        /// The nonce expected.
        expected: u64,
        /// The nonce carried.
        got: u64,
    },
    /// A nonce ahead of the next one: an earlier transaction is missing.
    #[error(
        "nonce {got} of {signer} is ahead of its next nonce {expected}: send the missing transactions first"
    )]
    NonceGap {
        /// The signer.
        signer: String,
        /// The nonce expected.
        expected: u64,
        /// The nonce carried.
        got: u64,
    },
    /// The signer has not registered.
    #[error(
        "signer {0} is not a registered identity: its first transaction must be register_identity with nonce 0"
    )]
    UnknownSigner(String),
    /// The signer has registered already.
    #[error("identity {0} is already registered")]
    AlreadyRegistered(String),
    /// The signer may not do this.
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// No list of that name.
    #[error("unknown list {0:?}: create it first with create_list")]
    UnknownList(String),
    /// The identity named is not registered.
    #[error("unknown identity {0}: it must register before it can be named in a transaction")]
    UnknownIdentity(String),
    /// A field has a bad value.
    #[error("invalid transaction: {0}")]
    Invalid(String),
    /// The action conflicts with the current state.
    #[error("conflicts with the current state: {0}")]
    Conflict(String),
    /// The mempool did not take a transaction that passed CheckTx.
    #[error("not queued: {0}")]
    Mempool(String),
    /// A size or count limit of the state would be exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// One admin may not make this change alone: it needs a proposal that enough admins
    /// approve.
    #[error("needs a quorum of admins: {0}")]
    NeedsQuorum(String),
}

impl TxError {
    /// The stable ABCI code of this rejection (0 means success and is never used here).
    pub fn code(&self) -> u32 {
        match self {
            TxError::TooLarge { .. } => 1,
            TxError::Envelope(_) => 2,
            TxError::WrongChain { .. } => 3,
            TxError::BadSignature { .. } => 4,
            TxError::NonceReplayed { .. } => 5,
            TxError::NonceGap { .. } => 6,
            TxError::UnknownSigner(_) => 7,
            TxError::AlreadyRegistered(_) => 8,
            TxError::Unauthorized(_) => 9,
            TxError::UnknownList(_) => 10,
            TxError::UnknownIdentity(_) => 11,
            TxError::Invalid(_) => 12,
            TxError::Conflict(_) => 13,
            TxError::Limit(_) => 14,
            TxError::Mempool(_) => 15,
            TxError::NeedsQuorum(_) => 16,
        }
    }

    /// The ABCI codespace every rejection is reported under.
    pub const CODESPACE: &'static str = "onionpost";
}
