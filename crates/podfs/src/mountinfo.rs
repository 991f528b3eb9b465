//! `/proc/self/mountinfo`: which mounts (ID and mount point) lie at or below a directory.

use std::path::{Path, PathBuf};

/// One mount: its ID (the first mountinfo field, as statx's `STATX_MNT_ID`) and mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub point: PathBuf,
}

/// Decodes the octal escapes (`\040` for space, ...) of a mountinfo path.
pub fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts in `mountinfo` text at or below `dir`, deepest (longest mount point) first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<Mount> {
    let mut out: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let point = PathBuf::from(unescape(f.nth(3)?));
            Some(Mount { id, point })
        })
        .filter(|m| m.point.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.point.as_os_str().len()));
    out
}

/// The current mount table of this process.
pub fn read() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 8:1 /data /run/carapace/pods/abc/shared/c1/mounts/0 rw shared:1 - ext4 /dev/sda1 rw
41 22 8:1 /x /run/carapace/pods/abc/shared/c1/mounts/1\\040sp rw - ext4 /dev/sda1 rw
42 40 0:5 / /run/carapace/pods/abc/shared/c1/mounts/0/sub rw - tmpfs t rw
43 22 8:1 /y /run/carapace/pods/abcd/shared rw - ext4 /dev/sda1 rw
";

    #[test]
    fn finds_mounts_below_a_dir_deepest_first() {
        let got = mounts_under(INFO, Path::new("/run/carapace/pods/abc"));
        let m = |id, p: &str| Mount { id, point: PathBuf::from(p) };
        assert_eq!(
            got,
            vec![
                m(42, "/run/carapace/pods/abc/shared/c1/mounts/0/sub"),
                m(41, "/run/carapace/pods/abc/shared/c1/mounts/1 sp"),
                m(40, "/run/carapace/pods/abc/shared/c1/mounts/0"),
            ]
        );
        assert!(mounts_under(INFO, Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\\\"), "a b\tc\\\\");
    }
}
