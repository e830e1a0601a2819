#!/usr/bin/env bash
# Mail part of the demo (called by scripts/demo.sh with the binary directory and a work
# directory): two mail nodes, alice at node A and bob at node B; alice submits a message with
# swaks, node A queues it durably and delivers it by SMTP to bob's onion service over a
# private Tor network on 127.0.0.1 (3 authorities + 3 relays, Debian's tor, arti in the
# nodes), and bob reads it over IMAP with Python's imaplib.
# ONIONPOST_DEMO_TRANSPORT=direct uses the direct loopback transport instead (no Tor).
set -euo pipefail
BIN=$1; WORK=$2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { awk -v k="$1" '$1==k {print $2}'; }

for n in a b; do
  name=$([ $n = a ] && echo alice || echo bob)
  echo "\$ onionpost-node --home $WORK/node-$n identity new $name"
  "$BIN/onionpost-node" --home "$WORK/node-$n" identity new "$name" | tee "$WORK/node-$n.id"
done
A_ADDR=$(field address: < "$WORK/node-a.id"); A_PW=$(field password: < "$WORK/node-a.id")
B_ADDR=$(field address: < "$WORK/node-b.id"); B_PW=$(field password: < "$WORK/node-b.id")
A_SMTP=$(port); A_SUB=$(port); A_IMAP=$(port); B_SMTP=$(port); B_SUB=$(port); B_IMAP=$(port)
if [ "${ONIONPOST_DEMO_TRANSPORT:-onion}" = onion ]; then
  echo; echo "==> a private Tor network on 127.0.0.1 (onionpost-devnet tor up)"
  "$BIN/onionpost-devnet" tor up --dir "$WORK/tor" > "$WORK/tor.out" 2>&1 &
  echo $! >> "$WORK/pids"
  for _ in $(seq 600); do [ -f "$WORK/tor/node-transport.toml" ] && break; sleep 0.1; done
  [ -f "$WORK/tor/node-transport.toml" ] || { cat "$WORK/tor.out"; exit 1; }
  cat "$WORK/tor.out"
  TRANSPORT_A=$(cat "$WORK/tor/node-transport.toml"); TRANSPORT_B=$TRANSPORT_A
  # Over Tor, mail arrives on each identity's onion service: no inbound TCP listener at all.
  SMTP_A=""; SMTP_B=""
else
  SMTP_A=$(printf '[smtp]\nlisten = "127.0.0.1:%s"' "$A_SMTP")
  SMTP_B=$(printf '[smtp]\nlisten = "127.0.0.1:%s"' "$B_SMTP")
  TRANSPORT_A=$(printf '[transport]\nkind = "direct"\n[transport.direct]\n"%s" = "127.0.0.1:%s"' "${B_ADDR#*@}" "$B_SMTP")
  TRANSPORT_B=$(printf '[transport]\nkind = "direct"\n[transport.direct]\n"%s" = "127.0.0.1:%s"' "${A_ADDR#*@}" "$A_SMTP")
fi
cat > "$WORK/node-a.toml" <<TOML
$SMTP_A
[submission]
listen = "127.0.0.1:$A_SUB"
[imap]
listen = "127.0.0.1:$A_IMAP"
[queue]
retry_base_secs = 1
retry_max_secs = 5
$TRANSPORT_A
TOML
cat > "$WORK/node-b.toml" <<TOML
$SMTP_B
[submission]
listen = "127.0.0.1:$B_SUB"
[imap]
listen = "127.0.0.1:$B_IMAP"
[queue]
retry_base_secs = 1
retry_max_secs = 5
$TRANSPORT_B
TOML
for n in a b; do
  "$BIN/onionpost-node" --home "$WORK/node-$n" run --config "$WORK/node-$n.toml" 2> "$WORK/node-$n.log" &
  echo $! >> "$WORK/pids"
done
for p in $A_SUB $B_IMAP; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

echo; echo "==> alice submits a message to bob with swaks (SMTP submission, AUTH PLAIN)"
swaks --silent 1 --server 127.0.0.1:$A_SUB --auth PLAIN --auth-user "$A_ADDR" --auth-password "$A_PW" \
  --from "$A_ADDR" --to "$B_ADDR" --header "Subject: hello from the onionpost demo" \
  --body "Serverless mail: no provider between alice and bob." && echo "accepted by node A"

echo; echo "==> bob reads his INBOX over IMAP (Python imaplib); over Tor the first delivery waits for bob's onion service"
python3 - "$B_IMAP" "$B_ADDR" "$B_PW" <<'PY'
import imaplib, sys, time, email, email.policy
port, user, pw = sys.argv[1:]
for _ in range(1800):
    M = imaplib.IMAP4('127.0.0.1', int(port)); M.login(user, pw); M.select('INBOX')
    typ, data = M.search(None, 'ALL')
    if data[0].split(): break
    M.logout(); time.sleep(0.1)
else:
    sys.exit("the message did not arrive")
typ, msg = M.fetch(data[0].split()[-1], '(RFC822)')
m = email.message_from_bytes(msg[0][1], policy=email.policy.default)
for h in ('From', 'To', 'Subject', 'Date', 'Message-ID'):
    print(f"{h}: {m[h]}")
print(); print(m.get_content().strip())
M.logout()
PY
echo; echo "\$ onionpost-node --home $WORK/node-a status"
"$BIN/onionpost-node" --home "$WORK/node-a" status
