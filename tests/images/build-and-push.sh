#!/bin/bash
# Builds carapace's test images from Debian packages (busybox-static) and pushes them to a
# registry over plain HTTP with curl (the registry API: monolithic blob uploads + manifest PUT).
#
#   tests/images/build-and-push.sh HOST:PORT [USER:PASSWORD]
#
# Images (all linux/amd64 unless said):
#   test/busybox:latest  Docker schema2 manifest, one gzip layer: static busybox, /etc/passwd, CMD ["sh"]
#   test/app:1.0         OCI manifest, 3 layers: base (gzip), app (zstd: hard link, symlink, uid 1000),
#                        cleanup (plain tar: whiteout of /etc/motd, opaque /data); USER 1000:1000,
#                        ENTRYPOINT ["/bin/sh","-c"], CMD ["echo hello from app"], ENV, WORKDIR /app
#   test/multi:latest    OCI index: linux/arm64 (a config saying arm64) + linux/amd64 (busybox as OCI)
# Prints one line per pushed tag: "REPO:TAG MANIFEST_DIGEST".
set -euo pipefail
REG=${1:?usage: build-and-push.sh HOST:PORT [USER:PASSWORD]}
CRED=${2:-}
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || { echo "need a static busybox at $BUSYBOX (Debian busybox-static)" >&2; exit 1; }
for t in curl zstd gzip tar sha256sum; do command -v $t >/dev/null || { echo "missing tool: $t" >&2; exit 1; }; done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
curl_args=(-fsS)
[ -n "$CRED" ] && curl_args+=(-u "$CRED")

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# layer_tar STAGING OUT.tar: a reproducible tar of a staging dir (numeric owners kept).
layer_tar() { tar --sort=name --mtime=@1700000000 --numeric-owner --format=posix --pax-option=delete=atime,delete=ctime -C "$1" -cf "$2" .; }

# push_blob REPO FILE -> prints digest
push_blob() {
  local repo=$1 file=$2 d loc
  d=sha256:$(sha "$file")
  if curl "${curl_args[@]}" -o /dev/null -I "http://$REG/v2/$repo/blobs/$d" 2>/dev/null; then echo "$d"; return; fi
  loc=$(curl "${curl_args[@]}" -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$REG$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=$d" ;; *) loc="$loc?digest=$d" ;; esac
  curl "${curl_args[@]}" -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$file" -o /dev/null "$loc"
  echo "$d"
}

# push_manifest REPO REF MEDIATYPE FILE -> prints digest
push_manifest() {
  curl "${curl_args[@]}" -X PUT -H "Content-Type: $3" --data-binary @"$4" -o /dev/null "http://$REG/v2/$1/manifests/$2"
  echo "sha256:$(sha "$4")"
}

desc() { printf '{"mediaType":"%s","digest":"%s","size":%s}' "$1" "$2" "$3"; }

# ---- base rootfs: static busybox + passwd/group ----
B=$WORK/base; mkdir -p $B/bin $B/etc $B/tmp $B/root $B/home/app $B/data
cp "$BUSYBOX" $B/bin/busybox
for a in sh ls cat echo id env pwd sleep true false test stat readlink mkdir rm touch ps; do ln -s busybox $B/bin/$a; done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > $B/etc/passwd
printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' > $B/etc/group
echo "welcome" > $B/etc/motd
echo old > $B/data/old
chmod 1777 $B/tmp; chmod 700 $B/root; chown 1000:1000 $B/home/app
layer_tar $B $WORK/base.tar
BASE_DIFF=sha256:$(sha $WORK/base.tar)
gzip -n -c $WORK/base.tar > $WORK/base.tar.gz

# ---- test/busybox:latest (Docker schema2) ----
cat > $WORK/busybox-config.json <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["$BASE_DIFF"]}}
JSON
L=$(push_blob test/busybox $WORK/base.tar.gz)
C=$(push_blob test/busybox $WORK/busybox-config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":%s,"layers":[%s]}' \
  "$(desc application/vnd.docker.container.image.v1+json $C $(size $WORK/busybox-config.json))" \
  "$(desc application/vnd.docker.image.rootfs.diff.tar.gzip $L $(size $WORK/base.tar.gz))" > $WORK/busybox-manifest.json
echo "test/busybox:latest $(push_manifest test/busybox latest application/vnd.docker.distribution.manifest.v2+json $WORK/busybox-manifest.json)"

# ---- test/app:1.0 (OCI, gzip + zstd + plain layers) ----
A=$WORK/app; mkdir -p $A/app
printf '#!/bin/sh\necho "hello from app: FOO=$FOO"\n' > $A/app/hello.sh
chmod 755 $A/app/hello.sh
ln $A/app/hello.sh $A/app/hello-hard.sh
ln -s hello.sh $A/app/hello-link.sh
echo secret > $A/app/owned; chmod 640 $A/app/owned
chown -R 1000:1000 $A/app
layer_tar $A $WORK/app.tar
APP_DIFF=sha256:$(sha $WORK/app.tar)
zstd -q -c $WORK/app.tar > $WORK/app.tar.zst

W=$WORK/cleanup; mkdir -p $W/etc $W/data
touch $W/etc/.wh.motd $W/data/.wh..wh..opq
echo new > $W/data/new
layer_tar $W $WORK/cleanup.tar
CLEAN_DIFF=sha256:$(sha $WORK/cleanup.tar)

cat > $WORK/app-config.json <<JSON
{"architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["PATH=/bin","FOO=bar"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hello from app"],"WorkingDir":"/app","Labels":{"org.carapace.test":"app"}},"rootfs":{"type":"layers","diff_ids":["$BASE_DIFF","$APP_DIFF","$CLEAN_DIFF"]}}
JSON
L1=$(push_blob test/app $WORK/base.tar.gz)
L2=$(push_blob test/app $WORK/app.tar.zst)
L3=$(push_blob test/app $WORK/cleanup.tar)
C=$(push_blob test/app $WORK/app-config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s,%s,%s]}' \
  "$(desc application/vnd.oci.image.config.v1+json $C $(size $WORK/app-config.json))" \
  "$(desc application/vnd.oci.image.layer.v1.tar+gzip $L1 $(size $WORK/base.tar.gz))" \
  "$(desc application/vnd.oci.image.layer.v1.tar+zstd $L2 $(size $WORK/app.tar.zst))" \
  "$(desc application/vnd.oci.image.layer.v1.tar $L3 $(size $WORK/cleanup.tar))" > $WORK/app-manifest.json
echo "test/app:1.0 $(push_manifest test/app 1.0 application/vnd.oci.image.manifest.v1+json $WORK/app-manifest.json)"

# ---- test/multi:latest (OCI index) ----
OCI_M=application/vnd.oci.image.manifest.v1+json
sed 's/"amd64"/"arm64"/' $WORK/busybox-config.json > $WORK/arm-config.json
L=$(push_blob test/multi $WORK/base.tar.gz)
CA=$(push_blob test/multi $WORK/busybox-config.json)
CR=$(push_blob test/multi $WORK/arm-config.json)
for arch in amd64 arm64; do
  cfg=$WORK/busybox-config.json; c=$CA
  [ $arch = arm64 ] && { cfg=$WORK/arm-config.json; c=$CR; }
  printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]}' $OCI_M \
    "$(desc application/vnd.oci.image.config.v1+json $c $(size $cfg))" \
    "$(desc application/vnd.oci.image.layer.v1.tar+gzip $L $(size $WORK/base.tar.gz))" > $WORK/multi-$arch.json
  d=$(push_manifest test/multi $(sha256sum $WORK/multi-$arch.json | sed 's/ .*//;s/^/sha256:/') $OCI_M $WORK/multi-$arch.json)
  eval "M_$arch=$d"
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s,%s]}' \
  "$(printf '{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}' $OCI_M $M_arm64 $(size $WORK/multi-arm64.json))" \
  "$(printf '{"mediaType":"%s","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}}' $OCI_M $M_amd64 $(size $WORK/multi-amd64.json))" > $WORK/multi-index.json
echo "test/multi:latest $(push_manifest test/multi latest application/vnd.oci.image.index.v1+json $WORK/multi-index.json)"
