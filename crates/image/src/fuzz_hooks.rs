//! Entry points for the coverage-guided fuzz targets of `crates/fuzz` (feature `fuzz-hooks`,
//! which the product build never enables): what a registry sends, through the code that reads
//! it when pulling. A panic here is a bug: registries are untrusted.

use std::path::Path;

use crate::config::PullLimits;
use crate::digest::Digest;
use crate::imageconfig::ConfigFile;
use crate::manifest::{select_linux_amd64, Manifest};
use crate::unpack::{unpack_layer, ImageBudget};

/// A manifest-endpoint response body: parsed, the linux/amd64 entry picked from an index, and
/// every digest checked, as the puller does before it fetches anything the body names.
/// Returns whether the puller would go on (a linux/amd64 entry, or an image manifest whose
/// digests are all valid).
pub fn manifest(body: &[u8]) -> bool {
    match Manifest::parse(body) {
        Ok(Manifest::Index(entries)) => {
            select_linux_amd64(&entries).is_some_and(|d| Digest::parse(&d.digest).is_ok())
        }
        Ok(Manifest::Image { config, layers }) => {
            Digest::parse(&config.digest).is_ok()
                && layers.iter().all(|l| Digest::parse(&l.digest).is_ok())
        }
        Err(_) => false,
    }
}

/// An image config blob: parsed, its diff_ids checked and the USER split, as pulling and
/// CreateContainer do. Returns whether it is usable (parsed, every diff_id valid).
pub fn image_config(blob: &[u8]) -> bool {
    let Ok(c) = ConfigFile::parse(blob) else {
        return false;
    };
    let _ = c.config.image_user();
    c.rootfs.diff_ids.iter().all(|d| Digest::parse(d).is_ok())
}

/// Most bytes a fuzzed layer may unpack to (the default limit is 8 GiB).
const FUZZ_UNPACKED_LIMIT: u64 = 64 << 20;

/// A layer blob (plain, gzip or zstd tar) unpacked into `dir/layer` (which must not exist) as
/// the puller does, with the default limits but at most [`FUZZ_UNPACKED_LIMIT`] unpacked.
/// The blob goes through `dir/blob`; the diff_id is the blob's own digest, so a plain tar
/// verifies and a compressed one fails only at the end. Returns the unpacked size, or the
/// error's text.
pub fn layer(dir: &Path, blob: &[u8]) -> Result<u64, String> {
    let path = dir.join("blob");
    std::fs::write(&path, blob).map_err(|e| e.to_string())?;
    let limits =
        PullLimits { max_layer_unpacked_bytes: FUZZ_UNPACKED_LIMIT, ..PullLimits::default() };
    let image = ImageBudget::new(limits.max_image_unpacked_bytes);
    unpack_layer(&path, &dir.join("layer"), &Digest::of(blob), &limits, &image)
        .map_err(|e| e.to_string())
}
