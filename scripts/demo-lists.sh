#!/usr/bin/env bash
# Mailing-list part of the demo (called by scripts/demo.sh with the binary directory and a work
# directory holding a running devnet in $WORK/devnet): a list with no server. Four mail nodes
# (alice, bob, carol; mallory is registered but not a member) register their identities on the
# ledger; alice creates list "demo" and adds bob and carol, acting as her node identity. Alice
# posts from a mail client (swaks, through submission) to demo@list.invalid; her node checks
# her membership on the ledger, signs the post and sends it to every member; bob's and carol's
# nodes verify author, height and signature against the ledger (with proofs) before they
# deliver, and their IMAP shows the post with List-Id and the verification result. Mallory's
# post is refused with its reason. The nodes use the direct loopback transport here (the onion
# transport is shown by scripts/demo-mail.sh); list mail is the same SMTP over either.
set -euo pipefail
BIN=$1; WORK=$2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { awk -v k="$1" '$1==k {print $2}'; }
run() { echo "\$ $(basename "$1") ${*:2}"; "$@"; }
say() { printf '\n==> %s\n' "$*"; }

NAMES=(alice bob carol mallory)
LEDGER_TOML=$(python3 - "$WORK/devnet/devnet.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
eps = ", ".join(f'"http://{v["grpc"]}"' for v in m["validators"])
genesis = m["validators"][0]["home"] + "/genesis.json"
print(f'[ledger]\nendpoints = [{eps}]\nchain_id = "{m["chain_id"]}"\ngenesis = "{genesis}"\nrelay_timeout_secs = 3')
PY
)
LEDGER_URL=$(python3 -c 'import json,sys; print("http://" + json.load(open(sys.argv[1]))["validators"][1]["grpc"])' "$WORK/devnet/devnet.json")

say "four mail nodes; each identity's ed25519 key is its onion address and its ledger account"
declare -A ADDR PW SMTP SUB IMAP
for who in "${NAMES[@]}"; do
  "$BIN/onionpost-node" --home "$WORK/list-$who" identity new "$who" > "$WORK/list-$who.id"
  ADDR[$who]=$(field address: < "$WORK/list-$who.id"); PW[$who]=$(field password: < "$WORK/list-$who.id")
  SMTP[$who]=$(port); SUB[$who]=$(port); IMAP[$who]=$(port)
  echo "$who: ${ADDR[$who]}"
done
ROUTES=$(for who in "${NAMES[@]}"; do a=${ADDR[$who]}; printf '"%s" = "127.0.0.1:%s"\n' "${a#*@}" "${SMTP[$who]}"; done)
for who in "${NAMES[@]}"; do
  cat > "$WORK/list-$who.toml" <<TOML
[smtp]
listen = "127.0.0.1:${SMTP[$who]}"
[submission]
listen = "127.0.0.1:${SUB[$who]}"
[imap]
listen = "127.0.0.1:${IMAP[$who]}"
[queue]
retry_base_secs = 1
retry_max_secs = 5
[transport]
kind = "direct"
[transport.direct]
$ROUTES
$LEDGER_TOML
TOML
done

say "each node registers its identity on the ledger (validator-3 is down: the client fails over)"
for who in "${NAMES[@]}"; do
  run "$BIN/onionpost-node" --home "$WORK/list-$who" identity register "$who" --config "$WORK/list-$who.toml"
done

say "alice, as her node identity, creates list \"demo\" and adds bob and carol (not mallory)"
as_alice() { run "$BIN/onionpost" --home "$WORK/list-alice" --identity alice tx --ledger "$LEDGER_URL" "$@"; }
as_alice create-list demo
as_alice add-member demo "${ADDR[bob]}"
as_alice add-member demo "${ADDR[carol]}"
run "$BIN/onionpost" query --ledger "$LEDGER_URL" members demo

for who in "${NAMES[@]}"; do
  "$BIN/onionpost-node" --home "$WORK/list-$who" run --config "$WORK/list-$who.toml" 2> "$WORK/list-$who.log" &
  echo $! >> "$WORK/pids"
done
for who in "${NAMES[@]}"; do
  for p in ${SUB[$who]} ${IMAP[$who]}; do
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
  done
done

say "alice posts from her mail client (swaks, SMTP submission) to demo@list.invalid"
swaks --silent 1 --server "127.0.0.1:${SUB[alice]}" --auth PLAIN --auth-user "${ADDR[alice]}" \
  --auth-password "${PW[alice]}" --from "${ADDR[alice]}" --to demo@list.invalid \
  --header "Subject: first post to a list with no server" \
  --body "Every member's node checked my membership on the ledger before delivering this." \
  && echo "accepted by alice's node: membership checked, post signed and encrypted to every member's bound key, sent to every member"

say "bob and carol read it over IMAP (Python imaplib) in folder Lists/demo: list headers, and what their node verified and decrypted"
for who in bob carol; do
  echo "--- $who's Lists/demo"
  python3 - "${IMAP[$who]}" "${ADDR[$who]}" "${PW[$who]}" <<'PY'
import imaplib, sys, time, email, email.policy
port, user, pw = sys.argv[1:]
deadline = time.time() + 60
while True:
    if time.time() > deadline: sys.exit("the post did not arrive within 60 s")
    M = imaplib.IMAP4('127.0.0.1', int(port)); M.login(user, pw)
    # The node files a list's posts in a folder of their own, created with the first post.
    if M.select('"Lists/demo"')[0] == 'OK':
        typ, data = M.search(None, 'HEADER', 'List-Id', 'demo')
        if data[0].split(): break
    M.logout()
    time.sleep(0.2)
typ, msg = M.fetch(data[0].split()[-1], '(RFC822)')
m = email.message_from_bytes(msg[0][1], policy=email.policy.default)
for h in ('Onionpost-List-Verified', 'Authentication-Results', 'From', 'To', 'Subject', 'List-Id', 'List-Post'):
    print(f"{h}: {m[h]}")
print(); print(m.get_content().strip())
M.logout()
PY
done

say "mallory is not a member: her own node refuses her post, and says why"
if out=$(swaks --server "127.0.0.1:${SUB[mallory]}" --auth PLAIN --auth-user "${ADDR[mallory]}" \
    --auth-password "${PW[mallory]}" --from "${ADDR[mallory]}" --to demo@list.invalid \
    --header "Subject: let me in" --body "spam" 2>&1); then
  echo "$out"; echo "mallory's post was accepted: this is a bug"; exit 1
fi
echo "$out" | grep -E '^ *<\*\* +5' | head -n 1
echo "(a forged post sent straight to a member's node is refused the same way: node/tests/lists.rs)"
