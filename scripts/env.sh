# Shared build settings for scripts/*.sh and .ci/run (sourced, not run).
# Keep build products outside the clone so a fresh clone reuses them.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/onionpost-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
