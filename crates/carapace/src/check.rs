//! `carapace check`: can this host run pods? Each check prints one line; exit 0 only when all pass.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// KVM device to check.
    #[arg(long, default_value = "/dev/kvm")]
    pub kvm_device: PathBuf,
    /// Directory holding the guest image (vmlinux, initramfs.cpio).
    #[arg(long, default_value = carapace_cri::config::DEFAULT_GUEST_DIR)]
    pub guest_dir: PathBuf,
    /// Only the KVM checks (device, guest boot): what the daemon asks for its RuntimeReady
    /// condition (it checks its profiles' guest files itself).
    #[arg(long)]
    pub kvm_only: bool,
}

/// Outcome of one check: `Ok(detail)` or `Err(what is wrong and what to do)`.
type CheckResult = Result<String, String>;

pub fn run(args: CheckArgs) -> ExitCode {
    let mut failed = 0;
    let mut report = |name: &str, result: CheckResult| match result {
        Ok(detail) => println!("ok    {name}: {detail}"),
        Err(problem) => {
            failed += 1;
            println!("FAIL  {name}: {problem}");
        }
    };
    let kvm = check_kvm_device(&args.kvm_device);
    let kvm_ok = kvm.is_ok();
    report("kvm", kvm);
    if kvm_ok {
        report("guest boot", check_guest_boot(&args.kvm_device));
    } else {
        report("guest boot", Err("not tried: KVM is not usable".into()));
    }
    if !args.kvm_only {
        report("cgroups", check_cgroups());
        report("guest image", check_guest_image(&args.guest_dir));
    }
    if failed == 0 {
        println!("carapace check: this host can run pods");
        ExitCode::SUCCESS
    } else {
        println!("carapace check: this host cannot run pods ({failed} problem(s) above)");
        ExitCode::FAILURE
    }
}

fn check_kvm_device(path: &Path) -> CheckResult {
    if !path.exists() {
        return Err(format!(
            "{} does not exist: enable virtualization (VT-x/AMD-V) and load kvm_intel or kvm_amd",
            path.display()
        ));
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: path contains a NUL byte", path.display()))?;
    let kvm = kvm_ioctls::Kvm::new_with_path(cpath.as_c_str()).map_err(|e| {
        format!("cannot open {}: {e} (are you root or in the kvm group?)", path.display())
    })?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(format!("{} speaks KVM API {api}, carapace needs 12", path.display()));
    }
    let module = loaded_kvm_module().unwrap_or_else(|| "unknown module".into());
    Ok(format!("{} usable, KVM API {api}, {module}", path.display()))
}

/// Which KVM vendor module is loaded, for the report (kvm_intel, kvm_amd, kvm_pvm, ...).
fn loaded_kvm_module() -> Option<String> {
    let modules = fs::read_to_string("/proc/modules").unwrap_or_default();
    let mut names: Vec<&str> = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("kvm_"))
        .collect();
    for builtin in ["kvm_intel", "kvm_amd", "kvm_pvm"] {
        if Path::new("/sys/module").join(builtin).exists() && !names.contains(&builtin) {
            names.push(builtin);
        }
    }
    (!names.is_empty()).then(|| names.join("+"))
}

fn check_guest_boot(kvm: &Path) -> CheckResult {
    crate::probe::guest_boot_capability(kvm)
}

fn check_cgroups() -> CheckResult {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        return Ok(format!("cgroup v2 (unified), controllers: {}", controllers.trim()));
    }
    if root.join("memory").is_dir() || root.join("cpu").is_dir() {
        let unified = root.join("unified").join("cgroup.controllers").exists();
        return Ok(format!(
            "cgroup v1{} (each VMM runs as one process; containers use cgroup v2 inside the guest)",
            if unified { " + v2 hybrid" } else { "" }
        ));
    }
    Err("no cgroup hierarchy mounted at /sys/fs/cgroup".into())
}

fn check_guest_image(dir: &Path) -> CheckResult {
    let kernel = dir.join("vmlinux");
    let initramfs = dir.join("initramfs.cpio");
    let mut magic = [0u8; 20];
    let mut f = fs::File::open(&kernel)
        .map_err(|e| format!("{}: {e} (run `make guest-image`)", kernel.display()))?;
    f.read_exact(&mut magic)
        .map_err(|e| format!("{}: too short to be a kernel: {e}", kernel.display()))?;
    // ELF, 64-bit, x86-64 (e_machine 62 at offset 18).
    if &magic[..4] != b"\x7fELF"
        || magic[4] != 2
        || u16::from_le_bytes([magic[18], magic[19]]) != 62
    {
        return Err(format!("{} is not an x86-64 vmlinux ELF", kernel.display()));
    }
    let size = fs::metadata(&initramfs)
        .map_err(|e| format!("{}: {e} (run `make guest-image`)", initramfs.display()))?
        .len();
    if size == 0 {
        return Err(format!("{} is empty", initramfs.display()));
    }
    Ok(format!("{} and {} ({} KiB)", kernel.display(), initramfs.display(), size / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_device_is_reported_with_advice() {
        let err = check_kvm_device(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(err.contains("/nonexistent/kvm does not exist"), "{err}");
    }

    #[test]
    fn guest_image_must_be_an_x86_64_elf() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_guest_image(dir.path()).unwrap_err().contains("make guest-image"));
        fs::write(dir.path().join("vmlinux"), b"MZ not an elf at all, clearly").unwrap();
        fs::write(dir.path().join("initramfs.cpio"), b"070701").unwrap();
        assert!(check_guest_image(dir.path()).unwrap_err().contains("not an x86-64 vmlinux ELF"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        fs::write(dir.path().join("vmlinux"), &elf).unwrap();
        assert!(check_guest_image(dir.path()).is_ok());
        fs::write(dir.path().join("initramfs.cpio"), b"").unwrap();
        assert!(check_guest_image(dir.path()).unwrap_err().contains("is empty"));
    }
}
