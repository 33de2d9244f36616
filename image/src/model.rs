//! What one process image holds (the `META` section, JSON), independent of how the
//! container frames it. The page data lives in the `PAGES` section; `PAGEMAP` lists its
//! runs.

use serde::{Deserialize, Serialize};

/// Version of the `ProcessMeta` schema inside the META section.
/// 2: pseudo-terminal pairs (`FdKind::Pty`) and the process's terminal (`terminal`);
/// zombies, SysV IPC objects and semaphore adjustments.
pub const META_VERSION: u32 = 2;
/// The oldest `meta_version` still read (later versions only add fields that default).
pub const META_VERSION_OLDEST: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMeta {
    pub meta_version: u32,
    /// The pid the program sees (stable across restarts).
    pub vpid: i32,
    /// The real pid at checkpoint time.
    pub real_pid: i32,
    pub vppid: i32,
    /// Process group and session (virtual ids), to rebuild a process tree.
    #[serde(default)]
    pub pgid: i32,
    #[serde(default)]
    pub sid: i32,
    pub program: String,
    pub exe: String,
    pub argv: Vec<String>,
    pub host: String,
    pub uid: u32,
    pub gid: u32,
    pub created_unix: u64,
    pub generation: u64,
    pub requirements: Requirements,
    pub regions: Vec<Region>,
    pub threads: Vec<ThreadMeta>,
    pub files: Vec<FdMeta>,
    pub attrs: ProcAttrs,
    /// The process's terminal: controlling terminal, foreground group, and the settings of
    /// the terminal of its stdin/stdout/stderr (absent: none of them is a terminal).
    #[serde(default)]
    pub terminal: Option<TerminalMeta>,
    /// Where the restorer jumps (the checkpoint thread's saved context).
    pub entry: Entry,
    /// Children that had exited but were not yet waited for (meta_version 2).
    #[serde(default)]
    pub zombies: Vec<Zombie>,
    /// SysV IPC objects the process used (meta_version 2); several processes of a tree may
    /// list the same object (same `vid`): `ckpt restart` creates it once.
    #[serde(default)]
    pub sysv: Vec<SysvObject>,
    /// This process's SEM_UNDO adjustments (what the kernel would add back at its exit).
    #[serde(default)]
    pub sem_adj: Vec<SemAdj>,
}

/// One SysV IPC object: the id the program knows (`vid`), the kernel's id at the checkpoint
/// (`real`), its key (0 = IPC_PRIVATE) and permission bits, and its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SysvObject {
    Sem {
        vid: i32,
        real: i32,
        key: i32,
        mode: u32,
        values: Vec<u16>,
    },
    Msg {
        vid: i32,
        real: i32,
        key: i32,
        mode: u32,
        qbytes: u64,
        /// The queued messages in order.
        messages: Vec<SysvMessage>,
    },
    Shm {
        vid: i32,
        real: i32,
        key: i32,
        mode: u32,
        size: u64,
        /// The segment's bytes (hex) when this process does not map it; a mapped segment's
        /// bytes are in the mapping's pages (a `SharedMem` region named `/SYSV…`).
        data: Option<String>,
    },
}

impl SysvObject {
    pub fn vid(&self) -> i32 {
        match self {
            SysvObject::Sem { vid, .. }
            | SysvObject::Msg { vid, .. }
            | SysvObject::Shm { vid, .. } => *vid,
        }
    }
    /// "sem", "msg" or "shm".
    pub fn kind(&self) -> &'static str {
        match self {
            SysvObject::Sem { .. } => "sem",
            SysvObject::Msg { .. } => "msg",
            SysvObject::Shm { .. } => "shm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvMessage {
    pub mtype: i64,
    /// The message text (hex).
    pub data: String,
}

/// A SEM_UNDO adjustment of semaphore `num` of set `vid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemAdj {
    pub vid: i32,
    pub num: u16,
    pub adj: i32,
}

/// A child that had ended before the checkpoint and that its parent had not yet waited for.
/// On restart it is re-created as a child that ends the same way before its parent runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    /// Its virtual pid (what the parent's wait returns).
    pub vpid: i32,
    /// Its process group and session (virtual ids).
    pub pgid: i32,
    pub sid: i32,
    /// Its name (`/proc/<pid>/comm`).
    pub comm: String,
    /// Killed by signal `code` (`true`) or exited with status `code`.
    pub killed: bool,
    pub code: i32,
    /// The kernel reported a core dump (not reproduced: the re-created child never dumps).
    pub core_dumped: bool,
}

/// What the machine that restores must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// `uname -r` at checkpoint.
    pub kernel_release: String,
    /// FNV-1a of the [vdso] bytes: cached vdso pointers need the very same vdso.
    pub vdso_hash: u64,
    /// XCR0: the extended register state the signal frames hold.
    pub xsave_features: u64,
    pub page_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Prot {
    pub fn bits(&self) -> u32 {
        (self.read as u32) | ((self.write as u32) << 1) | ((self.exec as u32) << 2)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RegionKind {
    /// Anonymous private memory (incl. thread stacks, malloc arenas).
    Anon,
    /// The brk heap.
    Heap,
    /// The main thread's stack.
    Stack,
    /// A private mapping of a file; unmodified pages are re-read from the file.
    File {
        path: String,
        offset: u64,
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i64,
    },
    /// Shared memory with no file behind it that outlives the processes: MAP_SHARED
    /// anonymous memory (inherited across fork), a deleted /dev/shm file, a memfd or a SysV
    /// segment mapped shared. Every mapping of one object has the same `ino`; the process
    /// with `saved` stores its pages, and on restore all processes map one new object.
    SharedMem {
        ino: u64,
        /// Page offset of the mapping inside the object.
        pgoff: u64,
        name: String,
        saved: bool,
        /// A file on tmpfs mapped shared (`name` is its path): on restore the file is
        /// written back at its path from the saved pages and mapped (meta_version 2).
        #[serde(default)]
        file: Option<TmpfsFile>,
    },
    Vvar,
    VvarVclock,
    Vdso,
}

/// A tmpfs file whose contents the image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsFile {
    /// File size at the checkpoint.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub shared: bool,
    #[serde(flatten)]
    pub kind: RegionKind,
    /// Bytes of this region stored in the image.
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadMeta {
    pub vtid: i32,
    pub name: String,
    /// The runtime's checkpoint thread (not a thread of the program).
    pub runtime: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FdKind {
    /// stdin/stdout/stderr: re-attached to the restarting command's.
    Inherited,
    /// A socket (AF_UNIX, AF_INET, AF_INET6). Connected stream sockets are re-created as a
    /// new connected pair with their peer (which must be in the job) by `ckpt restart`;
    /// `rx` holds the bytes that were waiting in the receive queue (hex), put back.
    Socket {
        inode: u64,
        domain: i32,
        stype: i32,
        /// "listening", "connected", "bound" or "unbound".
        state: String,
        /// Raw sockaddr bytes of getsockname / getpeername (hex).
        local: String,
        remote: String,
        /// AF_UNIX: the inode of the connected peer socket (0 if none).
        peer_inode: u64,
        rx: String,
        /// (level, option, value) of the options that matter (TCP_NODELAY, SO_KEEPALIVE,
        /// buffer sizes, SO_REUSEADDR).
        options: Vec<(i32, i32, i32)>,
        /// UNIX datagram and seqpacket sockets: the messages waiting in the receive queue,
        /// in order, each (sender address, bytes) in hex (meta_version 2).
        #[serde(default)]
        messages: Vec<(String, String)>,
    },
    Regular {
        path: String,
        offset: u64,
        dev: u64,
        ino: u64,
        /// (size, xxh3 of the content) of a small file opened read-only: on restore, a file
        /// replaced by an identical copy (the batch script Slurm writes again for a requeued
        /// job, which bash reads through fd 255) is accepted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<(u64, u64)>,
    },
    Directory {
        path: String,
    },
    /// One end of a pipe whose both ends are open in this process; `buffered` bytes were in
    /// it at the snapshot (kept in the runtime's memory and put back on restore).
    Pipe {
        inode: u64,
        write_end: bool,
        capacity: u64,
        buffered: u64,
    },
    /// A named pipe (FIFO) opened by path; reopened by path (it held no data).
    Fifo {
        path: String,
    },
    /// A device such as /dev/null, /dev/zero, /dev/urandom.
    Device {
        path: String,
    },
    /// Shares its open file description (offset, status flags) with the lower fd `of`
    /// (made by dup/dup2/fcntl(F_DUPFD)); restored with dup3 of that fd.
    Dup {
        of: i32,
    },
    /// An eventfd: its counter and EFD_SEMAPHORE mode.
    #[serde(rename = "eventfd")]
    EventFd {
        count: u64,
        semaphore: bool,
    },
    /// A timerfd: clock, settime flags (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET), the
    /// time left until the next expiration and the interval (0: disarmed / one-shot), and
    /// expirations not read yet.
    #[serde(rename = "timerfd")]
    TimerFd {
        clockid: i32,
        settime_flags: i32,
        value_ns: u64,
        interval_ns: u64,
        ticks: u64,
    },
    /// A signalfd and the signals it accepts (bit n-1 = signal n).
    #[serde(rename = "signalfd")]
    SignalFd {
        mask: u64,
    },
    /// An epoll instance and every fd registered in it.
    Epoll {
        targets: Vec<EpollTarget>,
    },
    /// An inotify instance and its watches.
    Inotify {
        watches: Vec<InotifyWatch>,
    },
    /// A pidfd (`pidfd_open`) on a process of the job, by its virtual pid; opened again
    /// on the restored process (meta_version 2).
    PidFd {
        vpid: i32,
    },
    /// A memfd: its contents (kept in the runtime's memory, hence in the image), seals and
    /// offset. `inode` groups fds opened separately on the same memfd.
    Memfd {
        name: String,
        inode: u64,
        size: u64,
        seals: i32,
        offset: u64,
    },
    /// A regular file deleted while open: its contents are kept like a memfd's and it is
    /// recreated as an unlinked file in the same directory (or a memfd).
    Deleted {
        path: String,
        inode: u64,
        size: u64,
        offset: u64,
    },
    /// An fd opened with O_PATH (a location, no I/O): reopened with O_PATH.
    Path {
        path: String,
    },
    /// One side of a pseudo-terminal pair whose master the job holds (`/dev/ptmx` or
    /// `/dev/pts/<index>`). `ckpt restart` creates one new pair per index; every fd of
    /// the pair, in every process, is a dup of its new master or slave.
    Pty {
        index: u32,
        master: bool,
        /// On the master fd of the process that drained the pair: its settings and the
        /// bytes in flight.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<PtyState>,
    },
}

/// termios (the kernel's `struct termios`: flags, line discipline, control characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: Vec<u8>,
}

/// A pseudo-terminal pair at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PtyState {
    pub termios: Termios,
    /// Window size: rows, columns, x pixels, y pixels.
    pub winsize: [u16; 4],
    /// The slave was still locked (no unlockpt yet).
    pub locked: bool,
    /// Packet mode (TIOCPKT) on the master.
    pub packet: bool,
    /// Bytes written to the master, not yet read from the slave (hex).
    pub to_slave: String,
    /// Bytes written to the slave, not yet read from the master (hex).
    pub to_master: String,
}

/// What a process had of terminals at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TerminalMeta {
    /// The controlling terminal is the pty pair `index` of the job (else it is the
    /// terminal of the restarting command, or none).
    pub ctty_pty: Option<u32>,
    /// The controlling terminal's foreground process group (virtual), 0 if none.
    pub foreground: i32,
    /// Settings of the terminal of fds 0-2 (outside the job): re-applied to the restarting
    /// command's terminal.
    pub stdio: Option<Termios>,
}

/// One registration in an epoll instance (from /proc/self/fdinfo `tfd:` lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    pub fd: i32,
    /// EPOLLIN/OUT/..., EPOLLET, EPOLLONESHOT (a fired one-shot keeps only the flag bits).
    pub events: u32,
    pub data: u64,
}

/// One inotify watch (from /proc/self/fdinfo `inotify wd:` lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    pub ino: u64,
    pub dev: u64,
    /// Where the watched inode was found at checkpoint time (re-added by this path).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdMeta {
    pub fd: i32,
    /// open(2) flags (access mode, O_APPEND, O_NONBLOCK, ...).
    pub flags: i32,
    pub cloexec: bool,
    #[serde(flatten)]
    pub kind: FdKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    pub cwd: String,
    pub umask: u32,
    /// (resource, soft, hard)
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Kernel view of `struct prctl_mm_map` fields: code/data/brk/stack/arg/env/auxv.
    pub mm: MmFields,
    pub auxv: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Address of the auxv copy in restored memory that PR_SET_MM_MAP should point at (0: keep).
    pub auxv_addr: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
    pub fs_base: u64,
    /// Address of the runtime's `RestoreInfo` slot.
    pub restore_info_addr: u64,
}

/// One run of page data in the PAGES section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Virtual address the bytes go to.
    pub addr: u64,
    pub len: u64,
    /// Absolute offset of the bytes in the image file that holds them (see `generation`).
    pub offset: u64,
    /// CRC-32C of the bytes.
    pub crc32c: u32,
    /// 0: the bytes are in this image. N: they are in the image of the same process in
    /// generation N of the same checkpoint directory (an incremental image; listed in its
    /// PARENTS section, docs/image-format.md).
    #[serde(default)]
    pub generation: u64,
}
