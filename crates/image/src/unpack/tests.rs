use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tar::{Builder, Header};

use super::*;

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
    let dir = tempfile::tempdir().unwrap();
    let blob_path = dir.path().join("blob");
    fs::write(&blob_path, blob).unwrap();
    let res = unpack_layer(&blob_path, &dir.path().join("out"), diff_id);
    (dir, res)
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
