//! A hostile registry: images pushed with the registry HTTP API to a real `docker-registry` on
//! 127.0.0.1 that try to exhaust the host (gzip bomb, huge PAX header, size-0 descriptor,
//! oversized config and manifest). Each pull fails with an error naming the bound, the
//! process's peak RSS stays bounded and nothing of the failed pull stays in the store.
//! A binary of its own, so that the RSS measure sees no other test.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use carapace_image::{ImageServiceConfig, ImageServiceImpl, PullLimits, RegistryConfig};
use common::TestRegistry;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{ImageSpec, PullImageRequest};
use sha2::{Digest as _, Sha256};
use tonic::Request;

const MIB: u64 = 1 << 20;
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// One HTTP/1.1 request on its own connection: (status, headers lower-cased, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hdrs, resp[split + 4..].to_vec())
}

fn header<'a>(hdrs: &'a [(String, String)], name: &str) -> &'a str {
    hdrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// Pushes a blob (POST an upload, PUT its data with the digest); returns the digest.
fn push_blob(reg: &TestRegistry, repo: &str, data: &[u8]) -> String {
    let d = sha(data);
    let (st, hdrs, body) = http(&reg.addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(st, 202, "{}", String::from_utf8_lossy(&body));
    let loc = header(&hdrs, "location");
    let loc = loc.strip_prefix(&format!("http://{}", reg.addr)).unwrap_or(loc);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = format!("{loc}{sep}digest={d}");
    let (st, _, body) =
        http(&reg.addr, "PUT", &put, &[("Content-Type", "application/octet-stream")], data);
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
    d
}

fn push_manifest(reg: &TestRegistry, repo: &str, tag: &str, manifest: &[u8]) {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let (st, _, body) =
        http(&reg.addr, "PUT", &path, &[("Content-Type", DOCKER_MANIFEST)], manifest);
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
}

fn config_json(diff_ids: &[String], pad: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("PAD={}", "p".repeat(pad))]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn manifest_json(config: (&str, u64), layers: &[(&str, u64)], pad: usize) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": DOCKER_LAYER, "digest": d, "size": s}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers,
    });
    if pad > 0 {
        m["annotations"] = serde_json::json!({"pad": "m".repeat(pad)});
    }
    serde_json::to_vec(&m).unwrap()
}

/// A gzip'ed tar holding one file of `size` zero bytes, and the tar's digest (diff_id).
fn gzip_bomb(size: u64) -> (Vec<u8>, String) {
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    ids(&mut h);
    gzip_tar(&[h.as_bytes()], size)
}

/// Gzips `blocks` then `zeros` zero bytes then the tar end; returns (gzip, sha of the tar).
fn gzip_tar(blocks: &[&[u8]], zeros: u64) -> (Vec<u8>, String) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut hash = Sha256::new();
    let mut put = |data: &[u8]| {
        hash.update(data);
        gz.write_all(data).unwrap();
    };
    for b in blocks {
        put(b);
    }
    let chunk = vec![0u8; MIB as usize];
    let mut left = zeros.div_ceil(512) * 512 + 1024;
    while left > 0 {
        let n = left.min(MIB);
        put(&chunk[..n as usize]);
        left -= n;
    }
    (gz.finish().unwrap(), format!("sha256:{}", hex::encode(hash.finalize())))
}

/// A tar whose first member is a PAX header of `size` bytes (one record).
fn huge_pax(size: usize) -> (Vec<u8>, String) {
    let value = "a".repeat(size);
    let rec = format!(" comment={value}\n");
    let mut len = rec.len() + 9;
    if format!("{len}{rec}").len() != len {
        len += 1;
    }
    let body = format!("{len}{rec}");
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/big").unwrap();
    h.set_size(body.len() as u64);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    ids(&mut h);
    let mut data = h.as_bytes().to_vec();
    data.extend_from_slice(body.as_bytes());
    data.resize(data.len().div_ceil(512) * 512, 0);
    let mut f = tar::Header::new_ustar();
    f.set_path("after").unwrap();
    f.set_size(0);
    f.set_entry_type(tar::EntryType::Regular);
    f.set_mode(0o644);
    ids(&mut f);
    gzip_tar(&[&data, f.as_bytes()], 0)
}

fn ids(h: &mut tar::Header) {
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
}

fn vm_hwm_kib() -> u64 {
    let s = fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn store_entries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["blobs/sha256", "layers/sha256", "images", "tmp"] {
        for e in fs::read_dir(root.join(d)).unwrap() {
            out.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_images_fail_with_bounded_memory_and_leave_nothing() {
    let reg = TestRegistry::start(None);
    let limits = PullLimits {
        max_manifest_bytes: 64 << 10,
        max_config_bytes: 64 << 10,
        max_layer_unpacked_bytes: 32 * MIB,
        max_tar_header_bytes: 64 << 10,
        ..Default::default()
    };
    let root = tempfile::tempdir().unwrap();
    let svc = ImageServiceImpl::new(&ImageServiceConfig {
        root: root.path().to_path_buf(),
        registries: RegistryConfig { insecure: vec![reg.addr.clone()], ..Default::default() },
        limits,
        ..Default::default()
    })
    .unwrap();

    // 1 GiB of zeros in about 1 MiB of gzip; 128 MiB of PAX header in a few hundred KiB.
    let (bomb, bomb_diff) = gzip_bomb(1 << 30);
    let (pax, pax_diff) = huge_pax(128 << 20);
    assert!(bomb.len() < 4 << 20 && pax.len() < 4 << 20);
    let repo = "evil/app";
    let bomb_d = push_blob(&reg, repo, &bomb);
    let pax_d = push_blob(&reg, repo, &pax);
    let cfg = |diff: &str, pad| config_json(&[diff.to_string()], pad);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();

    let c = cfg(&bomb_diff, 0);
    let cd = push_blob(&reg, repo, &c);
    let m = manifest_json((&cd, c.len() as u64), &[(&bomb_d, bomb.len() as u64)], 0);
    cases.push(("bomb", m, "images.limits.max_layer_unpacked_bytes"));

    let c = cfg(&pax_diff, 0);
    let cd = push_blob(&reg, repo, &c);
    let m = manifest_json((&cd, c.len() as u64), &[(&pax_d, pax.len() as u64)], 0);
    cases.push(("pax", m, "images.limits.max_tar_header_bytes"));

    // The size-0 descriptor is for the bomb: an unchecked read would fetch and unpack it.
    let c = cfg(&bomb_diff, 0);
    let cd = push_blob(&reg, repo, &c);
    let m = manifest_json((&cd, c.len() as u64), &[(&bomb_d, 0)], 0);
    cases.push(("size0", m, "size 0 for a non-empty blob"));

    // A config whose descriptor lies about its (large) size is cut off at the stated size.
    let big = cfg(&bomb_diff, 8 << 20);
    let bigd = push_blob(&reg, repo, &big);
    let m = manifest_json((&bigd, 1000), &[(&bomb_d, bomb.len() as u64)], 0);
    cases.push(("config-lies", m, "size mismatch"));
    let m = manifest_json((&bigd, big.len() as u64), &[(&bomb_d, bomb.len() as u64)], 0);
    cases.push(("config-big", m, "images.limits.max_config_bytes"));

    let c = cfg(&bomb_diff, 0);
    let cd = push_blob(&reg, repo, &c);
    let m = manifest_json((&cd, c.len() as u64), &[(&bomb_d, bomb.len() as u64)], 1 << 20);
    cases.push(("manifest-big", m, "images.limits.max_manifest_bytes"));

    for (tag, m, _) in &cases {
        push_manifest(&reg, repo, tag, m);
    }
    drop((bomb, pax, big));
    // Building the hostile blobs took memory here: restart the peak from the current RSS.
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = vm_hwm_kib();
    for (tag, _, want) in &cases {
        let image = format!("{}/{repo}:{tag}", reg.addr);
        let req = PullImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        let err = svc.pull_image(Request::new(req)).await.expect_err(tag);
        assert!(err.message().contains(want), "{tag}: {err:?}");
        assert_eq!(store_entries(root.path()), Vec::<String>::new(), "{tag}: left in the store");
    }
    let grown_mib = vm_hwm_kib().saturating_sub(before) / 1024;
    // The caps are 64 KiB of metadata and 64 KiB manifests/configs: whatever the pulls
    // buffer besides stays far below the 128 MiB header and 1 GiB bomb.
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
}
