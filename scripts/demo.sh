#!/usr/bin/env bash
# onionpost demo on one machine, on loopback: a ledger, identities, a mailing list, verified
# membership proofs, mail between two mail nodes read back over IMAP, a mailing list whose
# posts every member's node checks against the ledger before delivery, and mail to an offline
# recipient held by its mailbox host until it returns.
# Installs what it needs on Debian, builds, runs, prints each step, and cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export RUST_BACKTRACE=0 RUST_LOG=${RUST_LOG:-warn}

need=()
[ -e /usr/lib/llvm-14/lib/libclang.so ] || need+=(libclang-dev)
command -v clang >/dev/null || need+=(clang)
command -v python3 >/dev/null || need+=(python3)
command -v swaks >/dev/null || need+=(swaks)
command -v tor >/dev/null || need+=(tor)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "==> building (the first build takes a while: RocksDB and libp2p are compiled from source)"
# cargo's own progress (crate counts and names), so a first build of ~40 minutes is visibly moving.
# The whole workspace, as the test suite builds it: selecting packages with -p would unify
# dependency features differently and compile ~200 crates a second time for scripts/test.sh.
cargo build --workspace --bins
BIN=$CARGO_TARGET_DIR/debug
WORK=$(mktemp -d /tmp/onionpost-demo.XXXXXX)
cleanup() {
  "$BIN/onionpost-devnet" down --dir "$WORK/devnet" >/dev/null 2>&1 || true
  [ -f "$WORK/pids" ] && xargs -r kill < "$WORK/pids" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n==> %s\n' "$*"; }
run() { echo "\$ $(basename "$1") ${*:2}"; "$@"; }
op() { run "$BIN/onionpost" "$@"; }
BASE=$(python3 -c 'import random; print(random.randrange(21000, 60000, 2))')

step "a ledger network: 4 validators running Malachite (Tendermint) consensus on 127.0.0.10-13"
run "$BIN/onionpost-devnet" init --validators 4 --dir "$WORK/devnet" --base-port "$BASE"
run "$BIN/onionpost-devnet" up --dir "$WORK/devnet"
export ONIONPOST_LEDGER="http://127.0.0.11:$((BASE + 1))"
ADMIN_KEY=$WORK/devnet/admin-0.key
sleep 1
run "$BIN/onionpost-devnet" status --dir "$WORK/devnet"

step "identity keys for alice and bob (the onion address is the public key)"
for who in alice bob; do op key new "$WORK/$who.key"; done
ALICE=$("$BIN/onionpost" key show "$WORK/alice.key" | awk '/address/ {print $2}')
BOB=$("$BIN/onionpost" key show "$WORK/bob.key" | awk '/address/ {print $2}')

step "alice and bob register; the governing list's admin creates a list and adds alice"
op tx --key "$WORK/alice.key" register --name alice
op tx --key "$WORK/bob.key" register --name bob
op tx --key "$ADMIN_KEY" create-list friends
op tx --key "$ADMIN_KEY" add-member friends "$ALICE"

step "membership, with Merkle proofs verified by the client (asked of another validator)"
export ONIONPOST_LEDGER="http://127.0.0.13:$((BASE + 1))"
op query member friends "$ALICE"
op query member friends "$BOB" || echo "(exit status $?: bob is provably not a member)"
op query members friends

step "a rejected transaction says why"
op tx --key "$WORK/bob.key" add-member friends "$BOB" || true

step "alice binds an end-to-end key, then rotates it: the history is append-only and provable"
head -c 64 /dev/urandom > "$WORK/k1.pgp"; head -c 64 /dev/urandom > "$WORK/k2.pgp"
op tx --key "$WORK/alice.key" bind-key "$WORK/k1.pgp"
op tx --key "$WORK/alice.key" rotate-key "$WORK/k2.pgp"
op query keys "$ALICE"

step "a commit certificate: more than two thirds of the validators signed the latest block"
op query commit

step "an auditor with only genesis.json verifies every certificate from height 1, and that key histories only grew"
op audit --genesis "$WORK/devnet/validator-0/genesis.json" --checkpoint "$WORK/audit.json" --all-keys
step "the audit resumes from its checkpoint; queries now check against certified app hashes"
op audit --genesis "$WORK/devnet/validator-0/genesis.json" --checkpoint "$WORK/audit.json"
op query --genesis "$WORK/devnet/validator-0/genesis.json" --checkpoint "$WORK/audit.json" commit
op query --genesis "$WORK/devnet/validator-0/genesis.json" --checkpoint "$WORK/audit.json" member friends "$ALICE"

step "kill -9 one validator: the other three keep deciding blocks"
kill -9 "$(cat "$WORK/devnet/validator-3/validator.pid")"
sleep 4
run "$BIN/onionpost-devnet" status --dir "$WORK/devnet"

step "mail between two mail nodes, over onion services"
scripts/demo-mail.sh "$BIN" "$WORK"

step "a mailing list with no server: posts checked against the ledger by every member's node"
scripts/demo-lists.sh "$BIN" "$WORK"

step "mail to a recipient whose node is offline, held by the mailbox host the recipient named on the ledger"
scripts/demo-hosts.sh "$BIN" "$WORK"
step "done"
