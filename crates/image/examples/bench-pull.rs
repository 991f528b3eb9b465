//! `make bench-pull`: pulls the same image with carapace and with `skopeo copy` (to a local
//! directory) from a local `docker-registry`, alternating, and prints the medians.
//!
//!   cargo run --release -p carapace-image --example bench-pull [-- IMAGE]
//!
//! IMAGE is one of the test images (default test/app:1.0); BENCH_PULL_N sets the number of
//! pulls of each tool (default 10). carapace's pull includes verifying and unpacking the
//! layers (what PullImage does); skopeo's copy only stores the blobs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use carapace_image::{Credentials, ImageServiceConfig, ImageServiceImpl, RegistryConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let image = std::env::args().nth(1).unwrap_or_else(|| "test/app:1.0".into());
    let n: usize =
        std::env::var("BENCH_PULL_N").ok().and_then(|s| s.parse().ok()).unwrap_or(10).max(1);
    let reg = common::TestRegistry::start(None);
    let reference = reg.image(&image);
    let registries = RegistryConfig { insecure: vec![reg.addr.clone()], ..Default::default() };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let root = tempfile::tempdir().expect("temp dir");
        let t = Instant::now();
        let svc = ImageServiceImpl::new(&ImageServiceConfig {
            root: root.path().into(),
            registries: registries.clone(),
            ..Default::default()
        })
        .expect("image store");
        svc.pull(&reference, &Credentials::Anonymous).await.expect("carapace pull");
        ours.push(t.elapsed().as_secs_f64() * 1000.0);

        let dst = tempfile::tempdir().expect("temp dir");
        let t = Instant::now();
        let st = Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false", &format!("docker://{reference}")])
            .arg(format!("dir:{}", dst.path().join("img").display()))
            .status()
            .expect("skopeo (Debian package skopeo)");
        assert!(st.success(), "skopeo copy failed");
        theirs.push(t.elapsed().as_secs_f64() * 1000.0);
        println!("pull {}: carapace {:.1} ms, skopeo {:.1} ms", i + 1, ours[i], theirs[i]);
    }
    let (x, y) = (median(ours), median(theirs));
    println!(
        "pull: carapace median {x:.1} ms, skopeo median {y:.1} ms, ratio {:.2} over {n} pulls",
        x / y
    );
}
