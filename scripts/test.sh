#!/usr/bin/env bash
# Runs onionpost's whole test suite on a fresh Debian machine: installs what the tests need
# (system packages, cargo-nextest), checks formatting and lints, then runs every test, the
# compose devnet's container tests too where a Docker engine runs. Arguments go to nextest
# (for example `-E 'binary(lists)'`) and run only the tests they select.
# The build directory lives outside the clone (CARGO_TARGET_DIR) so repeated runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_apt=()
for pkg_bin in "libclang-dev:/usr/lib/llvm-14/lib/libclang.so" "clang:/usr/bin/clang" \
               "tor:/usr/bin/tor" "swaks:/usr/bin/swaks" "fetchmail:/usr/bin/fetchmail" \
               "mutt:/usr/bin/mutt" "python3:/usr/bin/python3" "isync:/usr/bin/mbsync" \
               "gnupg:/usr/bin/gpg" "rnp:/usr/bin/rnp" "sq:/usr/bin/sq" \
               "neomutt:/usr/bin/neomutt" "offlineimap3:/usr/bin/offlineimap" "tmux:/usr/bin/tmux" \
               "postfix:/usr/sbin/postfix" "dnsmasq-base:/usr/sbin/dnsmasq" "bind9-dnsutils:/usr/bin/dig" \
               "openssl:/usr/bin/openssl"; do
  pkg=${pkg_bin%%:*}; path=${pkg_bin#*:}
  [ -e "$path" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The gateway's tests run their own Postfix instances (node/tests/support/outside.rs):
  # the package must configure no system instance. dnsmasq-base is dnsmasq without the
  # system service that would take port 53.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Python's imapclient (PyPI) for node/tests/imap_clients.rs.
if ! python3 -c "import imapclient" >/dev/null 2>&1; then
  echo "==> installing imapclient"
  python3 -m pip install --quiet imapclient || python3 -m pip install --quiet --break-system-packages imapclient
fi
# dkimpy (with pynacl for ed25519), dnspython and aiosmtpd for the gateway's outside world
# (node/tests/support/outside.rs: DKIM signing and verification, an SMTP sink).
if ! python3 -c "import dkim, nacl, dns.resolver, aiosmtpd" >/dev/null 2>&1; then
  echo "==> installing dkimpy pynacl dnspython aiosmtpd"
  python3 -m pip install --quiet dkimpy pynacl dnspython aiosmtpd ||
    python3 -m pip install --quiet --break-system-packages dkimpy pynacl dnspython aiosmtpd
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# The compose devnet's tests need a Docker engine (a daemon cannot be installed from here):
# with one, they run after the others, on images carrying this build's debug binaries; the
# cargo feature that enables them is then on for every step, so the workspace builds once.
FEATURES=()
if docker info >/dev/null 2>&1; then
  FEATURES=(--features onionpost-devnet/compose-tests)
  command -v debootstrap >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq debootstrap >/dev/null; }
else
  echo "==> no Docker engine here: the compose devnet's tests will not run (scripts/test-compose.sh runs them where one is)"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets "${FEATURES[@]}" --quiet -- -D warnings
echo "==> cargo nextest run"
if [ $# -gt 0 ]; then
  # Arguments select tests (nextest ORs filter expressions): run just those.
  exec cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast "$@"
fi
cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast -E 'not binary(compose)'
if [ ${#FEATURES[@]} -gt 0 ]; then
  echo "==> compose devnet: images with this build's binaries, then its partition and fault tests"
  cargo build --workspace --bins "${FEATURES[@]}" --quiet
  ./docker/build-images.sh --no-cargo --bin "$CARGO_TARGET_DIR/debug"
  # The kill-and-restart loop is a soak: a minute here, longer by scripts/test-compose.sh.
  # One test at a time: two devnets of 13 containers on 2 cores once made a tor miss its
  # health deadline.
  ONIONPOST_COMPOSE_SOAK_SECS=${ONIONPOST_COMPOSE_SOAK_SECS:-60} \
    cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast -E 'binary(compose)' --test-threads 1
fi
