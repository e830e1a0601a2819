#!/usr/bin/env bash
# Runs the compose devnet's partition and fault tests (devnet/tests/compose.rs): installs what
# they need (Docker engine and compose tool, debootstrap, cargo-nextest), builds the release
# binaries and the images (docker/build-images.sh: nothing is pulled), then runs the tests
# against containers on Docker networks of their own. Extra arguments go to nextest.
# scripts/test.sh runs the same tests on debug binaries with a 60 s soak; this is the longer
# run (release images, ONIONPOST_COMPOSE_SOAK_SECS default 180 s).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_apt=()
command -v docker >/dev/null || need_apt+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

./docker/build-images.sh
# The whole workspace with the feature on, as scripts/test.sh builds it (a -p selection would
# unify dependency features differently and compile them again).
echo "==> cargo nextest run --workspace --features onionpost-devnet/compose-tests -E 'binary(compose)'"
cargo nextest run --workspace --features onionpost-devnet/compose-tests -E 'binary(compose)' \
  --no-fail-fast --test-threads "${ONIONPOST_COMPOSE_THREADS:-2}" "$@"
