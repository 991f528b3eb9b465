//! Seeds of the registry targets: manifests, indexes and configs as registries serve them,
//! layers written with `tar` (and gzip).

use std::io::Write;

// ------------------------------------------------------------------------- oci_manifest

fn digest(data: &str) -> String {
    carapace_image::Digest::of(data.as_bytes()).to_string()
}

pub(super) fn oci_manifest() -> Vec<(&'static str, Vec<u8>)> {
    let (c, l1, l2) = (digest("config"), digest("layer 1"), digest("layer 2"));
    let oci = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":1469}},
"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l1}",
"size":2152262}},
{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{l2}","size":32}}],
"annotations":{{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}}}"#
    );
    let docker = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1457,
"digest":"{c}"}},
"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2152262,
"digest":"{l1}"}}]}}"#
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{l2}","size":610,
"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{l1}","size":610,
"platform":{{"architecture":"amd64","os":"linux"}}}},
{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{c}","size":566,
"platform":{{"architecture":"unknown","os":"unknown"}},
"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#
    );
    let list = format!(
        r#"{{"schemaVersion":2,
"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"{l1}",
"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
    );
    let untyped_index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"digest":"{l1}","size":1,
"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
    );
    vec![
        ("oci-manifest.json", oci.into_bytes()),
        ("docker-manifest.json", docker.into_bytes()),
        ("oci-index.json", index.into_bytes()),
        ("docker-manifest-list.json", list.into_bytes()),
        ("index-without-media-type.json", untyped_index.into_bytes()),
        ("schema1.json", br#"{"schemaVersion":1,"name":"library/busybox","fsLayers":[]}"#.to_vec()),
    ]
}

// ------------------------------------------------------------------------- oci_config

pub(super) fn oci_config() -> Vec<(&'static str, Vec<u8>)> {
    let (l1, l2) = (digest("diff 1"), digest("diff 2"));
    let docker = format!(
        r#"{{"architecture":"amd64","config":{{"Hostname":"","User":"",
"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
"Cmd":["sh"],"Image":"sha256:abc","Volumes":null,"WorkingDir":"","Entrypoint":null,
"OnBuild":null,"Labels":null}},
"created":"2023-05-18T22:34:17Z","history":[{{"created":"2023-05-18T22:34:17Z",
"created_by":"/bin/sh -c #(nop) CMD [\"sh\"]","empty_layer":true}}],
"os":"linux","rootfs":{{"type":"layers","diff_ids":["{l1}"]}}}}"#
    );
    let oci = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"User":"1000:1000",
"ExposedPorts":{{"80/tcp":{{}}}},
"Env":["A=1","B="],"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],
"WorkingDir":"/srv","StopSignal":"SIGQUIT","Volumes":{{"/data":{{}}}},
"Labels":{{"maintainer":"x"}}}},
"rootfs":{{"type":"layers","diff_ids":["{l1}","{l2}"]}}}}"#
    );
    vec![
        ("docker-config.json", docker.into_bytes()),
        ("oci-config.json", oci.into_bytes()),
        (
            "named-user.json",
            br#"{"config":{"User":"nobody"},"rootfs":{"type":"layers",
"diff_ids":[]}}"#
                .to_vec(),
        ),
        ("wrong-rootfs-type.json", br#"{"rootfs":{"type":"x","diff_ids":[]}}"#.to_vec()),
    ]
}

// ------------------------------------------------------------------------- layer_tar

fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.set_link_name(l).expect("link name");
    }
    b.append_data(&mut h, path, data).expect("tar entry");
}

fn plain_layer() -> Vec<u8> {
    use tar::EntryType::*;
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "etc/", Directory, 0o755, None, b"");
    entry(&mut b, "etc/hostname", Regular, 0o644, None, b"layer\n");
    entry(&mut b, "etc/hard", Link, 0o644, Some("etc/hostname"), b"");
    entry(&mut b, "bin", Symlink, 0o777, Some("usr/bin"), b"");
    entry(&mut b, "usr/bin/", Directory, 0o755, None, b"");
    entry(&mut b, "usr/bin/su", Regular, 0o4755, None, b"#!/bin/sh\n");
    entry(&mut b, "run/fifo", Fifo, 0o600, None, b"");
    entry(&mut b, "etc/.wh.old", Regular, 0o644, None, b"");
    entry(&mut b, "opt/.wh..wh..opq", Regular, 0o644, None, b"");
    b.append_pax_extensions([("SCHILY.xattr.user.note", b"v".as_slice())]).expect("pax");
    entry(&mut b, "etc/xattr", Regular, 0o644, None, b"x");
    b.into_inner().expect("tar")
}

fn hostile_layer() -> Vec<u8> {
    use tar::EntryType::*;
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "etc", Symlink, 0o777, Some("/etc"), b"");
    entry(&mut b, "dev/", Directory, 0o755, None, b"");
    entry(&mut b, "dev/sda", Block, 0o600, None, b"");
    entry(&mut b, "escape", Link, 0o644, Some("../../outside"), b"");
    let mut raw = b.into_inner().expect("tar");
    // A name with `..` (tar's builder refuses to write one) patched into one more header.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(Regular);
    h.set_mode(0o644);
    h.set_size(0);
    h.as_old_mut().name[..13].copy_from_slice(b"../etc/shadow");
    h.set_cksum();
    let end = raw.len() - 1024;
    raw.truncate(end);
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    raw
}

pub(super) fn layer_tar() -> Vec<(&'static str, Vec<u8>)> {
    let plain = plain_layer();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).expect("gzip");
    vec![
        ("plain.tar", plain),
        ("plain.tar.gz", gz.finish().expect("gzip")),
        ("hostile.tar", hostile_layer()),
    ]
}
