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

fn to_real_pid(pid: i32) -> i32 {
    if !RESTORED.load(Ordering::Relaxed) {
        return pid;
    }
    let v = VPID.load(Ordering::Relaxed);
    if pid == v {
        REAL_PID.load(Ordering::Relaxed)
    } else if pid == -v {
        -REAL_PID.load(Ordering::Relaxed)
    } else {
        pid
    }
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
        if t == REAL_PID.load(Ordering::Relaxed) {
            // The process leader is now the checkpoint thread.
            return crate::threads::virtual_tid(t);
        }
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
        real
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
