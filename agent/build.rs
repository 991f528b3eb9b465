//! Makes the agent link libseccomp (needed by libcontainer's seccomp
//! support) statically: the agent is the guest's /init and the initramfs
//! has no shared libraries.
//!
//! `libseccomp-sys` asks for `-lseccomp` as a dylib unless
//! LIBSECCOMP_LINK_TYPE=static is set in the environment of the build. To
//! not depend on that, this script puts a directory holding only
//! `libseccomp.a` (from Debian's libseccomp-dev) first on the linker's
//! search path: `ld` then resolves `-lseccomp` to the archive.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBSECCOMP_LIB_PATH");
    let dirs: Vec<PathBuf> =
        std::env::var_os("LIBSECCOMP_LIB_PATH").map(|p| vec![PathBuf::from(p)]).unwrap_or_else(
            || vec!["/usr/lib/x86_64-linux-gnu".into(), "/usr/lib64".into(), "/usr/lib".into()],
        );
    let Some(archive) = dirs.iter().map(|d| d.join("libseccomp.a")).find(|p| p.is_file()) else {
        println!(
            "cargo:warning=libseccomp.a not found (apt-get install libseccomp-dev): \
             the agent links libseccomp dynamically and cannot run as the guest's /init"
        );
        return;
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("seccomp-static");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/seccomp-static");
    std::fs::copy(&archive, out.join("libseccomp.a")).expect("copy libseccomp.a");
    println!("cargo:rerun-if-changed={}", archive.display());
    println!("cargo:rustc-link-search=native={}", out.display());
}
