//! Each action's happy path and its rejections, on the pure state machine over an in-memory map.

use std::collections::BTreeMap;

use ed25519_consensus::SigningKey;
use onionpost_proto::keys;
use onionpost_proto::tx::sign;
use onionpost_proto::v1::{self as pb, key_history_entry::Kind, tx_body::Action};
use prost::Message;

use super::*;

const CHAIN: &str = "test-chain";

/// A ledger in memory: state map, height, per-key nonces.
struct Ledger {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    height: u64,
    time: u64,
    nonces: BTreeMap<[u8; 32], u64>,
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from([seed; 32])
}

fn pk(k: &SigningKey) -> Vec<u8> {
    k.verification_key().to_bytes().to_vec()
}

fn pk32(k: &SigningKey) -> [u8; 32] {
    k.verification_key().to_bytes()
}

impl Ledger {
    /// Genesis with `admin` governing list "govern" and one validator.
    fn new(admin: &SigningKey) -> Self {
        Self::with_admins(&[admin])
    }

    /// Genesis with `admins` governing list "govern" and one validator.
    fn with_admins(admins: &[&SigningKey]) -> Self {
        let genesis = crate::genesis::AppGenesis {
            governing_list: "govern".into(),
            admins: admins
                .iter()
                .map(|a| crate::genesis::GenesisIdentity {
                    public_key: hex::encode(pk(a)),
                    display_name: "admin".into(),
                })
                .collect(),
            identities: vec![],
        };
        let writes = genesis
            .writes(
                CHAIN,
                vec![pb::ValidatorUpdate {
                    pub_key: pk(&key(200)),
                    power: 10,
                }],
            )
            .unwrap();
        let mut l = Ledger {
            state: BTreeMap::new(),
            height: 0,
            time: 1_000,
            nonces: BTreeMap::new(),
        };
        l.write(writes);
        l
    }

    fn write(&mut self, writes: WriteSet) {
        for (k, v) in writes {
            match v {
                Some(v) => self.state.insert(k, v),
                None => self.state.remove(&k),
            };
        }
    }

    /// Signs with the signer's next nonce (tracked here).
    fn tx(&mut self, signer: &SigningKey, action: Action) -> Vec<u8> {
        let n = self.nonces.entry(pk32(signer)).or_insert(0);
        let tx = sign(signer, CHAIN, *n, action);
        *n += 1;
        tx.encode_to_vec()
    }

    fn block(&mut self, txs: Vec<Vec<u8>>) -> BlockOutcome {
        self.height += 1;
        self.time += 10;
        let ctx = BlockContext {
            chain_id: CHAIN.into(),
            height: self.height,
            time: self.time,
        };
        let out = execute_block(&self.state, &ctx, &txs).unwrap();
        self.write(out.writes.clone());
        out
    }

    /// Runs one transaction in its own block; returns its result.
    fn run(&mut self, signer: &SigningKey, action: Action) -> Result<(), TxError> {
        let tx = self.tx(signer, action);
        self.block(vec![tx]).tx_results.remove(0).result
    }

    fn get<M: Message + Default>(&self, key: &[u8]) -> Option<M> {
        self.state
            .get(key)
            .map(|b| M::decode(b.as_slice()).unwrap())
    }

    fn register(&mut self, k: &SigningKey, name: &str) {
        self.run(
            k,
            Action::RegisterIdentity(pb::RegisterIdentity {
                display_name: name.into(),
            }),
        )
        .unwrap();
    }
}

fn e2e(bytes: &[u8]) -> pb::E2eKey {
    pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key: bytes.to_vec(),
    }
}

#[test]
fn register_identity_then_duplicate_and_unknown_signer() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let alice = key(2);
    l.register(&alice, "alice");
    let rec: pb::IdentityRecord = l.get(&keys::identity(&pk32(&alice))).unwrap();
    assert_eq!(rec.display_name, "alice");
    assert_eq!(rec.next_nonce, 1);
    assert_eq!(rec.registered_height, 1);

    let again = l.run(&alice, Action::RegisterIdentity(Default::default()));
    assert!(
        matches!(again, Err(TxError::AlreadyRegistered(_))),
        "{again:?}"
    );

    let stranger = key(3);
    let r = l.run(
        &stranger,
        Action::SignTrust(pb::SignTrust {
            target: pk(&alice),
            level: 1,
            expires_at: 0,
        }),
    );
    assert_eq!(r.unwrap_err().code(), 7, "unknown signer");

    let long = l.run(
        &key(4),
        Action::RegisterIdentity(pb::RegisterIdentity {
            display_name: "x".repeat(65),
        }),
    );
    assert!(matches!(long, Err(TxError::Invalid(_))));
}

#[test]
fn bad_signature_wrong_chain_replay_gap_and_oversize_are_rejected() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let alice = key(2);
    l.register(&alice, "alice");

    // Bad signature: flip a signature bit.
    let mut tx = pb::SignedTx::decode(
        l.tx(&alice, Action::SetMailboxHosts(Default::default()))
            .as_slice(),
    )
    .unwrap();
    tx.signature[0] ^= 1;
    let out = l.block(vec![tx.encode_to_vec()]);
    assert!(matches!(
        out.tx_results[0].result,
        Err(TxError::BadSignature { .. })
    ));
    // A bad signature spends nothing: the same nonce still works.
    l.nonces.insert(pk32(&alice), 1);

    // Wrong chain.
    let other = sign(
        &alice,
        "other-chain",
        1,
        Action::SetMailboxHosts(Default::default()),
    );
    let out = l.block(vec![other.encode_to_vec()]);
    assert_eq!(out.tx_results[0].result.as_ref().unwrap_err().code(), 3);

    // Replay: the same signed bytes twice, in two blocks and within one block.
    let tx = l.tx(&alice, Action::SetMailboxHosts(Default::default()));
    assert!(l.block(vec![tx.clone()]).tx_results[0].result.is_ok());
    let out = l.block(vec![tx.clone()]);
    assert!(matches!(
        out.tx_results[0].result,
        Err(TxError::NonceReplayed {
            expected: 2,
            got: 1,
            ..
        })
    ));
    let tx2 = l.tx(&alice, Action::SetMailboxHosts(Default::default()));
    let out = l.block(vec![tx2.clone(), tx2]);
    assert!(out.tx_results[0].result.is_ok());
    assert_eq!(out.tx_results[1].result.as_ref().unwrap_err().code(), 5);

    // Gap.
    let ahead = sign(
        &alice,
        CHAIN,
        9,
        Action::SetMailboxHosts(Default::default()),
    );
    let out = l.block(vec![ahead.encode_to_vec()]);
    assert!(matches!(
        out.tx_results[0].result,
        Err(TxError::NonceGap {
            expected: 3,
            got: 9,
            ..
        })
    ));

    // Oversized.
    let big = sign(
        &alice,
        CHAIN,
        3,
        Action::BindKey(pb::BindKey {
            key: Some(e2e(&vec![7; MAX_TX_BYTES])),
        }),
    );
    let out = l.block(vec![big.encode_to_vec()]);
    assert!(matches!(
        out.tx_results[0].result,
        Err(TxError::TooLarge { .. })
    ));

    // Garbage.
    let out = l.block(vec![b"not a transaction".to_vec()]);
    assert_eq!(out.tx_results[0].result.as_ref().unwrap_err().code(), 2);
}

/// A block's transactions are decoded without decompressing the signer's key (the batch
/// verification does it): a block still rejects every malformed envelope with the very error
/// CheckTx's full decoding gives, and the valid transactions beside them still apply.
#[test]
fn a_block_rejects_invalid_signer_keys_as_checktx_does() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let alice = key(2);
    l.register(&alice, "alice");
    // A y coordinate with no point on the curve: not a public key.
    let bad_key = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| ed25519_consensus::VerificationKey::try_from(*k).is_err())
        .expect("some byte pattern is not a point");
    let with = |chain: &str, signer: &[u8], signature_len: usize| {
        let mut tx = sign(
            &alice,
            chain,
            1,
            Action::SetMailboxHosts(Default::default()),
        );
        tx.signer = signer.to_vec();
        tx.signature.truncate(signature_len);
        tx.encode_to_vec()
    };
    let malformed = vec![
        with(CHAIN, &bad_key, 64),
        with("other-chain", &bad_key, 64),
        with(CHAIN, &bad_key, 63),
        with("other-chain", &pk(&alice), 63),
    ];
    let good = l.tx(&alice, Action::SetMailboxHosts(Default::default()));
    let mut txs = malformed.clone();
    txs.insert(2, good);
    let out = l.block(txs);
    assert!(out.tx_results[2].result.is_ok(), "{:?}", out.tx_results[2]);
    let results: Vec<_> = [0, 1, 3, 4]
        .iter()
        .map(|&i| &out.tx_results[i].result)
        .collect();
    for (raw, got) in malformed.iter().zip(results) {
        let want = decode_checked(raw, CHAIN).unwrap_err();
        let got = got.as_ref().unwrap_err();
        assert_eq!(
            (got.code(), got.to_string()),
            (want.code(), want.to_string())
        );
    }
    assert_eq!(out.tx_results[0].result.as_ref().unwrap_err().code(), 2);
    assert_eq!(out.tx_results[1].result.as_ref().unwrap_err().code(), 2);
}

#[test]
fn key_history_records_bind_rotate_revoke_in_order() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let a = key(2);
    l.register(&a, "a");
    let me = pk32(&a);

    let r = l.run(
        &a,
        Action::RotateKey(pb::RotateKey {
            new_key: Some(e2e(b"k1")),
        }),
    );
    assert!(matches!(r, Err(TxError::Conflict(_))), "rotate before bind");
    let r = l.run(
        &a,
        Action::BindKey(pb::BindKey {
            key: Some(pb::E2eKey {
                algorithm: "rsa".into(),
                public_key: b"x".to_vec(),
            }),
        }),
    );
    assert!(matches!(r, Err(TxError::Invalid(_))), "bad algorithm");

    l.run(
        &a,
        Action::BindKey(pb::BindKey {
            key: Some(e2e(b"k1")),
        }),
    )
    .unwrap();
    let r = l.run(
        &a,
        Action::BindKey(pb::BindKey {
            key: Some(e2e(b"k2")),
        }),
    );
    assert!(matches!(r, Err(TxError::Conflict(_))), "second bind");
    let r = l.run(
        &a,
        Action::RotateKey(pb::RotateKey {
            new_key: Some(e2e(b"k1")),
        }),
    );
    assert!(
        matches!(r, Err(TxError::Invalid(_))),
        "rotate to the same key"
    );
    l.run(
        &a,
        Action::RotateKey(pb::RotateKey {
            new_key: Some(e2e(b"k2")),
        }),
    )
    .unwrap();
    let r = l.run(
        &a,
        Action::RevokeKey(pb::RevokeKey {
            key_id: e2e_key_id(&e2e(b"k1")).to_vec(),
            reason: String::new(),
        }),
    );
    assert!(
        matches!(r, Err(TxError::Invalid(_))),
        "revoking a key that is not active"
    );
    l.run(
        &a,
        Action::RevokeKey(pb::RevokeKey {
            key_id: e2e_key_id(&e2e(b"k2")).to_vec(),
            reason: "lost laptop".into(),
        }),
    )
    .unwrap();

    let rec: pb::IdentityRecord = l.get(&keys::identity(&me)).unwrap();
    assert_eq!(rec.key_history_len, 3);
    assert!(rec.active_key.is_none());
    let entries: Vec<pb::KeyHistoryEntry> = (0..3)
        .map(|i| l.get(&keys::key_history(&me, i)).unwrap())
        .collect();
    let kinds: Vec<i32> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![Kind::Bind as i32, Kind::Rotate as i32, Kind::Revoke as i32]
    );
    assert_eq!(entries[0].key.as_ref().unwrap().public_key, b"k1");
    assert_eq!(entries[1].key.as_ref().unwrap().public_key, b"k2");
    assert_eq!(entries[2].reason, "lost laptop");
    assert!(entries.windows(2).all(|w| w[0].height < w[1].height));
    // Every rejected action spent its nonce: 1 register + 8 actions.
    assert_eq!(rec.next_nonce, 9);
}

#[test]
fn mailbox_hosts_must_be_registered_distinct_and_few() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let a = key(2);
    let b = key(3);
    l.register(&a, "a");
    l.register(&b, "b");
    let r = l.run(
        &a,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: vec![pk(&key(9))],
        }),
    );
    assert!(matches!(r, Err(TxError::UnknownIdentity(_))));
    let r = l.run(
        &a,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: vec![pk(&b), pk(&b)],
        }),
    );
    assert!(matches!(r, Err(TxError::Invalid(_))));
    let r = l.run(
        &a,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: vec![pk(&a)],
        }),
    );
    assert!(matches!(r, Err(TxError::Invalid(_))));
    let r = l.run(
        &a,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: vec![pk(&b); 9],
        }),
    );
    assert!(matches!(r, Err(TxError::Limit(_))));
    l.run(
        &a,
        Action::SetMailboxHosts(pb::SetMailboxHosts {
            hosts: vec![pk(&b), pk(&admin)],
        }),
    )
    .unwrap();
    let rec: pb::IdentityRecord = l.get(&keys::identity(&pk32(&a))).unwrap();
    assert_eq!(rec.mailbox_hosts, vec![pk(&b), pk(&admin)]);
}

#[test]
fn trust_sign_revoke_and_indexes() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let a = key(2);
    let b = key(3);
    l.register(&a, "a");
    l.register(&b, "b");
    let trust = |target: &SigningKey, level, expires_at| {
        Action::SignTrust(pb::SignTrust {
            target: pk(target),
            level,
            expires_at,
        })
    };
    assert!(
        matches!(l.run(&a, trust(&a, 1, 0)), Err(TxError::Invalid(_))),
        "self"
    );
    assert!(
        matches!(l.run(&a, trust(&b, 3, 0)), Err(TxError::Invalid(_))),
        "level"
    );
    assert!(
        matches!(l.run(&a, trust(&b, 1, 5)), Err(TxError::Invalid(_))),
        "already expired"
    );
    assert!(matches!(
        l.run(&a, trust(&key(9), 1, 0)),
        Err(TxError::UnknownIdentity(_))
    ));
    l.run(&a, trust(&b, 2, 0)).unwrap();
    l.run(&admin, trust(&b, 1, 99_999)).unwrap();

    // The statement is held whole by both indexes, each sorted by the other identity.
    let outgoing: pb::TrustIndex = l.get(&keys::trust_outgoing(&pk32(&a))).unwrap();
    assert_eq!(
        outgoing.version,
        onionpost_proto::trust::TRUST_INDEX_VERSION
    );
    assert_eq!(outgoing.entries.len(), 1);
    let st = &outgoing.entries[0];
    assert_eq!(
        (st.other.as_slice(), st.level, st.expires_at),
        (pk(&b).as_slice(), 2, 0)
    );
    let incoming: pb::TrustIndex = l.get(&keys::trust_incoming(&pk32(&b))).unwrap();
    let mut want: Vec<(Vec<u8>, u32, u64)> = vec![(pk(&a), 2, 0), (pk(&admin), 1, 99_999)];
    want.sort();
    let got: Vec<_> = incoming
        .entries
        .iter()
        .map(|e| (e.other.clone(), e.level, e.expires_at))
        .collect();
    assert_eq!(got, want);
    // A new statement about the same target replaces the old one in both indexes.
    l.run(&a, trust(&b, 1, 0)).unwrap();
    let outgoing: pb::TrustIndex = l.get(&keys::trust_outgoing(&pk32(&a))).unwrap();
    assert_eq!(outgoing.entries.len(), 1);
    assert_eq!(outgoing.entries[0].level, 1);
    let incoming: pb::TrustIndex = l.get(&keys::trust_incoming(&pk32(&b))).unwrap();
    assert_eq!(incoming.entries.len(), 2);
    assert!(
        incoming
            .entries
            .iter()
            .any(|e| e.other == pk(&a) && e.level == 1)
    );

    let revoke = Action::RevokeTrust(pb::RevokeTrust { target: pk(&b) });
    l.run(&a, revoke.clone()).unwrap();
    assert!(matches!(l.run(&a, revoke), Err(TxError::Conflict(_))));
    assert!(
        !l.state.contains_key(&keys::trust_outgoing(&pk32(&a))),
        "empty index is deleted"
    );
    let incoming: pb::TrustIndex = l.get(&keys::trust_incoming(&pk32(&b))).unwrap();
    let others: Vec<_> = incoming.entries.iter().map(|e| e.other.clone()).collect();
    assert_eq!(others, vec![pk(&admin)]);
}

#[test]
fn an_identity_signs_at_most_max_trust_outgoing_statements() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let signer = key(2);
    l.register(&signer, "s");
    // MAX_TRUST_OUTGOING + 1 targets, registered in one block.
    let targets: Vec<SigningKey> = (0..=MAX_TRUST_OUTGOING as u64)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&i.to_be_bytes());
            SigningKey::from(seed)
        })
        .collect();
    let txs = targets
        .iter()
        .map(|t| {
            l.tx(
                t,
                Action::RegisterIdentity(pb::RegisterIdentity {
                    display_name: "t".into(),
                }),
            )
        })
        .collect();
    assert!(l.block(txs).tx_results.iter().all(|r| r.result.is_ok()));
    let sign = |t: &SigningKey| {
        Action::SignTrust(pb::SignTrust {
            target: pk(t),
            level: 1,
            expires_at: 0,
        })
    };
    let txs = targets[..MAX_TRUST_OUTGOING]
        .iter()
        .map(|t| l.tx(&signer, sign(t)))
        .collect();
    assert!(l.block(txs).tx_results.iter().all(|r| r.result.is_ok()));
    let out: pb::TrustIndex = l.get(&keys::trust_outgoing(&pk32(&signer))).unwrap();
    assert_eq!(out.entries.len(), MAX_TRUST_OUTGOING);
    // One more is refused with code 14 and says why; replacing one still works.
    let err = l
        .run(&signer, sign(&targets[MAX_TRUST_OUTGOING]))
        .unwrap_err();
    assert_eq!(err.code(), 14);
    assert!(
        err.to_string()
            .contains("at most 1000 trust statements signed by one identity"),
        "{err}"
    );
    l.run(&signer, sign(&targets[0])).unwrap();
    let target: pb::TrustIndex = l
        .get(&keys::trust_incoming(&pk32(&targets[MAX_TRUST_OUTGOING])))
        .unwrap_or_default();
    assert!(
        target.entries.is_empty(),
        "a refused statement is in no index"
    );
}

#[test]
fn lists_members_admins_and_policy() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let (a, b, c) = (key(2), key(3), key(4));
    for (k, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        l.register(k, n);
    }
    let create = |name: &str| {
        Action::CreateList(pb::CreateList {
            name: name.into(),
            policy: None,
        })
    };
    assert!(matches!(
        l.run(&a, create("Bad Name")),
        Err(TxError::Invalid(_))
    ));
    l.run(&a, create("friends")).unwrap();
    assert!(matches!(
        l.run(&b, create("friends")),
        Err(TxError::Conflict(_))
    ));

    let add = |m: &SigningKey| {
        Action::AddMember(pb::AddMember {
            list: "friends".into(),
            member: pk(m),
        })
    };
    assert!(
        matches!(l.run(&b, add(&c)), Err(TxError::Unauthorized(_))),
        "non-admin adds"
    );
    assert!(matches!(
        l.run(
            &a,
            Action::AddMember(pb::AddMember {
                list: "nope".into(),
                member: pk(&b)
            })
        ),
        Err(TxError::UnknownList(_))
    ));
    assert!(matches!(
        l.run(&a, add(&key(9))),
        Err(TxError::UnknownIdentity(_))
    ));
    l.run(&a, add(&b)).unwrap();
    assert!(
        matches!(l.run(&a, add(&b)), Err(TxError::Conflict(_))),
        "twice"
    );
    l.run(&a, add(&c)).unwrap();

    let list: pb::ListRecord = l.get(&keys::list("friends")).unwrap();
    assert_eq!(list.admins, vec![pk(&a)]);
    let members: pb::IdentitySet = l.get(&keys::list_members("friends")).unwrap();
    assert_eq!(members.keys.len(), 3);
    assert!(members.keys.windows(2).all(|w| w[0] < w[1]), "sorted");
    let m: pb::MembershipRecord = l.get(&keys::membership("friends", &pk32(&b))).unwrap();
    assert_eq!(m.member, pk(&b));

    // Admins.
    let add_admin = |x: &SigningKey| {
        Action::AddAdmin(pb::AddAdmin {
            list: "friends".into(),
            admin: pk(x),
        })
    };
    assert!(matches!(
        l.run(&b, add_admin(&b)),
        Err(TxError::Unauthorized(_))
    ));
    assert!(
        matches!(l.run(&a, add_admin(&admin)), Err(TxError::Conflict(_))),
        "not a member"
    );
    l.run(&a, add_admin(&b)).unwrap();
    let remove_a = Action::RemoveAdmin(pb::RemoveAdmin {
        list: "friends".into(),
        admin: pk(&a),
    });
    assert!(
        matches!(l.run(&b, remove_a.clone()), Err(TxError::NeedsQuorum(_))),
        "one of two admins removes the other"
    );
    l.run(&a, remove_a.clone()).unwrap();
    let remove_b = Action::RemoveAdmin(pb::RemoveAdmin {
        list: "friends".into(),
        admin: pk(&b),
    });
    assert!(
        matches!(l.run(&b, remove_b), Err(TxError::Conflict(_))),
        "last admin"
    );
    assert!(
        matches!(l.run(&a, remove_a), Err(TxError::Conflict(_))),
        "a is no admin now"
    );

    // Members leave or are removed; admins must step down first.
    let remove = |m: &SigningKey| {
        Action::RemoveMember(pb::RemoveMember {
            list: "friends".into(),
            member: pk(m),
        })
    };
    assert!(matches!(
        l.run(&a, remove(&c)),
        Err(TxError::Unauthorized(_))
    ));
    assert!(
        matches!(l.run(&b, remove(&b)), Err(TxError::Conflict(_))),
        "admin leaving"
    );
    l.run(&c, remove(&c)).unwrap();
    l.run(&b, remove(&a)).unwrap();
    assert!(
        matches!(l.run(&b, remove(&a)), Err(TxError::Conflict(_))),
        "not a member"
    );
    let members: pb::IdentitySet = l.get(&keys::list_members("friends")).unwrap();
    assert_eq!(members.keys, vec![pk(&b)], "c left, a was removed");
    assert!(
        !l.state
            .contains_key(&keys::membership("friends", &pk32(&a)))
    );

    // Policy.
    let policy = pb::ListPolicy {
        posting: pb::list_policy::Posting::Admins as i32,
        max_message_bytes: 1 << 20,
        admin_approvals: 0,
    };
    let set = Action::SetListPolicy(pb::SetListPolicy {
        list: "friends".into(),
        policy: Some(policy),
    });
    assert!(matches!(
        l.run(&c, set.clone()),
        Err(TxError::Unauthorized(_))
    ));
    l.run(&b, set).unwrap();
    let list: pb::ListRecord = l.get(&keys::list("friends")).unwrap();
    assert_eq!(list.policy, Some(policy));
}

#[test]
fn validator_updates_need_a_two_thirds_admin_quorum() {
    let (admin, a, b) = (key(1), key(2), key(3));
    // Three governing admins: a change needs 3 (more than two thirds of 3).
    let mut l = Ledger::with_admins(&[&admin, &a, &b]);
    let newval = pk(&key(201));
    let propose = Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
        updates: vec![pb::ValidatorUpdate {
            pub_key: newval.clone(),
            power: 5,
        }],
    });
    let outsider = key(5);
    l.register(&outsider, "o");
    assert!(matches!(
        l.run(&outsider, propose.clone()),
        Err(TxError::Unauthorized(_))
    ));

    let tx = l.tx(&admin, propose);
    let out = l.block(vec![tx]);
    assert!(out.tx_results[0].result.is_ok());
    assert!(out.validator_updates.is_empty(), "1 of 3 approvals");
    let id = proposal_id(&out);
    assert_eq!(id, 1);
    let approve = Action::Approve(pb::Approve { proposal_id: id });
    assert!(
        matches!(l.run(&admin, approve.clone()), Err(TxError::Conflict(_))),
        "twice"
    );
    assert!(
        matches!(
            l.run(&outsider, approve.clone()),
            Err(TxError::Unauthorized(_))
        ),
        "not an admin"
    );
    let tx = l.tx(&a, approve.clone());
    let out = l.block(vec![tx]);
    assert!(
        out.validator_updates.is_empty(),
        "2 of 3 is not more than two thirds"
    );
    let tx = l.tx(&b, approve.clone());
    let out = l.block(vec![tx]);
    assert_eq!(
        out.validator_updates,
        vec![pb::ValidatorUpdate {
            pub_key: newval.clone(),
            power: 5
        }]
    );
    let set: pb::ValidatorSet = l.get(&keys::validators()).unwrap();
    assert_eq!(set.validators.len(), 2);
    assert!(
        set.validators
            .iter()
            .any(|v| v.pub_key == newval && v.power == 5)
    );
    assert!(
        matches!(l.run(&a, approve), Err(TxError::Conflict(_))),
        "already executed"
    );

    // A proposal that empties the set is refused when it would take effect. One admin
    // suffices after the others step down (each may remove itself): 1 of 1.
    for k in [&a, &b] {
        l.run(
            k,
            Action::RemoveAdmin(pb::RemoveAdmin {
                list: "govern".into(),
                admin: pk(k),
            }),
        )
        .unwrap();
    }
    let remove_all = Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
        updates: vec![
            pb::ValidatorUpdate {
                pub_key: newval,
                power: 0,
            },
            pb::ValidatorUpdate {
                pub_key: pk(&key(200)),
                power: 0,
            },
        ],
    });
    assert!(matches!(
        l.run(&admin, remove_all),
        Err(TxError::Conflict(_))
    ));
    let bad = Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
        updates: vec![pb::ValidatorUpdate {
            pub_key: vec![1; 31],
            power: 1,
        }],
    });
    assert!(matches!(l.run(&admin, bad), Err(TxError::Invalid(_))));
}

#[test]
fn events_name_the_action_list_and_subject() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let a = key(2);
    l.register(&a, "a");
    let tx = l.tx(
        &admin,
        Action::AddMember(pb::AddMember {
            list: "govern".into(),
            member: pk(&a),
        }),
    );
    let out = l.block(vec![tx.clone()]);
    assert_eq!(out.events.len(), 1);
    let e = &out.events[0];
    assert_eq!((e.kind.as_str(), e.list.as_str()), ("add_member", "govern"));
    assert_eq!(e.subject, pk(&a));
    assert_eq!(e.signer, pk(&admin));
    assert_eq!(e.tx_hash, onionpost_proto::tx::tx_hash(&tx).to_vec());
    // block_info is written by every block, so even an empty block changes the state.
    let out = l.block(vec![]);
    let info: pb::BlockInfo =
        pb::BlockInfo::decode(out.writes[&keys::block_info()].as_deref().unwrap()).unwrap();
    assert_eq!(info.height, l.height);
}

fn propose(change: pb::change::Kind) -> Action {
    Action::Propose(pb::Propose {
        change: Some(pb::Change { kind: Some(change) }),
    })
}

fn approve(id: u64) -> Action {
    Action::Approve(pb::Approve { proposal_id: id })
}

fn add_admin(list: &str, k: &SigningKey) -> pb::AddAdmin {
    pb::AddAdmin {
        list: list.into(),
        admin: pk(k),
    }
}

fn remove_admin(list: &str, k: &SigningKey) -> pb::RemoveAdmin {
    pb::RemoveAdmin {
        list: list.into(),
        admin: pk(k),
    }
}

fn add_validator(k: &SigningKey, power: u64) -> pb::ProposeValidatorUpdate {
    pb::ProposeValidatorUpdate {
        updates: vec![pb::ValidatorUpdate {
            pub_key: pk(k),
            power,
        }],
    }
}

fn governing_admins(l: &Ledger) -> Vec<Vec<u8>> {
    l.get::<pb::ListRecord>(&keys::list("govern"))
        .unwrap()
        .admins
}

fn validator_keys(l: &Ledger) -> Vec<Vec<u8>> {
    l.get::<pb::ValidatorSet>(&keys::validators())
        .unwrap()
        .validators
        .into_iter()
        .map(|v| v.pub_key)
        .collect()
}

/// The id of the proposal the last `propose` made (its event's subject).
fn proposal_id(out: &BlockOutcome) -> u64 {
    let e = out.events.last().expect("an event");
    assert!(
        ["propose", "propose_validator_update"].contains(&e.kind.as_str()),
        "{e:?}"
    );
    u64::from_be_bytes(e.subject.as_slice().try_into().unwrap())
}

#[test]
fn one_governing_admin_cannot_seize_the_ledger() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let mut l = Ledger::with_admins(&[&a, &b, &c, &d]);
    let before = governing_admins(&l);
    let validators = validator_keys(&l);
    let (x, y) = (key(10), key(11));
    l.register(&x, "sock puppet");
    l.register(&y, "another");
    for k in [&x, &y] {
        l.run(
            &a,
            Action::AddMember(pb::AddMember {
                list: "govern".into(),
                member: pk(k),
            }),
        )
        .expect("membership stays single-admin");
    }

    // 1. a adds admins alone.
    let err = l
        .run(&a, Action::AddAdmin(add_admin("govern", &x)))
        .unwrap_err();
    assert_eq!(err.code(), 16, "{err}");
    assert!(
        err.to_string().contains("3 of the 4 admins") && err.to_string().contains("propose"),
        "{err}"
    );
    // Through a proposal it waits for others, and the sock puppet's approval does not count.
    let tx = l.tx(
        &a,
        propose(pb::change::Kind::AddAdmin(add_admin("govern", &x))),
    );
    let out = l.block(vec![tx]);
    assert!(out.tx_results[0].result.is_ok());
    let id = proposal_id(&out);
    let err = l.run(&x, approve(id)).unwrap_err();
    assert_eq!(err.code(), 9, "{err}");
    assert!(err.to_string().contains("was not an admin"), "{err}");
    let err = l.run(&a, approve(id)).unwrap_err();
    assert_eq!(err.code(), 13, "{err}");
    assert!(err.to_string().contains("already approved"), "{err}");
    assert_eq!(governing_admins(&l), before);

    // 2. a removes the others alone.
    for other in [&b, &c, &d] {
        let err = l
            .run(&a, Action::RemoveAdmin(remove_admin("govern", other)))
            .unwrap_err();
        assert_eq!(err.code(), 16, "{err}");
    }
    assert_eq!(governing_admins(&l), before);
    // Nor may a lower the bar for admin changes of the governing list.
    let err = l
        .run(
            &a,
            Action::SetListPolicy(pb::SetListPolicy {
                list: "govern".into(),
                policy: Some(pb::ListPolicy {
                    admin_approvals: 1,
                    ..Default::default()
                }),
            }),
        )
        .unwrap_err();
    assert_eq!(err.code(), 12, "{err}");

    // 3. a passes a validator update alone: it stays a proposal with one approval.
    let tx = l.tx(
        &a,
        Action::ProposeValidatorUpdate(add_validator(&key(201), 10)),
    );
    let out = l.block(vec![tx]);
    assert!(out.tx_results[0].result.is_ok());
    assert!(out.validator_updates.is_empty());
    let err = l.run(&x, approve(proposal_id(&out))).unwrap_err();
    assert_eq!(err.code(), 9, "{err}");
    assert_eq!(validator_keys(&l), validators);

    // An admin may still remove itself, alone.
    l.run(&d, Action::RemoveAdmin(remove_admin("govern", &d)))
        .unwrap();
    assert_eq!(governing_admins(&l).len(), 3);
}

#[test]
fn three_of_four_admins_change_admins_and_validators() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let mut l = Ledger::with_admins(&[&a, &b, &c, &d]);
    let x = key(10);
    l.register(&x, "x");
    l.run(
        &a,
        Action::AddMember(pb::AddMember {
            list: "govern".into(),
            member: pk(&x),
        }),
    )
    .unwrap();
    let tx = l.tx(
        &a,
        propose(pb::change::Kind::AddAdmin(add_admin("govern", &x))),
    );
    let id = proposal_id(&l.block(vec![tx]));
    l.run(&b, approve(id)).unwrap();
    assert!(!governing_admins(&l).contains(&pk(&x)), "2 of 4");
    l.run(&c, approve(id)).unwrap();
    assert!(governing_admins(&l).contains(&pk(&x)), "3 of 4");
    let p: pb::Proposal = l.get(&keys::proposal(id)).unwrap();
    assert!(p.executed);
    assert_eq!((p.required, p.electorate.len()), (3, 4));
    let err = l.run(&d, approve(id)).unwrap_err();
    assert_eq!(err.code(), 13, "{err}");

    // Five admins now: a validator change needs 4 (more than two thirds of 5).
    let tx = l.tx(
        &b,
        Action::ProposeValidatorUpdate(add_validator(&key(201), 7)),
    );
    let id = proposal_id(&l.block(vec![tx]));
    for k in [&c, &d] {
        let tx = l.tx(k, approve(id));
        assert!(l.block(vec![tx]).validator_updates.is_empty());
    }
    let tx = l.tx(&x, approve(id));
    let out = l.block(vec![tx]);
    assert_eq!(out.validator_updates, add_validator(&key(201), 7).updates);
    assert!(validator_keys(&l).contains(&pk(&key(201))));

    // Removing an admin: its own approval is not needed, and removing admins after a
    // proposal was made does not lower the bar it must clear.
    let tx = l.tx(
        &a,
        propose(pb::change::Kind::RemoveAdmin(remove_admin("govern", &x))),
    );
    let id = proposal_id(&l.block(vec![tx]));
    l.run(&b, Action::RemoveAdmin(remove_admin("govern", &b)))
        .unwrap();
    l.run(&c, approve(id)).unwrap();
    l.run(&d, approve(id)).unwrap();
    assert!(
        governing_admins(&l).contains(&pk(&x)),
        "3 of the 5 at proposal time"
    );
    let err = l.run(&b, approve(id)).unwrap_err();
    assert!(err.to_string().contains("no longer an admin"), "{err}");
    l.run(&x, approve(id)).unwrap();
    assert!(!governing_admins(&l).contains(&pk(&x)));
}

#[test]
fn proposals_expire() {
    let (a, b) = (key(1), key(2));
    let mut l = Ledger::with_admins(&[&a, &b]);
    let tx = l.tx(
        &a,
        Action::ProposeValidatorUpdate(add_validator(&key(201), 1)),
    );
    let out = l.block(vec![tx]);
    let id = proposal_id(&out);
    let p: pb::Proposal = l.get(&keys::proposal(id)).unwrap();
    assert_eq!(
        p.expires_height,
        p.proposed_height + PROPOSAL_LIFETIME_BLOCKS
    );
    // Jump to its last height: the next block is past it.
    l.height = p.expires_height;
    let err = l.run(&b, approve(id)).unwrap_err();
    assert_eq!(err.code(), 13, "{err}");
    assert!(err.to_string().contains("expired at height"), "{err}");
    assert!(validator_keys(&l).len() == 1);
}

#[test]
fn ordinary_lists_follow_their_admin_policy() {
    let admin = key(1);
    let mut l = Ledger::new(&admin);
    let (a, b, c) = (key(2), key(3), key(4));
    for (k, n) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        l.register(k, n);
    }
    l.run(
        &a,
        Action::CreateList(pb::CreateList {
            name: "club".into(),
            policy: None,
        }),
    )
    .unwrap();
    for k in [&b, &c] {
        l.run(
            &a,
            Action::AddMember(pb::AddMember {
                list: "club".into(),
                member: pk(k),
            }),
        )
        .unwrap();
    }
    // One admin: more than half of one is one, so a adds b directly.
    l.run(&a, Action::AddAdmin(add_admin("club", &b))).unwrap();
    // Two admins: the default needs both.
    let err = l
        .run(&a, Action::AddAdmin(add_admin("club", &c)))
        .unwrap_err();
    assert_eq!(err.code(), 16, "{err}");
    assert!(err.to_string().contains("2 of the 2 admins"), "{err}");
    let err = l
        .run(&b, Action::RemoveAdmin(remove_admin("club", &a)))
        .unwrap_err();
    assert_eq!(err.code(), 16, "{err}");
    // Membership stays single-admin.
    l.run(
        &b,
        Action::RemoveMember(pb::RemoveMember {
            list: "club".into(),
            member: pk(&c),
        }),
    )
    .unwrap();
    l.run(
        &b,
        Action::AddMember(pb::AddMember {
            list: "club".into(),
            member: pk(&c),
        }),
    )
    .unwrap();
    // Lowering the bar is itself an admin change.
    let one = pb::SetListPolicy {
        list: "club".into(),
        policy: Some(pb::ListPolicy {
            admin_approvals: 1,
            ..Default::default()
        }),
    };
    let err = l.run(&a, Action::SetListPolicy(one.clone())).unwrap_err();
    assert_eq!(err.code(), 16, "{err}");
    // Posting rules are not.
    l.run(
        &a,
        Action::SetListPolicy(pb::SetListPolicy {
            list: "club".into(),
            policy: Some(pb::ListPolicy {
                posting: pb::list_policy::Posting::Admins as i32,
                ..Default::default()
            }),
        }),
    )
    .unwrap();
    let tx = l.tx(&a, propose(pb::change::Kind::SetListPolicy(one)));
    let id = proposal_id(&l.block(vec![tx]));
    l.run(&b, approve(id)).unwrap();
    let list: pb::ListRecord = l.get(&keys::list("club")).unwrap();
    assert_eq!(list.policy.unwrap().admin_approvals, 1);
    // Now one admin suffices.
    l.run(&a, Action::AddAdmin(add_admin("club", &c))).unwrap();
    // A proposal needs a proposer who is an admin of that list.
    let err = l
        .run(
            &admin,
            propose(pb::change::Kind::AddAdmin(add_admin("club", &admin))),
        )
        .unwrap_err();
    assert_eq!(err.code(), 9, "{err}");
}
