//! The relaying broadcast of list posts among members: a sans-I/O state machine.
//!
//! Posts, acknowledgements and timers go in ([`Input`]); transmissions and deliveries come
//! out ([`Output`]). The engine around it (`lists::engine`) verifies posts against the ledger
//! before they come in, turns [`Output::Send`] into a durable queued copy (the queue retries
//! it until the member's node answers) and [`Output::Deliver`] into a store in the member's
//! mailbox, and feeds back the SMTP 250 of each copy as [`Input::Acked`].
//!
//! # The protocol
//!
//! A post is known by its [`PostId`], derived from its signed content (so a copy relayed by
//! anyone is the same post, and a changed byte is another post that fails its signature).
//! For a post by author `a` to the member set `M` at height H (sorted, `N = |M|`):
//!
//! 1. **Fan-out.** The author sends one copy to every other member: `N - 1` transmissions.
//! 2. **Ring relay.** The members other than the author form a ring in key order. A member
//!    that receives the post for the first time delivers it to its mailbox and sends one
//!    copy to its successor on the ring. If that copy is not acknowledged within the relay
//!    timeout, it sends one more to the next member, and so on, until one copy is
//!    acknowledged or the ring comes back to itself. Copies already sent stay queued, so a
//!    member that was offline gets its copy when it returns.
//! 3. **Dedupe.** A member delivers a post once and relays it once, however many copies
//!    arrive; later copies are acknowledged (SMTP 250) and dropped.
//!
//! Why everyone online gets it: take any member `r` holding the post. Its copies go round
//! the ring until one reaches an online member `s`, which holds the post then and relays in
//! turn; so from one holder the post walks the whole ring, skipping only members that are
//! offline (whose copies wait in the queue). If the author dies right after its first
//! delivery, that one member is enough.
//!
//! Traffic: with everyone online and answering within the timeout, `N - 1` fan-out copies
//! plus one relay copy per non-author member: `2N - 2` transmissions (for `N >= 3`; a ring
//! of one relays to nobody). Every timeout adds one,
//! and only the predecessor of an unresponsive member times out on it: with `k` members
//! offline, `2N - 2 + k <= 3N - 3`, below `3N`. (Retries of one queued copy are the queue's
//! business and are not new transmissions.)
//!
//! Memory: relay state lives until its escalation ends; the dedupe set keeps the last
//! [`SEEN_CAPACITY`] posts. After a restart (or past that window) a member may relay a post
//! once more; its receivers drop the duplicate through the mailbox's own durable dedupe.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// An identity: its ed25519 public key.
pub type Member = [u8; 32];

/// A post's identity: SHA-256 of its signed content (see `lists::post`).
pub type PostId = [u8; 32];

/// Posts remembered for dedupe.
pub const SEEN_CAPACITY: usize = 100_000;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Our identity `me` authored post `id` for `members` (the member set at the post's
    /// height, `me` among them).
    Authored {
        /// The post.
        id: PostId,
        /// The author, hosted here.
        me: Member,
        /// Every member.
        members: Vec<Member>,
    },
    /// A verified copy of post `id` by `author` arrived for our identity `me`.
    Received {
        /// The post.
        id: PostId,
        /// The recipient, hosted here.
        me: Member,
        /// Its author.
        author: Member,
        /// The member set at the post's height.
        members: Vec<Member>,
    },
    /// Member `to` acknowledged the copy of post `id` that `me` sent it.
    Acked {
        /// The post.
        id: PostId,
        /// The sender, hosted here.
        me: Member,
        /// The member that took the copy.
        to: Member,
    },
    /// The time is `now` (seconds); relay timeouts due by then fire.
    Tick,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Output {
    /// Queue one copy of post `id` from our identity `from` to member `to`.
    Send {
        /// The post.
        id: PostId,
        /// The sending identity, hosted here.
        from: Member,
        /// The member to send it to.
        to: Member,
    },
    /// Deliver post `id` to the mailbox of our identity `to` (once per post and member).
    Deliver {
        /// The post.
        id: PostId,
        /// The recipient, hosted here.
        to: Member,
    },
}

/// One member's relay of one post.
#[derive(Debug, Clone)]
struct Relay {
    /// The other non-author members, in ring order starting after `me`.
    ring: Vec<Member>,
    /// How many of them have been sent a copy.
    sent: usize,
    /// When the next copy goes out unless one is acknowledged first.
    deadline: f64,
}

/// The broadcast state of every identity hosted on one node.
#[derive(Debug, Clone)]
pub struct Broadcast {
    timeout: f64,
    relays: BTreeMap<(PostId, Member), Relay>,
    seen: BTreeSet<(PostId, Member)>,
    order: VecDeque<(PostId, Member)>,
    capacity: usize,
}

impl Broadcast {
    /// A node's broadcast state; a relay copy unacknowledged after `relay_timeout` seconds
    /// makes the next member on the ring get one too.
    pub fn new(relay_timeout: f64) -> Self {
        Self::with_capacity(relay_timeout, SEEN_CAPACITY)
    }

    /// Like [`Broadcast::new`], remembering `capacity` posts for dedupe.
    pub fn with_capacity(relay_timeout: f64, capacity: usize) -> Self {
        Self {
            timeout: relay_timeout,
            relays: BTreeMap::new(),
            seen: BTreeSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Handles one input at time `now` (seconds, any monotonic origin).
    pub fn handle(&mut self, input: Input, now: f64) -> Vec<Output> {
        match input {
            Input::Authored { id, me, members } => {
                self.remember(id, me);
                let mut out: Vec<Output> = sorted(members)
                    .into_iter()
                    .filter(|m| *m != me)
                    .map(|to| Output::Send { id, from: me, to })
                    .collect();
                out.sort();
                out
            }
            Input::Received {
                id,
                me,
                author,
                members,
            } => {
                if !self.remember(id, me) {
                    return Vec::new();
                }
                let mut out = vec![Output::Deliver { id, to: me }];
                let ring = ring_after(&sorted(members), author, me);
                if let Some(&first) = ring.first() {
                    out.push(Output::Send {
                        id,
                        from: me,
                        to: first,
                    });
                    self.relays.insert(
                        (id, me),
                        Relay {
                            ring,
                            sent: 1,
                            deadline: now + self.timeout,
                        },
                    );
                }
                out
            }
            Input::Acked { id, me, to } => {
                if let Some(r) = self.relays.get(&(id, me))
                    && r.ring[..r.sent].contains(&to)
                {
                    self.relays.remove(&(id, me));
                }
                Vec::new()
            }
            Input::Tick => {
                let mut out = Vec::new();
                let mut finished = Vec::new();
                for (&(id, me), r) in self.relays.iter_mut() {
                    if r.deadline > now {
                        continue;
                    }
                    if r.sent == r.ring.len() {
                        finished.push((id, me));
                        continue;
                    }
                    out.push(Output::Send {
                        id,
                        from: me,
                        to: r.ring[r.sent],
                    });
                    r.sent += 1;
                    r.deadline = now + self.timeout;
                }
                for k in finished {
                    self.relays.remove(&k);
                }
                out
            }
        }
    }

    /// When the next relay timeout fires, if any relay waits for an acknowledgement.
    pub fn next_deadline(&self) -> Option<f64> {
        self.relays.values().map(|r| r.deadline).reduce(f64::min)
    }

    /// How many relays wait for an acknowledgement.
    pub fn pending_relays(&self) -> usize {
        self.relays.len()
    }

    /// Records that `me` has seen `id`; whether it is the first time.
    fn remember(&mut self, id: PostId, me: Member) -> bool {
        if !self.seen.insert((id, me)) {
            return false;
        }
        self.order.push_back((id, me));
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

fn sorted(mut members: Vec<Member>) -> Vec<Member> {
    members.sort();
    members.dedup();
    members
}

/// The ring of the members other than `author`, starting after `me` and ending before it.
fn ring_after(members: &[Member], author: Member, me: Member) -> Vec<Member> {
    let ring: Vec<Member> = members.iter().copied().filter(|m| *m != author).collect();
    let Some(pos) = ring.iter().position(|m| *m == me) else {
        // Not on the ring (not a member at the post's height): relay to nobody.
        return Vec::new();
    };
    ring[pos + 1..]
        .iter()
        .chain(&ring[..pos])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BinaryHeap;

    fn member(i: usize) -> Member {
        let mut m = [0u8; 32];
        m[0] = i as u8;
        m
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n).map(member).collect()
    }

    #[test]
    fn the_ring_skips_the_author_and_wraps() {
        let m = members(5);
        assert_eq!(
            ring_after(&m, member(2), member(3)),
            vec![member(4), member(0), member(1)]
        );
        assert_eq!(
            ring_after(&m, member(0), member(4)),
            vec![member(1), member(2), member(3)]
        );
        assert!(ring_after(&m, member(0), member(9)).is_empty());
        assert!(ring_after(&members(2), member(0), member(1)).is_empty());
    }

    #[test]
    fn a_receiver_delivers_once_relays_once_and_escalates_on_timeout() {
        let m = members(4);
        let mut b = Broadcast::new(10.0);
        let post = [7; 32];
        let got = b.handle(
            Input::Received {
                id: post,
                me: member(1),
                author: member(0),
                members: m.clone(),
            },
            0.0,
        );
        assert_eq!(
            got,
            vec![
                Output::Deliver {
                    id: post,
                    to: member(1)
                },
                Output::Send {
                    id: post,
                    from: member(1),
                    to: member(2)
                }
            ]
        );
        let again = Input::Received {
            id: post,
            me: member(1),
            author: member(0),
            members: m.clone(),
        };
        assert!(b.handle(again, 1.0).is_empty(), "a duplicate does nothing");
        assert!(b.handle(Input::Tick, 9.9).is_empty());
        assert_eq!(b.next_deadline(), Some(10.0));
        assert_eq!(
            b.handle(Input::Tick, 10.0),
            vec![Output::Send {
                id: post,
                from: member(1),
                to: member(3)
            }]
        );
        // An acknowledgement from a member never sent to changes nothing.
        b.handle(
            Input::Acked {
                id: post,
                me: member(1),
                to: member(0),
            },
            11.0,
        );
        assert_eq!(b.pending_relays(), 1);
        b.handle(
            Input::Acked {
                id: post,
                me: member(1),
                to: member(3),
            },
            12.0,
        );
        assert_eq!(b.pending_relays(), 0);
        assert!(b.handle(Input::Tick, 100.0).is_empty());
    }

    #[test]
    fn the_author_fans_out_to_everyone_else() {
        let mut b = Broadcast::new(10.0);
        let out = b.handle(
            Input::Authored {
                id: [1; 32],
                me: member(2),
                members: members(4),
            },
            0.0,
        );
        let to: Vec<Member> = out
            .iter()
            .map(|o| match o {
                Output::Send { to, .. } => *to,
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(to, vec![member(0), member(1), member(3)]);
        // Its own post coming back (relayed) is not delivered again.
        assert!(
            b.handle(
                Input::Received {
                    id: [1; 32],
                    me: member(2),
                    author: member(2),
                    members: members(4)
                },
                1.0
            )
            .is_empty()
        );
    }

    #[test]
    fn dedupe_memory_is_bounded() {
        let mut b = Broadcast::with_capacity(1.0, 2);
        for i in 0..3u8 {
            b.remember([i; 32], member(1));
        }
        assert!(b.remember([0; 32], member(1)), "the oldest was forgotten");
        assert!(!b.remember([2; 32], member(1)));
    }

    // ---------------------------------------------------------------------------------
    // A deterministic network: one core per member node, a durable queue per node that
    // retries each copy until it is taken, seeded loss, duplication and reordering, nodes
    // offline for a while, an author that dies.
    // ---------------------------------------------------------------------------------

    /// xorshift64*: deterministic, seedable.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        /// An attempt of queued copy `c`.
        Attempt(usize),
        /// The acknowledgement of copy `c` reaches its sender.
        Ack(usize),
        /// Node `i`'s timer.
        Tick(usize),
        /// Node `i` comes back online.
        Up(usize),
    }

    #[derive(Clone, Copy)]
    struct Faults {
        loss: f64,
        /// The 250 is lost after the receiver stored it: the sender retries (a duplicate).
        lost_ack: f64,
        max_delay: f64,
    }

    struct Sim {
        n: usize,
        cores: Vec<Broadcast>,
        online: Vec<bool>,
        /// Dead nodes never come back.
        dead: Vec<bool>,
        /// (from, to, acked) of every copy ever queued.
        copies: Vec<(usize, usize, bool)>,
        deliveries: Vec<usize>,
        events: BinaryHeap<std::cmp::Reverse<(u64, u64, Ev)>>,
        seq: u64,
        rng: Rng,
        faults: Faults,
        /// Kill the author right after its first successful delivery.
        kill_author_after_first: bool,
        author: usize,
        attempts: usize,
    }

    /// Virtual time in microseconds, rounded up so that an event scheduled for a deadline
    /// never runs before it.
    fn t(x: f64) -> u64 {
        (x * 1e6).ceil() as u64 + 1
    }

    impl Sim {
        fn new(n: usize, seed: u64, faults: Faults) -> Sim {
            Sim {
                n,
                cores: (0..n).map(|_| Broadcast::new(5.0)).collect(),
                online: vec![true; n],
                dead: vec![false; n],
                copies: Vec::new(),
                deliveries: vec![0; n],
                events: BinaryHeap::new(),
                seq: 0,
                rng: Rng(seed | 1),
                faults,
                kill_author_after_first: false,
                author: 0,
                attempts: 0,
            }
        }

        fn at(&mut self, when: f64, ev: Ev) {
            self.seq += 1;
            self.events.push(std::cmp::Reverse((t(when), self.seq, ev)));
        }

        fn apply(&mut self, node: usize, out: Vec<Output>, now: f64) {
            for o in out {
                match o {
                    Output::Send { from, to, .. } => {
                        assert_eq!(from, member(node));
                        let c = self.copies.len();
                        self.copies.push((node, to[0] as usize, false));
                        let d = self.rng.unit() * self.faults.max_delay;
                        self.at(now + d, Ev::Attempt(c));
                    }
                    Output::Deliver { to, .. } => {
                        assert_eq!(to, member(node));
                        self.deliveries[node] += 1;
                    }
                }
            }
            if let Some(d) = self.cores[node].next_deadline() {
                self.at(d.max(now), Ev::Tick(node));
            }
        }

        fn post(&mut self, author: usize) {
            self.author = author;
            let out = self.cores[author].handle(
                Input::Authored {
                    id: [9; 32],
                    me: member(author),
                    members: members(self.n),
                },
                0.0,
            );
            self.apply(author, out, 0.0);
        }

        fn run(&mut self, until: f64) {
            while let Some(&std::cmp::Reverse((when, _, ev))) = self.events.peek() {
                let now = when as f64 / 1e6;
                if now > until {
                    break;
                }
                self.events.pop();
                match ev {
                    Ev::Attempt(c) => {
                        let (from, to, _) = self.copies[c];
                        if self.dead[from] {
                            continue; // the queue died with its node
                        }
                        self.attempts += 1;
                        let retry = now + 1.0 + self.rng.unit();
                        if !self.online[to] || self.rng.unit() < self.faults.loss {
                            self.at(retry, Ev::Attempt(c));
                            continue;
                        }
                        let out = self.cores[to].handle(
                            Input::Received {
                                id: [9; 32],
                                me: member(to),
                                author: member(self.author),
                                members: members(self.n),
                            },
                            now,
                        );
                        self.apply(to, out, now);
                        if self.rng.unit() < self.faults.lost_ack {
                            self.at(retry, Ev::Attempt(c));
                        } else {
                            let d = self.rng.unit() * self.faults.max_delay;
                            self.at(now + d, Ev::Ack(c));
                        }
                    }
                    Ev::Ack(c) => {
                        let (from, to, _) = self.copies[c];
                        if self.dead[from] {
                            continue;
                        }
                        self.copies[c].2 = true;
                        if from == self.author && self.kill_author_after_first {
                            self.dead[from] = true;
                            self.online[from] = false;
                            continue;
                        }
                        let out = self.cores[from].handle(
                            Input::Acked {
                                id: [9; 32],
                                me: member(from),
                                to: member(to),
                            },
                            now,
                        );
                        self.apply(from, out, now);
                    }
                    Ev::Tick(i) => {
                        if self.dead[i] {
                            continue;
                        }
                        let out = self.cores[i].handle(Input::Tick, now);
                        self.apply(i, out, now);
                    }
                    Ev::Up(i) => self.online[i] = true,
                }
            }
        }

        fn transmissions(&self) -> usize {
            self.copies.len()
        }
    }

    const CLEAN: Faults = Faults {
        loss: 0.0,
        lost_ack: 0.0,
        max_delay: 0.5,
    };

    #[test]
    fn without_faults_everyone_gets_it_once_in_2n_minus_2() {
        for n in [2, 3, 8, 50] {
            let mut s = Sim::new(n, 1, CLEAN);
            s.post(n / 2);
            s.run(1e6);
            for i in 0..n {
                let want = usize::from(i != n / 2);
                assert_eq!(s.deliveries[i], want, "n={n} member {i}");
            }
            // A ring of one relays to nobody.
            let want = if n == 2 { 1 } else { 2 * n - 2 };
            assert_eq!(s.transmissions(), want, "n={n}");
        }
    }

    #[test]
    fn loss_duplication_and_reordering_still_deliver_exactly_once_below_3n() {
        let faults = Faults {
            loss: 0.3,
            lost_ack: 0.2,
            max_delay: 3.0,
        };
        let mut worst: f64 = 0.0;
        for seed in 1..=200u64 {
            let n = 2 + (seed as usize % 30);
            let mut s = Sim::new(n, seed, faults);
            s.post(seed as usize % n);
            s.run(1e6);
            for i in 0..n {
                let want = usize::from(i != s.author);
                assert_eq!(s.deliveries[i], want, "seed {seed} n={n} member {i}");
            }
            assert!(
                s.transmissions() < 3 * n,
                "seed {seed}: {} for n={n}",
                s.transmissions()
            );
            worst = worst.max(s.transmissions() as f64 / n as f64);
        }
        eprintln!("worst transmissions per member under loss: {worst:.2}");
    }

    #[test]
    fn the_author_dying_after_its_first_delivery_loses_nobody() {
        for seed in 1..=100u64 {
            let n = 3 + (seed as usize % 20);
            let mut s = Sim::new(n, seed, CLEAN);
            s.kill_author_after_first = true;
            // The author gets only its first copy through, then dies with its queue.
            s.post(0);
            s.run(1e6);
            assert!(s.dead[0], "seed {seed}");
            for i in 1..n {
                assert_eq!(s.deliveries[i], 1, "seed {seed} n={n} member {i}");
            }
            assert!(s.transmissions() < 3 * n, "seed {seed}");
        }
    }

    #[test]
    fn members_offline_during_the_post_get_it_when_they_return() {
        for seed in 1..=100u64 {
            let n = 4 + (seed as usize % 20);
            let mut s = Sim::new(n, seed, CLEAN);
            s.kill_author_after_first = seed.is_multiple_of(2);
            // A third of the members (never the author) are down for a minute.
            let down: Vec<usize> = (1..n)
                .filter(|i| (i + seed as usize).is_multiple_of(3))
                .collect();
            for &i in &down {
                s.online[i] = false;
                s.at(60.0, Ev::Up(i));
            }
            s.post(0);
            s.run(30.0);
            for i in 1..n {
                let want = usize::from(!down.contains(&i));
                assert_eq!(
                    s.deliveries[i], want,
                    "seed {seed}: online members have it by 30 s"
                );
            }
            s.run(1e6);
            for i in 1..n {
                assert_eq!(s.deliveries[i], 1, "seed {seed} n={n} member {i}");
            }
            assert!(
                s.transmissions() < 3 * n,
                "seed {seed}: {} for n={n}, {} down",
                s.transmissions(),
                down.len()
            );
        }
    }
}
