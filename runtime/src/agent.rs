//! The checkpoint thread: talks to the coordinator, runs the checkpoint barriers in this
//! process, forks the snapshot writer, and after a restart rebuilds the process from the
//! state it saved in its own (restored) memory.

use crate::ctx::{__ckpt_save_context, Ctx};
use crate::memory::{self, Classified};
use crate::process::{self, KSigaction, NSIG};
use crate::{config, files, sys, threads, tree, vids, CKPT_TID};
use crate::{error, info, warn};
use ckpt_image::{
    Entry, FdMeta, MmFields, ProcAttrs, ProcessMeta, RegionKind, ThreadMeta, META_VERSION,
};
use ckpt_plan::{RestoreInfo, RESTORE_INFO_MAGIC};
use ckpt_protocol::{self as proto, ImageWritten, Message, Phase, ProcessInfo, Role};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Everything a restored process needs that the kernel does not give back by itself,
/// captured at the last checkpoint. It lives in the runtime's memory, which is part of
/// the image, so after a restart it is simply there.
struct ProcState {
    sigactions: [KSigaction; NSIG],
    rlimits: Vec<(u32, u64, u64)>,
    umask: u32,
    cwd: String,
    fds: Vec<FdMeta>,
    mm: MmFields,
    auxv: Vec<(u64, u64)>,
    program: String,
    threads: Vec<ThreadMeta>,
    /// Process-directed signals pending at the snapshot (bit n-1 = signal n).
    shared_pending: u64,
    /// Bytes drained from the process's own pipes.
    pipes: Vec<crate::pipes::PipeData>,
    /// Children that had ended and were not yet waited for.
    zombies: Vec<ckpt_image::Zombie>,
    /// SysV IPC objects and this process's SEM_UNDO adjustments.
    sysv: Vec<ckpt_image::SysvObject>,
    sem_adj: Vec<ckpt_image::SemAdj>,
}

static mut STATE: Option<ProcState> = None;
/// The checkpoint thread's context at the snapshot: where the restorer jumps.
static mut CKPT_CTX: Ctx = Ctx {
    rbx: 0,
    rbp: 0,
    r12: 0,
    r13: 0,
    r14: 0,
    r15: 0,
    rsp: 0,
    rip: 0,
};
/// Written by the restorer just before it jumps to CKPT_CTX.
static mut RESTORE_INFO: RestoreInfo = RestoreInfo {
    magic: 0,
    restorer_lo: 0,
    restorer_hi: 0,
    info_fd: -1,
};
/// A copy of auxv for PR_SET_MM_MAP (must live in restored memory).
static mut AUXV_COPY: [u64; 128] = [0; 128];
static CKPT_FS: AtomicU64 = AtomicU64::new(0);
static CKPT_ROBUST: AtomicU64 = AtomicU64::new(0);
static CKPT_ROBUST_LEN: AtomicU64 = AtomicU64::new(0);
static MAIN_FS: AtomicU64 = AtomicU64::new(0);
static MAIN_TID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
static PAGEMAP_OK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn state() -> &'static ProcState {
    // SAFETY: set by the checkpoint thread before the snapshot; only it reads it.
    unsafe {
        (*std::ptr::addr_of!(STATE))
            .as_ref()
            .expect("state captured")
    }
}

/// Called by the constructor (main thread, before `main`).
/// `CKPT_VPID`: the vpid a re-executed launcher keeps (set by `ckpt restart` for it).
pub static REEXEC_VPID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
pub static REEXEC_VPPID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

pub fn start() {
    let pid = sys::getpid_real();
    vids::VPID.store(pid, Ordering::Relaxed);
    let keep = REEXEC_VPID.load(Ordering::Relaxed);
    if keep > 0 && config().reexec {
        // A launcher re-executed by a restart: its parent knows it by its old pid.
        vids::VPID.store(keep, Ordering::Relaxed);
    }
    vids::REAL_PID.store(pid, Ordering::Relaxed);
    vids::VPPID.store(sys::getppid_real(), Ordering::Relaxed);
    if keep > 0 && config().reexec {
        vids::VPPID.store(REEXEC_VPPID.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    vids::resolve_real();

    // SAFETY: zeroed sigaction, then filled; installs our handler for the checkpoint signal.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = threads::handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset; block everything while the handler runs.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    let sig = vids::CKPT_SIG.load(Ordering::Relaxed);
    if vids::real_sigaction(sig, &act, std::ptr::null_mut()) != 0 {
        error!(
            "cannot install the checkpoint signal handler (signal {sig}); checkpointing disabled"
        );
        return;
    }
    vids::ACTIVE.store(true, Ordering::Relaxed);
    if crate::HOLD_TERM.load(Ordering::Relaxed) {
        hold_sigterm();
    }

    // glibc's rseq registration (2.35+): re-done for every restored thread.
    // SAFETY: dlsym lookups of data symbols; absent on older glibc.
    unsafe {
        let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
        let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
        if !size.is_null() && !off.is_null() && *size > 0 {
            threads::RSEQ_OFFSET.store(*off as i64, Ordering::Relaxed);
            threads::RSEQ_ENABLED.store(1, Ordering::Relaxed);
        }
    }
    PAGEMAP_OK.store(
        std::fs::File::open("/proc/self/pagemap").is_ok(),
        Ordering::Relaxed,
    );
    spawn_agent();
}

/// Held while a coordinator connection is being opened and by `fork()`, so that a child
/// never inherits a connection it does not know to close.
pub static FORK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The file descriptor of the coordinator connection (-1 when not connected).
static COORD_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Runs in the child of a `fork()` of the program, on the forking thread: the child is a
/// new process of the job with its own checkpoint thread and coordinator connection.
pub fn after_fork_child(parent_vpid: i32) {
    let fd = COORD_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the parent's connection; the child must not keep it open.
        unsafe { libc::close(fd) };
    }
    let pid = sys::getpid_real();
    vids::VPID.store(pid, Ordering::Relaxed);
    vids::REAL_PID.store(pid, Ordering::Relaxed);
    vids::VPPID.store(parent_vpid, Ordering::Relaxed);
    threads::forget_all();
    // A held SIGTERM must wake this process's checkpoint thread, not the parent's.
    TERM_ASKED.store(false, Ordering::Relaxed);
    if TERM_PIPE[0].load(Ordering::Relaxed) >= 0 {
        let mut p = [0i32; 2];
        // SAFETY: a new self-pipe for the child; the inherited ends are closed.
        unsafe {
            libc::close(TERM_PIPE[0].load(Ordering::Relaxed));
            libc::close(TERM_PIPE[1].load(Ordering::Relaxed));
            if libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) == 0 {
                TERM_PIPE[0].store(high_fd(p[0]), Ordering::Relaxed);
                TERM_PIPE[1].store(high_fd(p[1]), Ordering::Relaxed);
            }
        }
    }
    // SAFETY: only this thread runs in the child; the config is updated before the agent.
    unsafe {
        if let Some(c) = (*std::ptr::addr_of_mut!(crate::CONFIG)).as_mut() {
            c.rank = None;
        }
    }
    spawn_agent();
}

fn spawn_agent() {
    MAIN_FS.store(sys::get_fs_base(), Ordering::Relaxed);
    MAIN_TID.store(sys::gettid(), Ordering::Relaxed);

    // The new thread inherits our mask: block everything around the spawn so that no
    // signal meant for the program can ever be delivered to the checkpoint thread.
    let all: u64 = !0;
    let mut old_mask: u64 = 0;
    // SAFETY: rt_sigprocmask(SIG_SETMASK, &all, &old, 8) on this (main) thread.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as u64,
            &all as *const u64 as u64,
            &mut old_mask as *mut u64 as u64,
            8,
            0,
            0,
        )
    };
    let r = std::thread::Builder::new()
        .name("ckpt".into())
        .stack_size(1 << 20)
        .spawn(agent_main);
    // SAFETY: restores the main thread's own mask.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as u64,
            &old_mask as *const u64 as u64,
            0,
            8,
            0,
            0,
        )
    };
    if let Err(e) = r {
        error!("cannot start the checkpoint thread: {e}; checkpointing disabled");
    }
}

fn block_all_signals() {
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask(SIG_SETMASK, &all, NULL, 8) for this thread.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as u64,
            &all as *const u64 as u64,
            0,
            8,
            0,
            0,
        )
    };
}

fn record_own_thread() {
    CKPT_TID.store(sys::gettid(), Ordering::Relaxed);
    CKPT_FS.store(sys::get_fs_base(), Ordering::Relaxed);
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: get_robust_list(0 = self) writes two words.
    unsafe {
        sys::syscall3(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut u64 as u64,
            &mut len as *mut u64 as u64,
        )
    };
    CKPT_ROBUST.store(head, Ordering::Relaxed);
    CKPT_ROBUST_LEN.store(len, Ordering::Relaxed);
}

fn agent_main() {
    block_all_signals();
    record_own_thread();
    let known = threads::TID_OFFSET.load(Ordering::Relaxed);
    let off = if known != 0 {
        known
    } else {
        threads::discover_tid_offset(
            MAIN_FS.load(Ordering::Relaxed),
            MAIN_TID.load(Ordering::Relaxed),
            CKPT_FS.load(Ordering::Relaxed),
            sys::gettid(),
        )
    };
    threads::TID_OFFSET.store(off, Ordering::Relaxed);
    if off == 0 {
        warn!("could not locate glibc's thread id field; restored threads cannot be joined");
    }
    let mut restored_from: Option<u64> = None;
    let mut warned = false;
    loop {
        let socket = config().socket.clone();
        let mut stream = match connect(&socket, restored_from) {
            Ok(s) => s,
            Err(e) => {
                if !warned {
                    warn!("cannot reach the coordinator at {socket}: {e} (retrying every second)");
                    warned = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
        };
        warned = false;
        match serve(&mut stream) {
            Outcome::Closed => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Outcome::Restored(gen) => {
                // The stream object belongs to the previous incarnation: its fd number is
                // not ours any more. Never close it.
                std::mem::forget(stream);
                restored_from = Some(gen);
                match post_restart() {
                    Ok(()) => info!("restored from generation {gen}"),
                    Err(e) => {
                        error!("restart failed: {e}");
                        sys::exit_group(1);
                    }
                }
            }
        }
    }
}

fn kcmp_works() -> bool {
    let pid = sys::getpid_real() as u64;
    // SAFETY: kcmp(pid, pid, KCMP_FILE, 0, 0) compares our own stdin with itself.
    let r = unsafe { sys::syscall6(libc::SYS_kcmp, pid, pid, 0, 0, 0, 0) };
    r == 0 || r == -(libc::EBADF as i64)
}

fn features() -> Vec<String> {
    vec![
        "snapshot=fork".into(),
        format!(
            "pagemap={}",
            if PAGEMAP_OK.load(Ordering::Relaxed) {
                "yes"
            } else {
                "no"
            }
        ),
        format!(
            "rseq={}",
            if threads::RSEQ_ENABLED.load(Ordering::Relaxed) != 0 {
                "yes"
            } else {
                "no"
            }
        ),
        format!("tid-offset={}", threads::TID_OFFSET.load(Ordering::Relaxed)),
        format!("signal={}", vids::CKPT_SIG.load(Ordering::Relaxed)),
        // Shared descriptions (dup'd fds) are found with kcmp where allowed; default
        // containers refuse it, and dups are then restored as separate opens.
        format!("kcmp={}", if kcmp_works() { "yes" } else { "no" }),
        // The snapshot is read through /proc/<pid>/mem: process_vm_readv, userfaultfd and
        // clone3 are never needed.
        "memory=proc-mem".into(),
    ]
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Moves an fd out of the program's way (high number, close-on-exec).
fn high_fd(fd: RawFd) -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let want = (lim.rlim_cur.min(1024) as i32 - 100).max(3);
    // SAFETY: duplicating our own fd; the original is closed after.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, want) };
    if n >= 0 {
        // SAFETY: closing the original we just duplicated.
        unsafe { libc::close(fd) };
        n
    } else {
        fd
    }
}

/// Connects to the coordinator and authenticates (challenge-response over the job secret
/// `DIR/coordinator.secret`; the secret never leaves this process). `socket` is a UNIX
/// socket path or `tcp:HOST:PORT`; when it cannot be reached (a job on several hosts, or a
/// coordinator restarted on another port), the address in `DIR/coordinator.addr` is tried.
/// A TCP connection is carried in a `UnixStream` (only read/write/shutdown/timeouts are
/// used on it, which are the same system calls for both kinds of socket).
fn connect(socket: &str, restored_from: Option<u64>) -> Result<UnixStream, String> {
    fn tcp(addr: &str) -> Result<RawFd, String> {
        use std::net::{TcpStream, ToSocketAddrs};
        let mut last = format!("{addr}: no address");
        for a in addr.to_socket_addrs().map_err(|e| format!("{addr}: {e}"))? {
            match TcpStream::connect_timeout(&a, std::time::Duration::from_secs(5)) {
                Ok(t) => {
                    let _ = t.set_nodelay(true);
                    return Ok(std::os::fd::IntoRawFd::into_raw_fd(t));
                }
                Err(e) => last = format!("tcp:{a}: {e}"),
            }
        }
        Err(last)
    }
    let dir = Path::new(&config().ckpt_dir);
    let from_addr_file = |first: String| -> Result<RawFd, String> {
        match std::fs::read_to_string(dir.join(proto::ADDR_FILE)) {
            Ok(a) => match a.trim().strip_prefix("tcp:") {
                Some(addr) if !socket.ends_with(addr) => {
                    tcp(addr).map_err(|e| format!("{first}; {e}"))
                }
                _ => Err(first),
            },
            Err(_) => Err(first),
        }
    };
    let guard = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let raw = match socket.strip_prefix("tcp:") {
        Some(addr) => tcp(addr).or_else(from_addr_file)?,
        None => match UnixStream::connect(socket) {
            Ok(s) => s.into_raw_fd_compat(),
            Err(e) => from_addr_file(e.to_string())?,
        },
    };
    let fd = high_fd(raw);
    COORD_FD.store(fd, Ordering::Relaxed);
    drop(guard);
    // SAFETY: fd is a connected socket we own.
    let mut s = unsafe { UnixStream::from_raw_fd(fd) };
    let secret =
        proto::auth::read_secret(&dir.join(proto::auth::SECRET_FILE)).map_err(|e| e.to_string())?;
    let role = Role::Process(ProcessInfo {
        vpid: vids::VPID.load(Ordering::Relaxed),
        real_pid: sys::getpid_real(),
        host: hostname(),
        program: process::comm_of(vids::REAL_PID.load(Ordering::Relaxed)),
        restored_from,
        features: features(),
        rank: config().rank,
        step: config().step.clone(),
    });
    // A coordinator that stalls the handshake must not hang the checkpoint thread.
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    proto::auth::client_handshake(&mut s, role, &secret).map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(None);
    Ok(s)
}

trait IntoRawFdCompat {
    fn into_raw_fd_compat(self) -> RawFd;
}
impl IntoRawFdCompat for UnixStream {
    fn into_raw_fd_compat(self) -> RawFd {
        use std::os::fd::IntoRawFd;
        self.into_raw_fd()
    }
}

enum Outcome {
    Closed,
    Restored(u64),
}

/// The frozen copy-on-write snapshot of this process: a child created like fork that
/// blocks forever without touching memory; the checkpoint thread reads its memory through
/// /proc/<pid>/mem while the program runs on.
struct Child {
    pid: i32,
}

impl Child {
    fn kill(self) {
        // SAFETY: signalling and reaping our own child (exit signal 0 needs __WCLONE).
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.pid, &mut st, libc::__WCLONE);
        }
    }
}

fn send(stream: &mut UnixStream, m: &Message) -> bool {
    proto::write_msg(stream, m).is_ok()
}

/// Where this process is in the current checkpoint, so that any failure or abort can
/// undo exactly what was done: put drained bytes back, let threads run, drop the snapshot.
#[derive(Default)]
struct Cycle {
    suspended_at: Option<u64>,
    /// What the Drain phase captured, until the snapshot takes it.
    captured: Option<Captured>,
    /// Drained bytes are out of their pipes (in `captured` or in STATE).
    drained: bool,
    child: Option<Child>,
    /// Shared memory copied at the snapshot, until the image is written.
    shm: Vec<crate::shm::Copy>,
}

struct Captured {
    fds: Vec<FdMeta>,
    pipes: Vec<crate::pipes::PipeData>,
    zombies: Vec<ckpt_image::Zombie>,
    sysv: Vec<ckpt_image::SysvObject>,
    sem_adj: Vec<ckpt_image::SemAdj>,
}

impl Cycle {
    fn refill(&mut self) -> Result<(), String> {
        crate::memfd::clear(); // issue 3: saved memfd/deleted-file contents are in the snapshot now
        crate::signals::put_back(); // issue 3: signals taken at Drain go back (once)
        let ttys = crate::tty::refill();
        if !self.drained {
            return ttys;
        }
        self.drained = false;
        let r = match self.captured.take() {
            Some(c) => crate::pipes::refill(&c.fds, &c.pipes),
            None => crate::pipes::refill(&state().fds, &state().pipes),
        };
        tree::release_pipes();
        r.and(ttys)
    }

    fn undo(&mut self) {
        if let Err(e) = self.refill() {
            error!("{e}");
        }
        tree::release_pipes();
        if self.suspended_at.take().is_some() {
            threads::resume_all();
        }
        if let Some(c) = self.child.take() {
            c.kill();
        }
        self.shm.clear();
    }
}

/// The Drain phase: describe every fd (refusing what is not supported), check for child
/// processes and unsupported memory, and read the bytes in flight out of pipes.
fn capture(own_fd: RawFd) -> Result<Captured, String> {
    let mut fds = files::dump(&[own_fd])?;
    // Every child must be a process of the job (running the runtime, so it takes part in
    // this checkpoint); a child that is not (a static binary, LD_PRELOAD removed) cannot be
    // restored.
    let mut zombies = Vec::new();
    for p in process::children(&[]) {
        if let Some(z) = crate::zombies::dump(p) {
            zombies.push(z);
            continue;
        }
        if !process::runs_runtime(p) {
            return Err(format!(
                "child process {p} ({}) is not under checkpoint control (a static binary, or LD_PRELOAD was removed from its environment)",
                process::comm_of(p)
            ));
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    for e in memory::parse_maps(&maps) {
        memory::classify(&e)?;
    }
    // Pty pairs first: a later failure puts their bytes back (`Cycle::refill`).
    crate::tty::drain(&mut fds)?;
    crate::tty::dump_terminal(&fds);
    let pipes = crate::pipes::drain(&mut fds)?;
    crate::signals::take_shared(vids::CKPT_SIG.load(Ordering::Relaxed))?; // issue 3: queued signals with siginfo
    crate::timers::dump()?; // issue 3: setitimer and POSIX timers
    crate::attrs::dump_parked()?; // issue 3: nice/affinity/personality/prctl; refuses seccomp, namespaces
    let (sysv, sem_adj) = crate::sysv::dump()?;
    crate::sysv::note_mappings()?;
    Ok(Captured {
        fds,
        pipes,
        zombies,
        sysv,
        sem_adj,
    })
}

/// Parks every user thread, in a new SysV epoch (a blocking SysV call interrupted from
/// now on is retried by its interposer).
fn suspend(sig: i32) -> Result<usize, String> {
    crate::sysv::new_epoch();
    threads::suspend_all(sig, 10_000)
}

fn serve(stream: &mut UnixStream) -> Outcome {
    let own_fd = stream.as_raw_fd();
    let sig = vids::CKPT_SIG.load(Ordering::Relaxed);
    let mut cy = Cycle::default();
    loop {
        // A held SIGTERM (CKPT_HOLD_SIGTERM) asks for a last checkpoint of the job.
        if !wait_for_coordinator(own_fd) {
            if !TERM_ASKED.swap(true, Ordering::Relaxed) {
                info!("SIGTERM: asking for a checkpoint before the process ends");
                if !send(stream, &Message::RequestCheckpoint { kill: true }) {
                    die_by_sigterm();
                }
            }
            continue;
        }
        let msg = match proto::read_msg(stream) {
            Ok(m) => m,
            Err(_) => {
                cy.undo();
                if TERM_ASKED.load(Ordering::Relaxed) {
                    die_by_sigterm();
                }
                return Outcome::Closed;
            }
        };
        match msg {
            Message::Barrier {
                generation,
                phase,
                dir,
                hold: _,
            } if config().reexec => {
                // A launcher re-executed at restart (srun): it is not stopped; its part of
                // the image is a description of how to start it again.
                if !send(stream, &Message::BarrierReached { generation, phase }) {
                    return Outcome::Closed;
                }
                if phase == Phase::Resume {
                    let t0 = sys::monotonic_ns();
                    let m = match write_reexec(generation, &dir) {
                        Ok(bytes) => Message::Written(ImageWritten {
                            generation,
                            file: ckpt_image::reexec_file_name(vids::VPID.load(Ordering::Relaxed)),
                            bytes,
                            stopped_seconds: 0.0,
                            write_seconds: (sys::monotonic_ns() - t0) as f64 / 1e9,
                        }),
                        Err(e) => Message::Failed {
                            generation,
                            error: format!(
                                "process {} ({}): writing its re-exec description: {e}",
                                vids::VPID.load(Ordering::Relaxed),
                                state_program()
                            ),
                        },
                    };
                    if !send(stream, &m) {
                        return Outcome::Closed;
                    }
                }
            }
            Message::Barrier {
                generation,
                phase,
                dir,
                hold,
            } => {
                let res: Result<(), String> = match phase {
                    Phase::Suspend => match suspend(sig) {
                        Ok(n) => {
                            cy.suspended_at = Some(sys::monotonic_ns());
                            // Elect one drainer per pipe shared with other processes.
                            tree::claim_pipes();
                            info!("checkpoint {generation}: {n} thread(s) parked");
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Phase::Drain => capture(own_fd).map(|c| {
                        cy.captured = Some(c);
                        cy.drained = true;
                    }),
                    Phase::Snapshot => match crate::shm::copy_all() {
                        Err(e) => Err(e),
                        Ok(copies) => {
                            cy.shm = copies;
                            match cy.captured.take() {
                                None => Err("snapshot requested before the drain phase".into()),
                                Some(c) => match snapshot(generation, &dir, c) {
                                    Ok(Snap::Writer(c)) => {
                                        cy.child = Some(c);
                                        Ok(())
                                    }
                                    Ok(Snap::Restored) => {
                                        // The copies' buffers were not inherited by the
                                        // snapshot: they do not exist in this process.
                                        std::mem::forget(std::mem::take(&mut cy.shm));
                                        return Outcome::Restored(generation);
                                    }
                                    Err(e) => Err(e),
                                },
                            }
                        }
                    },
                    Phase::Refill => cy.refill(),
                    Phase::Resume => {
                        // With `hold` the job ends after this checkpoint: the threads stay
                        // parked (a later Abort lets them run on).
                        if cy.suspended_at.is_some() && !hold {
                            threads::resume_all();
                        }
                        if hold {
                            crate::sockets::reset_on_exit();
                        }
                        Ok(())
                    }
                };
                match res {
                    Ok(()) => {
                        if !send(stream, &Message::BarrierReached { generation, phase }) {
                            cy.undo();
                            return Outcome::Closed;
                        }
                    }
                    Err(e) => {
                        cy.undo();
                        let e = format!(
                            "process {} ({}): {e}",
                            vids::VPID.load(Ordering::Relaxed),
                            state_program()
                        );
                        warn!("checkpoint {generation} failed: {e}");
                        if !send(
                            stream,
                            &Message::Failed {
                                generation,
                                error: e,
                            },
                        ) {
                            return Outcome::Closed;
                        }
                        continue;
                    }
                }
                if phase == Phase::Resume {
                    // Held threads stay recorded as suspended, so that an Abort or a lost
                    // coordinator still lets them run on.
                    let since = if hold {
                        cy.suspended_at
                    } else {
                        cy.suspended_at.take()
                    };
                    let stopped = since
                        .map(|t| (sys::monotonic_ns() - t) as f64 / 1e9)
                        .unwrap_or(0.0);
                    if let Some(c) = cy.child.take() {
                        let file = ckpt_image::CkptDir::image_file_name(
                            vids::VPID.load(Ordering::Relaxed),
                        );
                        let t0 = sys::monotonic_ns();
                        let res = write_image(generation, &dir, c.pid, &cy.shm);
                        cy.shm.clear();
                        c.kill();
                        let m = match res.map(|b| (b, (sys::monotonic_ns() - t0) as f64 / 1e9)) {
                            Ok((bytes, write_seconds)) => Message::Written(ImageWritten {
                                generation,
                                file,
                                bytes,
                                stopped_seconds: stopped,
                                write_seconds,
                            }),
                            Err(e) => Message::Failed {
                                generation,
                                error: format!(
                                    "process {}: writing the image: {e}",
                                    vids::VPID.load(Ordering::Relaxed)
                                ),
                            },
                        };
                        if !send(stream, &m) {
                            return Outcome::Closed;
                        }
                    }
                }
            }
            Message::Abort { generation, reason } => {
                info!("checkpoint {generation} aborted: {reason}");
                cy.undo();
                if TERM_ASKED.load(Ordering::Relaxed) {
                    die_by_sigterm();
                }
            }
            Message::Terminate => {
                info!("terminated by the coordinator");
                if TERM_ASKED.load(Ordering::Relaxed) {
                    // End as the SIGTERM the process held would have ended it.
                    die_by_sigterm();
                }
                // SAFETY: kill our own process.
                unsafe {
                    sys::syscall3(
                        libc::SYS_kill,
                        sys::getpid_real() as u64,
                        libc::SIGKILL as u64,
                        0,
                    )
                };
            }
            _ => {}
        }
    }
}

fn state_program() -> String {
    process::comm_of(sys::getpid_real())
}

enum Snap {
    Writer(Child),
    Restored,
}

/// Captures the process state (threads are parked) and forks the writer. Returns
/// `Restored` when this context is resumed in a restored process.
#[inline(never)]
fn snapshot(generation: u64, dir: &str, c: Captured) -> Result<Snap, String> {
    let auxv = process::read_auxv();
    let ckpt_bit = 1u64 << (vids::CKPT_SIG.load(Ordering::Relaxed) - 1);
    let mut shared_pending = 0;
    for s in threads::slots().iter_mut() {
        if s.state.load(Ordering::Relaxed) == threads::PARKED {
            let (own, shared) = process::pending_signals(s.real_tid.load(Ordering::Relaxed));
            s.pending = own & !ckpt_bit;
            shared_pending = shared & !ckpt_bit;
        }
    }
    // SAFETY: only the checkpoint thread touches AUXV_COPY and STATE.
    unsafe {
        let a = &mut *std::ptr::addr_of_mut!(AUXV_COPY);
        a.fill(0);
        for (i, (k, v)) in auxv.iter().take(63).enumerate() {
            a[2 * i] = *k;
            a[2 * i + 1] = *v;
        }
        let mut mm = process::mm_fields();
        mm.auxv_addr = a.as_ptr() as u64;
        *std::ptr::addr_of_mut!(STATE) = Some(ProcState {
            sigactions: process::dump_sigactions(),
            rlimits: process::dump_rlimits(),
            umask: process::umask(),
            cwd: process::cwd(),
            fds: c.fds,
            pipes: c.pipes,
            mm,
            auxv,
            program: main_thread_name(),
            threads: parked_threads(),
            shared_pending,
            zombies: c.zombies,
            sysv: c.sysv,
            sem_adj: c.sem_adj,
        });
    }
    // SAFETY: CKPT_CTX is only used by this thread and the restorer; see ctx.rs for the
    // two-returns contract (nothing below relies on locals changed after this call).
    let r = unsafe { __ckpt_save_context(std::ptr::addr_of_mut!(CKPT_CTX)) };
    if r != 0 {
        return Ok(Snap::Restored);
    }
    let _ = (generation, dir);
    fork_frozen()
}

fn main_thread_name() -> String {
    let v = vids::VPID.load(Ordering::Relaxed);
    for s in threads::slots().iter() {
        if s.vtid == v && s.state.load(Ordering::Relaxed) != threads::FREE {
            let end = s.name.iter().position(|&c| c == 0).unwrap_or(16);
            return String::from_utf8_lossy(&s.name[..end]).into_owned();
        }
    }
    process::comm_of(sys::getpid_real())
}

#[inline(never)]
fn fork_frozen() -> Result<Snap, String> {
    // A raw fork with no exit signal: glibc's fork would run atfork handlers and take locks
    // parked threads may hold, and the program's wait() must not reap our snapshot.
    let parent = sys::getpid_real();
    // SAFETY: clone(flags = 0) behaves like fork; the child only blocks in pause().
    let pid = unsafe { sys::syscall6(libc::SYS_clone, 0, 0, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(format!("cannot fork the snapshot: errno {}", -pid));
    }
    if pid == 0 {
        // Die with the process: a snapshot must never outlive the program.
        // SAFETY: prctl(PR_SET_PDEATHSIG, SIGKILL); then exit if the parent is already gone.
        unsafe {
            sys::syscall3(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG as u64,
                libc::SIGKILL as u64,
                0,
            );
        }
        if sys::getppid_real() != parent {
            sys::exit_group(0);
        }
        loop {
            // SAFETY: pause() until the checkpoint thread kills us; all signals are blocked.
            unsafe { sys::syscall3(libc::SYS_pause, 0, 0, 0) };
        }
    }
    Ok(Snap::Writer(Child { pid: pid as i32 }))
}

fn parked_threads() -> Vec<ThreadMeta> {
    let mut v = Vec::new();
    for s in threads::slots().iter() {
        if s.state.load(Ordering::Relaxed) == threads::PARKED {
            let end = s.name.iter().position(|&c| c == 0).unwrap_or(16);
            v.push(ThreadMeta {
                vtid: s.vtid,
                name: String::from_utf8_lossy(&s.name[..end]).into_owned(),
                runtime: false,
            });
        }
    }
    v.push(ThreadMeta {
        vtid: 0,
        name: "ckpt".into(),
        runtime: true,
    });
    v
}

/// Writes `dir/proc-<vpid>.img` durably from the frozen snapshot process `snap`.
/// The description of a re-executed launcher (see `ckpt_image::reexec`): its executable,
/// arguments, start-up environment and working directory. Written while the job runs on
/// (the launcher is never stopped), so ordinary allocation and file I/O are fine here.
fn write_reexec(generation: u64, dir: &str) -> Result<u64, String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("/proc/self/exe: {e}"))?
        .to_string_lossy()
        .into_owned();
    let env: Vec<String> = std::fs::read("/proc/self/environ")
        .map_err(|e| format!("/proc/self/environ: {e}"))?
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    let cwd = std::fs::read_link("/proc/self/cwd")
        .map_err(|e| format!("/proc/self/cwd: {e}"))?
        .to_string_lossy()
        .into_owned();
    let spec = ckpt_image::ReexecSpec {
        format: ckpt_image::reexec::REEXEC_FORMAT.into(),
        version: ckpt_image::reexec::REEXEC_VERSION,
        vpid: vids::VPID.load(Ordering::Relaxed),
        vppid: vids::VPPID.load(Ordering::Relaxed),
        program: state_program(),
        exe,
        argv: config().argv.clone(),
        env,
        cwd,
        // SAFETY: getuid has no preconditions.
        uid: unsafe { libc::getuid() },
        host: hostname(),
        generation,
    };
    spec.write(Path::new(dir)).map_err(|e| e.to_string())
}

fn write_image(
    generation: u64,
    dir: &str,
    snap: i32,
    shm: &[crate::shm::Copy],
) -> Result<u64, String> {
    let st = state();
    let maps = std::fs::read_to_string(format!("/proc/{snap}/maps"))
        .map_err(|e| format!("reading the snapshot's maps: {e}"))?;
    let mut regions: Vec<Classified> = memory::parse_maps(&maps)
        .iter()
        .filter_map(|e| memory::classify(e).ok().flatten())
        .collect();
    stash_runtime(&mut regions);
    let vdso = regions
        .iter()
        .find(|c| matches!(c.region.kind, RegionKind::Vdso))
        .map(|c| (c.region.start, c.region.end));
    let mem = std::fs::File::open(format!("/proc/{snap}/mem"))
        .map_err(|e| format!("cannot read the snapshot's memory (/proc/{snap}/mem): {e}; is the program non-dumpable?"))?;
    let pagemap = if PAGEMAP_OK.load(Ordering::Relaxed) {
        std::fs::File::open(format!("/proc/{snap}/pagemap")).ok()
    } else {
        None
    };
    let vpid = vids::VPID.load(Ordering::Relaxed);
    let path = Path::new(dir).join(ckpt_image::CkptDir::image_file_name(vpid));
    // SAFETY: CKPT_CTX was filled by save_context before the fork and is not changed since.
    let c = unsafe { *std::ptr::addr_of!(CKPT_CTX) };
    let threads_meta = st.threads.clone();
    let cfg = config();
    let bytes = ckpt_image::write_image_atomically(&path, |w| {
        w.begin_pages()?;
        let mut runs = memory::write_regions(w, &mut regions, &mem, pagemap.as_ref())?;
        runs.extend(crate::shm::write(w, &mut regions, shm)?);
        runs.sort_by_key(|r| r.addr);
        w.end_pages()?;
        w.add_page_map(&runs)?;
        let meta = ProcessMeta {
            meta_version: META_VERSION,
            vpid,
            real_pid: vids::REAL_PID.load(Ordering::Relaxed),
            vppid: vids::VPPID.load(Ordering::Relaxed),
            pgid: vids::getpgid(0),
            sid: vids::getsid(0),
            program: st.program.clone(),
            exe: std::fs::read_link("/proc/self/exe")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            argv: cfg.argv.clone(),
            host: hostname(),
            // SAFETY: getuid/getgid have no preconditions.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            generation,
            requirements: process::requirements(vdso),
            regions: regions.iter().map(|c| c.region.clone()).collect(),
            threads: threads_meta.clone(),
            files: st.fds.clone(),
            attrs: ProcAttrs {
                cwd: st.cwd.clone(),
                umask: st.umask,
                rlimits: st.rlimits.clone(),
                mm: st.mm,
                auxv: st.auxv.clone(),
            },
            terminal: crate::tty::meta(),
            zombies: st.zombies.clone(),
            sysv: st.sysv.clone(),
            sem_adj: st.sem_adj.clone(),
            entry: Entry {
                rbx: c.rbx,
                rbp: c.rbp,
                r12: c.r12,
                r13: c.r13,
                r14: c.r14,
                r15: c.r15,
                rsp: c.rsp,
                rip: c.rip,
                fs_base: CKPT_FS.load(Ordering::Relaxed),
                restore_info_addr: std::ptr::addr_of!(RESTORE_INFO) as u64,
            },
        };
        let json = serde_json::to_vec(&meta).map_err(|e| ckpt_image::ImageError::Usage {
            path: path.clone(),
            detail: format!("encoding metadata: {e}"),
        })?;
        w.add_section(ckpt_image::SectionKind::Meta, &json)?;
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[derive(serde::Deserialize)]
struct RestartParams {
    socket: String,
    ckpt_dir: String,
    /// The shared area of a restored process tree (pid map, barrier), when restored as one.
    #[serde(default)]
    area_fd: Option<i32>,
    /// Pipes shared with other processes of the tree, created by `ckpt restart`.
    #[serde(default)]
    pipes: Vec<InheritedPipe>,
    /// Connected sockets re-created by `ckpt restart` (socket inode at checkpoint → fd).
    #[serde(default)]
    sockets: Vec<InheritedSocket>,
    /// SysV IPC objects re-created by `ckpt restart`: (kind, virtual id, new kernel id).
    #[serde(default)]
    sysv: Vec<(String, i32, i32)>,
    /// New pty pairs created by `ckpt restart` (pty index at checkpoint → master, slave).
    #[serde(default)]
    ptys: Vec<InheritedPty>,
}

#[derive(serde::Deserialize)]
struct InheritedPty {
    index: u32,
    master_fd: i32,
    slave_fd: i32,
}

#[derive(serde::Deserialize)]
struct InheritedSocket {
    inode: u64,
    fd: i32,
}

#[derive(serde::Deserialize)]
struct InheritedPipe {
    inode: u64,
    read_fd: i32,
    write_fd: i32,
}

/// Moves an inherited descriptor above every number the program uses, so restoring the
/// program's descriptors cannot clobber it (nor it them).
fn lift(fd: i32, above: i32) -> i32 {
    // SAFETY: duplicating a descriptor `ckpt restart` left us, then closing the original.
    unsafe {
        let n = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
        libc::close(fd);
        n
    }
}

/// Runs on the checkpoint thread right after the restorer jumped back to it, in a new
/// process whose only thread it is.
fn post_restart() -> Result<(), String> {
    // SAFETY: the restorer wrote RESTORE_INFO before jumping here.
    let ri = unsafe { std::ptr::read_volatile(std::ptr::addr_of!(RESTORE_INFO)) };
    if ri.magic != RESTORE_INFO_MAGIC {
        return Err("restorer left no restore information".into());
    }
    // SAFETY: the restorer's window holds nothing of the program (checked at plan time).
    unsafe {
        sys::syscall3(
            libc::SYS_munmap,
            ri.restorer_lo,
            ri.restorer_hi - ri.restorer_lo,
            0,
        )
    };
    // SAFETY: clearing the note so a later, unrelated jump cannot be mistaken for a restore.
    unsafe { (*std::ptr::addr_of_mut!(RESTORE_INFO)).magic = 0 };
    crate::tty::forget_pending();
    let real = sys::getpid_real();
    vids::REAL_PID.store(real, Ordering::Relaxed);
    vids::RESTORE_PPID.store(sys::getppid_real(), Ordering::Relaxed);
    vids::RESTORED.store(true, Ordering::Relaxed);
    CKPT_TID.store(sys::gettid(), Ordering::Relaxed);
    threads::register_thread_state(
        sys::get_fs_base(),
        CKPT_ROBUST.load(Ordering::Relaxed),
        CKPT_ROBUST_LEN.load(Ordering::Relaxed),
    );
    let st = state();
    // This thread is now the process leader: give it the program's name, as `ps` shows it.
    if let Ok(name) = std::ffi::CString::new(st.program.as_bytes()) {
        // SAFETY: PR_SET_NAME with a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    process::restore_sigactions(&st.sigactions);
    for w in process::restore_rlimits(&st.rlimits) {
        warn!("{w}");
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(st.umask as libc::mode_t) };
    if let Err(e) = std::env::set_current_dir(&st.cwd) {
        warn!("cannot return to the working directory {}: {e}", st.cwd);
    }
    let above = st
        .fds
        .iter()
        .map(|f| f.fd)
        .max()
        .unwrap_or(2)
        .max(ri.info_fd as i32)
        + 1;
    let mut params: Option<RestartParams> = None;
    if ri.info_fd >= 0 {
        // SAFETY: the info memfd was left open for us by `ckpt restart`.
        let mut f = unsafe { std::fs::File::from_raw_fd(ri.info_fd as RawFd) };
        let mut s = String::new();
        f.read_to_string(&mut s)
            .map_err(|e| format!("reading restart parameters: {e}"))?;
        let p: RestartParams =
            serde_json::from_str(&s).map_err(|e| format!("bad restart parameters: {e}"))?;
        // SAFETY: only this thread reads CONFIG after start-up.
        unsafe {
            if let Some(c) = (*std::ptr::addr_of_mut!(crate::CONFIG)).as_mut() {
                c.socket = p.socket.clone();
                c.ckpt_dir = p.ckpt_dir.clone();
            }
        }
        params = Some(p);
    }
    let mut inherited: Vec<(u64, i32, i32)> = Vec::new();
    let mut area = None;
    if let Some(p) = &params {
        for ip in &p.pipes {
            inherited.push((ip.inode, lift(ip.read_fd, above), lift(ip.write_fd, above)));
        }
        if let Some(fd) = p.area_fd {
            let fd = lift(fd, above);
            let a = tree::Area::map(fd);
            // SAFETY: the mapping keeps the area; the descriptor is not needed.
            unsafe { libc::close(fd) };
            area = Some(a?);
        }
    }
    let mut sockets: Vec<(u64, i32)> = Vec::new();
    if let Some(p) = &params {
        for s in &p.sockets {
            sockets.push((s.inode, lift(s.fd, above)));
        }
    }
    let mut ptys: Vec<(u32, i32, i32)> = Vec::new();
    if let Some(p) = &params {
        for t in &p.ptys {
            ptys.push((t.index, lift(t.master_fd, above), lift(t.slave_fd, above)));
        }
    }
    let restored = files::restore(&st.fds, &st.pipes, &inherited, &sockets, &ptys)
        .and_then(|_| crate::tty::restore(&st.fds, &ptys));
    for (_, m, s) in &ptys {
        // SAFETY: closing the lifted pty sides (the program's fds are dups).
        unsafe {
            libc::close(*m);
            libc::close(*s);
        }
    }
    for (_, fd) in &sockets {
        // SAFETY: closing the lifted inherited socket ends (the program's fds are dups).
        unsafe { libc::close(*fd) };
    }
    for (_, r, w) in &inherited {
        // SAFETY: closing the lifted inherited pipe ends (the program's fds are dups).
        unsafe {
            libc::close(*r);
            libc::close(*w);
        }
    }
    restored?;
    if let Some(p) = &params {
        crate::sysv::restore(&st.sysv, &st.sem_adj, &p.sysv)?;
    }
    crate::attrs::restore_process(); // issue 3: personality, no_new_privs, subreaper, dumpable
    let n = threads::recreate_all()?;
    for s in threads::slots().iter() {
        if s.state.load(Ordering::Relaxed) == threads::RESTORED {
            let end = s.name.iter().position(|&c| c == 0).unwrap_or(16);
            let t = s.real_tid.load(Ordering::Relaxed);
            let _ = std::fs::write(format!("/proc/self/task/{t}/comm"), &s.name[..end]);
        }
    }
    // Children that had ended: their stand-ins end now, before any process runs on.
    if !st.zombies.is_empty() {
        let a = area
            .as_ref()
            .ok_or("exited children to re-create, but no restart area")?;
        let chld = 1u64 << (libc::SIGCHLD - 1);
        let pending = st.shared_pending & chld != 0 || crate::signals::holds(libc::SIGCHLD);
        crate::zombies::release(&st.zombies, a, pending)?;
    }
    // Signals still pending by number only (the rest, with their siginfo, are queued back
    // by `signals::put_back` and `threads::resume_all`).
    for sig in 1..=64u64 {
        if st.shared_pending & (1 << (sig - 1)) != 0 {
            // SAFETY: signalling our own process.
            unsafe { sys::syscall3(libc::SYS_kill, real as u64, sig, 0) };
        }
    }
    for s in threads::slots().iter() {
        if s.state.load(Ordering::Relaxed) == threads::RESTORED && s.pending != 0 {
            for sig in 1..=64i32 {
                if s.pending & (1 << (sig - 1)) != 0 {
                    sys::tgkill(real, s.real_tid.load(Ordering::Relaxed), sig);
                }
            }
        }
    }
    if let Some(a) = &area {
        // Every process of the tree restores (and refills its pipes) before any runs on.
        a.barrier(60_000)?;
        vids::set_pid_map(&a.pairs());
    }
    vids::reopen_pidfds(&st.fds)?;
    // A SIGTERM held before the checkpoint belonged to the old incarnation: its byte in the
    // self-pipe (restored with the pipe's contents) must not end this one.
    TERM_ASKED.store(false, Ordering::Relaxed);
    let tr = TERM_PIPE[0].load(Ordering::Relaxed);
    if tr >= 0 {
        let mut b = [0u8; 64];
        // SAFETY: our own self-pipe (created non-blocking; made sure of) read into a local.
        unsafe { libc::fcntl(tr, libc::F_SETFL, libc::O_NONBLOCK) };
        // SAFETY: as above.
        while unsafe { sys::syscall3(libc::SYS_read, tr as u64, b.as_mut_ptr() as u64, 64) } > 0 {}
    }
    crate::tty::after_barrier(tree::is_root());
    info!("restart: {n} thread(s) recreated");
    crate::timers::restore()?; // issue 3: setitimer and POSIX timers (new tids known)
    crate::attrs::restore_threads(&threads::real_tid); // issue 3: per-thread nice and affinity
    crate::signals::put_back(); // issue 3: process-directed signals with their siginfo
    threads::resume_all();
    crate::tty::after_resume();
    Ok(())
}

/// The runtime library mapped in the program is ckpt's own: upgrading ckpt must not make
/// existing checkpoints unrestorable. A copy of the library (immutable, one per version)
/// is kept in the checkpoint directory, and the image maps that copy.
fn stash_runtime(regions: &mut [Classified]) {
    use std::os::unix::fs::MetadataExt;
    let me = stash_runtime as *const () as usize as u64;
    let Some(path) = regions.iter().find_map(|c| match &c.region.kind {
        RegionKind::File { path, .. } if c.region.start <= me && me < c.region.end => {
            Some(path.clone())
        }
        _ => None,
    }) else {
        return;
    };
    let Ok(md) = std::fs::metadata(&path) else {
        return;
    };
    let dir = Path::new(&config().ckpt_dir).join("runtime");
    let stash = dir.join(format!(
        "libckpt-{}-{}-{}.so",
        md.size(),
        md.mtime(),
        md.ino()
    ));
    if !stash.exists() {
        let tmp = dir.join(format!(".libckpt-{}.tmp", sys::getpid_real()));
        // Several processes of a job may do this at once: the first link wins and the copy
        // is never replaced (a replaced file would not be the one earlier images recorded).
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let copied = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|_| std::fs::copy(&path, &tmp))
            .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| match std::fs::hard_link(&tmp, &stash) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                r => r,
            });
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = copied {
            warn!(
                "cannot keep a copy of the runtime in {}: {e}; restarts need {path} unchanged",
                dir.display()
            );
            return;
        }
    }
    let Ok(smd) = std::fs::metadata(&stash) else {
        return;
    };
    for c in regions.iter_mut() {
        if let RegionKind::File {
            path: p,
            dev,
            ino,
            size,
            mtime_ns,
            ..
        } = &mut c.region.kind
        {
            if *p == path {
                *p = stash.to_string_lossy().into_owned();
                *dev = smd.dev();
                *ino = smd.ino();
                *size = smd.size();
                *mtime_ns = smd.mtime() * 1_000_000_000 + smd.mtime_nsec();
            }
        }
    }
}

/// The self-pipe a held SIGTERM writes to (read end, write end; -1 when not holding).
static TERM_PIPE: [std::sync::atomic::AtomicI32; 2] = [
    std::sync::atomic::AtomicI32::new(-1),
    std::sync::atomic::AtomicI32::new(-1),
];
/// A held SIGTERM has asked for a checkpoint.
static TERM_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether SIGTERM is held (CKPT_HOLD_SIGTERM and the program left it at its default).
pub fn term_held() -> bool {
    if TERM_PIPE[1].load(Ordering::Relaxed) < 0 {
        return false;
    }
    // SAFETY: reading the current disposition into a zeroed local.
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    vids::real_sigaction(libc::SIGTERM, std::ptr::null(), &mut cur) == 0
        && cur.sa_sigaction == on_term as *const () as usize
}

/// A held SIGTERM was found pending: the same as its arrival through the handler.
pub fn term_arrived() {
    on_term(libc::SIGTERM);
}

extern "C" fn on_term(_sig: i32) {
    let fd = TERM_PIPE[1].load(Ordering::Relaxed);
    let b = 1u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local.
    unsafe { sys::syscall3(libc::SYS_write, fd as u64, &b as *const u8 as u64, 1) };
}

/// With `CKPT_HOLD_SIGTERM=1` (set by the Slurm plugin): a SIGTERM the program leaves at
/// its default disposition first triggers a checkpoint of the whole job, and the process
/// ends after it (or, if the checkpoint fails, by the SIGTERM as it would have).
pub fn hold_sigterm() {
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    if vids::real_sigaction(libc::SIGTERM, std::ptr::null(), &mut cur) != 0
        || cur.sa_sigaction != libc::SIG_DFL
    {
        return;
    }
    let mut p = [0i32; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return;
    }
    let (r, w) = (high_fd(p[0]), high_fd(p[1]));
    TERM_PIPE[0].store(r, Ordering::Relaxed);
    TERM_PIPE[1].store(w, Ordering::Relaxed);
    // SAFETY: zeroed sigaction, then our handler.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_term as *const () as usize;
    act.sa_flags = libc::SA_RESTART;
    vids::real_sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
}

/// Waits until the coordinator connection is readable (true) or a held SIGTERM arrived
/// (false).
fn wait_for_coordinator(fd: RawFd) -> bool {
    let t = TERM_PIPE[0].load(Ordering::Relaxed);
    if t < 0 || TERM_ASKED.load(Ordering::Relaxed) {
        return true;
    }
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: t,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll on two valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 64];
            // SAFETY: draining the self-pipe.
            unsafe { libc::read(t, b.as_mut_ptr() as *mut libc::c_void, b.len()) };
            return false;
        }
        return true;
    }
}

/// Ends the process by the SIGTERM it held, with the default disposition.
fn die_by_sigterm() -> ! {
    // SAFETY: zeroed sigaction = SIG_DFL.
    let act: libc::sigaction = unsafe { std::mem::zeroed() };
    vids::real_sigaction(libc::SIGTERM, &act, std::ptr::null_mut());
    let pid = sys::getpid_real();
    // SAFETY: signalling our own process; SIGTERM is not blocked in this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        sys::syscall3(libc::SYS_kill, pid as u64, libc::SIGTERM as u64, 0);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
