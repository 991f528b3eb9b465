//! Every host-side file operation on a pod's guest-visible directory.
//!
//! The guest controls everything under `<run_dir>/pods/<pod>/shared` at every moment (virtio-fs
//! serves it read-write): any name there may be a symlink, a FIFO, a device node, or be swapped
//! for one between two system calls. So nothing here resolves a path string that passes through
//! that tree. Each operation starts from a directory descriptor the daemon opened itself (the
//! trusted root) and goes on only through descriptors: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, `O_NOFOLLOW`, `*at` calls relative to an
//! opened directory, `open_tree`/`move_mount` on descriptors, unmounts through the descriptor of
//! the mount itself, and removal that never crosses into another mount.
//!
//! A container's files are made in `<pod>/staging/<cid>`, beside the shared dir on the same
//! mount and invisible to the guest ([`Staged`]), then exposed in one `renameat2(...,
//! RENAME_NOREPLACE)` between the two trusted directory descriptors ([`Staged::expose`]).

mod beneath;
mod disk;
mod error;
mod mount;
pub mod mountinfo;
mod ns;
mod pod;
mod remove;
mod sys;

pub use beneath::{mkdirs_beneath, open_beneath, read_file_beneath, write_file_beneath, DIR_MODE};
pub use disk::{attach_disk, create_image, images_in, mount_image, remove_image, MIN_DISK_BYTES};
pub use error::Error;
pub use mount::{
    bind_beneath, bind_with, harden, unmount_beneath, unmount_tree, Access, VolumeTree,
};
pub use ns::{enter_private as enter_private_mount_ns, MountNs};
pub use pod::{PodDir, Staged, PRIVATE_DIR_MODE, SHARED, STAGING};
pub use remove::{remove_beneath, remove_tree};

#[cfg(test)]
mod ns_tests;
#[cfg(test)]
mod tests;
