//! A FUSE filesystem that simulates power loss, for tests/power_loss.rs.
//!
//! Everything lives in memory in two images. The *live* image is what
//! programs see (the page cache of a real disk). The *durable* image is what
//! survives a power cut: a file's bytes and size reach it only through
//! `fsync`/`fdatasync` of that file, and a directory's entries (creations,
//! renames, unlinks) only through `fsync` of that directory — the strict POSIX
//! reading, stricter than ext4's ordered mode. [`PowerFs::cut`] replaces the
//! live image by the durable one: every write, size change and directory entry
//! that was not synced is gone.
//!
//! Writes are write-through (no FUSE writeback cache), so a `write(2)` that
//! returned has reached the live image; a cut must be made with the filesystem
//! unmounted (so the kernel's page cache, which still holds the dropped data,
//! is thrown away too) — [`PowerFs::power_cut`] does unmount, cut, remount.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::workload::Rng;
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = fuser::FUSE_ROOT_ID;
const TTL: Duration = Duration::from_secs(1);
const BLOCK: u64 = 4096;

/// Writes (offset, bytes) since the last fsync, in order.
type Dirty = Vec<(u64, Vec<u8>)>;

enum Node {
    File {
        data: Vec<u8>,
        dirty: Dirty,
        perm: u16,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        parent: u64,
        perm: u16,
    },
}

/// What a power cut threw away.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    /// Files whose live contents differed from their durable contents.
    pub files_rolled_back: usize,
    /// Live bytes that were not durable (written or grown since the last fsync).
    pub bytes_dropped: u64,
    /// Files and directories that existed only in the live image.
    pub entries_dropped: usize,
    /// Unsynced writes that reached the disk anyway (torn cuts only).
    pub writes_kept: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub writes: u64,
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
}

#[derive(Default)]
struct Disk {
    live: HashMap<u64, Node>,
    /// ino → file bytes as of its last fsync.
    durable_data: HashMap<u64, Vec<u8>>,
    /// ino → directory entries as of its last fsync.
    durable_entries: HashMap<u64, BTreeMap<OsString, u64>>,
    /// Every inode's kind (inode numbers are never reused).
    kinds: HashMap<u64, FileType>,
    next_ino: u64,
    counters: Counters,
}

impl Disk {
    fn new() -> Disk {
        let mut disk = Disk {
            next_ino: ROOT + 1,
            ..Disk::default()
        };
        disk.live.insert(
            ROOT,
            Node::Dir {
                entries: BTreeMap::new(),
                parent: ROOT,
                perm: 0o755,
            },
        );
        disk.kinds.insert(ROOT, FileType::Directory);
        disk.durable_entries.insert(ROOT, BTreeMap::new());
        disk
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.live.get(&ino)?;
        let (kind, size, perm, nlink) = match node {
            Node::File { data, perm, .. } => (FileType::RegularFile, data.len() as u64, *perm, 1),
            Node::Dir { perm, .. } => (FileType::Directory, 0, *perm, 2),
        };
        let now = SystemTime::now();
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn entries(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.live.get_mut(&ino) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            Some(Node::File { .. }) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.entries(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<FileAttr, i32> {
        let ino = self.next_ino;
        let entries = self.entries(parent)?;
        if entries.contains_key(name) {
            return Err(libc::EEXIST);
        }
        entries.insert(name.to_owned(), ino);
        self.next_ino += 1;
        let kind = match node {
            Node::File { .. } => FileType::RegularFile,
            Node::Dir { .. } => FileType::Directory,
        };
        self.kinds.insert(ino, kind);
        self.live.insert(ino, node);
        Ok(self.attr(ino).expect("just inserted"))
    }

    /// Drops `ino` from the live image unless another directory still names it.
    fn forget_if_unlinked(&mut self, ino: u64) {
        let named = self.live.values().any(|n| match n {
            Node::Dir { entries, .. } => entries.values().any(|&i| i == ino),
            Node::File { .. } => false,
        });
        if !named {
            self.live.remove(&ino);
        }
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), i32> {
        let ino = self.lookup(parent, name)?;
        match (self.live.get(&ino), want_dir) {
            (Some(Node::Dir { entries, .. }), true) if !entries.is_empty() => {
                return Err(libc::ENOTEMPTY)
            }
            (Some(Node::Dir { .. }), false) => return Err(libc::EISDIR),
            (Some(Node::File { .. }), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.entries(parent)?.remove(name);
        self.forget_if_unlinked(ino);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), i32> {
        let ino = self.lookup(parent, name)?;
        let replaced = self.entries(new_parent)?.get(new_name).copied();
        if let Some(old) = replaced {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            if let Some(Node::Dir { entries, .. }) = self.live.get(&old) {
                if !entries.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
            }
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        self.entries(parent)?.remove(name);
        self.entries(new_parent)?.insert(new_name.to_owned(), ino);
        if let Some(Node::Dir { parent, .. }) = self.live.get_mut(&ino) {
            *parent = new_parent;
        }
        if let Some(old) = replaced.filter(|&old| old != ino) {
            self.forget_if_unlinked(old);
        }
        Ok(())
    }

    fn file(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Dirty), i32> {
        match self.live.get_mut(&ino) {
            Some(Node::File { data, dirty, .. }) => Ok((data, dirty)),
            Some(Node::Dir { .. }) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), i32> {
        let (data, dirty) = self.file(ino)?;
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        dirty.push((offset, bytes.to_vec()));
        self.counters.writes += 1;
        Ok(())
    }

    fn set_len(&mut self, ino: u64, len: u64) -> Result<(), i32> {
        let (data, _) = self.file(ino)?;
        data.resize(len as usize, 0);
        Ok(())
    }

    /// fsync/fdatasync of a file: its bytes and size become durable.
    fn sync_file(&mut self, ino: u64) -> Result<(), i32> {
        let Some(Node::File { data, dirty, .. }) = self.live.get_mut(&ino) else {
            return Err(libc::EBADF);
        };
        let durable = self.durable_data.entry(ino).or_default();
        durable.resize(data.len(), 0);
        for (offset, bytes) in dirty.drain(..) {
            let start = (offset as usize).min(data.len());
            let end = (offset as usize + bytes.len()).min(data.len());
            durable[start..end].copy_from_slice(&data[start..end]);
        }
        self.counters.fsyncs += 1;
        Ok(())
    }

    /// fsync of a directory: its entries become durable.
    fn sync_dir(&mut self, ino: u64) -> Result<(), i32> {
        let entries = self.entries(ino)?.clone();
        self.durable_entries.insert(ino, entries);
        self.counters.dir_fsyncs += 1;
        Ok(())
    }

    /// The power cut: the live image becomes what is durable. With `torn`,
    /// the disk got part of the unsynced writes out first: each survives or
    /// not at random, in any combination, and a survivor may be cut short.
    fn cut(&mut self, torn: Option<&mut Rng>) -> CutReport {
        let mut report = CutReport::default();
        if let Some(rng) = torn {
            for (ino, node) in &self.live {
                let Node::File { dirty, .. } = node else {
                    continue;
                };
                if dirty.is_empty() {
                    continue;
                }
                let durable = self.durable_data.entry(*ino).or_default();
                for (offset, bytes) in dirty {
                    if rng.below(2) == 0 {
                        continue;
                    }
                    let len = if rng.below(4) == 0 {
                        rng.below(bytes.len() as u64 + 1) as usize
                    } else {
                        bytes.len()
                    };
                    let (start, end) = (*offset as usize, *offset as usize + len);
                    if durable.len() < end {
                        durable.resize(end, 0);
                    }
                    durable[start..end].copy_from_slice(&bytes[..len]);
                    report.writes_kept += 1;
                }
            }
        }
        let mut live = HashMap::new();
        let mut stack = vec![(ROOT, ROOT)];
        while let Some((ino, parent)) = stack.pop() {
            if live.contains_key(&ino) {
                continue;
            }
            let node = match self.kinds.get(&ino) {
                Some(FileType::Directory) => {
                    let entries = self.durable_entries.get(&ino).cloned().unwrap_or_default();
                    for &child in entries.values() {
                        stack.push((child, ino));
                    }
                    Node::Dir {
                        entries,
                        parent,
                        perm: 0o755,
                    }
                }
                _ => {
                    let data = self.durable_data.get(&ino).cloned().unwrap_or_default();
                    if let Some(Node::File { data: was, .. }) = self.live.get(&ino) {
                        if *was != data {
                            report.files_rolled_back += 1;
                            report.bytes_dropped += was
                                .iter()
                                .enumerate()
                                .filter(|&(i, b)| data.get(i) != Some(b))
                                .count() as u64;
                        }
                    }
                    Node::File {
                        data,
                        dirty: Vec::new(),
                        perm: 0o644,
                    }
                }
            };
            live.insert(ino, node);
        }
        report.entries_dropped = self.live.keys().filter(|k| !live.contains_key(k)).count();
        self.live = live;
        report
    }
}

/// One mount's FUSE handler; the disk outlives it.
struct Handler {
    disk: Arc<Mutex<Disk>>,
}

impl Handler {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().expect("powerfs disk lock")
    }
}

fn new_file(mode: u32, umask: u32) -> Node {
    Node::File {
        data: Vec::new(),
        dirty: Vec::new(),
        perm: (mode & !umask & 0o7777) as u16,
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, result: Result<FileAttr, i32>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, 0),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Handler {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut disk = self.disk();
        let attr = disk
            .lookup(parent, name)
            .and_then(|ino| disk.attr(ino).ok_or(libc::ENOENT));
        entry(reply, attr);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.disk().attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut disk = self.disk();
        if let Some(len) = size {
            if let Err(e) = disk.set_len(ino, len) {
                return reply.error(e);
            }
        }
        if let Some(mode) = mode {
            match disk.live.get_mut(&ino) {
                Some(Node::File { perm, .. } | Node::Dir { perm, .. }) => {
                    *perm = (mode & 0o7777) as u16
                }
                None => return reply.error(libc::ENOENT),
            }
        }
        match disk.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::EPERM);
        }
        entry(reply, self.disk().add(parent, name, new_file(mode, umask)));
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let node = Node::Dir {
            entries: BTreeMap::new(),
            parent,
            perm: (mode & !umask & 0o7777) as u16,
        };
        entry(reply, self.disk().add(parent, name, node));
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.disk().remove(parent, name, false));
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.disk().remove(parent, name, true));
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.disk().rename(parent, name, newparent, newname, flags),
        );
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.disk().live.get(&ino) {
            Some(_) => reply.opened(0, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut disk = self.disk();
        match disk.file(ino) {
            Ok((data, _)) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.disk().write(ino, offset as u64, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) is not a sync.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        empty(reply, self.disk().sync_file(ino));
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let disk = self.disk();
        let (entries, parent) = match disk.live.get(&ino) {
            Some(Node::Dir {
                entries, parent, ..
            }) => (entries.clone(), *parent),
            Some(Node::File { .. }) => return reply.error(libc::ENOTDIR),
            None => return reply.error(libc::ENOENT),
        };
        let listing = [
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ]
        .into_iter()
        .chain(entries.into_iter().map(|(name, child)| {
            let kind = disk
                .kinds
                .get(&child)
                .copied()
                .unwrap_or(FileType::RegularFile);
            (child, kind, name)
        }));
        for (i, (child, kind, name)) in listing.enumerate().skip(offset as usize) {
            if reply.add(child, i as i64 + 1, kind, &name) {
                break;
            }
        }
        drop(disk);
        reply.ok();
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        empty(reply, self.disk().sync_dir(ino));
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let used: u64 = self
            .disk()
            .live
            .values()
            .map(|n| match n {
                Node::File { data, .. } => data.len() as u64,
                Node::Dir { .. } => 0,
            })
            .sum();
        let blocks = 1 << 22; // 16 GiB of 4 KiB blocks
        let free = blocks - used.div_ceil(BLOCK).min(blocks);
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.disk().add(parent, name, new_file(mode, umask)) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let mut disk = self.disk();
        let result = disk.file(ino).map(|(data, dirty)| {
            let end = (offset + length) as usize;
            if data.len() < end {
                dirty.push((data.len() as u64, vec![0; end - data.len()]));
                data.resize(end, 0);
            }
        });
        empty(reply, result);
    }
}

/// A live mount: its session runs on its own thread.
struct Mounted {
    unmounter: fuser::SessionUnmounter,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    /// The FUSE connection's id (the minor number of the mount's device).
    connection: Option<u32>,
}

/// A mounted power-loss filesystem.
pub struct PowerFs {
    disk: Arc<Mutex<Disk>>,
    mountpoint: PathBuf,
    mounted: Option<Mounted>,
}

impl PowerFs {
    /// Mounts an empty filesystem at `mountpoint`. `Err` says why FUSE is not
    /// usable here (no /dev/fuse, not allowed to mount, …).
    pub fn mount(mountpoint: &Path) -> Result<PowerFs, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
        }
        let mut fs = PowerFs {
            disk: Arc::new(Mutex::new(Disk::new())),
            mountpoint: mountpoint.to_owned(),
            mounted: None,
        };
        fs.attach()
            .map_err(|e| format!("mounting a FUSE filesystem failed: {e}"))?;
        Ok(fs)
    }

    fn attach(&mut self) -> std::io::Result<()> {
        let handler = Handler {
            disk: self.disk.clone(),
        };
        let options = [
            MountOption::FSName("powerfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let mut session = fuser::Session::new(handler, &self.mountpoint, &options)?;
        let unmounter = session.unmount_callable();
        let thread = std::thread::spawn(move || session.run());
        let connection = std::fs::metadata(&self.mountpoint)
            .ok()
            .map(|m| libc::minor(std::os::unix::fs::MetadataExt::dev(&m)));
        self.mounted = Some(Mounted {
            unmounter,
            thread,
            connection,
        });
        Ok(())
    }

    fn detach(&mut self) {
        let Some(mut mounted) = self.mounted.take() else {
            return;
        };
        mounted
            .unmounter
            .unmount()
            .expect("unmount the power-loss filesystem");
        if !finishes(&mounted.thread, Duration::from_secs(5)) {
            // fuser only logs a failed umount (seen once: the session kept
            // reading forever). Detach the mount and abort its connection.
            eprintln!(
                "powerfs: unmounting {} did not end the session; detaching it and aborting the FUSE connection",
                self.mountpoint.display()
            );
            force_unmount(&self.mountpoint, mounted.connection);
            assert!(
                finishes(&mounted.thread, Duration::from_secs(10)),
                "the power-loss filesystem at {} would not unmount",
                self.mountpoint.display()
            );
        }
        // The session ends with ENODEV, or ECONNABORTED when the unmount
        // aborts the connection under a pending read: both are the end.
        match mounted.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
            Ok(Err(e)) => panic!("the power-loss filesystem's session failed: {e}"),
            Err(_) => panic!("the power-loss filesystem's session thread panicked"),
        }
    }

    /// Pulls the plug: unmounts (dropping the kernel's caches), throws away
    /// everything not synced, and mounts again. Whatever had files open on
    /// the filesystem must be dead first.
    pub fn power_cut(&mut self) -> CutReport {
        self.cut_and_remount(None)
    }

    /// Like [`PowerFs::power_cut`], but a random part of the unsynced writes
    /// (seeded by `seed`) reached the disk before the power went, some of
    /// them torn: what a real disk may leave behind.
    pub fn torn_power_cut(&mut self, seed: u64) -> CutReport {
        self.cut_and_remount(Some(&mut Rng(seed | 1)))
    }

    fn cut_and_remount(&mut self, torn: Option<&mut Rng>) -> CutReport {
        self.detach();
        let report = self.disk.lock().expect("powerfs disk lock").cut(torn);
        self.attach().expect("remount the power-loss filesystem");
        report
    }

    pub fn counters(&self) -> Counters {
        self.disk.lock().expect("powerfs disk lock").counters
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

/// Whether `thread` finishes within `wait`.
fn finishes<T>(thread: &std::thread::JoinHandle<T>, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    while !thread.is_finished() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A lazy unmount, then an abort of the FUSE connection through fusectl
/// (mounted here if it is not): the session's pending read ends.
fn force_unmount(mountpoint: &Path, connection: Option<u32>) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).unwrap();
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    let Some(id) = connection else { return };
    let connections = Path::new("/sys/fs/fuse/connections");
    if !connections.join(id.to_string()).exists() {
        let (fstype, target) = (c"fusectl", c"/sys/fs/fuse/connections");
        unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    let _ = std::fs::write(connections.join(id.to_string()).join("abort"), b"1");
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        self.detach();
    }
}
