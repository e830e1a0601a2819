//! Writes the seed corpus of every target: `seeds DIR` creates `DIR/<target>/seed-N`.
//! Valid inputs of each kind give the fuzzer a head start past the decoders.

use std::path::Path;

use bytes::Bytes;
use malachitebft_app_channel::app::consensus::SignedConsensusMsg;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_core_types::{
    CommitCertificate, CommitSignature, NilOrVal, Round, SignedMessage, VoteType,
};
use malachitebft_signing_ed25519::PrivateKey;
use onionpost_fuzz::tx_execute::{CHAIN, public, record, signed_record};
use onionpost_ledger::validator::types::{
    Address, BlockHash, Height, LedgerContext, Proposal, ProposalPart, Value, Vote,
};
use onionpost_ledger::validator::wire::encode;
use onionpost_proto::v1::{self as pb, TxBody, tx_body::Action};

fn body(action: Action) -> TxBody {
    TxBody {
        chain_id: CHAIN.into(),
        nonce: 0,
        action: Some(action),
    }
}

fn tx_seeds() -> Vec<Vec<u8>> {
    let p = |i| public(i).to_vec();
    let end = record(3, &[5]);
    let list = |name: &str| name.to_owned();
    let e2e = pb::E2eKey {
        algorithm: "openpgp".into(),
        public_key: vec![0x99; 64],
    };
    let per_action: Vec<(u8, Action)> = vec![
        (
            3,
            Action::RegisterIdentity(pb::RegisterIdentity {
                display_name: "three".into(),
            }),
        ),
        (
            1,
            Action::BindKey(pb::BindKey {
                key: Some(e2e.clone()),
            }),
        ),
        (
            1,
            Action::RotateKey(pb::RotateKey {
                new_key: Some(e2e.clone()),
            }),
        ),
        (
            1,
            Action::RevokeKey(pb::RevokeKey {
                key_id: vec![0; 32],
                reason: "lost".into(),
            }),
        ),
        (
            1,
            Action::SetMailboxHosts(pb::SetMailboxHosts { hosts: vec![p(2)] }),
        ),
        (
            1,
            Action::SignTrust(pb::SignTrust {
                target: p(2),
                level: 2,
                expires_at: 1_000_100,
            }),
        ),
        (1, Action::RevokeTrust(pb::RevokeTrust { target: p(2) })),
        (
            1,
            Action::CreateList(pb::CreateList {
                name: list("l"),
                policy: None,
            }),
        ),
        (
            0,
            Action::AddMember(pb::AddMember {
                list: list("govern"),
                member: p(1),
            }),
        ),
        (
            0,
            Action::RemoveMember(pb::RemoveMember {
                list: list("govern"),
                member: p(1),
            }),
        ),
        (
            0,
            Action::AddAdmin(pb::AddAdmin {
                list: list("govern"),
                admin: p(2),
            }),
        ),
        (
            0,
            Action::RemoveAdmin(pb::RemoveAdmin {
                list: list("govern"),
                admin: p(0),
            }),
        ),
        (
            0,
            Action::SetListPolicy(pb::SetListPolicy {
                list: list("govern"),
                policy: Some(pb::ListPolicy {
                    posting: 1,
                    max_message_bytes: 100,
                    admin_approvals: 0,
                }),
            }),
        ),
        (
            0,
            Action::ProposeValidatorUpdate(pb::ProposeValidatorUpdate {
                updates: vec![pb::ValidatorUpdate {
                    pub_key: p(3),
                    power: 5,
                }],
            }),
        ),
        (
            0,
            Action::Propose(pb::Propose {
                change: Some(pb::Change {
                    kind: Some(pb::change::Kind::AddAdmin(pb::AddAdmin {
                        list: list("govern"),
                        admin: p(3),
                    })),
                }),
            }),
        ),
        (
            0,
            Action::Approve(pb::Approve { proposal_id: 0 }),
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = per_action
        .iter()
        .map(|(s, a)| signed_record(*s, &body(a.clone())))
        .collect();
    // A story: three registers, binds a key, trusts one, a list with members, a block end,
    // then revocations and a validator proposal and approval.
    let mut story = Vec::new();
    for (s, a) in &per_action {
        story.extend(signed_record(*s, &body(a.clone())));
        story.extend(&end);
    }
    seeds.push(story);
    // A raw, well-formed signed transaction.
    let raw = onionpost_proto::tx::sign(
        &onionpost_fuzz::tx_execute::key(1),
        CHAIN,
        0,
        Action::RegisterIdentity(Default::default()),
    );
    seeds.push(record(0, &prost::Message::encode_to_vec(&raw)));
    seeds
}

fn wire_seeds() -> Vec<Vec<u8>> {
    let sig = PrivateKey::from([7; 32]).sign(b"seed");
    let vote = Vote {
        vote_type: VoteType::Prevote,
        height: Height(3),
        round: Round::new(0),
        value: NilOrVal::Val(BlockHash([1; 32])),
        voter: Address([2; 20]),
        extension: None,
    };
    let with = |sel: u8, bytes: Vec<u8>| [vec![sel], bytes].concat();
    vec![
        with(
            0,
            encode(&SignedConsensusMsg::<LedgerContext>::Vote(
                SignedMessage::new(vote.clone(), sig),
            )),
        ),
        with(
            0,
            encode(&SignedConsensusMsg::<LedgerContext>::Proposal(
                SignedMessage::new(
                    Proposal {
                        height: Height(3),
                        round: Round::new(1),
                        value: Value(BlockHash([4; 32])),
                        pol_round: Round::Nil,
                        proposer: Address([5; 20]),
                    },
                    sig,
                ),
            )),
        ),
        with(
            2,
            encode(&StreamMessage::new(
                StreamId::new(Bytes::from_static(b"stream-1")),
                0,
                StreamContent::Data(ProposalPart::Init {
                    height: Height(3),
                    round: Round::new(0),
                    pol_round: Round::Nil,
                    proposer: Address([5; 20]),
                }),
            )),
        ),
        with(
            2,
            encode(&StreamMessage::new(
                StreamId::new(Bytes::from_static(b"s")),
                1,
                StreamContent::Data(ProposalPart::Data(Bytes::from_static(b"block"))),
            )),
        ),
        with(
            2,
            encode(&StreamMessage::<ProposalPart>::new(
                StreamId::new(Bytes::new()),
                2,
                StreamContent::Fin,
            )),
        ),
        with(3, encode(&ProposalPart::Fin(sig))),
        with(
            10,
            encode(&CommitCertificate::<LedgerContext> {
                height: Height(9),
                round: Round::new(0),
                value_id: BlockHash([3; 32]),
                commit_signatures: vec![CommitSignature::new(Address([1; 20]), sig)],
            }),
        ),
        with(6, [9u64.to_be_bytes(), 12u64.to_be_bytes()].concat()),
        with(7, [1u64.to_be_bytes(), 0u64.to_be_bytes()].concat()),
    ]
}

fn proof_seeds() -> Vec<Vec<u8>> {
    let mut real = vec![0u8, 3];
    for (k, v) in [
        (&b"identity/a"[..], &b"one"[..]),
        (b"list/x", b"two"),
        (b"member/x/a", b""),
    ] {
        real.push(k.len() as u8);
        real.extend_from_slice(k);
        real.push(v.len() as u8);
        real.extend_from_slice(v);
    }
    real.extend_from_slice(&[0b101, 1, 0]);
    let mut mutated = real.clone();
    mutated.extend_from_slice(&[0, 10, 0, 0x40, 3]);
    vec![real, mutated, vec![1; 80], vec![3; 40]]
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds DIR");
    for (target, seeds) in [
        ("tx_execute", tx_seeds()),
        ("wire_codec", wire_seeds()),
        ("proof_verify", proof_seeds()),
    ] {
        let d = Path::new(&dir).join(target);
        std::fs::create_dir_all(&d).expect("creating the corpus directory");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s).expect("writing a seed");
        }
        println!("{target}: {} seeds in {}", seeds.len(), d.display());
    }
}
