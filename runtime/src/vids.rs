//! Virtual process and thread ids, and the libc functions interposed so that the program
//! keeps seeing the ids it saw before a restart.
//!
//! A program's pid and tids are chosen by the kernel and change when it is restored. The
//! runtime keeps the first incarnation's numbers as *virtual* ids: `getpid`, `gettid`,
//! `getppid` return them; `kill` and `tgkill` translate them back. Calls made with
//! `syscall(SYS_getpid)` bypass this (documented limitation).

use crate::sys;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

pub static VPID: AtomicI32 = AtomicI32::new(0);
pub static REAL_PID: AtomicI32 = AtomicI32::new(0);
pub static VPPID: AtomicI32 = AtomicI32::new(0);
/// Real parent pid right after the last restore (the restarting command's parent).
pub static RESTORE_PPID: AtomicI32 = AtomicI32::new(0);
pub static RESTORED: AtomicBool = AtomicBool::new(false);
pub static ACTIVE: AtomicBool = AtomicBool::new(false);
pub static CKPT_SIG: AtomicI32 = AtomicI32::new(62);

/// The handler the program installed for our signal (kept aside, never installed).
static SHADOW_HANDLER: AtomicUsize = AtomicUsize::new(0);

pub fn virtual_of_new_thread(real: i32) -> i32 {
    real
}

/// Virtual ↔ real pids of the job's processes on this host, set after a restore (entries
/// are only needed where the two differ). Lock-free: written by the checkpoint thread while
/// no user thread runs, read by anyone.
const PID_MAP_LEN: usize = 4096;
struct PidMap {
    vpid: [AtomicI32; PID_MAP_LEN],
    real: [AtomicI32; PID_MAP_LEN],
    n: AtomicUsize,
}
#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicI32 = AtomicI32::new(0);
static PIDS: PidMap = PidMap {
    vpid: [Z; PID_MAP_LEN],
    real: [Z; PID_MAP_LEN],
    n: AtomicUsize::new(0),
};

/// Replaces the table (after a restore).
pub fn set_pid_map(pairs: &[(i32, i32)]) {
    let n = pairs.len().min(PID_MAP_LEN);
    PIDS.n.store(0, Ordering::Release);
    for (i, (v, r)) in pairs.iter().take(n).enumerate() {
        PIDS.vpid[i].store(*v, Ordering::Relaxed);
        PIDS.real[i].store(*r, Ordering::Relaxed);
    }
    PIDS.n.store(n, Ordering::Release);
}

/// Real pid of a virtual pid (identity when unknown).
pub fn real_of(v: i32) -> i32 {
    if v == VPID.load(Ordering::Relaxed) {
        return REAL_PID.load(Ordering::Relaxed);
    }
    let n = PIDS.n.load(Ordering::Acquire);
    for i in 0..n {
        if PIDS.vpid[i].load(Ordering::Relaxed) == v {
            return PIDS.real[i].load(Ordering::Relaxed);
        }
    }
    v
}

/// Virtual pid of a real pid (identity when unknown).
pub fn virtual_of(r: i32) -> i32 {
    if r == REAL_PID.load(Ordering::Relaxed) {
        return VPID.load(Ordering::Relaxed);
    }
    let n = PIDS.n.load(Ordering::Acquire);
    for i in 0..n {
        if PIDS.real[i].load(Ordering::Relaxed) == r {
            return PIDS.vpid[i].load(Ordering::Relaxed);
        }
    }
    r
}

/// Translates a pid argument that may also name a process group (negative) or "any" (0, -1).
fn pid_arg_to_real(pid: i32) -> i32 {
    if pid > 0 {
        real_of(pid)
    } else if pid < -1 {
        -real_of(-pid)
    } else {
        pid
    }
}

fn to_real_pid(pid: i32) -> i32 {
    pid_arg_to_real(pid)
}

fn set_errno_ret(r: i64) -> libc::c_int {
    if r < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = (-r) as i32 };
        -1
    } else {
        r as libc::c_int
    }
}

#[no_mangle]
pub extern "C" fn getpid() -> libc::pid_t {
    let v = VPID.load(Ordering::Relaxed);
    if v != 0 {
        v
    } else {
        sys::getpid_real()
    }
}

#[no_mangle]
pub extern "C" fn gettid() -> libc::pid_t {
    let t = sys::gettid();
    if RESTORED.load(Ordering::Relaxed) {
        crate::threads::virtual_tid(t)
    } else {
        t
    }
}

#[no_mangle]
pub extern "C" fn getppid() -> libc::pid_t {
    let real = sys::getppid_real();
    if RESTORED.load(Ordering::Relaxed) && real == RESTORE_PPID.load(Ordering::Relaxed) {
        VPPID.load(Ordering::Relaxed)
    } else {
        virtual_of(real)
    }
}

#[no_mangle]
pub extern "C" fn kill(pid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    // SAFETY: kill with integer arguments.
    set_errno_ret(unsafe { sys::syscall3(libc::SYS_kill, to_real_pid(pid) as u64, sig as u64, 0) })
}

#[no_mangle]
pub extern "C" fn tgkill(tgid: libc::pid_t, tid: libc::pid_t, sig: libc::c_int) -> libc::c_int {
    let rt = if RESTORED.load(Ordering::Relaxed) {
        crate::threads::real_tid(tid)
    } else {
        tid
    };
    set_errno_ret(sys::tgkill(to_real_pid(tgid), rt, sig))
}

type ForkFn = unsafe extern "C" fn() -> libc::pid_t;
static REAL_FORK: AtomicUsize = AtomicUsize::new(0);

/// `fork()`: the child becomes a new process of the job, with its own checkpoint thread.
///
/// # Safety
/// Same contract as libc's fork.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let f = next_symbol(&REAL_FORK, b"fork\0");
    let parent_vpid = getpid();
    let active = ACTIVE.load(Ordering::Relaxed);
    // No checkpoint may park this thread while it holds the runtime's locks below (the
    // checkpoint thread needs them), so the checkpoint signal waits until the fork is done.
    let sig_bit: u64 = 1 << (CKPT_SIG.load(Ordering::Relaxed) - 1);
    let mut old_mask: u64 = 0;
    // SAFETY: rt_sigprocmask(SIG_BLOCK) of one signal for this thread.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK as u64,
            &sig_bit as *const u64 as u64,
            &mut old_mask as *mut u64 as u64,
            8,
            0,
            0,
        )
    };
    // A coordinator connection being opened must be known (to close it in the child), and
    // the runtime's allocator must not be copied in a locked state.
    let guard = crate::agent::FORK_LOCK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    crate::ALLOC.lock();
    // SAFETY: glibc's fork.
    let r = unsafe { std::mem::transmute::<usize, ForkFn>(f)() };
    crate::ALLOC.unlock();
    drop(guard);
    // SAFETY: restores this thread's mask.
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
    if r == 0 && active {
        crate::agent::after_fork_child(parent_vpid);
    }
    if r > 0 {
        virtual_of(r)
    } else {
        r
    }
}

/// `vfork()` is served by `fork()`: the child must get its own runtime state, which a
/// child sharing the parent's memory cannot.
///
/// # Safety
/// Same contract as libc's vfork (a superset: the child has its own memory).
#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    // SAFETY: forwarded.
    unsafe { fork() }
}

fn wait_result(r: i64) -> libc::pid_t {
    if r > 0 {
        virtual_of(r as i32)
    } else {
        set_errno_ret(r)
    }
}

/// # Safety
/// Same contract as libc's wait4.
#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
    ru: *mut libc::rusage,
) -> libc::pid_t {
    // SAFETY: forwarded pointers are the caller's.
    let r = unsafe {
        sys::syscall6(
            libc::SYS_wait4,
            pid_arg_to_real(pid) as u64,
            status as u64,
            options as u64,
            ru as u64,
            0,
            0,
        )
    };
    wait_result(r)
}

/// # Safety
/// Same contract as libc's waitpid.
#[no_mangle]
pub unsafe extern "C" fn waitpid(
    pid: libc::pid_t,
    status: *mut libc::c_int,
    options: libc::c_int,
) -> libc::pid_t {
    // SAFETY: forwarded.
    unsafe { wait4(pid, status, options, std::ptr::null_mut()) }
}

/// # Safety
/// Same contract as libc's wait.
#[no_mangle]
pub unsafe extern "C" fn wait(status: *mut libc::c_int) -> libc::pid_t {
    // SAFETY: forwarded.
    unsafe { wait4(-1, status, 0, std::ptr::null_mut()) }
}

/// # Safety
/// Same contract as libc's waitid.
#[no_mangle]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: libc::c_int,
) -> libc::c_int {
    let id = if idtype == libc::P_PID || idtype == libc::P_PGID {
        real_of(id as i32) as libc::id_t
    } else {
        id
    };
    // SAFETY: forwarded pointers are the caller's.
    let r = unsafe {
        sys::syscall6(
            libc::SYS_waitid,
            idtype as u64,
            id as u64,
            info as u64,
            options as u64,
            0,
            0,
        )
    };
    if r >= 0 && !info.is_null() {
        // si_pid sits at offset 16 of siginfo_t for SIGCHLD.
        // SAFETY: info points to the caller's siginfo_t, filled by the kernel.
        unsafe {
            let p = (info as *mut u8).add(16) as *mut i32;
            if *p > 0 {
                *p = virtual_of(*p);
            }
        }
    }
    set_errno_ret(r)
}

#[no_mangle]
pub extern "C" fn getpgid(pid: libc::pid_t) -> libc::pid_t {
    // SAFETY: integer argument.
    let r = unsafe { sys::syscall3(libc::SYS_getpgid, pid_arg_to_real(pid) as u64, 0, 0) };
    wait_result(r)
}

#[no_mangle]
pub extern "C" fn getpgrp() -> libc::pid_t {
    getpgid(0)
}

#[no_mangle]
pub extern "C" fn getsid(pid: libc::pid_t) -> libc::pid_t {
    // SAFETY: integer argument.
    let r = unsafe { sys::syscall3(libc::SYS_getsid, pid_arg_to_real(pid) as u64, 0, 0) };
    wait_result(r)
}

#[no_mangle]
pub extern "C" fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> libc::c_int {
    // SAFETY: integer arguments.
    set_errno_ret(unsafe {
        sys::syscall3(
            libc::SYS_setpgid,
            pid_arg_to_real(pid) as u64,
            pid_arg_to_real(pgid) as u64,
            0,
        )
    })
}

type SigactionFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sigaction, *mut libc::sigaction) -> libc::c_int;
type SigmaskFn =
    unsafe extern "C" fn(libc::c_int, *const libc::sigset_t, *mut libc::sigset_t) -> libc::c_int;

static REAL_SIGACTION: AtomicUsize = AtomicUsize::new(0);
static REAL_SIGPROCMASK: AtomicUsize = AtomicUsize::new(0);
static REAL_PTHREAD_SIGMASK: AtomicUsize = AtomicUsize::new(0);

fn next_symbol(slot: &AtomicUsize, name: &[u8]) -> usize {
    let v = slot.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    // SAFETY: dlsym with a NUL-terminated name; a found symbol does not allocate.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const libc::c_char) } as usize;
    slot.store(p, Ordering::Relaxed);
    p
}

/// Resolves the next definitions of the functions we interpose (at start-up, so that no
/// lookup happens later).
pub fn resolve_real() {
    next_symbol(&REAL_SIGACTION, b"sigaction\0");
    next_symbol(&REAL_SIGPROCMASK, b"sigprocmask\0");
    next_symbol(&REAL_PTHREAD_SIGMASK, b"pthread_sigmask\0");
    resolve_path_functions();
}

pub fn real_sigaction(
    sig: i32,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    let f = next_symbol(&REAL_SIGACTION, b"sigaction\0");
    // SAFETY: f is glibc's sigaction (same signature).
    unsafe { std::mem::transmute::<usize, SigactionFn>(f)(sig, act, old) }
}

/// Interposed libc function.
///
/// # Safety
/// Same contract as the libc function of that name.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: libc::c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> libc::c_int {
    if ACTIVE.load(Ordering::Relaxed) && sig == CKPT_SIG.load(Ordering::Relaxed) {
        // The program wants our signal: remember its handler, keep ours.
        if !old.is_null() {
            // SAFETY: old points to a sigaction the caller owns.
            unsafe {
                std::ptr::write_bytes(old, 0, 1);
                (*old).sa_sigaction = SHADOW_HANDLER.load(Ordering::Relaxed);
            }
        }
        if !act.is_null() {
            // SAFETY: act points to the caller's sigaction.
            SHADOW_HANDLER.store(unsafe { (*act).sa_sigaction }, Ordering::Relaxed);
        }
        return 0;
    }
    real_sigaction(sig, act, old)
}

/// Interposed libc function.
///
/// # Safety
/// Same contract as the libc function of that name.
#[no_mangle]
pub unsafe extern "C" fn signal(
    sig: libc::c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    // SAFETY: zeroed sigaction is a valid starting value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

fn filtered(
    set: *const libc::sigset_t,
    how: libc::c_int,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    if set.is_null() || !ACTIVE.load(Ordering::Relaxed) || how == libc::SIG_UNBLOCK {
        return set;
    }
    // SAFETY: set points to the caller's sigset.
    *copy = unsafe { *set };
    // SAFETY: copy is a valid sigset.
    unsafe { libc::sigdelset(copy, CKPT_SIG.load(Ordering::Relaxed)) };
    copy
}

/// Interposed libc function.
///
/// # Safety
/// Same contract as the libc function of that name.
#[no_mangle]
pub unsafe extern "C" fn sigprocmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> libc::c_int {
    // SAFETY: zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = filtered(set, how, &mut copy);
    let f = next_symbol(&REAL_SIGPROCMASK, b"sigprocmask\0");
    // SAFETY: glibc's sigprocmask.
    unsafe { std::mem::transmute::<usize, SigmaskFn>(f)(how, set, old) }
}

/// Interposed libc function.
///
/// # Safety
/// Same contract as the libc function of that name.
#[no_mangle]
pub unsafe extern "C" fn pthread_sigmask(
    how: libc::c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> libc::c_int {
    // SAFETY: zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = filtered(set, how, &mut copy);
    let f = next_symbol(&REAL_PTHREAD_SIGMASK, b"pthread_sigmask\0");
    // SAFETY: glibc's pthread_sigmask.
    unsafe { std::mem::transmute::<usize, SigmaskFn>(f)(how, set, old) }
}

// --- pidfds and /proc/<pid> paths ----------------------------------------------------------

/// `pidfd_open(2)`: the pid is virtual.
#[no_mangle]
pub extern "C" fn pidfd_open(pid: libc::pid_t, flags: libc::c_uint) -> libc::c_int {
    // SAFETY: pidfd_open with integer arguments.
    set_errno_ret(unsafe {
        sys::syscall3(libc::SYS_pidfd_open, real_of(pid) as u64, flags as u64, 0)
    })
}

/// Describes a pidfd (from its fdinfo `Pid:` line): it must name a process of the job.
pub fn describe_pidfd(fd: i32, info: &str) -> Result<ckpt_image::FdKind, String> {
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("fd {fd} is a pidfd whose process is unknown"))?;
    if pid <= 0 {
        return Err(format!(
            "fd {fd} is a pidfd of a process that has ended and was reaped: it cannot be re-created"
        ));
    }
    let is_child_zombie = crate::process::children(&[]).contains(&pid);
    if !crate::process::runs_runtime(pid) && !is_child_zombie {
        return Err(format!(
            "fd {fd} is a pidfd of process {pid} ({}), which is not a process of the job",
            crate::process::comm_of(pid)
        ));
    }
    Ok(ckpt_image::FdKind::PidFd {
        vpid: virtual_of(pid),
    })
}

/// After a restore, once the tree's pids are known: every pidfd is opened again on its
/// process (its number was held by a placeholder).
pub fn reopen_pidfds(fds: &[ckpt_image::FdMeta]) -> Result<(), String> {
    for f in fds {
        if let ckpt_image::FdKind::PidFd { vpid } = f.kind {
            let real = real_of(vpid);
            // SAFETY: pidfd_open of the restored process.
            let p = unsafe { sys::syscall3(libc::SYS_pidfd_open, real as u64, 0, 0) };
            if p < 0 {
                return Err(format!(
                    "fd {}: pidfd of process {vpid} (pid {real}): {}",
                    f.fd,
                    std::io::Error::from_raw_os_error(-p as i32)
                ));
            }
            let fl = if f.cloexec { libc::O_CLOEXEC } else { 0 };
            // SAFETY: replacing our placeholder with the new pidfd, then closing the spare.
            unsafe {
                if libc::dup3(p as i32, f.fd, fl) < 0 {
                    return Err(format!(
                        "fd {}: dup3: {}",
                        f.fd,
                        std::io::Error::last_os_error()
                    ));
                }
                libc::close(p as i32);
                if f.flags & libc::O_NONBLOCK != 0 {
                    libc::fcntl(f.fd, libc::F_SETFL, libc::O_NONBLOCK);
                }
            }
        }
    }
    Ok(())
}

/// `/proc/<vpid>/...` → `/proc/<real pid>/...` (in `buf`) for a process of the job whose
/// pid changed with a restart; `None` when nothing is to be translated. The runtime's own
/// thread is never translated (it names processes by their real pids).
fn proc_path(path: *const libc::c_char, buf: &mut [u8; 4096]) -> Option<*const libc::c_char> {
    if path.is_null()
        || !RESTORED.load(Ordering::Relaxed)
        || crate::is_runtime_thread(sys::gettid())
    {
        return None;
    }
    // SAFETY: a NUL-terminated path from the caller.
    let p = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    let rest = p.strip_prefix(b"/proc/")?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits < rest.len() && rest[digits] != b'/') {
        return None;
    }
    let v: i32 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let r = real_of(v);
    if r == v {
        return None;
    }
    let mut num = [0u8; 12];
    let mut n = r as u32;
    let mut k = num.len();
    loop {
        k -= 1;
        num[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let tail = &rest[digits..];
    let total = 6 + (num.len() - k) + tail.len();
    if total + 1 > buf.len() {
        return None;
    }
    buf[..6].copy_from_slice(b"/proc/");
    buf[6..6 + num.len() - k].copy_from_slice(&num[k..]);
    buf[6 + num.len() - k..total].copy_from_slice(tail);
    buf[total] = 0;
    Some(buf.as_ptr() as *const libc::c_char)
}

static REAL_OPENAT: AtomicUsize = AtomicUsize::new(0);
static REAL_OPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_FOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_OPENDIR: AtomicUsize = AtomicUsize::new(0);
static REAL_READLINK: AtomicUsize = AtomicUsize::new(0);
static REAL_ACCESS: AtomicUsize = AtomicUsize::new(0);

/// Resolves the path functions interposed for /proc/<pid> (at start-up: no lookup later).
pub fn resolve_path_functions() {
    next_symbol(&REAL_OPENAT, b"openat\0");
    next_symbol(&REAL_OPEN, b"open\0");
    next_symbol(&REAL_FOPEN, b"fopen\0");
    next_symbol(&REAL_OPENDIR, b"opendir\0");
    next_symbol(&REAL_READLINK, b"readlink\0");
    next_symbol(&REAL_ACCESS, b"access\0");
}

type OpenFn = unsafe extern "C" fn(*const libc::c_char, libc::c_int, libc::mode_t) -> libc::c_int;
type OpenatFn = unsafe extern "C" fn(
    libc::c_int,
    *const libc::c_char,
    libc::c_int,
    libc::mode_t,
) -> libc::c_int;

/// # Safety
/// Same contract as libc's open (the mode is read whatever the flags).
#[no_mangle]
pub unsafe extern "C" fn open(
    path: *const libc::c_char,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> libc::c_int {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_OPEN, b"open\0");
    // SAFETY: glibc's open.
    unsafe { std::mem::transmute::<usize, OpenFn>(f)(p, flags, mode) }
}

/// # Safety
/// Same contract as libc's open64.
#[no_mangle]
pub unsafe extern "C" fn open64(
    path: *const libc::c_char,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> libc::c_int {
    // SAFETY: forwarded (open64 is open on 64-bit Linux).
    unsafe { open(path, flags, mode) }
}

/// # Safety
/// Same contract as libc's openat.
#[no_mangle]
pub unsafe extern "C" fn openat(
    dirfd: libc::c_int,
    path: *const libc::c_char,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> libc::c_int {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_OPENAT, b"openat\0");
    // SAFETY: glibc's openat.
    unsafe { std::mem::transmute::<usize, OpenatFn>(f)(dirfd, p, flags, mode) }
}

/// # Safety
/// Same contract as libc's openat64.
#[no_mangle]
pub unsafe extern "C" fn openat64(
    dirfd: libc::c_int,
    path: *const libc::c_char,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { openat(dirfd, path, flags, mode) }
}

/// `_FORTIFY_SOURCE` builds call these instead of `open`/`openat`.
///
/// # Safety
/// Same contract as glibc's __open_2.
#[no_mangle]
pub unsafe extern "C" fn __open_2(path: *const libc::c_char, flags: libc::c_int) -> libc::c_int {
    // SAFETY: forwarded (no O_CREAT/O_TMPFILE here: no mode).
    unsafe { open(path, flags, 0) }
}

/// # Safety
/// Same contract as glibc's __open64_2.
#[no_mangle]
pub unsafe extern "C" fn __open64_2(path: *const libc::c_char, flags: libc::c_int) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { open(path, flags, 0) }
}

/// # Safety
/// Same contract as glibc's __openat_2.
#[no_mangle]
pub unsafe extern "C" fn __openat_2(
    dirfd: libc::c_int,
    path: *const libc::c_char,
    flags: libc::c_int,
) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { openat(dirfd, path, flags, 0) }
}

/// # Safety
/// Same contract as glibc's __openat64_2.
#[no_mangle]
pub unsafe extern "C" fn __openat64_2(
    dirfd: libc::c_int,
    path: *const libc::c_char,
    flags: libc::c_int,
) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { openat(dirfd, path, flags, 0) }
}

/// # Safety
/// Same contract as libc's fopen.
#[no_mangle]
pub unsafe extern "C" fn fopen(
    path: *const libc::c_char,
    mode: *const libc::c_char,
) -> *mut libc::FILE {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_FOPEN, b"fopen\0");
    // SAFETY: glibc's fopen.
    unsafe {
        std::mem::transmute::<
            usize,
            unsafe extern "C" fn(*const libc::c_char, *const libc::c_char) -> *mut libc::FILE,
        >(f)(p, mode)
    }
}

/// # Safety
/// Same contract as libc's fopen64.
#[no_mangle]
pub unsafe extern "C" fn fopen64(
    path: *const libc::c_char,
    mode: *const libc::c_char,
) -> *mut libc::FILE {
    // SAFETY: forwarded.
    unsafe { fopen(path, mode) }
}

/// # Safety
/// Same contract as libc's opendir.
#[no_mangle]
pub unsafe extern "C" fn opendir(path: *const libc::c_char) -> *mut libc::DIR {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_OPENDIR, b"opendir\0");
    // SAFETY: glibc's opendir.
    unsafe {
        std::mem::transmute::<usize, unsafe extern "C" fn(*const libc::c_char) -> *mut libc::DIR>(f)(
            p,
        )
    }
}

/// # Safety
/// Same contract as libc's readlink.
#[no_mangle]
pub unsafe extern "C" fn readlink(
    path: *const libc::c_char,
    out: *mut libc::c_char,
    len: libc::size_t,
) -> libc::ssize_t {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_READLINK, b"readlink\0");
    // SAFETY: glibc's readlink.
    unsafe {
        std::mem::transmute::<
            usize,
            unsafe extern "C" fn(
                *const libc::c_char,
                *mut libc::c_char,
                libc::size_t,
            ) -> libc::ssize_t,
        >(f)(p, out, len)
    }
}

/// # Safety
/// Same contract as libc's access.
#[no_mangle]
pub unsafe extern "C" fn access(path: *const libc::c_char, mode: libc::c_int) -> libc::c_int {
    let mut buf = [0u8; 4096];
    let p = proc_path(path, &mut buf).unwrap_or(path);
    let f = next_symbol(&REAL_ACCESS, b"access\0");
    // SAFETY: glibc's access.
    unsafe {
        std::mem::transmute::<
            usize,
            unsafe extern "C" fn(*const libc::c_char, libc::c_int) -> libc::c_int,
        >(f)(p, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_of_job_processes_are_translated() {
        set_pid_map(&[(4242, 777), (17, 17)]);
        RESTORED.store(true, Ordering::Relaxed);
        let t = |s: &str| {
            let c = std::ffi::CString::new(s).unwrap();
            let mut buf = [0u8; 4096];
            proc_path(c.as_ptr(), &mut buf).map(|p| {
                // SAFETY: proc_path wrote a NUL-terminated path into buf.
                unsafe { std::ffi::CStr::from_ptr(p) }
                    .to_str()
                    .unwrap()
                    .to_string()
            })
        };
        assert_eq!(t("/proc/4242/status").as_deref(), Some("/proc/777/status"));
        assert_eq!(t("/proc/4242").as_deref(), Some("/proc/777"));
        assert_eq!(t("/proc/42420/status"), None);
        assert_eq!(t("/proc/17/status"), None);
        assert_eq!(t("/proc/self/status"), None);
        assert_eq!(t("/tmp/4242"), None);
        RESTORED.store(false, Ordering::Relaxed);
        assert_eq!(t("/proc/4242/status"), None);
        set_pid_map(&[]);
    }
}
