#!/usr/bin/env bash
# Builds the carapace guest kernel (uncompressed vmlinux) from Debian's linux-source-6.1 package:
# `make tinyconfig` + kernel.fragment. The result is cached under $CARAPACE_CACHE/kernel/<hash>/,
# where <hash> covers the source package version, the fragment and this script; a cache hit
# does nothing. Prints the path of the cached vmlinux on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CARAPACE_CACHE:-/var/cache/carapace}
src_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$src_tar" ] || { echo "build-kernel: $src_tar missing (apt-get install linux-source-6.1)" >&2; exit 1; }
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
hash=$( { echo "$src_ver"; cat "$here/kernel.fragment" "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
out="$cache/kernel/$hash"
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

mkdir -p "$cache/kernel"
work=$(mktemp -d "$cache/kernel/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-kernel: extracting linux-source $src_ver into $work" >&2
tar -C "$work" -xf "$src_tar"
cd "$work"/linux-source-6.1
export ARCH=x86_64
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$here/kernel.fragment" >/dev/null
make -s olddefconfig
# Every option the fragment asks for must have stuck (a dependency we missed would silently drop it).
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" .config || { echo "build-kernel: $line did not stick" >&2; missing=1; } ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}; grep -q "^$opt=" .config && { echo "build-kernel: $opt should be off" >&2; missing=1; } ;;
  esac
done < "$here/kernel.fragment"
[ "$missing" = 0 ] || exit 1
echo "build-kernel: make vmlinux (about 15 min on 2 cores)" >&2
make -s -j"$(nproc)" vmlinux >&2
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp .config "$out.tmp/config"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out/vmlinux"
