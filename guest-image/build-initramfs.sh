#!/usr/bin/env bash
# Builds the carapace guest initramfs: an uncompressed newc cpio whose /init is the carapace-agent
# (a static binary), plus the directories the agent mounts on and /dev/console (char 5:1), which
# the kernel opens as init's stdin/stdout/stderr.
#
#   build-initramfs.sh AGENT_BINARY OUTPUT
#
# Deterministic: entries sorted (C locale), mtimes fixed to 0, owner 0:0, inode/device numbers
# normalised (cpio --reproducible), so equal inputs give a byte-identical archive and its content
# hash can key caches. The agent is copied with debug info stripped (set CARAPACE_KEEP_SYMBOLS=1
# to keep it). OUTPUT is written atomically (temp file + rename). Prints OUTPUT's path.
# Must run as root (mknod of /dev/console in the staging directory).
set -euo pipefail

usage() { echo "usage: $0 AGENT_BINARY OUTPUT" >&2; exit 2; }
[ $# -eq 2 ] || usage
agent=$1
output=$2

die() { echo "build-initramfs: $*" >&2; exit 1; }
[ -f "$agent" ] || die "agent binary $agent does not exist (build it with: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p carapace-agent --target x86_64-unknown-linux-gnu)"
[ "$(id -u)" = 0 ] || die "must run as root (mknod /dev/console)"
command -v cpio >/dev/null || die "cpio missing (apt-get install cpio)"
# A dynamically linked /init cannot start: the initramfs has no loader or libc.
if command -v file >/dev/null; then
  file -L "$agent" | grep -Eq 'statically linked|static-pie linked' \
    || die "$agent is not a static binary (build with -C target-feature=+crt-static)"
fi

outdir=$(dirname -- "$output")
mkdir -p -- "$outdir"
stage=$(mktemp -d)
tmp=$(mktemp "$outdir/.$(basename -- "$output").XXXXXX")
trap 'rm -rf -- "$stage"; rm -f -- "$tmp"' EXIT

# Mount points (the agent creates /dev/pts and /dev/shm inside devtmpfs, and
# /sys/fs/cgroup exists in sysfs). /etc and /root exist for programs that expect them.
for d in dev proc sys run tmp etc root; do mkdir -m 0755 "$stage/$d"; done
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
mknod -m 0600 "$stage/dev/console" c 5 1

cp -- "$agent" "$stage/init"
if [ "${CARAPACE_KEEP_SYMBOLS:-0}" != 1 ]; then
  command -v strip >/dev/null || die "strip missing (apt-get install binutils), or set CARAPACE_KEEP_SYMBOLS=1"
  strip --strip-debug -- "$stage/init"
fi
chmod 0755 "$stage/init"

# Fixed ownership and mtimes for reproducibility.
chown -hR 0:0 "$stage"
find "$stage" -exec touch -h -d @0 {} +

(
  cd "$stage"
  find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --quiet --null --create --format=newc --owner=0:0 --reproducible
) > "$tmp"
chmod 0644 "$tmp"
mv -f -- "$tmp" "$output"
trap 'rm -rf -- "$stage"' EXIT
echo "$output"
