use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tar::{Builder, Header};

use super::*;
use crate::config::PullLimits;

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn dir(b: &mut Builder<Vec<u8>>, path: &str) {
    let mut h = header(EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, io::empty()).unwrap();
}

fn file(b: &mut Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32, uid: u64) {
    let mut h = header(EntryType::Regular, mode, data.len() as u64);
    h.set_uid(uid);
    h.set_gid(uid);
    b.append_data(&mut h, path, data).unwrap();
}

fn pax_xattr(b: &mut Builder<Vec<u8>>, key: &str, value: &str) {
    let rec = format!(" SCHILY.xattr.{key}={value}\n");
    let mut len = rec.len() + 2;
    if format!("{len}{rec}").len() != len {
        len += 1;
    }
    let body = format!("{len}{rec}");
    let mut h = header(EntryType::XHeader, 0o644, body.len() as u64);
    b.append_data(&mut h, "PaxHeaders/x", body.as_bytes()).unwrap();
}

fn sample_layer() -> Vec<u8> {
    let mut b = Builder::new(Vec::new());
    dir(&mut b, "./");
    dir(&mut b, "etc");
    file(&mut b, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0);
    file(&mut b, "etc/secret", b"s", 0o640, 1000);
    pax_xattr(&mut b, "user.carapace", "yes");
    file(&mut b, "etc/tagged", b"t", 0o600, 0);
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/link", "passwd").unwrap();
    let mut h = header(EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "etc/hard", "etc/passwd").unwrap();
    dir(&mut b, "var");
    file(&mut b, "var/.wh.gone", b"", 0o644, 0);
    dir(&mut b, "opaque");
    file(&mut b, "opaque/.wh..wh..opq", b"", 0o644, 0);
    file(&mut b, "opaque/new", b"n", 0o644, 0);
    file(&mut b, "deep/auto/parent", b"p", 0o755, 0);
    let mut h = header(EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "fifo", io::empty()).unwrap();
    b.into_inner().unwrap()
}

fn unpack_bytes(blob: &[u8], diff_id: &Digest) -> (tempfile::TempDir, Result<u64>) {
    unpack_limited(blob, diff_id, &PullLimits::default())
}

fn unpack_limited(
    blob: &[u8],
    diff_id: &Digest,
    limits: &PullLimits,
) -> (tempfile::TempDir, Result<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let blob_path = dir.path().join("blob");
    fs::write(&blob_path, blob).unwrap();
    let image = ImageBudget::new(limits.max_image_unpacked_bytes);
    let res = unpack_layer(&blob_path, &dir.path().join("out"), diff_id, limits, &image);
    (dir, res)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    io::Write::write_all(&mut gz, data).unwrap();
    gz.finish().unwrap()
}

fn limit_hit(res: &Result<u64>) -> &'static str {
    match res {
        Err(ImageError::LimitExceeded { setting, .. }) => setting,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// A raw tar header block (the tar crate refuses to build some of the hostile ones).
fn raw_entry(b: &mut Vec<u8>, kind: u8, name: &str, body: &[u8]) {
    let mut h = header(EntryType::new(kind), 0o644, body.len() as u64);
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(body);
    b.resize(b.len().div_ceil(512) * 512, 0);
}

fn check_tree(out: &Path) {
    assert_eq!(fs::read(out.join("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    let secret = fs::metadata(out.join("etc/secret")).unwrap();
    assert_eq!((secret.uid(), secret.gid(), secret.mode() & 0o7777), (1000, 1000, 0o640));
    assert_eq!(
        xattr::get(out.join("etc/tagged"), "user.carapace").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(fs::read_link(out.join("etc/link")).unwrap(), Path::new("passwd"));
    let hard = fs::metadata(out.join("etc/hard")).unwrap();
    assert_eq!(hard.ino(), fs::metadata(out.join("etc/passwd")).unwrap().ino());
    let wh = fs::symlink_metadata(out.join("var/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!out.join("var/.wh.gone").exists());
    assert_eq!(
        xattr::get(out.join("opaque"), OVERLAY_OPAQUE_XATTR).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert!(!out.join("opaque/.wh..wh..opq").exists());
    assert!(out.join("opaque/new").exists());
    assert!(out.join("deep/auto/parent").exists());
    assert!(fs::symlink_metadata(out.join("fifo")).unwrap().file_type().is_fifo());
}

#[test]
fn unpacks_plain_gzip_and_zstd_layers() {
    let tar = sample_layer();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (name, blob) in [("plain", tar.clone()), ("gzip", gz), ("zstd", zst)] {
        let (dir, res) = unpack_bytes(&blob, &diff_id);
        assert_eq!(res.unwrap_or_else(|e| panic!("{name}: {e}")), tar.len() as u64, "{name}");
        check_tree(&dir.path().join("out"));
    }
}

#[test]
fn wrong_diff_id_is_an_error() {
    let tar = sample_layer();
    let (_dir, res) = unpack_bytes(&tar, &Digest::of(b"something else"));
    assert!(matches!(res, Err(ImageError::DigestMismatch { .. })), "{res:?}");
}

#[test]
fn refuses_escapes() {
    // A symlink to / followed by a file "through" it must not write outside the layer.
    let victim = tempfile::tempdir().unwrap();
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "escape", victim.path()).unwrap();
    file(&mut b, "escape/owned", b"x", 0o644, 0);
    let tar = b.into_inner().unwrap();
    let (_dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    assert!(res.is_err());
    assert!(!victim.path().join("owned").exists());

    let mut b = Builder::new(Vec::new());
    dir(&mut b, "a");
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "a/up", victim.path()).unwrap();
    file(&mut b, "a/up/.wh.x", b"", 0o644, 0);
    let tar = b.into_inner().unwrap();
    let (_dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    assert!(res.is_err());
    assert!(!victim.path().join("x").exists());
}

#[test]
fn clean_relative_paths() {
    assert_eq!(clean_relative(Path::new("./a/./b")).unwrap(), Path::new("a/b"));
    assert_eq!(clean_relative(Path::new("/a")).unwrap(), Path::new("a"));
    assert_eq!(clean_relative(Path::new("./")).unwrap(), Path::new(""));
    assert!(clean_relative(Path::new("a/../../b")).is_err());
}

#[test]
fn garbage_is_an_error() {
    let (_dir, res) = unpack_bytes(&[0x1f, 0x8b, 0, 1, 2, 3], &Digest::of(b""));
    assert!(res.is_err());
}

#[test]
fn symlinks_from_earlier_entries_are_never_followed() {
    // etc -> <victim dir>, then etc/passwd; and a regular file over a symlink to a host file.
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("passwd"), "host").unwrap();
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc", victim.path()).unwrap();
    file(&mut b, "etc/passwd", b"owned", 0o644, 0);
    let tar = b.into_inner().unwrap();
    let (_dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    assert!(res.is_err());
    assert_eq!(fs::read_to_string(victim.path().join("passwd")).unwrap(), "host");

    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "f", victim.path().join("passwd")).unwrap();
    file(&mut b, "f", b"owned", 0o4755, 0);
    let tar = b.into_inner().unwrap();
    let (dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    res.unwrap();
    assert_eq!(fs::read_to_string(victim.path().join("passwd")).unwrap(), "host");
    assert_eq!(fs::read(dir.path().join("out/f")).unwrap(), b"owned");
    let mode = fs::metadata(victim.path().join("passwd")).unwrap().mode();
    assert_eq!(mode & 0o7000, 0, "the host file got no setuid bit");
}

#[test]
fn hard_links_stay_inside_the_layer() {
    let victim = tempfile::tempdir().unwrap();
    let secret = victim.path().join("secret");
    fs::write(&secret, "host secret").unwrap();
    let host_ino = fs::metadata(&secret).unwrap().ino();
    let links_to_host = |out: &Path| {
        fs::read_dir(out)
            .map(|rd| rd.flatten().any(|e| e.metadata().is_ok_and(|m| m.ino() == host_ino)))
            .unwrap_or(false)
    };
    // Through a symlink planted by an earlier entry.
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "sym", victim.path()).unwrap();
    let mut h = header(EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "hl", "sym/secret").unwrap();
    let tar = b.into_inner().unwrap();
    let (dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    assert!(res.is_err(), "{res:?}");
    assert!(!links_to_host(&dir.path().join("out")));
    // An absolute target names a path inside the layer, not on the host.
    let mut b = Builder::new(Vec::new());
    let mut h = header(EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "abs", &secret).unwrap();
    let tar = b.into_inner().unwrap();
    let (dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    assert!(res.is_err(), "{res:?}");
    assert!(!links_to_host(&dir.path().join("out")));
    // `..` in the target.
    let mut raw = Vec::new();
    let mut h = header(EntryType::Link, 0o644, 0);
    h.set_path("up").unwrap();
    h.as_gnu_mut().unwrap().linkname[..9].copy_from_slice(b"../secret");
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    let (_dir, res) = unpack_bytes(&raw, &Digest::of(&raw));
    assert!(res.is_err(), "{res:?}");
}

#[test]
fn device_nodes_are_not_created_and_host_xattrs_are_dropped() {
    let mut b = Builder::new(Vec::new());
    for (kind, name) in [(EntryType::Char, "null"), (EntryType::Block, "sda")] {
        let mut h = header(kind, 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        b.append_data(&mut h, name, io::empty()).unwrap();
    }
    pax_xattr(&mut b, "trusted.overlay.redirect", "/etc");
    file(&mut b, "redirected", b"x", 0o644, 0);
    pax_xattr(&mut b, "security.selinux", "system_u:object_r:shadow_t:s0");
    file(&mut b, "labelled", b"x", 0o644, 0);
    let tar = b.into_inner().unwrap();
    let (dir, res) = unpack_bytes(&tar, &Digest::of(&tar));
    res.unwrap();
    let out = dir.path().join("out");
    assert!(fs::symlink_metadata(out.join("null")).is_err());
    assert!(fs::symlink_metadata(out.join("sda")).is_err());
    assert!(xattr::get(out.join("redirected"), "trusted.overlay.redirect").unwrap().is_none());
    assert!(xattr::get(out.join("labelled"), "security.selinux")
        .unwrap()
        .is_none_or(|v| !v.starts_with(b"system_u:object_r:shadow_t")));
}

#[test]
fn gzip_bomb_stops_at_the_uncompressed_limit() {
    let mut b = Builder::new(Vec::new());
    file(&mut b, "zeros", &vec![0u8; 8 << 20], 0o644, 0);
    let tar = b.into_inner().unwrap();
    let gz = gzip(&tar);
    assert!(gz.len() < 64 << 10);
    let limits = PullLimits { max_layer_unpacked_bytes: 1 << 20, ..Default::default() };
    let (dir, res) = unpack_limited(&gz, &Digest::of(&tar), &limits);
    assert_eq!(limit_hit(&res), "max_layer_unpacked_bytes");
    assert!(res.unwrap_err().to_string().contains("images.limits.max_layer_unpacked_bytes"));
    let written = fs::metadata(dir.path().join("out/zeros")).map(|m| m.len()).unwrap_or(0);
    assert!(written <= 1 << 20, "{written}");
    // Exactly at the limit is fine.
    let limits = PullLimits { max_layer_unpacked_bytes: tar.len() as u64, ..Default::default() };
    let (_dir, res) = unpack_limited(&gz, &Digest::of(&tar), &limits);
    assert_eq!(res.unwrap(), tar.len() as u64);
}

#[test]
fn entry_count_is_bounded() {
    let mut b = Builder::new(Vec::new());
    for i in 0..20 {
        file(&mut b, &format!("f{i}"), b"", 0o644, 0);
    }
    let tar = b.into_inner().unwrap();
    let limits = PullLimits { max_layer_entries: 10, ..Default::default() };
    let (dir, res) = unpack_limited(&tar, &Digest::of(&tar), &limits);
    assert_eq!(limit_hit(&res), "max_layer_entries");
    assert!(fs::read_dir(dir.path().join("out")).unwrap().count() <= 10);
    let limits = PullLimits { max_layer_entries: 20, ..Default::default() };
    unpack_limited(&tar, &Digest::of(&tar), &limits).1.unwrap();
}

#[test]
fn huge_pax_and_long_name_headers_are_refused() {
    let limits = PullLimits { max_tar_header_bytes: 64 << 10, ..Default::default() };
    // A PAX header of 4 MiB (one record) before a file.
    let value = "a".repeat(4 << 20);
    let rec = format!(" comment={value}\n");
    let body = format!("{}{rec}", rec.len() + 8);
    let mut raw = Vec::new();
    raw_entry(&mut raw, b'x', "PaxHeaders/big", body.as_bytes());
    raw_entry(&mut raw, b'0', "after", b"x");
    raw.extend_from_slice(&[0u8; 1024]);
    let (_dir, res) = unpack_limited(&raw, &Digest::of(&raw), &limits);
    assert_eq!(limit_hit(&res), "max_tar_header_bytes");
    // A GNU long name of 1 MiB.
    let mut raw = Vec::new();
    raw_entry(&mut raw, b'L', "././@LongLink", &vec![b'n'; 1 << 20]);
    raw_entry(&mut raw, b'0', "short", b"x");
    raw.extend_from_slice(&[0u8; 1024]);
    let (_dir, res) = unpack_limited(&raw, &Digest::of(&raw), &limits);
    assert_eq!(limit_hit(&res), "max_tar_header_bytes");
    // Big file data is not metadata: a 1 MiB file passes with a 64 KiB header limit.
    let mut b = Builder::new(Vec::new());
    file(&mut b, "big", &vec![7u8; 1 << 20], 0o644, 0);
    let tar = b.into_inner().unwrap();
    unpack_limited(&tar, &Digest::of(&tar), &limits).1.unwrap();
}

#[test]
fn the_layers_of_one_image_share_max_image_unpacked_bytes() {
    let mut b = Builder::new(Vec::new());
    file(&mut b, "zeros", &vec![0u8; 600 << 10], 0o644, 0);
    let tar = b.into_inner().unwrap();
    let (gz, id) = (gzip(&tar), Digest::of(&tar));
    // Two such layers fit one image with room for both, not one with room for 1 MiB.
    let limits =
        PullLimits { max_image_unpacked_bytes: 2 * tar.len() as u64, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    fs::write(&blob, &gz).unwrap();
    let image = ImageBudget::new(limits.max_image_unpacked_bytes);
    for n in 0..2 {
        let out = dir.path().join(format!("ok{n}"));
        assert_eq!(unpack_layer(&blob, &out, &id, &limits, &image).unwrap(), tar.len() as u64);
    }
    let res = unpack_layer(&blob, &dir.path().join("third"), &id, &limits, &image);
    assert_eq!(limit_hit(&res), "max_image_unpacked_bytes");
    let e = res.unwrap_err().to_string();
    assert!(e.contains("the uncompressed layers of the image together"), "{e}");
    assert!(e.contains("images.limits.max_image_unpacked_bytes"), "{e}");
    // A new pull has a budget of its own.
    let image = ImageBudget::new(limits.max_image_unpacked_bytes);
    unpack_layer(&blob, &dir.path().join("again"), &id, &limits, &image).unwrap();
}
