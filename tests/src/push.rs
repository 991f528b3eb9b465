//! Hand-made images for a test registry: blobs and manifests pushed with the distribution HTTP
//! API (monolithic blob upload: POST, then PUT with the digest; manifest PUT), and gzip streams
//! that are cheap to build however much they unpack to (concatenated gzip members, each
//! compressed once), for layers that attack the puller.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An HTTP answer: status, headers (names lower-cased), body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request on its own connection to `addr`.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{method} {path}: no HTTP head in the answer"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{method} {path}: bad status line in {head:?}"))?;
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, hdrs, resp[split + 4..].to_vec()))
}

/// Pushes `data` as a blob of `repo` on the registry at `addr`; returns its digest.
pub fn push_blob(addr: &str, repo: &str, data: &[u8]) -> Result<String> {
    let d = sha256(data);
    let (st, hdrs, body) = http(addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"")?;
    ensure!(st == 202, "starting an upload: HTTP {st}: {}", String::from_utf8_lossy(&body));
    let Some((_, loc)) = hdrs.iter().find(|(k, _)| k == "location") else {
        bail!("upload answer without a Location")
    };
    let loc = loc.strip_prefix(&format!("http://{addr}")).unwrap_or(loc);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = format!("{loc}{sep}digest={d}");
    let (st, _, body) =
        http(addr, "PUT", &put, &[("Content-Type", "application/octet-stream")], data)?;
    ensure!(st == 201, "uploading {d}: HTTP {st}: {}", String::from_utf8_lossy(&body));
    Ok(d)
}

/// PUTs `manifest` (of `media_type`) as `repo:tag`; returns its digest.
pub fn push_manifest(
    addr: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    manifest: &[u8],
) -> Result<String> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let (st, _, body) = http(addr, "PUT", &path, &[("Content-Type", media_type)], manifest)?;
    ensure!(st == 201, "PUT {path}: HTTP {st}: {}", String::from_utf8_lossy(&body));
    Ok(sha256(manifest))
}

/// A gzip stream built from members (RFC 1952 allows any number back to back; every unpacker
/// reads them as one stream). A run of one byte value is a series of identical 1 MiB members,
/// compressed once: a GiB of zeros costs a MiB of compressed output and one MiB of compression.
#[derive(Default)]
pub struct GzipMembers {
    out: Vec<u8>,
    mib_of: HashMap<u8, Vec<u8>>,
}

const MIB: u64 = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = gz.write_all(data);
    gz.finish().unwrap_or_default()
}

impl GzipMembers {
    /// `data` as one member.
    pub fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.out.extend_from_slice(&gzip(data));
        self
    }

    /// `n` bytes of value `byte`.
    pub fn repeat(&mut self, byte: u8, n: u64) -> &mut Self {
        let member = self.mib_of.entry(byte).or_insert_with(|| gzip(&vec![byte; MIB as usize]));
        for _ in 0..n / MIB {
            self.out.extend_from_slice(member);
        }
        let rest = (n % MIB) as usize;
        if rest > 0 {
            self.bytes(&vec![byte; rest]);
        }
        self
    }

    /// The compressed stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

/// A ustar header block for an entry `path` of type `kind` and `size` bytes (owner 0:0, mode
/// 0644, mtime 0).
pub fn tar_header(path: &str, kind: tar::EntryType, size: u64) -> Result<[u8; 512]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(*h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_unpack_to_the_whole_stream() {
        let mut g = GzipMembers::default();
        let gz = g.bytes(b"head").repeat(0, 3 * MIB + 5).repeat(b'a', 7).finish();
        assert!(gz.len() < 64 << 10, "{} bytes", gz.len());
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, 4 + 3 * MIB + 5 + 7);
        assert_eq!(&out[..4], b"head");
        assert!(out[4..out.len() - 7].iter().all(|&b| b == 0));
        assert_eq!(&out[out.len() - 7..], b"aaaaaaa");
    }

    #[test]
    fn sha256_of_nothing() {
        let want = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256(b""), want);
    }
}
