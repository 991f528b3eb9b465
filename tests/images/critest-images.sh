#!/bin/bash
# Builds the images critest v1.36.0 pulls (../shared/TOOLS.md lists them) from Debian packages
# and pushes them over plain HTTP with curl, under critest's own repository paths without the
# registry host (the daemon mirrors registry.k8s.io, gcr.io and k8s.gcr.io to this registry):
#
#   tests/images/critest-images.sh HOST:PORT
#
# Every image is linux/amd64, Docker schema2, one gzip layer on a rootfs of Debian's busybox
# (every applet hard-linked in /bin, a busybox-sh pgrep, /etc/passwd with root, www-data = 33,
# nobody). It is the dynamically linked one of Debian's `busybox` package (with its libraries),
# not busybox-static: that one's sh runs applets in-process instead of exec'ing /bin/<applet>
# (FEATURE_SH_STANDALONE), so a masked /bin/ls would never be consulted, unlike in the upstream
# image. BUSYBOX names it (`make critest-busybox` extracts it under $CARAPACE_CACHE):
#   e2e-test-images/busybox:1.29-2     the rootfs + util-linux's ipcs (with its libc), CMD ["sh"]
#   e2e-test-images/nginx:1.14-2       + /usr/sbin/nginx (critest/nginx.c, gcc -static): PID file
#                                      /var/run/nginx.pid, title "nginx: master process ...",
#                                      busybox httpd on :80 as its worker
#   e2e-test-images/httpd:2.4.39-4     + httpd-foreground: logs "httpd ...", busybox httpd on :80
#   e2e-test-images/nonewprivs:1.3     + /usr/local/bin/nnp (critest/nnp.c), setuid root
#   k8s-staging-cri-tools/hostnet-nginx-amd64:latest   the nginx image on :12003
#   k8s-staging-cri-tools/test-image-user-{uid,username,uid-group,username-group}:latest
#                                      USER 1002, www-data, 1003:1004, www-data:1004
#   k8s-staging-cri-tools/test-image-predefined-group:latest  USER 1000, group 50000 lists it
#   k8s-staging-cri-tools/test-image-{latest:latest,tag:test,tag:all,1,2,3:latest}
#                                      each with its own /IMAGE-NAME file (so its own ID)
#   k8s-staging-cri-tools/test-image-tags:{1,2,3}      one image under three tags
#   pause:3.9                          only /pause (critest/pause.c); critest pulls it as
#                                      registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9
# Not built: test-image-digest@sha256:9700f9a2..., pinned to the upstream image's digest.
# Prints one line per pushed tag: "REPO:TAG MANIFEST_DIGEST".
set -euo pipefail
REG=${1:?usage: critest-images.sh HOST:PORT}
here=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-${CARAPACE_CACHE:-/var/cache/carapace}/critest-busybox/bin/busybox}
CC=${CC:-gcc}
[ -x "$BUSYBOX" ] || { echo "need Debian's busybox at $BUSYBOX (make critest-busybox)" >&2; exit 1; }
for t in curl gzip tar sha256sum "$CC"; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layer_tar() {
  tar --sort=name --mtime=@1700000000 --numeric-owner --owner=0 --group=0 --format=posix \
    --pax-option=delete=atime,delete=ctime -C "$1" -cf "$2" .
}

push_blob() { # REPO FILE -> digest
  local repo=$1 file=$2 d loc
  d=sha256:$(sha "$file")
  if curl -fsS -o /dev/null -I "http://$REG/v2/$repo/blobs/$d" 2>/dev/null; then echo "$d"; return; fi
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$REG$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=$d" ;; *) loc="$loc?digest=$d" ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$file" \
    -o /dev/null "$loc"
  echo "$d"
}

desc() { printf '{"mediaType":"%s","digest":"%s","size":%s}' "$1" "$2" "$3"; }

# push_image REPO "TAG..." ROOTFS_DIR CONFIG_JSON_FRAGMENT (the "config" object's members)
push_image() {
  local repo=$1 tags=$2 dir=$3 cfg=$4 n diff l c t
  IMG_N=$((${IMG_N:-0} + 1)); n=$WORK/img.$IMG_N
  layer_tar "$dir" "$n.tar"
  diff=sha256:$(sha "$n.tar")
  gzip -n -c "$n.tar" >"$n.tar.gz"
  printf '{"architecture":"amd64","os":"linux","config":{%s},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$cfg" "$diff" >"$n.config.json"
  l=$(push_blob "$repo" "$n.tar.gz")
  c=$(push_blob "$repo" "$n.config.json")
  printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]}' \
    application/vnd.docker.distribution.manifest.v2+json \
    "$(desc application/vnd.docker.container.image.v1+json "$c" "$(size "$n.config.json")")" \
    "$(desc application/vnd.docker.image.rootfs.diff.tar.gzip "$l" "$(size "$n.tar.gz")")" \
    >"$n.manifest.json"
  for t in $tags; do
    curl -fsS -X PUT -H "Content-Type: application/vnd.docker.distribution.manifest.v2+json" \
      --data-binary @"$n.manifest.json" -o /dev/null "http://$REG/v2/$repo/manifests/$t"
    echo "$repo:$t sha256:$(sha "$n.manifest.json")"
  done
}

PATHENV='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'

# ---- the busybox rootfs every image starts from ----
B=$WORK/base
mkdir -p $B/bin $B/etc $B/tmp $B/root $B/var/run $B/var/www $B/home $B/usr/bin $B/usr/sbin \
  $B/proc $B/sys $B/dev
cp "$BUSYBOX" $B/bin/busybox
for lib in $(ldd "$BUSYBOX" | grep -o '/[^ ]*'); do
  mkdir -p "$B$(dirname "$lib")"; cp -L "$lib" "$B$lib"
done
for a in $("$BUSYBOX" --list); do
  # Hard links, as in the upstream busybox image: masking /bin/ls (a bind mount over it) must
  # hide only ls, not busybox behind a symlink.
  [ "$a" = busybox ] || ln "$B/bin/busybox" "$B/bin/$a"
done
cat >$B/etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
printf 'root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnogroup:x:65534:\n' >$B/etc/group
echo "127.0.0.1 localhost" >$B/etc/hosts
chmod 1777 $B/tmp; chmod 700 $B/root

# Debian's busybox has no pgrep applet: a busybox-sh one (pgrep PATTERN: the PIDs whose command
# name matches the extended regex; status 1 when none), enough for critest's `pgrep sleep`.
cat >$B/bin/pgrep <<'S'
#!/bin/sh
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for d in /proc/[0-9]*; do
  read -r comm <"$d/comm" 2>/dev/null || continue
  if echo "$comm" | grep -qE -- "$1"; then echo "${d#/proc/}"; found=0; fi
done
exit $found
S
chmod 755 $B/bin/pgrep

copy_base() { rm -rf "$1"; cp -a $B "$1"; }

# copy_with_libs ROOT BINARY: BINARY at its path under ROOT with the shared libraries ldd lists.
copy_with_libs() {
  local root=$1 bin=$2 lib
  mkdir -p "$root$(dirname "$bin")"; cp -L "$bin" "$root$bin"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
}

# ---- e2e-test-images/busybox:1.29-2 ----
# + util-linux's ipcs (Debian's busybox has no ipcs applet; the HostIpc spec runs `ipcs -m`).
U=$WORK/busybox; copy_base $U
IPCS=${IPCS:-/usr/bin/ipcs}
[ -x "$IPCS" ] || { echo "need util-linux's ipcs at $IPCS" >&2; exit 1; }
copy_with_libs $U "$IPCS"
push_image e2e-test-images/busybox 1.29-2 $U "$PATHENV,\"Cmd\":[\"sh\"]"

# ---- nginx:1.14-2 and hostnet-nginx-amd64 ----
N=$WORK/nginx; copy_base $N
mkdir -p $N/usr/share/nginx/html
"$CC" -static -Os -Wall -o $N/usr/sbin/nginx "$here/critest/nginx.c"
strip $N/usr/sbin/nginx 2>/dev/null || true
echo '<html><body><h1>Welcome to nginx!</h1></body></html>' >$N/usr/share/nginx/html/index.html
ngx_cfg() {
  printf '"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","PORT=%s",%s' \
    "$1" '"DOCROOT=/usr/share/nginx/html"],"Cmd":["nginx","-g","daemon off;"],"StopSignal":"SIGQUIT"'
}
push_image e2e-test-images/nginx 1.14-2 $N "$(ngx_cfg 80)"
push_image k8s-staging-cri-tools/hostnet-nginx-amd64 latest $N \
  "$(ngx_cfg 12003),\"ExposedPorts\":{\"12003/tcp\":{}}"

# ---- httpd:2.4.39-4 ----
H=$WORK/httpd; copy_base $H
mkdir -p $H/usr/local/apache2/htdocs $H/usr/local/bin
echo '<html><body><h1>It works!</h1></body></html>' >$H/usr/local/apache2/htdocs/index.html
cat >$H/usr/local/bin/httpd-foreground <<'S'
#!/bin/sh
echo "httpd: busybox httpd serving /usr/local/apache2/htdocs on :80 (pid $$)"
exec httpd -f -vv -p 80 -h /usr/local/apache2/htdocs
S
chmod 755 $H/usr/local/bin/httpd-foreground
push_image e2e-test-images/httpd 2.4.39-4 $H \
  "$PATHENV,\"Cmd\":[\"httpd-foreground\"],\"WorkingDir\":\"/usr/local/apache2\",\"StopSignal\":\"SIGWINCH\""

# ---- nonewprivs:1.3 ----
P=$WORK/nnp; copy_base $P
mkdir -p $P/usr/local/bin
"$CC" -static -Os -Wall -o $P/usr/local/bin/nnp "$here/critest/nnp.c"
strip $P/usr/local/bin/nnp 2>/dev/null || true
chown 0:0 $P/usr/local/bin/nnp; chmod 4755 $P/usr/local/bin/nnp
push_image e2e-test-images/nonewprivs 1.3 $P "$PATHENV,\"Entrypoint\":[\"/usr/local/bin/nnp\"]"

# ---- image users ----
S=k8s-staging-cri-tools
push_image $S/test-image-user-uid latest $B "$PATHENV,\"Cmd\":[\"sh\"],\"User\":\"1002\""
push_image $S/test-image-user-username latest $B "$PATHENV,\"Cmd\":[\"sh\"],\"User\":\"www-data\""
push_image $S/test-image-user-uid-group latest $B "$PATHENV,\"Cmd\":[\"sh\"],\"User\":\"1003:1004\""
push_image $S/test-image-user-username-group latest $B \
  "$PATHENV,\"Cmd\":[\"sh\"],\"User\":\"www-data:1004\""
G=$WORK/group; copy_base $G
mkdir -p $G/home/default-user
echo 'default-user:x:1000:1000::/home/default-user:/bin/sh' >>$G/etc/passwd
printf 'default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n' >>$G/etc/group
chown 1000:1000 $G/home/default-user
push_image $S/test-image-predefined-group latest $G "$PATHENV,\"Cmd\":[\"sh\"],\"User\":\"1000\""

# ---- image-service test images: distinct IDs, and one image under three tags ----
for spec in test-image-latest:latest test-image-tag:test test-image-tag:all \
  test-image-1:latest test-image-2:latest test-image-3:latest; do
  name=${spec%%:*}; tag=${spec#*:}
  T=$WORK/t; copy_base $T
  echo "$spec" >"$T/$name-$tag"
  push_image $S/$name "$tag" $T "$PATHENV,\"Cmd\":[\"sh\"]"
done
T=$WORK/t; copy_base $T
echo test-image-tags >$T/test-image-tags
push_image $S/test-image-tags "1 2 3" $T "$PATHENV,\"Cmd\":[\"sh\"]"

# ---- pause:3.9 (one image reached through two registries' mirrors) ----
Z=$WORK/pause; mkdir -p $Z
"$CC" -static -Os -Wall -o $Z/pause "$here/critest/pause.c"
strip $Z/pause 2>/dev/null || true
push_image pause 3.9 $Z '"Entrypoint":["/pause"]'
