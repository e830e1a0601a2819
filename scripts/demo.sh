#!/usr/bin/env bash
# onionpost demo on one machine, on loopback: a ledger, identities, a mailing list, verified
# membership proofs, and mail between two mail nodes read back over IMAP.
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
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "==> building (the first build takes a while: RocksDB is compiled from source)"
cargo build --quiet -p onionpost-ledger -p onionpost -p onionpost-node --bins
BIN=$CARGO_TARGET_DIR/debug
WORK=$(mktemp -d /tmp/onionpost-demo.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
step() { printf '\n==> %s\n' "$*"; }
op() { echo "\$ onionpost $*"; "$BIN/onionpost" "$@"; }

step "identity keys: an admin, alice and bob (the onion address is the public key)"
for who in admin alice bob; do op key new "$WORK/$who.key"; done
ADMIN_PK=$("$BIN/onionpost" key show "$WORK/admin.key" | awk '/public key/ {print $3}')
ALICE=$("$BIN/onionpost" key show "$WORK/alice.key" | awk '/address/ {print $2}')
BOB=$("$BIN/onionpost" key show "$WORK/bob.key" | awk '/address/ {print $2}')

step "start the ledger (solo development mode: one process makes the blocks)"
printf '{"governing_list":"govern","admins":[{"public_key":"%s","display_name":"admin"}]}\n' "$ADMIN_PK" > "$WORK/genesis.json"
"$BIN/onionpost-ledger" solo --home "$WORK/ledger" --genesis "$WORK/genesis.json" \
  --grpc 127.0.0.1:0 --block-ms 100 > "$WORK/ledger.out" 2> "$WORK/ledger.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/ledger.out" && break; sleep 0.1; done
export ONIONPOST_LEDGER="http://$(sed -n 's/^listening grpc=//p' "$WORK/ledger.out")"
echo "ledger gRPC at $ONIONPOST_LEDGER"

step "alice and bob register; the admin creates a list and adds alice"
op tx --key "$WORK/alice.key" register --name alice
op tx --key "$WORK/bob.key" register --name bob
op tx --key "$WORK/admin.key" create-list friends
op tx --key "$WORK/admin.key" add-member friends "$ALICE"

step "membership, with Merkle proofs verified by the client"
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

if [ -x scripts/demo-mail.sh ]; then
  step "mail between two mail nodes"
  scripts/demo-mail.sh "$BIN" "$WORK"
fi
step "done"
