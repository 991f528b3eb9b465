//! virtio-fs tests: a driver-side FUSE client over in-memory queues against a temp directory.
//! Over 600 lines on purpose: one job (the device as a guest drives it), and the client
//! harness is shared by every test.

use std::time::{Duration, Instant};

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, InHeader, InitIn, InitOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut,
    OutHeader, ReadIn, Rename2In, SetattrIn, SetxattrIn, ROOT_ID,
};
use vm_memory::{Bytes, GuestAddress};
use vm_memory_fs::ByteValued;

use vmm_sys_util::eventfd::EventFd;

use super::worker::Context;
use super::*;
use crate::test_utils::{test_memory, CountingInterrupt, TestQueue, XorShift, F_WRITE};

const HIPRIO_BASE: u64 = 0;
const REQUEST_BASE: u64 = 0x8000;
const IN_ADDR: u64 = 0x10_0000;
const OUT_ADDR: u64 = 0x20_0000;
const OUT_LEN: u32 = 0x2_0000;
const HEADER_LEN: usize = std::mem::size_of::<InHeader>();
const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();

fn parse<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = v.as_mut_slice().len();
    v.as_mut_slice().copy_from_slice(&bytes[..n]);
    v
}

fn message(opcode: Opcode, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let header = InHeader {
        len: (HEADER_LEN + body.len()) as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        ..Default::default()
    };
    let mut m = header.as_slice().to_vec();
    m.extend_from_slice(body);
    m
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The driver side: queues in guest memory and a way to make the device serve them.
struct Driver {
    mem: GuestMemory,
    hiprio: TestQueue,
    request: TestQueue,
    /// The driver's ends of the queues' notification eventfds, once handed to a device.
    notifies: Vec<EventFd>,
    unique: u64,
}

/// How requests get served: directly (the worker's loop body) or through the device's thread.
enum Serve<'a> {
    Direct(&'a mut Context),
    Device(&'a mut Fs),
}

impl Driver {
    fn new() -> Driver {
        let mem = test_memory();
        Driver {
            hiprio: TestQueue::at(&mem, HIPRIO_BASE, 64),
            request: TestQueue::at(&mem, REQUEST_BASE, 64),
            notifies: Vec::new(),
            mem,
            unique: 0,
        }
    }

    fn queues(&self) -> Vec<virtio_queue::Queue> {
        vec![self.hiprio.queue(), self.request.queue()]
    }

    /// The queues as a device gets them on activation; keeps the driver's notification ends.
    fn device_queues(&mut self) -> Vec<DeviceQueue> {
        let (queues, notifies) =
            [&self.hiprio, &self.request].iter().map(|q| q.device_queue()).unzip();
        self.notifies = notifies;
        queues
    }

    /// The driver's QueueNotify for queue `index` (what KVM's ioeventfd does).
    fn kick(&self, index: usize) {
        if let Some(fd) = self.notifies.get(index) {
            fd.write(1).unwrap();
        }
    }

    fn context(&self, dir: &Path) -> (Context, Arc<CountingInterrupt>) {
        let int = CountingInterrupt::new();
        let ctx = Context::new(&self.mem, &self.queues(), dir, int.clone()).expect("context");
        (ctx, int)
    }

    fn serve(&self, how: &mut Serve<'_>, want_used: u16) {
        match how {
            Serve::Direct(ctx) => ctx.process_all(),
            Serve::Device(fs) => {
                assert!(fs.active.is_some(), "the device is not active");
                self.kick(1);
                // A generous bound for a loaded machine; only a hung device gets near it.
                let deadline = Instant::now() + Duration::from_secs(30);
                while self.request.used_idx() != want_used {
                    assert!(Instant::now() < deadline, "device did not answer");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }

    /// Sends one request; returns (reply header, reply body).
    fn call(
        &mut self,
        how: &mut Serve<'_>,
        opcode: Opcode,
        nodeid: u64,
        body: &[u8],
    ) -> (OutHeader, Vec<u8>) {
        self.unique += 1;
        let msg = message(opcode, self.unique, nodeid, body);
        self.mem.write_slice(&msg, GuestAddress(IN_ADDR)).unwrap();
        self.mem.write_slice(&vec![0u8; OUT_LEN as usize], GuestAddress(OUT_ADDR)).unwrap();
        let before = self.request.used_idx();
        self.request.add_chain(&[(IN_ADDR, msg.len() as u32, 0), (OUT_ADDR, OUT_LEN, F_WRITE)]);
        self.serve(how, before.wrapping_add(1));
        assert_eq!(self.request.used_idx(), before.wrapping_add(1), "request not returned");
        let (_, len) = self.request.used_elem(before);
        assert!(len as usize >= OUT_HEADER_LEN, "reply of {len} bytes");
        let mut out = vec![0u8; len as usize];
        self.mem.read_slice(&mut out, GuestAddress(OUT_ADDR)).unwrap();
        let header: OutHeader = parse(&out);
        assert_eq!(header.unique, self.unique, "reply to another request");
        assert_eq!(header.len, len, "header length vs used length");
        (header, out.split_off(OUT_HEADER_LEN))
    }

    fn init(&mut self, how: &mut Serve<'_>) -> InitOut {
        let init = InitIn { major: 7, minor: 31, max_readahead: 0x2_0000, flags: 0 };
        let (h, body) = self.call(how, Opcode::Init, 0, init.as_slice());
        assert_eq!(h.error, 0, "INIT failed");
        parse(&body)
    }

    fn lookup(&mut self, how: &mut Serve<'_>, parent: u64, file: &str) -> Result<EntryOut, i32> {
        let (h, body) = self.call(how, Opcode::Lookup, parent, &name(file));
        if h.error != 0 {
            return Err(-h.error);
        }
        Ok(parse(&body))
    }

    /// LOOKUP + OPEN + READ of a file in the root directory.
    fn read_file(&mut self, how: &mut Serve<'_>, file: &str) -> Result<Vec<u8>, i32> {
        let entry = self.lookup(how, ROOT_ID, file)?;
        let open = OpenIn { flags: libc::O_RDONLY as u32, fuse_flags: 0 };
        let (h, body) = self.call(how, Opcode::Open, entry.nodeid, open.as_slice());
        if h.error != 0 {
            return Err(-h.error);
        }
        let opened: OpenOut = parse(&body);
        let read = ReadIn { fh: opened.fh, offset: 0, size: 4096, ..Default::default() };
        let (h, body) = self.call(how, Opcode::Read, entry.nodeid, read.as_slice());
        if h.error != 0 {
            return Err(-h.error);
        }
        Ok(body)
    }
}

fn shared_tree() -> (tempfile::TempDir, PathBuf) {
    let top = tempfile::tempdir().unwrap();
    let shared = top.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::write(top.path().join("secret"), "outside the shared dir\n").unwrap();
    (top, shared)
}

#[test]
fn config_space_holds_tag_and_request_queue_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = Fs::new("carapace", dir.path()).unwrap();
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    assert_eq!(fs.avail_features(), VIRTIO_F_VERSION_1);
    assert_eq!(fs.tag(), "carapace");
    let mut config = [0xffu8; 40];
    fs.read_config(0, &mut config);
    let mut want = [0u8; 40];
    want[..8].copy_from_slice(b"carapace");
    want[36..].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(config, want);
    let mut count = [0u8; 4];
    fs.read_config(36, &mut count);
    assert_eq!(u32::from_le_bytes(count), FS_REQUEST_QUEUES);
    // Reads past the end are zeroes, partial ones too; writes change nothing.
    let mut tail = [0xffu8; 4];
    fs.read_config(38, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
    fs.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0]);
    fs.write_config(0, b"evil");
    fs.read_config(0, &mut config);
    assert_eq!(config, want);
}

#[test]
fn bad_tags_and_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Fs::new("", dir.path()), Err(FsError::InvalidTag(_))));
    assert!(matches!(Fs::new(&"t".repeat(37), dir.path()), Err(FsError::InvalidTag(_))));
    assert!(matches!(Fs::new("a\0b", dir.path()), Err(FsError::InvalidTag(_))));
    Fs::new(&"t".repeat(36), dir.path()).unwrap();
    let missing = dir.path().join("missing");
    assert!(matches!(Fs::new("carapace", &missing), Err(FsError::SharedDir { .. })));
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = Fs::new("carapace", &file).err().expect("a file is not a directory");
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn wrong_queue_count_is_refused_and_notify_before_activation_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs = Fs::new("carapace", dir.path()).unwrap();
    let d = Driver::new();
    let int = CountingInterrupt::new();
    let one = vec![d.hiprio.device_queue().0];
    assert!(matches!(
        fs.activate(d.mem.clone(), int.clone(), one, VIRTIO_F_VERSION_1),
        Err(ActivateError::QueueCount { want: 2, got: 1 })
    ));
    let three =
        vec![d.hiprio.device_queue().0, d.request.device_queue().0, d.request.device_queue().0];
    assert!(fs.activate(d.mem.clone(), int, three, VIRTIO_F_VERSION_1).is_err());
    assert!(fs.active.is_none());
}

#[test]
fn init_lookup_open_read_and_live_host_changes() {
    let (top, shared) = shared_tree();
    let mut d = Driver::new();
    let (mut ctx, int) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    let init = d.init(how);
    assert_eq!(init.major, 7);
    assert!(int.used_count() >= 1, "no interrupt for a used buffer");

    let entry = d.lookup(how, ROOT_ID, "hello.txt").unwrap();
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.size, 20);
    assert_eq!(d.read_file(how, "hello.txt").unwrap(), b"hello from the host\n");
    assert_eq!(d.lookup(how, ROOT_ID, "missing").err(), Some(libc::ENOENT));

    // Written by the host after the guest mounted: seen at once.
    std::fs::write(shared.join("later.txt"), "written after mount\n").unwrap();
    assert_eq!(d.read_file(how, "later.txt").unwrap(), b"written after mount\n");
    // Changed in place: the next open reads the new contents.
    std::fs::write(shared.join("hello.txt"), "changed\n").unwrap();
    assert_eq!(d.read_file(how, "hello.txt").unwrap(), b"changed\n");

    // ".." of the root is the root: the guest cannot reach what lies beside the shared dir.
    let up = d.lookup(how, ROOT_ID, "..").unwrap();
    assert_eq!(d.lookup(how, up.nodeid, "secret").err(), Some(libc::ENOENT));
    assert_eq!(d.lookup(how, ROOT_ID, "../secret").err(), Some(libc::EINVAL));
    assert!(top.path().join("secret").exists());
}

#[test]
fn the_device_serves_requests_on_its_worker_thread() {
    let (_top, shared) = shared_tree();
    let mut d = Driver::new();
    let mut fs = Fs::new("carapace", &shared).unwrap();
    let int = CountingInterrupt::new();
    let queues = d.device_queues();
    fs.activate(d.mem.clone(), int.clone(), queues, VIRTIO_F_VERSION_1).unwrap();
    {
        let how = &mut Serve::Device(&mut fs);
        d.init(how);
        assert_eq!(d.read_file(how, "hello.txt").unwrap(), b"hello from the host\n");
    }
    assert!(int.used_count() >= 1);
    fs.reset();
    assert!(fs.active.is_none());
    // After a reset, a notification is ignored and nothing is served.
    let used = d.request.used_idx();
    d.request.add_chain(&[(IN_ADDR, 64, 0), (OUT_ADDR, 64, F_WRITE)]);
    d.kick(1);
    d.kick(7);
    assert_eq!(d.request.used_idx(), used);
}

#[test]
fn garbage_chains_and_messages_never_panic_and_the_device_keeps_working() {
    let (_top, shared) = shared_tree();
    let mut d = Driver::new();
    let (mut ctx, _int) = d.context(&shared);
    let mut r = XorShift(0x5eed);
    for round in 0..300 {
        match round % 3 {
            // Random descriptors, random heads.
            0 => {
                for i in 0..64u16 {
                    let addr = match r.next() % 3 {
                        0 => r.next(),
                        1 => r.next() % (17 << 20),
                        _ => IN_ADDR + (r.next() % 0x1000),
                    };
                    d.request.write_desc(
                        i,
                        addr,
                        r.next() as u32 % 0x4_0000,
                        r.next() as u16 & 7,
                        r.next() as u16,
                    );
                }
                for _ in 0..(r.next() % 70) {
                    d.request.push_avail((r.next() % 80) as u16);
                }
            }
            // Well-formed chains carrying random bytes, or a header with a real opcode, a random
            // node and a random (often lying) length followed by random bytes.
            _ => {
                let mut msg = vec![0u8; (r.next() % 300) as usize];
                for b in msg.iter_mut() {
                    *b = r.next() as u8;
                }
                if round % 3 == 2 && msg.len() >= HEADER_LEN {
                    let header = InHeader {
                        len: if r.next() & 1 == 0 { msg.len() as u32 } else { r.next() as u32 },
                        opcode: (r.next() % 52) as u32,
                        unique: r.next(),
                        nodeid: r.next() % 4,
                        ..Default::default()
                    };
                    msg[..HEADER_LEN].copy_from_slice(header.as_slice());
                }
                d.mem.write_slice(&msg, GuestAddress(IN_ADDR)).unwrap();
                let out_len = (r.next() % 512) as u32;
                d.request
                    .add_chain(&[(IN_ADDR, msg.len() as u32, 0), (OUT_ADDR, out_len, F_WRITE)]);
            }
        }
        ctx.process_all();
    }
    // A fresh pair of rings (as after a driver reset): the FUSE server still answers.
    let mut d2 = Driver::new();
    d2.mem = d.mem.clone();
    d2.hiprio = TestQueue::at(&d2.mem, HIPRIO_BASE, 64);
    d2.request = TestQueue::at(&d2.mem, REQUEST_BASE, 64);
    let (mut ctx2, _) = d2.context(&shared);
    let how = &mut Serve::Direct(&mut ctx2);
    d2.init(how);
    assert_eq!(d2.read_file(how, "hello.txt").unwrap(), b"hello from the host\n");
    drop(ctx);
}

#[test]
fn a_garbage_request_between_good_ones_gets_its_buffer_back() {
    let (_top, shared) = shared_tree();
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    // Truncated header, readable-only chain, chain pointing outside memory.
    d.mem.write_slice(&[1, 2, 3], GuestAddress(IN_ADDR)).unwrap();
    let before = d.request.used_idx();
    d.request.add_chain(&[(IN_ADDR, 3, 0), (OUT_ADDR, 64, F_WRITE)]);
    d.request.add_chain(&[(IN_ADDR, 3, 0)]);
    d.request.add_chain(&[(u64::MAX - 8, 64, 0), (OUT_ADDR, 64, F_WRITE)]);
    if let Serve::Direct(ctx) = how {
        ctx.process_all();
    }
    assert_eq!(d.request.used_idx(), before.wrapping_add(3));
    for i in 0..3 {
        assert_eq!(d.request.used_elem(before.wrapping_add(i)).1, 0);
    }
    assert_eq!(d.read_file(how, "hello.txt").unwrap(), b"hello from the host\n");
}

// ---- What the guest can create on the host (policy.rs) ----

/// The request body `head` followed by NUL-terminated `names`.
fn body(head: &[u8], names: &[&str]) -> Vec<u8> {
    let mut v = head.to_vec();
    for n in names {
        v.extend_from_slice(&name(n));
    }
    v
}

/// The mode bits (permissions, setuid, setgid, sticky) of a host file, without following it.
fn host_mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn host_xattr(path: &Path, attr: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(attr).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length passed.
    let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 256) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

fn set_host_xattr(path: &Path, attr: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(attr).unwrap();
    // SAFETY: valid C strings and a value of the length passed.
    let r =
        unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "lsetxattr {attr}: {}", std::io::Error::last_os_error());
}

impl Driver {
    fn mknod(&mut self, how: &mut Serve<'_>, file: &str, mode: u32, rdev: u32) -> i32 {
        let m = MknodIn { mode, rdev, umask: 0, padding: 0 };
        -self.call(how, Opcode::Mknod, ROOT_ID, &body(m.as_slice(), &[file])).0.error
    }

    fn mkdir(&mut self, how: &mut Serve<'_>, dir: &str, mode: u32) -> i32 {
        let m = MkdirIn { mode, umask: 0 };
        -self.call(how, Opcode::Mkdir, ROOT_ID, &body(m.as_slice(), &[dir])).0.error
    }

    fn create(&mut self, how: &mut Serve<'_>, file: &str, flags: i32, mode: u32) -> i32 {
        let c = CreateIn { flags: flags as u32, mode, umask: 0, fuse_flags: 0 };
        -self.call(how, Opcode::Create, ROOT_ID, &body(c.as_slice(), &[file])).0.error
    }

    fn open(&mut self, how: &mut Serve<'_>, file: &str, flags: i32) -> i32 {
        let Ok(entry) = self.lookup(how, ROOT_ID, file) else { return libc::ENOENT };
        let o = OpenIn { flags: flags as u32, fuse_flags: 0 };
        -self.call(how, Opcode::Open, entry.nodeid, o.as_slice()).0.error
    }

    /// SETATTR of the mode (FATTR_MODE) or the size (FATTR_SIZE) of `file`.
    fn setattr(&mut self, how: &mut Serve<'_>, file: &str, mode: Option<u32>, size: u64) -> i32 {
        let entry = self.lookup(how, ROOT_ID, file).unwrap();
        let valid = if mode.is_some() { 1 << 0 } else { 1 << 3 };
        let a = SetattrIn { valid, mode: mode.unwrap_or(0), size, ..Default::default() };
        -self.call(how, Opcode::Setattr, entry.nodeid, a.as_slice()).0.error
    }

    fn setxattr(&mut self, how: &mut Serve<'_>, file: &str, attr: &str, value: &[u8]) -> i32 {
        let entry = self.lookup(how, ROOT_ID, file).unwrap();
        let x = SetxattrIn { size: value.len() as u32, flags: 0 };
        let mut b = body(x.as_slice(), &[attr]);
        b.extend_from_slice(value);
        -self.call(how, Opcode::Setxattr, entry.nodeid, &b).0.error
    }

    fn removexattr(&mut self, how: &mut Serve<'_>, file: &str, attr: &str) -> i32 {
        let entry = self.lookup(how, ROOT_ID, file).unwrap();
        -self.call(how, Opcode::Removexattr, entry.nodeid, &name(attr)).0.error
    }
}

#[test]
fn device_nodes_are_refused_fifos_and_sockets_are_not() {
    let (_top, shared) = shared_tree();
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    let null = libc::makedev(1, 3) as u32;
    assert_eq!(d.mknod(how, "null", libc::S_IFCHR | 0o666, null), libc::EPERM);
    assert_eq!(d.mknod(how, "whiteout", libc::S_IFCHR, 0), libc::EPERM);
    assert_eq!(d.mknod(how, "sda", libc::S_IFBLK | 0o660, libc::makedev(8, 0) as u32), libc::EPERM);
    for n in ["null", "whiteout", "sda"] {
        assert!(std::fs::symlink_metadata(shared.join(n)).is_err(), "{n} exists on the host");
    }
    assert_eq!(d.mknod(how, "fifo", libc::S_IFIFO | 0o644, 0), 0);
    assert!(std::fs::symlink_metadata(shared.join("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(d.mknod(how, "sock", libc::S_IFSOCK | 0o644, 0), 0);
    assert!(std::fs::symlink_metadata(shared.join("sock")).unwrap().file_type().is_socket());
    // A regular file through MKNOD loses setuid/setgid like any other.
    assert_eq!(d.mknod(how, "plain", libc::S_IFREG | 0o6755, 0), 0);
    assert_eq!(host_mode(&shared.join("plain")), 0o755);
    // OPEN of the FIFO is refused at once: the worker never blocks on it.
    assert_ne!(d.open(how, "fifo", libc::O_RDONLY), 0);
    // RENAME_WHITEOUT would leave a 0:0 character device where the old name was.
    let r = Rename2In { newdir: ROOT_ID, flags: libc::RENAME_WHITEOUT, padding: 0 };
    let b = body(r.as_slice(), &["hello.txt", "moved.txt"]);
    assert_eq!(-d.call(how, Opcode::Rename2, ROOT_ID, &b).0.error, libc::EPERM);
    assert!(std::fs::metadata(shared.join("hello.txt")).unwrap().is_file());
}

#[test]
fn setuid_and_setgid_are_stripped_on_create_mkdir_and_chmod() {
    let (_top, shared) = shared_tree();
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    assert_eq!(d.create(how, "su", flags, libc::S_IFREG | 0o4755), 0);
    assert_eq!(host_mode(&shared.join("su")), 0o755);
    assert_eq!(d.create(how, "sg", flags, libc::S_IFREG | 0o2755), 0);
    assert_eq!(host_mode(&shared.join("sg")), 0o755);
    // MKDIR: the kernel takes neither bit from the mode (S_ISGID comes from the parent only).
    assert_eq!(d.mkdir(how, "dir", 0o6755), 0);
    assert_eq!(host_mode(&shared.join("dir")), 0o755);
    // chmod
    assert_eq!(d.setattr(how, "hello.txt", Some(libc::S_IFREG | 0o4755), 0), 0);
    assert_eq!(host_mode(&shared.join("hello.txt")), 0o755);
    assert_eq!(d.setattr(how, "hello.txt", Some(0o6711), 0), 0);
    assert_eq!(host_mode(&shared.join("hello.txt")), 0o711);
    // Directories keep S_ISGID (group inheritance), never S_ISUID.
    assert_eq!(d.setattr(how, "dir", Some(0o7700), 0), 0);
    assert_eq!(host_mode(&shared.join("dir")), 0o3700);
    // Sticky and plain permission changes are untouched.
    assert_eq!(d.setattr(how, "hello.txt", Some(0o1640), 0), 0);
    assert_eq!(host_mode(&shared.join("hello.txt")), 0o1640);
}

#[test]
fn an_existing_setuid_file_loses_the_bits_when_the_guest_writes_it() {
    let (_top, shared) = shared_tree();
    for f in ["ro", "wo", "rw", "trunc", "create", "setsize"] {
        let p = shared.join(f);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6755)).unwrap();
    }
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    // Reading changes nothing.
    assert_eq!(d.open(how, "ro", libc::O_RDONLY), 0);
    assert_eq!(host_mode(&shared.join("ro")), 0o6755);
    assert_eq!(d.open(how, "wo", libc::O_WRONLY), 0);
    assert_eq!(d.open(how, "rw", libc::O_RDWR), 0);
    assert_eq!(d.open(how, "trunc", libc::O_RDONLY | libc::O_TRUNC), 0);
    assert_eq!(d.create(how, "create", libc::O_CREAT | libc::O_WRONLY, 0o644), 0);
    assert_eq!(d.setattr(how, "setsize", None, 0), 0);
    for f in ["wo", "rw", "trunc", "create", "setsize"] {
        assert_eq!(host_mode(&shared.join(f)), 0o755, "{f}");
    }
}

#[test]
fn only_user_xattrs_can_be_set_or_removed() {
    let (_top, shared) = shared_tree();
    let file = shared.join("hello.txt");
    set_host_xattr(&file, "trusted.host", b"kept");
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    assert_eq!(d.setxattr(how, "hello.txt", "user.note", b"fine"), 0);
    assert_eq!(host_xattr(&file, "user.note").as_deref(), Some(&b"fine"[..]));
    // File capabilities: version 2 header granting cap_setuid would be a privilege on the host.
    let mut cap = vec![0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4] = 1 << 7;
    for attr in [
        "security.capability",
        "security.selinux",
        "trusted.overlay.opaque",
        "system.posix_acl_access",
        "userx.almost",
    ] {
        assert_eq!(d.setxattr(how, "hello.txt", attr, &cap), libc::EOPNOTSUPP, "{attr}");
        assert_eq!(host_xattr(&file, attr), None, "{attr} reached the host");
    }
    assert_eq!(d.removexattr(how, "hello.txt", "trusted.host"), libc::EOPNOTSUPP);
    assert_eq!(host_xattr(&file, "trusted.host").as_deref(), Some(&b"kept"[..]));
    assert_eq!(d.removexattr(how, "hello.txt", "user.note"), 0);
    assert_eq!(host_xattr(&file, "user.note"), None);
}

#[test]
fn open_never_follows_a_symlink_out_of_the_share() {
    let (top, shared) = shared_tree();
    std::os::unix::fs::symlink(top.path().join("secret"), shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("../secret", shared.join("rel")).unwrap();
    let secret = top.path().join("secret");
    let mode = host_mode(&secret);
    let mut d = Driver::new();
    let (mut ctx, _) = d.context(&shared);
    let how = &mut Serve::Direct(&mut ctx);
    d.init(how);
    for link in ["abs", "rel"] {
        // The guest gets the link itself, to resolve in its own namespace...
        let entry = d.lookup(how, ROOT_ID, link).unwrap();
        assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        // ...and OPEN (for reading or writing) or CREATE through it never reaches the target.
        assert_ne!(d.open(how, link, libc::O_RDONLY), 0, "{link}");
        assert_ne!(d.open(how, link, libc::O_WRONLY | libc::O_TRUNC), 0, "{link}");
        assert_ne!(d.read_file(how, link).err(), None);
        assert_ne!(d.create(how, link, libc::O_CREAT | libc::O_WRONLY, 0o644), 0, "{link}");
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside the shared dir\n");
    assert_eq!(host_mode(&secret), mode);
}

#[test]
fn the_open_file_limit_is_bounded() {
    assert_eq!(open_file_limit(FS_OPEN_FILE_LIMIT, 1 << 20), 65536);
    assert_eq!(open_file_limit(FS_OPEN_FILE_LIMIT, 4096), 4096);
    let dir = tempfile::tempdir().unwrap();
    Fs::new("carapace", dir.path()).unwrap();
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes a local rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(lim.rlim_cur, FS_OPEN_FILE_LIMIT.min(lim.rlim_max));
}
