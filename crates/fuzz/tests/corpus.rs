//! Every file of `corpus/<target>/` (seeds and what fuzzing found worth keeping) and of
//! `regressions/<target>/` (inputs that crashed a target once) through its target: a panic,
//! also one the code under test catches itself (virtio-fs guards its FUSE server with
//! `catch_unwind`, which would hide it), fails the test.

use std::cell::Cell;
use std::panic;
use std::path::{Path, PathBuf};
use std::sync::Once;

use carapace_fuzz::{seeds, TARGETS};

thread_local! {
    static PANICS: Cell<u32> = const { Cell::new(0) };
}

/// Counts the panics of each thread (caught or not), then reports them as usual.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(kind).join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// The inputs of `target` that panic it.
fn panicking_inputs(target: &str, run: fn(&[u8]), inputs: &[PathBuf]) -> Vec<String> {
    count_panics();
    let mut bad = Vec::new();
    for path in inputs {
        let data = std::fs::read(path).expect("read corpus file");
        let before = PANICS.with(Cell::get);
        let unwound = panic::catch_unwind(|| run(&data)).is_err();
        if unwound || PANICS.with(Cell::get) != before {
            bad.push(format!("{target}: {}", path.display()));
        }
    }
    bad
}

fn run_target(name: &str) {
    let (_, run) = TARGETS.iter().find(|(n, _)| *n == name).expect("known target");
    let corpus = files(&dir("corpus", name));
    assert!(!corpus.is_empty(), "{name}: empty corpus in {}", dir("corpus", name).display());
    let mut inputs = corpus;
    inputs.extend(files(&dir("regressions", name)));
    let bad = panicking_inputs(name, *run, &inputs);
    assert!(bad.is_empty(), "inputs that panic:\n{}", bad.join("\n"));
}

#[test]
fn virtio_chain_corpus() {
    run_target("virtio_chain");
}

#[test]
fn virtio_mmio_corpus() {
    run_target("virtio_mmio");
}

#[test]
fn vsock_corpus() {
    run_target("vsock");
}

#[test]
fn virtio_fs_corpus() {
    run_target("virtio_fs");
}

#[test]
fn agent_request_corpus() {
    run_target("agent_request");
}

#[test]
fn oci_manifest_corpus() {
    run_target("oci_manifest");
}

#[test]
fn oci_config_corpus() {
    run_target("oci_config");
}

#[test]
fn layer_tar_corpus() {
    run_target("layer_tar");
}

#[test]
fn every_target_has_a_test_here() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let me = include_str!("corpus.rs");
    for n in names {
        assert!(me.contains(&format!("run_target(\"{n}\")")), "no corpus test for {n}");
    }
}

/// What a seed means: gzip output depends on which deflate backend cargo's feature
/// unification picked for this build (miniz_oxide alone, zlib-rs in the whole workspace), so a
/// `.gz` seed is compared by what it decompresses to.
fn seed_content(name: &str, data: &[u8]) -> Vec<u8> {
    if !name.ends_with(".gz") {
        return data.to_vec();
    }
    let mut out = Vec::new();
    match std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out) {
        Ok(_) => out,
        Err(_) => data.to_vec(),
    }
}

/// The committed corpus still holds every seed the generator makes (a seed that changed
/// must be rewritten: `cargo test -p carapace-fuzz --test corpus -- --ignored`).
#[test]
fn committed_corpus_holds_the_seeds() {
    for (target, name, data) in seeds::all() {
        let path = dir("corpus", target).join(&name);
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            seed_content(&name, &have) == seed_content(&name, &data),
            "{} differs from its seed: rewrite the seeds",
            path.display()
        );
    }
}

/// Writes the seeds to `corpus/<target>/`.
#[test]
#[ignore]
fn write_seed_corpus() {
    for (target, name, data) in seeds::all() {
        let d = dir("corpus", target);
        std::fs::create_dir_all(&d).expect("corpus dir");
        std::fs::write(d.join(name), data).expect("write seed");
    }
}
