//! Transaction decoding plus execution: [`onionpost_ledger::execute::execute_block`] over an
//! in-memory state, block after block.
//!
//! Input: a sequence of records `[header, len_lo, len_hi, payload...]`. The header's low two
//! bits say what the payload is:
//! - `0`: raw transaction bytes, given to the ledger as they are (the decoder's input);
//! - `1`, `2`: an encoded `TxBody` whose action is signed by fuzz key `(header >> 2) & 3`,
//!   with the signer's next nonce and the chain's id unless header bit 4 (keep the body's
//!   nonce) or bit 5 (keep the body's chain id) is set, so the fuzzer reaches every action's
//!   logic past signature checking;
//! - `3`: ends the block; the block time advances by `payload[0]` seconds.
//!
//! Properties checked: no panic; no `ReadError` (the state is in memory, so a read error means
//! the ledger wrote a record it cannot read back); executing the same block twice on the same
//! state gives the same results and writes (determinism, as replicas need).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ed25519_consensus::SigningKey;
use onionpost_ledger::execute::{BlockContext, BlockOutcome, WriteSet, execute_block};
use onionpost_ledger::genesis::{AppGenesis, GenesisIdentity};
use onionpost_proto::tx::sign;
use onionpost_proto::v1::{TxBody, ValidatorUpdate};
use prost::Message;

use crate::{byte, take, u16le};

/// The chain the harness runs.
pub const CHAIN: &str = "fuzz-chain";
/// Most transactions in one input (keeps one execution short).
const MAX_TXS: usize = 64;

/// Fuzz key `i` (0..4): 0 is the governing list's admin, 1 and 2 are registered at genesis,
/// 3 is not registered.
pub fn key(i: u8) -> SigningKey {
    SigningKey::from([i % 4 + 1; 32])
}

/// The public key of fuzz key `i`.
pub fn public(i: u8) -> [u8; 32] {
    key(i).verification_key().to_bytes()
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn genesis() -> &'static State {
    static GENESIS: OnceLock<State> = OnceLock::new();
    GENESIS.get_or_init(|| {
        let id = |i: u8, name: &str| GenesisIdentity {
            public_key: hex::encode(public(i)),
            display_name: name.into(),
        };
        let g = AppGenesis {
            governing_list: "govern".into(),
            admins: vec![id(0, "admin")],
            identities: vec![id(1, "one"), id(2, "two")],
        };
        let validator = SigningKey::from([200; 32]).verification_key().to_bytes();
        let writes = g
            .writes(
                CHAIN,
                vec![ValidatorUpdate {
                    pub_key: validator.to_vec(),
                    power: 10,
                }],
            )
            .expect("the fuzz genesis is valid");
        let mut state = State::new();
        apply(&mut state, writes);
        state
    })
}

fn apply(state: &mut State, writes: WriteSet) {
    for (k, v) in writes {
        match v {
            Some(v) => state.insert(k, v),
            None => state.remove(&k),
        };
    }
}

fn summary(o: &BlockOutcome) -> String {
    format!(
        "{:?} {:?} {:?} {:?}",
        o.tx_results
            .iter()
            .map(|r| (r.hash, r.result.clone()))
            .collect::<Vec<_>>(),
        o.writes,
        o.validator_updates,
        o.events
    )
}

/// Runs one input.
pub fn run(mut data: &[u8]) {
    let mut state = genesis().clone();
    let mut nonces = [0u64; 4];
    let mut ctx = BlockContext {
        chain_id: CHAIN.into(),
        height: 1,
        time: 1_000_000,
    };
    let mut block: Vec<Vec<u8>> = Vec::new();
    let mut count = 0;
    while !data.is_empty() && count < MAX_TXS {
        let header = byte(&mut data);
        let len = u16le(&mut data) as usize;
        let payload = take(&mut data, len);
        match header & 3 {
            0 => block.push(payload.to_vec()),
            1 | 2 => {
                let Ok(body) = TxBody::decode(payload) else {
                    continue;
                };
                let Some(action) = body.action else {
                    continue;
                };
                let signer = (header >> 2) & 3;
                let nonce = if header & 0x10 != 0 {
                    body.nonce
                } else {
                    nonces[signer as usize]
                };
                let chain = if header & 0x20 != 0 {
                    body.chain_id.as_str()
                } else {
                    CHAIN
                };
                let tx = sign(&key(signer), chain, nonce, action);
                nonces[signer as usize] = nonce.wrapping_add(1);
                block.push(tx.encode_to_vec());
            }
            _ => {
                end_block(&mut state, &mut ctx, std::mem::take(&mut block));
                ctx.time += payload.first().copied().unwrap_or(1) as u64;
            }
        }
        count += 1;
    }
    end_block(&mut state, &mut ctx, block);
}

fn end_block(state: &mut State, ctx: &mut BlockContext, txs: Vec<Vec<u8>>) {
    let outcome = execute_block(state, ctx, &txs)
        .unwrap_or_else(|e| panic!("the ledger cannot read its own state: {e}"));
    let again = execute_block(state, ctx, &txs).expect("read the first time");
    assert_eq!(
        summary(&outcome),
        summary(&again),
        "the same block on the same state executed differently"
    );
    apply(state, outcome.writes);
    ctx.height += 1;
}

/// One record of the input format: a body signed by fuzz key `signer`.
pub fn signed_record(signer: u8, body: &TxBody) -> Vec<u8> {
    record(1 | ((signer & 3) << 2), &body.encode_to_vec())
}

/// One record of the input format.
pub fn record(header: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}
