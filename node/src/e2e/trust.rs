//! Trust paths from the receiving identity's own trust statements (issue 14, point 5).
//!
//! The web of trust is the ledger's: `onionpost tx trust ID --level 1|2 [--expires-at T]`
//! signs a statement "I vouch for ID" (1 = marginal, 2 = full), `tx untrust` deletes it.
//! Mail arriving for identity R from identity S is reported with the best chain of
//! statements R -> ... -> S of at most `[e2e] trust_depth` statements, each unexpired
//! (`expires_at` = 0 or later than now): a chain of full statements if there is one
//! (shortest first), else the shortest chain of any levels (marginal). No chain: `none`.
//!
//! The chain is searched here, not by a server: the node reads the outgoing statements of R,
//! then of each identity R reaches, with a verified proof of each set (the server's
//! `FindTrustPath` cannot prove "no path"; a set of outgoing statements, proven complete by
//! its index, can). All reads are at one height, the height the sender's keys were read at.
//!
//! [`unread`] and [`evaluate`] are pure; [`trust_in`] is the edge that reads the sets.

use std::collections::{HashMap, HashSet, VecDeque};

use onionpost_ledger_client::{At, Direction, IdentityKey, Ledger};
use onionpost_proto::onion::OnionAddress;
use onionpost_proto::v1 as pb;

/// The deepest chain searched, whatever the configuration says (the ledger's own bound).
pub const MAX_DEPTH: u32 = 6;

/// The most identities whose outgoing statements one search reads; past it the search
/// reports what it found so far (and that it stopped).
pub const MAX_READS: usize = 64;

/// A trust statement's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Level 1.
    Marginal,
    /// Level 2.
    Full,
}

impl Level {
    fn of(level: u32) -> Option<Level> {
        match level {
            1 => Some(Level::Marginal),
            2 => Some(Level::Full),
            _ => None,
        }
    }

    /// `marginal` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Marginal => "marginal",
            Level::Full => "full",
        }
    }
}

/// One statement of a chain: its signer vouches for `to` at `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The identity vouched for.
    pub to: IdentityKey,
    /// The statement's level.
    pub level: Level,
    /// When it lapses (Unix seconds, 0 = never).
    pub expires_at: u64,
    /// The height it was signed at.
    pub signed_height: u64,
}

/// What the receiving identity's statements say about the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The sender is the receiving identity itself.
    Own,
    /// A chain from the receiving identity to the sender; `level` is its weakest statement's.
    Path {
        /// The weakest level on the chain.
        level: Level,
        /// The statements in order; the last one's `to` is the sender.
        hops: Vec<Hop>,
    },
    /// No chain of at most `depth` statements.
    NoPath {
        /// The depth searched.
        depth: u32,
        /// False if the search stopped at [`MAX_READS`] identities before it was complete.
        complete: bool,
    },
    /// No verified answer from the ledger (nothing is claimed either way).
    Unknown(String),
}

/// The outgoing statements read so far, by signer (each set verified complete).
#[derive(Debug, Clone, Default)]
pub struct Statements {
    out: HashMap<IdentityKey, Vec<pb::TrustStatement>>,
}

impl Statements {
    /// Records the outgoing statements of `who`.
    pub fn insert(&mut self, who: IdentityKey, statements: Vec<pb::TrustStatement>) {
        self.out.insert(who, statements);
    }

    /// How many sets have been read.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing has been read.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The statements of `who` that count at `now`, sorted by target (None: not read).
    /// A statement counts if `who` signed it, it is about another identity, its level is 1
    /// or 2 and it has not lapsed. Revoked statements are not on the ledger at all.
    fn usable(&self, who: &IdentityKey, now: u64) -> Option<Vec<Hop>> {
        let set = self.out.get(who)?;
        let mut hops: Vec<Hop> = set
            .iter()
            .filter(|s| s.from.as_slice() == who)
            .filter(|s| s.expires_at == 0 || s.expires_at > now)
            .filter_map(|s| {
                let to: IdentityKey = s.to.as_slice().try_into().ok()?;
                (to != *who).then_some(Hop {
                    to,
                    level: Level::of(s.level)?,
                    expires_at: s.expires_at,
                    signed_height: s.signed_height,
                })
            })
            .collect();
        hops.sort_by_key(|h| h.to);
        Some(hops)
    }
}

/// The identities whose outgoing statements a search from `root` for `target` of at most
/// `depth` statements still needs: those reachable in fewer than `depth` statements through
/// statements that count at `now` and not read yet (never the target). Pure.
pub fn unread(
    st: &Statements,
    root: &IdentityKey,
    target: &IdentityKey,
    depth: u32,
    now: u64,
) -> Vec<IdentityKey> {
    let depth = depth.min(MAX_DEPTH);
    let mut need = Vec::new();
    let mut seen = HashSet::from([*root]);
    let mut queue = VecDeque::from([(*root, 0u32)]);
    while let Some((at, dist)) = queue.pop_front() {
        let Some(hops) = st.usable(&at, now) else {
            need.push(at);
            continue;
        };
        if dist + 1 >= depth {
            continue;
        }
        for h in hops {
            if h.to != *target && seen.insert(h.to) {
                queue.push_back((h.to, dist + 1));
            }
        }
    }
    need
}

/// The shortest chain from `root` to `target` of at most `depth` statements of at least
/// `min` level (breadth first, so cycles end and the first chain found is a shortest one).
fn shortest(
    st: &Statements,
    root: &IdentityKey,
    target: &IdentityKey,
    depth: u32,
    min: Level,
    now: u64,
) -> Option<Vec<Hop>> {
    let mut parent: HashMap<IdentityKey, (IdentityKey, Hop)> = HashMap::new();
    let mut seen = HashSet::from([*root]);
    let mut queue = VecDeque::from([(*root, 0u32)]);
    while let Some((at, dist)) = queue.pop_front() {
        if dist >= depth {
            continue;
        }
        for h in st.usable(&at, now).unwrap_or_default() {
            if h.level < min || !seen.insert(h.to) {
                continue;
            }
            let to = h.to;
            parent.insert(to, (at, h));
            if to == *target {
                let mut hops = Vec::new();
                let mut cur = to;
                while cur != *root {
                    let (from, hop) = parent.remove(&cur).expect("a parent on the chain");
                    hops.push(hop);
                    cur = from;
                }
                hops.reverse();
                return Some(hops);
            }
            queue.push_back((to, dist + 1));
        }
    }
    None
}

/// What the statements read say about `target`, from `root`'s point of view, at `now`:
/// the shortest full chain, else the shortest chain of any levels, within `depth`
/// statements (at most [`MAX_DEPTH`]). `complete`: every set [`unread`] asked for was read.
/// Pure.
pub fn evaluate(
    st: &Statements,
    root: &IdentityKey,
    target: &IdentityKey,
    depth: u32,
    now: u64,
    complete: bool,
) -> Trust {
    if root == target {
        return Trust::Own;
    }
    let depth = depth.clamp(1, MAX_DEPTH);
    if let Some(hops) = shortest(st, root, target, depth, Level::Full, now) {
        return Trust::Path {
            level: Level::Full,
            hops,
        };
    }
    if let Some(hops) = shortest(st, root, target, depth, Level::Marginal, now) {
        let level = hops
            .iter()
            .map(|h| h.level)
            .min()
            .unwrap_or(Level::Marginal);
        return Trust::Path { level, hops };
    }
    Trust::NoPath { depth, complete }
}

/// Searches the chain from `root` to `target` with verified reads of outgoing statements at
/// `height`, judging expiry at `now` (Unix seconds).
pub async fn trust_in<L: Ledger>(
    ledger: &L,
    root: &IdentityKey,
    target: &IdentityKey,
    height: u64,
    depth: u32,
    now: u64,
) -> Trust {
    if root == target {
        return Trust::Own;
    }
    let mut st = Statements::default();
    loop {
        let need = unread(&st, root, target, depth, now);
        if need.is_empty() {
            return evaluate(&st, root, target, depth, now, true);
        }
        if st.len() + need.len() > MAX_READS {
            return evaluate(&st, root, target, depth, now, false);
        }
        for who in need {
            match ledger
                .trust(&who, Direction::Outgoing, At::Height(height))
                .await
            {
                Ok(v) => st.insert(who, v.value),
                Err(e) => {
                    return Trust::Unknown(format!(
                        "no verified answer about the trust statements of {}: {e}",
                        onion(&who)
                    ));
                }
            }
        }
    }
}

/// An identity's onion host name.
pub fn onion(who: &IdentityKey) -> String {
    OnionAddress::from_public_key(*who).hostname()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000;

    fn id(n: u8) -> IdentityKey {
        [n; 32]
    }

    fn st(from: u8, to: u8, level: u32, expires_at: u64) -> pb::TrustStatement {
        pb::TrustStatement {
            from: id(from).to_vec(),
            to: id(to).to_vec(),
            level,
            expires_at,
            signed_height: 3,
        }
    }

    /// Every identity's outgoing set read from `edges` (identities 1..=9).
    fn graph(edges: &[pb::TrustStatement]) -> Statements {
        let mut g = Statements::default();
        for n in 1..=9 {
            let out = edges
                .iter()
                .filter(|s| s.from == id(n).to_vec())
                .cloned()
                .collect();
            g.insert(id(n), out);
        }
        g
    }

    fn path(t: &Trust) -> (Level, Vec<u8>) {
        match t {
            Trust::Path { level, hops } => (*level, hops.iter().map(|h| h.to[0]).collect()),
            other => panic!("no path: {other:?}"),
        }
    }

    #[test]
    fn a_direct_statement_and_a_chain_are_found_shortest_first() {
        let g = graph(&[
            st(1, 2, 2, 0),
            st(2, 3, 2, 0),
            st(1, 4, 2, 0),
            st(4, 5, 2, 0),
            st(5, 3, 2, 0),
        ]);
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(2), 4, NOW, true)),
            (Level::Full, vec![2])
        );
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(3), 4, NOW, true)),
            (Level::Full, vec![2, 3])
        );
        assert_eq!(evaluate(&g, &id(1), &id(1), 4, NOW, true), Trust::Own);
        // Only one direction: 3 vouches for nobody.
        assert_eq!(
            evaluate(&g, &id(3), &id(1), 4, NOW, true),
            Trust::NoPath {
                depth: 4,
                complete: true
            }
        );
    }

    #[test]
    fn cycles_end() {
        let g = graph(&[
            st(1, 2, 2, 0),
            st(2, 3, 2, 0),
            st(3, 1, 2, 0),
            st(3, 2, 1, 0),
        ]);
        assert_eq!(
            evaluate(&g, &id(1), &id(9), 6, NOW, true),
            Trust::NoPath {
                depth: 6,
                complete: true
            }
        );
        assert!(unread(&g, &id(1), &id(9), 6, NOW).is_empty());
        assert_eq!(
            path(&evaluate(&g, &id(2), &id(1), 6, NOW, true)),
            (Level::Full, vec![3, 1])
        );
    }

    #[test]
    fn the_depth_bounds_the_chain() {
        // 1 -> 2 -> 3 -> 4 -> 5
        let g = graph(&[
            st(1, 2, 2, 0),
            st(2, 3, 2, 0),
            st(3, 4, 2, 0),
            st(4, 5, 2, 0),
        ]);
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(5), 4, NOW, true)).1,
            vec![2, 3, 4, 5]
        );
        assert_eq!(
            evaluate(&g, &id(1), &id(5), 3, NOW, true),
            Trust::NoPath {
                depth: 3,
                complete: true
            }
        );
        // A configured depth past the ledger's bound is cut to it.
        let long: Vec<_> = (1..=8).map(|n| st(n, n + 1, 2, 0)).collect();
        let g = graph(&long);
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(7), 99, NOW, true)).1.len(),
            6
        );
        assert!(matches!(
            evaluate(&g, &id(1), &id(8), 99, NOW, true),
            Trust::NoPath { depth: 6, .. }
        ));
    }

    #[test]
    fn expired_statements_do_not_count() {
        let g = graph(&[st(1, 2, 2, NOW), st(1, 3, 2, NOW + 1), st(3, 2, 2, 0)]);
        // 1 -> 2 lapsed at NOW (a statement lapses at its expiry, as on the ledger).
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(2), 4, NOW, true)).1,
            vec![3, 2]
        );
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(2), 4, NOW - 1, true)).1,
            vec![2]
        );
        assert_eq!(
            evaluate(&g, &id(1), &id(2), 4, NOW + 1, true),
            Trust::NoPath {
                depth: 4,
                complete: true
            }
        );
    }

    #[test]
    fn full_chains_come_before_shorter_marginal_ones() {
        let g = graph(&[
            st(1, 5, 1, 0),
            st(1, 2, 2, 0),
            st(2, 5, 2, 0),
            st(1, 3, 1, 0),
            st(3, 6, 2, 0),
        ]);
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(5), 4, NOW, true)),
            (Level::Full, vec![2, 5])
        );
        // Only through a marginal statement: the chain is marginal.
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(6), 4, NOW, true)),
            (Level::Marginal, vec![3, 6])
        );
        // Levels other than 1 and 2, statements about oneself, or in another's set: ignored.
        let mut odd = graph(&[st(1, 7, 3, 0), st(1, 1, 2, 0)]);
        odd.insert(id(1), vec![st(1, 7, 3, 0), st(1, 1, 2, 0), st(2, 8, 2, 0)]);
        assert!(matches!(
            evaluate(&odd, &id(1), &id(7), 4, NOW, true),
            Trust::NoPath { .. }
        ));
        assert!(matches!(
            evaluate(&odd, &id(1), &id(8), 4, NOW, true),
            Trust::NoPath { .. }
        ));
    }

    #[test]
    fn a_revoked_statement_breaks_the_chain() {
        // Revocation deletes the statement from the ledger: the next read no longer has it.
        let before = graph(&[st(1, 2, 2, 0), st(2, 3, 2, 0)]);
        assert_eq!(
            path(&evaluate(&before, &id(1), &id(3), 4, NOW, true)).1,
            vec![2, 3]
        );
        let after = graph(&[st(1, 2, 2, 0)]);
        assert_eq!(
            evaluate(&after, &id(1), &id(3), 4, NOW, true),
            Trust::NoPath {
                depth: 4,
                complete: true
            }
        );
    }

    #[test]
    fn reads_go_breadth_first_and_stop_at_the_depth() {
        let edges = [
            st(1, 2, 2, 0),
            st(2, 3, 2, 0),
            st(3, 4, 2, 0),
            st(1, 9, 1, NOW),
        ];
        let mut g = Statements::default();
        assert_eq!(unread(&g, &id(1), &id(4), 3, NOW), vec![id(1)]);
        g.insert(id(1), vec![edges[0].clone(), edges[3].clone()]);
        // 9's statement lapsed: not followed.
        assert_eq!(unread(&g, &id(1), &id(4), 3, NOW), vec![id(2)]);
        g.insert(id(2), vec![edges[1].clone()]);
        assert_eq!(unread(&g, &id(1), &id(4), 3, NOW), vec![id(3)]);
        g.insert(id(3), vec![edges[2].clone()]);
        assert!(unread(&g, &id(1), &id(4), 3, NOW).is_empty());
        assert_eq!(
            path(&evaluate(&g, &id(1), &id(4), 3, NOW, true)).1,
            vec![2, 3, 4]
        );
        // Depth 2: 3 (at distance 2) need not be read.
        let mut g2 = Statements::default();
        g2.insert(id(1), vec![edges[0].clone()]);
        g2.insert(id(2), vec![edges[1].clone()]);
        assert!(unread(&g2, &id(1), &id(4), 2, NOW).is_empty());
        // The target's own statements are never needed.
        let mut g3 = Statements::default();
        g3.insert(id(1), vec![edges[0].clone()]);
        assert!(unread(&g3, &id(1), &id(2), 4, NOW).is_empty());
    }
}
