#!/usr/bin/env bash
# Runs onionpost's whole test suite on a fresh Debian machine: installs what the tests need
# (system packages, cargo-nextest), checks formatting and lints, then runs every test.
# The build directory lives outside the clone (CARGO_TARGET_DIR) so repeated runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_apt=()
for pkg_bin in "libclang-dev:/usr/lib/llvm-14/lib/libclang.so" "clang:/usr/bin/clang" \
               "tor:/usr/bin/tor" "swaks:/usr/bin/swaks" "fetchmail:/usr/bin/fetchmail" \
               "mutt:/usr/bin/mutt" "python3:/usr/bin/python3" "isync:/usr/bin/mbsync" \
               "gnupg:/usr/bin/gpg" "rnp:/usr/bin/rnp" "sq:/usr/bin/sq" \
               "neomutt:/usr/bin/neomutt" "offlineimap3:/usr/bin/offlineimap" "tmux:/usr/bin/tmux"; do
  pkg=${pkg_bin%%:*}; path=${pkg_bin#*:}
  [ -e "$path" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Python's imapclient (PyPI) for node/tests/imap_clients.rs.
if ! python3 -c "import imapclient" >/dev/null 2>&1; then
  echo "==> installing imapclient"
  python3 -m pip install --quiet imapclient || python3 -m pip install --quiet --break-system-packages imapclient
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo nextest run"
cargo nextest run --workspace --no-fail-fast "$@"
