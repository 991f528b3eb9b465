//! Entry points for the coverage-guided fuzz targets of `crates/fuzz` (feature `fuzz-hooks`,
//! which the product build never enables): what a registry sends, through the code that reads
//! it when pulling. A panic here is a bug: registries are untrusted.

use std::path::Path;

use crate::config::PullLimits;
use crate::digest::Digest;
use crate::imageconfig::ConfigFile;
use crate::manifest::{select_linux_amd64, Manifest};
use crate::unpack::unpack_layer;

/// A manifest-endpoint response body: parsed, the linux/amd64 entry picked from an index, and
/// every digest checked, as the puller does before it fetches anything the body names.
pub fn manifest(body: &[u8]) {
    match Manifest::parse(body) {
        Ok(Manifest::Index(entries)) => {
            if let Some(d) = select_linux_amd64(&entries) {
                let _ = Digest::parse(&d.digest);
            }
        }
        Ok(Manifest::Image { config, layers }) => {
            let _ = Digest::parse(&config.digest);
            for l in &layers {
                let _ = Digest::parse(&l.digest);
            }
        }
        Err(_) => {}
    }
}

/// An image config blob: parsed, its diff_ids checked and the USER split, as pulling and
/// CreateContainer do.
pub fn image_config(blob: &[u8]) {
    if let Ok(c) = ConfigFile::parse(blob) {
        for d in &c.rootfs.diff_ids {
            let _ = Digest::parse(d);
        }
        let _ = c.config.image_user();
    }
}

/// Most bytes a fuzzed layer may unpack to (the default limit is 8 GiB).
const FUZZ_UNPACKED_LIMIT: u64 = 64 << 20;

/// A layer blob (plain, gzip or zstd tar) unpacked into `dir/layer` (which must not exist) as
/// the puller does, with the default limits but at most [`FUZZ_UNPACKED_LIMIT`] unpacked.
/// The blob goes through `dir/blob`; the diff_id is the blob's own digest, so a plain tar
/// verifies and a compressed one fails only at the end.
pub fn layer(dir: &Path, blob: &[u8]) {
    let path = dir.join("blob");
    if std::fs::write(&path, blob).is_err() {
        return;
    }
    let limits =
        PullLimits { max_layer_unpacked_bytes: FUZZ_UNPACKED_LIMIT, ..PullLimits::default() };
    let _ = unpack_layer(&path, &dir.join("layer"), &Digest::of(blob), &limits);
}
