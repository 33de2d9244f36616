//! Process-directed pending signals with their siginfo (queued real-time signals keep their
//! values, every instance, in order; standard signals keep their sender and code).
//!
//! At the Drain phase the checkpoint thread dequeues every signal pending for the whole
//! process with `rt_sigtimedwait` (zero timeout; user threads are parked and every signal
//! is blocked in them, so nothing else can take them meanwhile). The siginfos are kept in
//! the runtime's memory (so in the image); at Refill they are queued back into the running
//! process with `rt_sigqueueinfo` (allowed with any `si_code` when a process signals
//! itself), and after a restart the same is done right before the threads are released.
//! Signals pending for one thread only are taken by that thread itself when it parks, with
//! their siginfo, and queued back to the same thread (see `threads::take_own_signals`).
//! The sender's pid in a kept siginfo is made virtual (`virtualize_sender`).
//!
//! `sigqueue(3)` is interposed so that a program that queues a signal to its own (virtual)
//! pid after a restart reaches itself.

use std::sync::atomic::{AtomicBool, Ordering};

type SigInfo = [u64; 16];

static mut TAKEN: Vec<SigInfo> = Vec::new();
static OUTSTANDING: AtomicBool = AtomicBool::new(false);

fn taken() -> &'static mut Vec<SigInfo> {
    // SAFETY: only the checkpoint thread uses TAKEN.
    unsafe { &mut *std::ptr::addr_of_mut!(TAKEN) }
}

fn shared_pending() -> u64 {
    crate::process::pending_signals(crate::sys::gettid()).1
}

/// Whether signal `sig` was taken at the last checkpoint (pending for the process).
pub fn holds(sig: i32) -> bool {
    taken().iter().any(|i| i[0] as u32 as i32 == sig)
}

/// Dequeues every process-directed pending signal except `skip` (the checkpoint signal).
pub fn take_shared(skip: i32) -> Result<(), String> {
    put_back();
    let v = taken();
    v.clear();
    let pend = shared_pending();
    for sig in 1..=64i32 {
        if pend & (1 << (sig - 1)) == 0
            || sig == skip
            || sig == libc::SIGKILL
            || sig == libc::SIGSTOP
        {
            continue;
        }
        let set: u64 = 1 << (sig - 1);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            let mut info: SigInfo = [0; 16];
            // SAFETY: rt_sigtimedwait(set, info, timeout, 8) with locals.
            let r = unsafe {
                crate::sys::syscall6(
                    libc::SYS_rt_sigtimedwait,
                    &set as *const u64 as u64,
                    info.as_mut_ptr() as u64,
                    &zero as *const libc::timespec as u64,
                    8,
                    0,
                    0,
                )
            };
            if r == -(libc::EINTR as i64) {
                continue;
            }
            if r <= 0 {
                break;
            }
            if sig == libc::SIGTERM && crate::agent::term_held() {
                // A SIGTERM that reached the process while it was stopped (or blocked by the
                // program) is the end of the job the held SIGTERM stands for: not part of
                // the image (it would end the restored process); it ends this one after the
                // checkpoint, like one that arrived before.
                crate::agent::term_arrived();
                break;
            }
            virtualize_sender(&mut info);
            v.push(info);
            OUTSTANDING.store(true, Ordering::Release);
            if sig < 32 {
                break; // a standard signal is pending once at most
            }
        }
    }
    Ok(())
}

/// A signal sent by a process of the job carries the sender's real pid of this
/// incarnation; the siginfo kept for a restart gets its virtual pid (the only pid the
/// program knows it by), so that a signal re-raised after a restart names its sender as
/// the program saw it. Only siginfos with a sender pid are changed (kill, sigqueue, tkill,
/// message queues, SIGCHLD).
pub fn virtualize_sender(info: &mut SigInfo) {
    let signo = (info[0] & 0xffff_ffff) as i32;
    let code = (info[1] & 0xffff_ffff) as u32 as i32;
    let has_pid = matches!(
        code,
        libc::SI_USER | libc::SI_QUEUE | libc::SI_MESGQ | libc::SI_TKILL
    ) || (signo == libc::SIGCHLD && code > 0);
    if !has_pid {
        return;
    }
    let real = (info[2] & 0xffff_ffff) as u32 as i32;
    if real <= 0 {
        return;
    }
    let v = crate::vids::virtual_of(real);
    info[2] = (info[2] & !0xffff_ffff) | (v as u32 as u64);
}

/// Siginfos of kill()/tgkill() (si_code >= 0 or SI_TKILL) may only be queued by the
/// thread whose tid is the target pid: in a running process the checkpoint thread is not
/// the leader, so those are handed to the leader thread, which queues them when it is
/// released (`put_back_deferred`).
const MAX_DEFERRED: usize = 64;
static mut DEFERRED: [SigInfo; MAX_DEFERRED] = [[0; 16]; MAX_DEFERRED];
static NDEFERRED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Run by the process's leader thread when released from a checkpoint.
pub fn put_back_deferred() {
    let n = NDEFERRED.swap(0, Ordering::AcqRel).min(MAX_DEFERRED);
    let pid = crate::sys::getpid_real();
    for k in 0..n {
        // SAFETY: written by the checkpoint thread before the release (ordered by NDEFERRED).
        let info = unsafe { (*std::ptr::addr_of!(DEFERRED))[k] };
        let sig = (info[0] & 0xffff_ffff) as i32;
        // SAFETY: rt_sigqueueinfo to our own process, from its leader thread.
        unsafe {
            crate::sys::syscall3(
                libc::SYS_rt_sigqueueinfo,
                pid as u64,
                sig as u64,
                info.as_ptr() as u64,
            )
        };
    }
}

/// Queues the taken signals back (once; after a refill or in a restored process).
pub fn put_back() {
    if !OUTSTANDING.swap(false, Ordering::AcqRel) {
        return;
    }
    let pid = crate::sys::getpid_real();
    let mut deferred = NDEFERRED.load(Ordering::Acquire);
    for info in taken().iter() {
        let sig = (info[0] & 0xffff_ffff) as i32;
        // SAFETY: rt_sigqueueinfo to our own process with the recorded siginfo.
        let r = unsafe {
            crate::sys::syscall3(
                libc::SYS_rt_sigqueueinfo,
                pid as u64,
                sig as u64,
                info.as_ptr() as u64,
            )
        };
        if r == -(libc::EPERM as i64) && deferred < MAX_DEFERRED {
            // SAFETY: only the checkpoint thread writes DEFERRED, before the release.
            unsafe { (*std::ptr::addr_of_mut!(DEFERRED))[deferred] = *info };
            deferred += 1;
        } else if r < 0 {
            crate::warn!(
                "could not queue signal {sig} again: {}",
                std::io::Error::from_raw_os_error(-r as i32)
            );
        }
    }
    NDEFERRED.store(deferred, Ordering::Release);
}

/// Signals taken at the last checkpoint (for the record in the image: count).
#[allow(dead_code)]
pub fn taken_count() -> usize {
    taken().len()
}

/// Interposed `sigqueue(3)`: the program's (virtual) pid means itself after a restart.
#[no_mangle]
pub extern "C" fn sigqueue(pid: libc::pid_t, sig: libc::c_int, value: libc::sigval) -> libc::c_int {
    let vpid = crate::vids::VPID.load(Ordering::Relaxed);
    let real = if crate::vids::RESTORED.load(Ordering::Relaxed) && pid == vpid {
        crate::vids::REAL_PID.load(Ordering::Relaxed)
    } else {
        pid
    };
    let mut info: SigInfo = [0; 16];
    // si_signo, si_errno, si_code = SI_QUEUE; si_pid, si_uid; si_value (glibc's layout).
    info[0] = sig as u32 as u64;
    info[1] = (libc::SI_QUEUE as u32) as u64;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    info[2] = (crate::vids::getpid() as u32 as u64) | ((uid as u64) << 32);
    info[3] = value.sival_ptr as u64;
    // SAFETY: rt_sigqueueinfo with a local siginfo.
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_rt_sigqueueinfo,
            real as u64,
            sig as u64,
            info.as_ptr() as u64,
        )
    };
    if r < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = -r as i32 };
        return -1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal a process of the job sent with its real pid of this incarnation is kept
    /// with the sender's virtual pid.
    #[test]
    fn sender_pid_is_kept_virtual() {
        // SAFETY: fork; the child uses raw system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                let real = crate::sys::getpid_real();
                crate::vids::REAL_PID.store(real, Ordering::Relaxed);
                crate::vids::VPID.store(4242, Ordering::Relaxed);
                // SAFETY: blocking SIGUSR2 in the only thread, then a raw kill to ourselves.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR2);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    crate::sys::syscall3(libc::SYS_kill, real as u64, libc::SIGUSR2 as u64, 0);
                }
                take_shared(62).unwrap();
                let t = taken();
                if t.len() != 1 || (t[0][1] & 0xffff_ffff) as i32 != libc::SI_USER {
                    return 2;
                }
                if (t[0][2] & 0xffff_ffff) as i32 != 4242 {
                    return 3;
                }
                0
            })();
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
    }

    #[test]
    fn queued_signal_values_round_trip() {
        // In a forked (single-threaded) child: the test harness's other threads do not
        // block the signal and would take it.
        // SAFETY: fork; the child uses raw system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                let sig = libc::SIGRTMIN() + 5;
                // SAFETY: blocking the signal in the only thread of the child.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::sigaddset(&mut set, libc::SIGUSR1);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    for v in [11usize, 22, 33] {
                        if sigqueue(
                            libc::getpid(),
                            sig,
                            libc::sigval {
                                sival_ptr: v as *mut _,
                            },
                        ) != 0
                        {
                            return 2;
                        }
                    }
                    libc::kill(libc::getpid(), libc::SIGUSR1);
                }
                take_shared(62).unwrap();
                if taken().len() != 4 || shared_pending() != 0 {
                    return 3;
                }
                put_back();
                put_back(); // only once
                let mut got = Vec::new();
                for _ in 0..4 {
                    // SAFETY: sigtimedwait with locals.
                    unsafe {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, sig);
                        libc::sigaddset(&mut set, libc::SIGUSR1);
                        let mut info: libc::siginfo_t = std::mem::zeroed();
                        let ts = libc::timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        };
                        let r = libc::sigtimedwait(&set, &mut info, &ts);
                        if r == sig {
                            got.push(info.si_value().sival_ptr as usize);
                        } else if r == libc::SIGUSR1 {
                            got.push(1);
                        } else {
                            return 4;
                        }
                    }
                }
                if got != [1, 11, 22, 33] || shared_pending() != 0 {
                    return 5;
                }
                0
            })();
            // SAFETY: leave the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
    }
}
