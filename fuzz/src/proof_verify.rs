//! Proof verification ([`onionpost_proto::proof`]) and commit-certificate verification
//! ([`onionpost_proto::consensus::verify_commit`]): what a client runs on a server's answers.
//!
//! The first byte picks a mode:
//! - even: a real tree. Up to 16 key/value pairs from the input go into a Jellyfish Merkle
//!   tree (version 0, then a second version that deletes or rewrites some); a key is proven
//!   at a version, the proof must verify and give the stored value; then the rest of the
//!   input mutates the answer (proof bytes, value, presence, key). Property: a mutated answer
//!   that still verifies proves exactly what the tree holds; no lie verifies.
//! - odd, `& 2 == 0`: a hostile answer. Root, key, value, presence and proof bytes all come
//!   from the input. Property: no panic.
//! - otherwise: a hostile commit, as a lying server would make one: a block from the input,
//!   up to 8 validators with powers from the input, a certificate naming the block's hash and
//!   height with real signatures of the validators the input picks (some forged), plus raw
//!   signature entries from the input. Properties: no panic (in particular no arithmetic
//!   overflow on voting powers); a certificate that verifies carries more than two thirds of
//!   the power, counted without overflow.

use ed25519_consensus::SigningKey;
use jmt::mock::MockTreeStore;
use jmt::{JellyfishMerkleTree, KeyHash};
use onionpost_proto::consensus::{
    VoteKind, block_hash, validator_address, verify_commit, vote_sign_bytes,
};
use onionpost_proto::proof::{encode_proof, key_hash, verify};
use onionpost_proto::v1::{
    Block, CommitCertificate, CommitSignature, ProvenValue, ValidatorUpdate,
};
use prost::Message;
use sha2::Sha256;

use crate::{byte, take, u16le};

/// Runs one input.
pub fn run(mut data: &[u8]) {
    let mode = byte(&mut data);
    if mode & 1 == 0 {
        real_tree(data);
    } else if mode & 2 == 0 {
        hostile_answer(data);
    } else {
        hostile_commit(data);
    }
}

fn chunk<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let n = byte(data) as usize;
    take(data, n)
}

fn real_tree(mut data: &[u8]) {
    let n = (byte(&mut data) % 16) as usize + 1;
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for _ in 0..n {
        let k = chunk(&mut data).to_vec();
        let v = chunk(&mut data).to_vec();
        pairs.push((k, v));
    }
    let store = MockTreeStore::default();
    let tree = JellyfishMerkleTree::<_, Sha256>::new(&store);
    let v0: Vec<(KeyHash, Option<Vec<u8>>)> = pairs
        .iter()
        .map(|(k, v)| (key_hash(k), Some(v.clone())))
        .collect();
    // The tree wants one update per key in a version: keep the last one of each.
    let dedup = |set: Vec<(KeyHash, Option<Vec<u8>>)>| {
        let mut m = std::collections::BTreeMap::new();
        for (k, v) in set {
            m.insert(k.0, v);
        }
        m.into_iter()
            .map(|(k, v)| (KeyHash(k), v))
            .collect::<Vec<_>>()
    };
    let (_, batch) = tree.put_value_set(dedup(v0), 0).expect("version 0");
    store.write_tree_update_batch(batch).expect("in memory");
    // Version 1: every pair whose flag bit is set is deleted or rewritten.
    let flags = byte(&mut data);
    let v1: Vec<(KeyHash, Option<Vec<u8>>)> = pairs
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << (i % 8)) != 0)
        .map(|(i, (k, v))| {
            let new = (i % 2 == 0).then(|| [v.as_slice(), b"'"].concat());
            (key_hash(k), new)
        })
        .collect();
    let (_, batch) = tree.put_value_set(dedup(v1), 1).expect("version 1");
    store.write_tree_update_batch(batch).expect("in memory");

    let version = (byte(&mut data) & 1) as u64;
    let pick = byte(&mut data);
    let key = if pick as usize % (n + 1) == n {
        chunk(&mut data).to_vec() // most likely absent
    } else {
        pairs[pick as usize % (n + 1)].0.clone()
    };
    let root = tree.get_root_hash(version).expect("root").0;
    let (value, proof) = tree.get_with_proof(key_hash(&key), version).expect("proof");
    let honest = ProvenValue {
        key: key.clone(),
        present: value.is_some(),
        value: value.clone().unwrap_or_default(),
        proof: encode_proof(&proof),
    };
    assert_eq!(
        verify(&root, &key, &honest).expect("an honest proof verifies"),
        value.as_deref(),
        "an honest proof proves another value"
    );

    let mut lie = honest.clone();
    while !data.is_empty() {
        match byte(&mut data) % 5 {
            0 | 1 if !lie.proof.is_empty() => {
                let at = u16le(&mut data) as usize % lie.proof.len();
                lie.proof[at] ^= byte(&mut data) | 1;
            }
            2 => lie.value = chunk(&mut data).to_vec(),
            3 => lie.present = !lie.present,
            _ => lie.proof.truncate(u16le(&mut data) as usize),
        }
    }
    if let Ok(proven) = verify(&root, &key, &lie) {
        assert_eq!(
            proven,
            value.as_deref(),
            "a tampered proof verified and proves another value"
        );
    }
}

fn hostile_answer(mut data: &[u8]) {
    let mut root = [0u8; 32];
    let r = take(&mut data, 32);
    root[..r.len()].copy_from_slice(r);
    let key = chunk(&mut data).to_vec();
    let present = byte(&mut data) & 1 == 1;
    let value = chunk(&mut data).to_vec();
    let answer = ProvenValue {
        key: key.clone(),
        present,
        value,
        proof: data.to_vec(),
    };
    let _ = verify(&root, &key, &answer);
}

/// Keys of the hostile commit's validators.
fn validator_key(i: u8) -> SigningKey {
    SigningKey::from([0x70 + i; 32])
}

fn hostile_commit(mut data: &[u8]) {
    // A lying server controls everything it sends, and keeps it consistent: the certificate
    // names the block's hash and height, and carries real signatures of validators whose
    // powers it chose.
    let n = u16le(&mut data) as usize;
    let block = take(&mut data, n).to_vec();
    let height = Block::decode(block.as_slice()).map_or(0, |b| b.height);
    let count = byte(&mut data) % 8 + 1;
    let mut validators = Vec::new();
    for i in 0..count {
        let mut power = [0u8; 8];
        let p = take(&mut data, 8);
        power[..p.len()].copy_from_slice(p);
        validators.push(ValidatorUpdate {
            pub_key: validator_key(i).verification_key().to_bytes().to_vec(),
            power: u64::from_le_bytes(power),
        });
    }
    let signers = byte(&mut data);
    let forged = byte(&mut data);
    let round = byte(&mut data) as u32;
    let hash = block_hash(&block);
    let mut cert = CommitCertificate {
        height,
        round,
        block_hash: hash.to_vec(),
        signatures: vec![],
    };
    for i in 0..count {
        if signers & (1 << i) == 0 {
            continue;
        }
        let key = validator_key(i);
        let address = validator_address(&key.verification_key().to_bytes());
        let msg = vote_sign_bytes(
            "fuzz-chain",
            VoteKind::Precommit,
            height,
            round as i64,
            Some(&hash),
            &address,
        );
        let mut signature = key.sign(&msg).to_bytes().to_vec();
        if forged & (1 << i) != 0 {
            signature[0] ^= 1;
        }
        cert.signatures.push(CommitSignature {
            address: address.to_vec(),
            signature,
        });
    }
    // The rest of the input may add raw signatures (duplicates, strangers, bad lengths).
    while data.len() >= 2 {
        let address = chunk(&mut data).to_vec();
        let signature = chunk(&mut data).to_vec();
        cert.signatures.push(CommitSignature { address, signature });
    }
    if verify_commit("fuzz-chain", &validators, &block, &cert).is_ok() {
        let total: u128 = validators.iter().map(|v| v.power as u128).sum();
        let signed: u128 = validators
            .iter()
            .enumerate()
            .filter(|(i, _)| signers & (1 << i) != 0 && forged & (1 << i) == 0)
            .map(|(_, v)| v.power as u128)
            .sum();
        assert!(
            signed * 3 > total * 2,
            "a certificate with {signed} of {total} power verified"
        );
    }
}
