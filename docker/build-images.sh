#!/usr/bin/env bash
# Builds the compose devnet's container images on this machine, pulling nothing from any
# image registry:
#
#   onionpost-base:<hash>     Debian bookworm (minbase) made by debootstrap from the Debian
#                             mirror apt already uses, imported with `docker import`. <hash> is
#                             a hash of everything that goes into it (suite, mirror, variant,
#                             extra packages, this recipe's version, debootstrap's version):
#                             it is rebuilt only when one of those changes.
#   onionpost-tor:dev         + Debian's tor (authorities and relays of the private network)
#   onionpost-validator:dev   + onionpost-ledger and onionpost-devnet (its health check)
#   onionpost-node:dev        + onionpost-node, onionpost, onionpost-devnet, swaks, curl (SMTP
#                             submission and IMAP clients, run inside the container because
#                             the node's client listeners are loopback-only)
#
# The project's binaries are built on the host (release profile, shared target directory) and
# copied in; nothing is compiled inside an image. Docker's layer cache makes a rebuild with
# unchanged binaries take seconds.
#
# Usage: docker/build-images.sh [--no-cargo] [--bin DIR]
#   --no-cargo  do not run `cargo build --release`; use the binaries already in DIR
#   --bin DIR   where the release binaries are (default $CARGO_TARGET_DIR/release)
# Needs: root (debootstrap), Docker; installs debootstrap when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

BIN_DIR="$CARGO_TARGET_DIR/release"
RUN_CARGO=1
while [ $# -gt 0 ]; do
  case $1 in
    --no-cargo) RUN_CARGO=0 ;;
    --bin) BIN_DIR=$2; shift ;;
    *) echo "usage: $0 [--no-cargo] [--bin DIR]" >&2; exit 2 ;;
  esac
  shift
done

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
T0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the base image -------------------------------------------------------------------------
SUITE=bookworm
VARIANT=minbase
# ca-certificates for https mirrors; procps for `ps` when debugging a container.
INCLUDE=ca-certificates,procps
RECIPE=2 # bump when the way the base is made changes
MIRROR=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null; then
  echo "==> installing debootstrap"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
DEBOOTSTRAP_VERSION=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo unknown)
# The image gets the host's apt sources (updates and security suites too), so that `apt-get`
# in the derived images installs the same package versions as on the host (tor, for one).
SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list
BASE_HASH=$( { printf '%s\n' "$RECIPE" "$SUITE" "$VARIANT" "$INCLUDE" "$MIRROR" "$DEBOOTSTRAP_VERSION"; cat "$SOURCES"; } \
  | sha256sum | cut -c1-12)
BASE=onionpost-base:$BASE_HASH

if docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "==> $BASE is cached (suite $SUITE, mirror $MIRROR)"
else
  echo "==> building $BASE: debootstrap --variant=$VARIANT $SUITE from $MIRROR"
  WORK=$(mktemp -d /var/tmp/onionpost-rootfs.XXXXXX)
  trap '$SUDO rm -rf "$WORK"' EXIT
  t=$(date +%s.%N)
  $SUDO debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$WORK/rootfs" "$MIRROR" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log"; exit 1; }
  echo "    debootstrap: $(elapsed "$t") s, $($SUDO du -sh "$WORK/rootfs" | cut -f1)"
  $SUDO rm -f "$WORK/rootfs/etc/apt/sources.list"
  $SUDO cp "$SOURCES" "$WORK/rootfs$SOURCES"
  # No caches or logs from the build in the image.
  $SUDO rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"* \
    "$WORK/rootfs/var/log/"*.log
  t=$(date +%s.%N)
  # Through a file, not a pipe: a failed tar must not leave an empty image under $BASE.
  $SUDO tar --numeric-owner -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE $MIRROR (recipe $RECIPE)" \
    "$WORK/rootfs.tar" "$BASE.partial" >/dev/null
  docker run --rm "$BASE.partial" apt-get --version >/dev/null \
    || { echo "the imported base image does not run" >&2; exit 1; }
  docker tag "$BASE.partial" "$BASE"
  docker rmi "$BASE.partial" >/dev/null
  echo "    docker import: $(elapsed "$t") s"
  $SUDO rm -rf "$WORK"
  trap - EXIT
fi
docker tag "$BASE" onionpost-base:latest

# --- the project's binaries -------------------------------------------------------------------
BINS=(onionpost-ledger onionpost-node onionpost-devnet onionpost)
if [ "$RUN_CARGO" = 1 ]; then
  # The whole workspace: -p selections unify dependency features differently and would
  # compile the dependencies again for every other release build (benches).
  echo "==> cargo build --release --workspace --bins"
  t=$(date +%s.%N)
  cargo build --release --workspace --bins
  echo "    cargo: $(elapsed "$t") s"
fi
CTX=$(mktemp -d /var/tmp/onionpost-docker-ctx.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
for b in "${BINS[@]}"; do
  [ -x "$BIN_DIR/$b" ] || { echo "missing $BIN_DIR/$b (build it, or drop --no-cargo)" >&2; exit 1; }
  # A hard link when possible: the build context is then free to make.
  ln "$BIN_DIR/$b" "$CTX/$b" 2>/dev/null || cp "$BIN_DIR/$b" "$CTX/$b"
done
cp docker/*.Dockerfile "$CTX/"

# --- the images -------------------------------------------------------------------------------
for img in tor validator node; do
  t=$(date +%s.%N)
  docker build --build-arg BASE="$BASE" -f "$CTX/$img.Dockerfile" -t "onionpost-$img:dev" "$CTX" \
    > "$CTX/$img.log" 2>&1 \
    || { cat "$CTX/$img.log" >&2; echo "docker build of onionpost-$img failed" >&2; exit 1; }
  # Every copied binary finds its shared libraries in the image.
  missing=$(docker run --rm --network none "onionpost-$img:dev" sh -c 'ldd /usr/local/bin/* | grep "not found" || true')
  [ -z "$missing" ] || { echo "onionpost-$img:dev lacks shared libraries:" >&2; echo "$missing" >&2; exit 1; }
  echo "==> onionpost-$img:dev built in $(elapsed "$t") s ($(docker image inspect -f '{{.Size}}' "onionpost-$img:dev" | awk '{ printf "%d MB", $1 / 1e6 }'))"
done
echo "==> images ready in $(elapsed "$T0") s"
