#!/usr/bin/env bash
# Builds the images of the ckpt Slurm cluster in Docker from nothing, with no container
# registry: only Debian's package mirror (and the crates cargo already has).
#
#   docker/slurm-cluster/build.sh          # prints the image name on its last line
#
# 1. ckpt on the host: `cargo build --release --workspace --exclude ckpt-spank` (the host's
#    glibc 2.36 binaries run on trixie's 2.41); CKPT_BIN_DIR=DIR takes them from DIR instead.
# 2. base image ckpt-slurm-base:<hash>: a Debian 13 (trixie) root file system made by
#    mmdebstrap --variant=minbase (Slurm 24.11, munge, gcc, python3, libslurm-dev for the
#    headers), loaded with `docker import`.
# 3. the SPANK plugin and ckpt-slurm built on the host against Slurm 24.11's headers taken
#    from that image (SLURM_INCLUDE_DIR, own cargo target dir: the host's 22.05 plugin in
#    target/release is left alone).
# 4. cluster image ckpt-slurm:<hash> FROM the base (Dockerfile), also tagged ckpt-slurm:current
#    (the name docker-compose.yml uses).
# Each image is tagged by a hash of its inputs and reused when they have not changed.
# CKPT_DOCKER_REBUILD=1 rebuilds both images (for example to pick up Debian security updates).
#
# Settings: CKPT_DOCKER_CACHE (target/docker-slurm), CKPT_DEBIAN_MIRROR
# (http://deb.debian.org/debian), CKPT_DEBIAN_SECURITY (http://deb.debian.org/debian-security),
# CKPT_BIN_DIR, CKPT_DOCKER_REBUILD.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CKPT_DOCKER_CACHE:-$ROOT/target/docker-slurm}
MIRROR=${CKPT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${CKPT_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
SUITE=trixie
PACKAGES=slurmctld,slurmd,slurm-client,libslurm-dev,munge,procps,iproute2,hostname,gcc,libc6-dev,python3
BASE_REPO=ckpt-slurm-base
IMAGE_REPO=ckpt-slurm
export DOCKER_BUILDKIT=0   # the classic builder: FROM a local, imported image, nothing pulled

T0=$(date +%s.%N)
step() { echo "build.sh: [$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%5.1f", b-a}') s] $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }
hash() { sha256sum | cut -c1-16; }
have_image() { [[ ${CKPT_DOCKER_REBUILD:-} != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (docker info)"
mkdir -p "$CACHE"

# --- 1. ckpt on the host ------------------------------------------------------------------
if [[ -n ${CKPT_BIN_DIR:-} ]]; then
    BIN=$CKPT_BIN_DIR
    step "ckpt binaries from $BIN"
else
    step "cargo build --release --workspace --exclude ckpt-spank"
    (cd "$ROOT" && cargo build --release --workspace --exclude ckpt-spank) || die "cargo build failed"
    BIN=$ROOT/target/release
fi
for f in ckpt ckpt-coordinatord libckpt.so; do [[ -f $BIN/$f ]] || die "missing $BIN/$f"; done

# --- 2. base image: Debian 13 root file system ---------------------------------------------
BASE_KEY=$(printf 'recipe 1\nmmdebstrap --variant=minbase\n%s\n%s\n%s\n%s\n' "$SUITE" "$MIRROR" "$SECURITY" "$PACKAGES" | hash)
BASE=$BASE_REPO:$BASE_KEY
if have_image "$BASE"; then
    step "base image $BASE: reused"
else
    if ! command -v mmdebstrap >/dev/null; then
        [[ $(id -u) == 0 ]] || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
        step "apt-get install mmdebstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null ||
            { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null; } ||
            die "could not install mmdebstrap"
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg   # bookworm's already trusts trixie
    [[ -f $keyring ]] || die "no $keyring (apt-get install debian-archive-keyring)"
    tar=$CACHE/rootfs-$BASE_KEY.tar; part=$CACHE/rootfs-$BASE_KEY.part.tar
    step "mmdebstrap $SUITE ($PACKAGES)"
    mode=root; [[ $(id -u) == 0 ]] || mode=unshare
    mmdebstrap --variant=minbase --mode="$mode" --keyring="$keyring" --include="$PACKAGES" \
        --aptopt='Acquire::Retries "3"' "$SUITE" "$part" \
        "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main" \
        >"$CACHE/mmdebstrap.log" 2>&1 || { tail -20 "$CACHE/mmdebstrap.log" >&2; rm -rf "$part"; die "mmdebstrap failed (log: $CACHE/mmdebstrap.log)"; }
    mv "$part" "$tar"
    step "docker import ($(du -m "$tar" | cut -f1) MB)"
    docker import --change 'ENV LANG=C.UTF-8' --message "ckpt: Debian $SUITE minbase + $PACKAGES" "$tar" "$BASE" >/dev/null
    rm -f "$tar"
fi
BASE_ID=$(docker image inspect --format '{{.Id}}' "$BASE")

# --- 3. the SPANK plugin against Slurm 24.11's headers ----------------------------------------
INC=$CACHE/include-$BASE_KEY
if [[ ! -f $INC/slurm/spank.h ]]; then
    step "Slurm headers from $BASE"
    rm -rf "$INC.tmp" && mkdir -p "$INC.tmp"
    cid=$(docker create "$BASE" true)
    docker cp "$cid:/usr/include/slurm" "$INC.tmp/slurm" && docker rm "$cid" >/dev/null || { docker rm "$cid" >/dev/null; die "no /usr/include/slurm in $BASE"; }
    rm -rf "$INC" && mv "$INC.tmp" "$INC"
fi
v=$(sed -n 's/^#define SLURM_VERSION_NUMBER 0x\([0-9a-f]*\)$/\1/p' "$INC/slurm/slurm_version.h")
SLURM_VERSION=$((16#${v:0:2})).$((16#${v:2:2})).$((16#${v:4:2}))
step "cargo build --release -p ckpt-spank against Slurm $SLURM_VERSION's headers"
PLUGIN_TARGET=$CACHE/cargo-target
(cd "$ROOT" && SLURM_INCLUDE_DIR=$INC CARGO_TARGET_DIR=$PLUGIN_TARGET cargo build --release -p ckpt-spank) ||
    die "building the plugin against $INC failed (needs libclang: apt-get install libclang-dev)"

# --- 4. the cluster image -----------------------------------------------------------------------
CTX=$CACHE/context
rm -rf "$CTX" && mkdir -p "$CTX/bin" "$CTX/etc" "$CTX/programs"
for f in ckpt ckpt-coordinatord libckpt.so; do cp "$BIN/$f" "$CTX/bin/$f"; done
cp "$PLUGIN_TARGET/release/ckpt-slurm" "$CTX/bin/ckpt-slurm"
cp "$PLUGIN_TARGET/release/libspank_ckpt.so" "$CTX/bin/spank_ckpt.so"
cp "$HERE/Dockerfile" "$HERE/entrypoint.sh" "$CTX/"
cp "$HERE/etc/slurm.conf" "$HERE/etc/ckpt.conf" "$CTX/etc/"
cp "$ROOT/tests/programs/counter.c" "$ROOT/tests/programs/common.h" "$CTX/programs/"
KEY=$( { echo "$BASE_ID"; cd "$CTX" && find . -type f -print0 | sort -z | xargs -0 sha256sum; } | hash)
IMAGE=$IMAGE_REPO:$KEY
if have_image "$IMAGE"; then
    step "cluster image $IMAGE: reused"
else
    step "docker build $IMAGE"
    docker build --build-arg BASE="$BASE" -t "$IMAGE" "$CTX" >"$CACHE/docker-build.log" 2>&1 ||
        { tail -20 "$CACHE/docker-build.log" >&2; die "docker build failed (log: $CACHE/docker-build.log)"; }
fi
docker tag "$IMAGE" "$IMAGE_REPO:current"
# older cluster/base images of ours (other hashes) are not needed any more; an image a
# container still uses is kept (docker rmi refuses it)
for old in $(docker images --format '{{.Repository}}:{{.Tag}}' "$IMAGE_REPO"; docker images --format '{{.Repository}}:{{.Tag}}' "$BASE_REPO"); do
    [[ $old == "$IMAGE" || $old == "$IMAGE_REPO:current" || $old == "$BASE" ]] || docker rmi "$old" >/dev/null 2>&1 || true
done
step "done: $IMAGE (= $IMAGE_REPO:current), Slurm $SLURM_VERSION"
echo "$IMAGE"
