#!/usr/bin/env bash
# Lays out a minimal busybox root filesystem for container tests, from Debian's `busybox-static`
# package (never downloaded: `apt-get install busybox-static` provides /bin/busybox).
#
#   tests/rootfs/busybox.sh DEST
#
# DEST gets: bin/busybox + one symlink per applet in bin/ (sh, cat, echo, dd, nc, ...),
# etc/{passwd,group,hostname,hosts,resolv.conf}, empty mount points (proc sys dev tmp run),
# root/ and home/user (uid 1000). Files are owned by root (uid 0), so a non-root user cannot
# write them. Idempotent; prints DEST.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
dest=$1
bb=${BUSYBOX:-/bin/busybox}
die() { echo "busybox.sh: $*" >&2; exit 1; }
[ -x "$bb" ] || die "$bb missing (apt-get install busybox-static)"
if command -v file >/dev/null; then
  file -L "$bb" | grep -Eq 'statically linked|static-pie linked' || die "$bb is not static (install busybox-static)"
fi

mkdir -p "$dest"
cd "$dest"
for d in bin sbin etc proc sys dev tmp run root home/user var usr/bin; do mkdir -p "$d"; done
chmod 1777 tmp
chmod 0700 root
install -m 0755 "$bb" bin/busybox
for applet in $("$bb" --list); do
  [ "$applet" = busybox ] && continue
  ln -sfn busybox "bin/$applet"
done
cat > etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
P
cat > etc/group <<'G'
root:x:0:
user:x:1000:
nogroup:x:65534:
G
: > etc/hostname
printf '127.0.0.1 localhost\n::1 localhost\n' > etc/hosts
: > etc/resolv.conf
echo "carapace busybox test rootfs" > etc/motd
chown -R 0:0 .
chown 1000:1000 home/user
chmod 0644 etc/passwd etc/group etc/hostname etc/hosts etc/resolv.conf etc/motd
echo "$dest"
