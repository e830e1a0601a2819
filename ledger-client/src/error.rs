//! What can go wrong, said precisely: which server lied and how, which one could not be
//! reached, and what about the chain itself is broken.

use std::fmt;
use std::path::PathBuf;

use onionpost_proto::consensus::CommitError;
use onionpost_proto::proof::ProofError;

use crate::keydir::Rewrite;
use crate::validators::SetError;

/// Something a ledger server answered that an honest server never does. Each message
/// starts with the name of the lie.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lie {
    /// Asked for the block of one height, the server sent another (typically an older,
    /// genuinely certified block replayed).
    #[error(
        "replayed block: asked for the block of height {asked}, the server sent one of height {got}"
    )]
    ReplayedBlock {
        /// The height asked for.
        asked: u64,
        /// The height of the block sent.
        got: u64,
    },
    /// The server is on another chain.
    #[error("wrong chain: the server is on chain {got:?}, the genesis says {expected:?}")]
    WrongChain {
        /// The chain id of the genesis.
        expected: String,
        /// The chain id the server sent.
        got: String,
    },
    /// The server claims a validator set for a height other than the one derived from
    /// genesis (and its certificate, if it fails, fails because of it).
    #[error(
        "swapped validator set: for block {height} the server claims {claimed} validators that are not the {derived} derived from genesis{}",
        .certificate.as_ref().map(|e| format!(", and the certificate does not verify against the derived set: {e}")).unwrap_or_default()
    )]
    SwappedValidatorSet {
        /// The block.
        height: u64,
        /// Size of the set derived from genesis.
        derived: usize,
        /// Size of the set the server claims.
        claimed: usize,
        /// Why the certificate fails against the derived set, if it does.
        certificate: Option<CommitError>,
    },
    /// A certificate that does not verify against the validator set derived from genesis.
    #[error(
        "forged certificate: block {height} is not certified by the validator set derived from genesis: {source}"
    )]
    ForgedCertificate {
        /// The block.
        height: u64,
        /// Why it fails.
        source: CommitError,
    },
    /// A proof that does not verify against the certified root.
    #[error("forged proof: {what} at height {height}: {source}")]
    ForgedProof {
        /// What the proof is about.
        what: String,
        /// The height.
        height: u64,
        /// Why it fails.
        source: ProofError,
    },
    /// An answer without the proof it must carry.
    #[error("dropped proof: the answer about {what} at height {height} carries no proof")]
    DroppedProof {
        /// What the proof should be about.
        what: String,
        /// The height.
        height: u64,
    },
    /// Asked about one height, the server answered from another.
    #[error("stale height: asked about height {asked}, the server answered from height {answered}")]
    StaleHeight {
        /// The height asked about.
        asked: u64,
        /// The height the answer is anchored at.
        answered: u64,
    },
    /// The server's app hash for a height is not the certified one.
    #[error(
        "wrong app hash: at height {height} the server's app hash is {server}, the certified one is {certified}"
    )]
    WrongRoot {
        /// The height.
        height: u64,
        /// The server's app hash (hex).
        server: String,
        /// The certified app hash (hex).
        certified: String,
    },
    /// The server's latest block is older than one already verified.
    #[error("stale server: its latest block is {latest}, but block {verified} is already verified")]
    StaleLatest {
        /// The server's latest block height.
        latest: u64,
        /// The highest block already verified.
        verified: u64,
    },
    /// A trust path that is not a valid chain of statements.
    #[error("bad trust path: {0}")]
    BadTrustPath(String),
    /// An answer that does not have the shape the protocol requires.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// Why one endpoint gave no verified answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The endpoint's address is not a usable URI.
    #[error("bad endpoint address: {0}")]
    BadAddress(#[source] tonic::transport::Error),
    /// The call failed (unreachable, timed out, or refused by the server).
    #[error("{call} failed: {} ({})", .status.message(), .status.code())]
    Rpc {
        /// The gRPC method.
        call: &'static str,
        /// The status returned.
        #[source]
        status: tonic::Status,
    },
    /// The server lied.
    #[error("lied: {0}")]
    Lie(#[from] Lie),
}

impl Failure {
    /// The lie, if this failure is one.
    pub fn lie(&self) -> Option<&Lie> {
        match self {
            Failure::Lie(l) => Some(l),
            _ => None,
        }
    }
}

/// One endpoint's failure.
#[derive(Debug)]
pub struct EndpointFailure {
    /// The endpoint's address.
    pub endpoint: String,
    /// What went wrong there.
    pub failure: Failure,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.failure)
    }
}

fn list(failures: &[EndpointFailure]) -> String {
    failures
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a read or an audit gave no verified answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint gave a verified answer; each one's failure is listed.
    #[error("no ledger endpoint gave a verified answer: {}", list(.0))]
    NoVerifiedAnswer(Vec<EndpointFailure>),
    /// Nothing is certified yet: no block has been verified.
    #[error("no app hash is certified yet: the chain has no verified block")]
    NothingCertified,
    /// The only certified state is the genesis state (height 0), which the query protocol
    /// cannot address: height 0 on the wire means "the latest". The next block makes a
    /// queryable height certified.
    #[error(
        "only the genesis state is certified yet, and queries cannot address height 0; wait for the next block"
    )]
    OnlyGenesisCertified,
    /// A height above the latest verified one.
    #[error("height {asked} is not verified yet; the latest verified height is {latest}")]
    NotYetVerified {
        /// The height asked for.
        asked: u64,
        /// The latest verified height.
        latest: u64,
    },
    /// A client pinned to one root was asked about another height.
    #[error("this client trusts only the app hash of height {pinned}; asked about height {asked}")]
    PinnedHeight {
        /// The pinned height.
        pinned: u64,
        /// The height asked about.
        asked: u64,
    },
    /// Two different app hashes, or blocks, were certified for one height: more than a
    /// third of the validators signed conflicting blocks. Nothing from this chain can be trusted.
    #[error(
        "fork: two different {what} are certified for height {height} ({first} and {second}); the validators equivocated"
    )]
    Fork {
        /// What differs: "app hashes" or "blocks".
        what: &'static str,
        /// The height.
        height: u64,
        /// The app hash certified first (hex).
        first: String,
        /// The other (hex).
        second: String,
    },
    /// The certified state holds a validator set that cannot be used.
    #[error("the validator set certified at height {height} is unusable: {source}")]
    UnusableValidatorSet {
        /// The height of the `validators` record.
        height: u64,
        /// Why.
        source: SetError,
    },
    /// A key history was rewritten in certified state.
    #[error(transparent)]
    KeyHistoryRewritten(#[from] Rewrite),
    /// The genesis file is unusable.
    #[error("genesis: {0}")]
    Genesis(String),
    /// The checkpoint file cannot be read, written, or used.
    #[error("checkpoint {}: {reason}", .path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A bad argument (a list name the ledger cannot hold, an out-of-range depth).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A bad configuration (no endpoints, an audit without a genesis).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether asking again later may succeed (servers unreachable or lying, a height not
    /// yet certified). The others need an operator: a fork, a rewritten key history, a bad
    /// genesis, checkpoint or configuration, a bad argument.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::NoVerifiedAnswer(_)
                | Error::NothingCertified
                | Error::OnlyGenesisCertified
                | Error::NotYetVerified { .. }
        )
    }

    /// The lies endpoints told on the way to this error, with the endpoint that told each.
    pub fn lies(&self) -> Vec<(&str, &Lie)> {
        match self {
            Error::NoVerifiedAnswer(f) => f
                .iter()
                .filter_map(|f| f.failure.lie().map(|l| (f.endpoint.as_str(), l)))
                .collect(),
            _ => Vec::new(),
        }
    }
}
