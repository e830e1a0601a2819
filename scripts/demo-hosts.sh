#!/usr/bin/env bash
# Mailbox-host part of the demo (called by scripts/demo.sh with the binary directory and a
# work directory holding a running devnet in $WORK/devnet): mail to a recipient whose node is
# offline. bob names hal as his mailbox host on the ledger (signed by bob's identity key);
# alice writes to bob while bob's node is down; once bob's onion has stayed unreachable past
# alice's `hosts_after_secs`, her node hands the copy, encrypted to bob's bound key, to hal;
# hal holds only ciphertext, apart from its own mailboxes; bob's node comes back, proves it is
# bob with a challenge signed by his identity key, collects, and bob reads the message,
# decrypted and verified, over IMAP. Direct loopback transport, as in scripts/demo-lists.sh.
set -euo pipefail
BIN=$1; WORK=$2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { awk -v k="$1" '$1==k {print $2}'; }
run() { echo "\$ $(basename "$1") ${*:2}"; "$@"; }
say() { printf '\n==> %s\n' "$*"; }
wait_log() { # FILE PATTERN SECONDS
  for _ in $(seq $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for \"$2\" in $1"; tail -n 20 "$1"; exit 1
}
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; }

NAMES=(alice bob hal)
LEDGER_TOML=$(python3 - "$WORK/devnet/devnet.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
eps = ", ".join(f'"http://{v["grpc"]}"' for v in m["validators"])
genesis = m["validators"][0]["home"] + "/genesis.json"
print(f'[ledger]\nendpoints = [{eps}]\nchain_id = "{m["chain_id"]}"\ngenesis = "{genesis}"')
PY
)

say "three mail nodes: alice writes, bob is often offline, hal is always on and will hold bob's mail"
declare -A ADDR PW SMTP SUB IMAP
for who in "${NAMES[@]}"; do
  "$BIN/onionpost-node" --home "$WORK/host-$who" identity new "$who" > "$WORK/host-$who.id"
  ADDR[$who]=$(field address: < "$WORK/host-$who.id"); PW[$who]=$(field password: < "$WORK/host-$who.id")
  SMTP[$who]=$(port); SUB[$who]=$(port); IMAP[$who]=$(port)
  echo "$who: ${ADDR[$who]}"
done
ROUTES=$(for who in "${NAMES[@]}"; do a=${ADDR[$who]}; printf '"%s" = "127.0.0.1:%s"\n' "${a#*@}" "${SMTP[$who]}"; done)
declare -A EXTRA
# alice's node tries bob's own onion for 3 s before it turns to bob's hosts (default: 30 min).
EXTRA[alice]="hosts_after_secs = 3"
EXTRA[bob]=""
EXTRA[hal]=""
declare -A HOSTING
HOSTING[alice]=""
HOSTING[bob]=$'[hosting]\ncollect_every_secs = 2'
HOSTING[hal]=$'[hosting]\nenabled = true'
for who in "${NAMES[@]}"; do
  cat > "$WORK/host-$who.toml" <<TOML
[smtp]
listen = "127.0.0.1:${SMTP[$who]}"
[submission]
listen = "127.0.0.1:${SUB[$who]}"
[imap]
listen = "127.0.0.1:${IMAP[$who]}"
[queue]
retry_base_secs = 1
retry_max_secs = 2
${EXTRA[$who]}
[transport]
kind = "direct"
[transport.direct]
$ROUTES
$LEDGER_TOML
${HOSTING[$who]}
TOML
done

say "each registers its identity and binds its OpenPGP key on the ledger"
for who in "${NAMES[@]}"; do
  run "$BIN/onionpost-node" --home "$WORK/host-$who" identity register "$who" --config "$WORK/host-$who.toml"
done

say "bob names hal as his mailbox host (SetMailboxHosts, signed by bob's identity key), then reads it back with a proof"
HAL_ONION=${ADDR[hal]#*@}
run "$BIN/onionpost-node" --home "$WORK/host-bob" identity hosts bob --config "$WORK/host-bob.toml" --set "$HAL_ONION"
run "$BIN/onionpost-node" --home "$WORK/host-bob" identity hosts bob --config "$WORK/host-bob.toml"

say "alice's and hal's nodes run; bob's node is down"
for who in alice hal; do
  RUST_LOG=info "$BIN/onionpost-node" --home "$WORK/host-$who" run --config "$WORK/host-$who.toml" 2> "$WORK/host-$who.log" &
  echo $! >> "$WORK/pids"
  wait_port "${SUB[$who]}"; wait_port "${IMAP[$who]}"
done

say "alice writes to bob from her mail client (swaks, SMTP submission)"
swaks --silent 1 --server "127.0.0.1:${SUB[alice]}" --auth PLAIN --auth-user "${ADDR[alice]}" \
  --auth-password "${PW[alice]}" --from "${ADDR[alice]}" --to "${ADDR[bob]}" \
  --header "Subject: while you were away" \
  --body "Held for you by hal, who cannot read it." \
  && echo "accepted by alice's node"

say "bob's onion stays unreachable: alice's node hands the encrypted copy to hal, read from the ledger as bob's host"
wait_log "$WORK/host-alice.log" "delivered to mailbox host" 60
grep "delivered to mailbox host" "$WORK/host-alice.log" | head -n 1 | sed 's/.*INFO //'
HELD=$(find "$WORK/host-hal/held" -name '*.held' | head -n 1)
echo "hal holds $(find "$WORK/host-hal/held" -name '*.held' | wc -l) message(s), e.g. $HELD:"
grep -m1 -- "-----BEGIN PGP MESSAGE-----" "$HELD"
if grep -q "cannot read it" "$HELD"; then echo "hal could read the message: this is a bug"; exit 1; fi
echo "(ciphertext only: the text \"cannot read it\" is not in hal's copy)"

say "bob's node comes back: it proves to hal that it is bob (a challenge signed by bob's key) and collects"
RUST_LOG=info "$BIN/onionpost-node" --home "$WORK/host-bob" run --config "$WORK/host-bob.toml" 2> "$WORK/host-bob.log" &
echo $! >> "$WORK/pids"
wait_port "${IMAP[bob]}"
python3 - "${IMAP[bob]}" "${ADDR[bob]}" "${PW[bob]}" <<'PY'
import imaplib, sys, time, email, email.policy
port, user, pw = sys.argv[1:]
deadline = time.time() + 60
while True:
    if time.time() > deadline: sys.exit("bob's held mail was not collected within 60 s")
    M = imaplib.IMAP4('127.0.0.1', int(port)); M.login(user, pw); M.select('INBOX')
    typ, data = M.search(None, 'SUBJECT', '"while you were away"')
    if data[0].split(): break
    M.logout(); time.sleep(0.2)
num = data[0].split()[-1]
typ, f = M.fetch(num, '(FLAGS)')
typ, msg = M.fetch(num, '(BODY.PEEK[])')
m = email.message_from_bytes(msg[0][1], policy=email.policy.default)
print("--- bob's INBOX")
for h in ('From', 'Subject', 'Authentication-Results'):
    print(f"{h}: {' '.join(str(m[h]).split())}")
print("flags:", ' '.join(x.decode() for x in imaplib.ParseFlags(f[0])))
body = m.get_body(('plain',))
print(); print(body.get_content().strip() if body else '')
M.logout()
PY
for _ in $(seq 100); do [ -z "$(find "$WORK/host-hal/held" -name '*.held')" ] && break; sleep 0.1; done
echo "hal now holds $(find "$WORK/host-hal/held" -name '*.held' | wc -l) message(s): deleted once bob's node had stored it"
