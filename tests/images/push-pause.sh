#!/bin/bash
# Pushes test/pause:latest (busybox `sleep` forever, one uncompressed OCI layer) to a registry
# over plain HTTP, for containerd's sandbox_image in `make bench-cri`.
#
#   tests/images/push-pause.sh HOST:PORT WORKDIR
set -euo pipefail
REG=${1:?usage: push-pause.sh HOST:PORT WORKDIR} W=${2:?usage: push-pause.sh HOST:PORT WORKDIR}
mkdir -p "$W/stage/bin"
install -m 0755 "${BUSYBOX:-/bin/busybox}" "$W/stage/bin/busybox"
ln -s busybox "$W/stage/bin/sleep"
tar --sort=name --mtime=@1700000000 --numeric-owner --owner=0 --group=0 \
  -C "$W/stage" -cf "$W/layer.tar" .
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
L=$(sha "$W/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sleep","2147483647"]},%s}' \
  "$(printf '"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}' "$L")" > "$W/config.json"
C=$(sha "$W/config.json")
push_blob() {
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/test/pause/blobs/uploads/" \
    | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case $loc in http*) ;; *) loc="http://$REG$loc" ;; esac
  case $loc in *\?*) loc="$loc&digest=sha256:$2" ;; *) loc="$loc?digest=sha256:$2" ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$1" \
    -o /dev/null "$loc"
}
push_blob "$W/layer.tar" "$L"
push_blob "$W/config.json" "$C"
OCI=application/vnd.oci.image
printf '{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[%s]}' \
  "$OCI.manifest.v1+json" \
  "$(printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' \
      "$OCI.config.v1+json" "$C" "$(size "$W/config.json")")" \
  "$(printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' \
      "$OCI.layer.v1.tar" "$L" "$(size "$W/layer.tar")")" > "$W/manifest.json"
curl -fsS -X PUT -H "Content-Type: $OCI.manifest.v1+json" --data-binary @"$W/manifest.json" \
  -o /dev/null "http://$REG/v2/test/pause/manifests/latest"
