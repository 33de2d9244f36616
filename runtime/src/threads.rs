//! Threads: parking every user thread in a signal handler for a checkpoint, resuming them,
//! and recreating them after a restart.
//!
//! Each thread parks *inside* the handler of the checkpoint signal: the kernel has saved
//! its interrupted registers, FPU/vector state and signal mask in the signal frame on the
//! thread's own stack, and the handler saves only its callee-saved context. After a restore
//! a fresh kernel thread resumes that context, re-registers what the kernel keeps per
//! thread (robust futex list, rseq, alternate signal stack) and returns from the handler:
//! `rt_sigreturn` reloads everything else.

use crate::ctx::{__ckpt_save_context, clone_into, Ctx};
use crate::sys;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

pub const MAX_THREADS: usize = 1024;

pub const FREE: u32 = 0;
pub const SIGNALED: u32 = 1;
pub const PARKED: u32 = 2;
pub const RESTORED: u32 = 3;

#[repr(C)]
pub struct Slot {
    pub state: AtomicU32,
    pub real_tid: AtomicI32,
    pub vtid: i32,
    pub seen: bool,
    pub ctx: Ctx,
    pub fs_base: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub altstack: libc::stack_t,
    /// From /proc/<tid>/syscall just before signalling: (nr, pc), valid when nr >= 0.
    pub sc_nr: i64,
    pub sc_pc: u64,
    /// The thread's name (comm), NUL-padded.
    pub name: [u8; 16],
    /// Signals pending for this thread alone at the snapshot (bit n-1 = signal n) that
    /// were not taken with their siginfo (more than THREAD_SIGS, or arrived later).
    pub pending: u64,
    /// How many signals pending for this thread alone it took with their siginfo when it
    /// parked (kept in `SIGINFOS`, at this slot's index); it queues them to itself again
    /// when released (after the snapshot, or after a restore).
    pub nsigs: u32,
    /// PR_SET_PDEATHSIG of this thread (per thread in Linux).
    pub pdeathsig: i32,
}

/// Thread-directed signals kept with their siginfo per thread.
pub const THREAD_SIGS: usize = 16;

pub struct Slots(UnsafeCell<[Slot; MAX_THREADS]>);
// SAFETY: a slot is written by the checkpoint thread while FREE/before signalling and by
// its own thread between SIGNALED and PARKED; `state` orders the hand-overs.
unsafe impl Sync for Slots {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    state: AtomicU32::new(FREE),
    real_tid: AtomicI32::new(0),
    vtid: 0,
    seen: false,
    ctx: Ctx {
        rbx: 0,
        rbp: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rsp: 0,
        rip: 0,
    },
    fs_base: 0,
    robust_head: 0,
    robust_len: 0,
    altstack: libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    },
    sc_nr: -1,
    sc_pc: 0,
    name: [0; 16],
    pending: 0,
    nsigs: 0,
    pdeathsig: 0,
};

pub static SLOTS: Slots = Slots(UnsafeCell::new([EMPTY; MAX_THREADS]));

/// The siginfos of `Slot::nsigs`, per slot index. All zero at start, so it lives in .bss:
/// only the pages of threads that had signals pending are ever touched and saved.
struct SigInfos(UnsafeCell<[[[u64; 16]; THREAD_SIGS]; MAX_THREADS]>);
// SAFETY: an entry is used only by the thread owning the slot of the same index.
unsafe impl Sync for SigInfos {}
static SIGINFOS: SigInfos = SigInfos(UnsafeCell::new([[[0; 16]; THREAD_SIGS]; MAX_THREADS]));

fn siginfos_of(slot: &Slot) -> &'static mut [[u64; 16]; THREAD_SIGS] {
    let base = SLOTS.0.get() as usize;
    let idx = (slot as *const Slot as usize - base) / std::mem::size_of::<Slot>();
    // SAFETY: idx < MAX_THREADS (slot is an element of SLOTS); see `SigInfos`.
    unsafe { &mut (*SIGINFOS.0.get())[idx.min(MAX_THREADS - 1)] }
}
/// 0 while parked threads must stay parked; 1 lets them go.
pub static RELEASE: AtomicU32 = AtomicU32::new(1);
/// Bumped (and woken) whenever a thread parks or reports restored.
pub static PARK_EVENTS: AtomicU32 = AtomicU32::new(0);
/// Offset of glibc's `tid` field inside `struct pthread` (from the thread pointer), or 0.
pub static TID_OFFSET: AtomicI32 = AtomicI32::new(0);
/// Number of rseq registrations glibc made: `__rseq_offset` (from the thread pointer) and
/// whether it registers at all.
pub static RSEQ_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
pub static RSEQ_ENABLED: AtomicU32 = AtomicU32::new(0);
pub const RSEQ_SIG: u32 = 0x5305_3053;

pub fn slots() -> &'static mut [Slot; MAX_THREADS] {
    // SAFETY: see `Slots`; callers respect the state protocol.
    unsafe { &mut *SLOTS.0.get() }
}

fn find_slot(real_tid: i32) -> Option<&'static mut Slot> {
    slots().iter_mut().find(|s| {
        s.state.load(Ordering::Acquire) != FREE && s.real_tid.load(Ordering::Relaxed) == real_tid
    })
}

/// Virtual tid of a real tid (identity for threads born in this incarnation).
pub fn virtual_tid(real: i32) -> i32 {
    for s in slots().iter() {
        if s.state.load(Ordering::Relaxed) != FREE && s.real_tid.load(Ordering::Relaxed) == real {
            return s.vtid;
        }
    }
    real
}

/// Real tid of a virtual tid.
pub fn real_tid(vtid: i32) -> i32 {
    for s in slots().iter() {
        if s.state.load(Ordering::Relaxed) != FREE && s.vtid == vtid {
            return s.real_tid.load(Ordering::Relaxed);
        }
    }
    vtid
}

/// System calls that return EINTR to a thread whose signal handler ran, whatever
/// SA_RESTART says (nanosleep, poll, select, epoll_wait, futex with a timeout, pause,
/// sigsuspend, sigtimedwait). The checkpoint signal must not make them fail, so the
/// handler turns their EINTR back into a restart of the same call.
const EINTR_RESTART: &[i64] = &[7, 23, 34, 35, 128, 130, 202, 230, 232, 270, 271, 281, 441];

/// The checkpoint signal's handler.
pub extern "C" fn handler(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    let tid = sys::gettid();
    let Some(slot) = find_slot(tid) else { return };
    if slot.state.load(Ordering::Acquire) != SIGNALED {
        return;
    }
    // SAFETY: errno is thread-local; we put it back before returning.
    let errno = unsafe { *libc::__errno_location() };
    slot.fs_base = sys::get_fs_base();
    // SAFETY: get_robust_list(0 = self) writes a pointer and a length.
    unsafe {
        sys::syscall3(
            libc::SYS_get_robust_list,
            0,
            &mut slot.robust_head as *mut u64 as u64,
            &mut slot.robust_len as *mut u64 as u64,
        );
        sys::syscall3(
            libc::SYS_sigaltstack,
            0,
            &mut slot.altstack as *mut libc::stack_t as u64,
            0,
        );
    }
    if !uc.is_null() && slot.sc_nr >= 0 && EINTR_RESTART.contains(&slot.sc_nr) {
        // SAFETY: the kernel passes a valid ucontext to an SA_SIGINFO handler.
        let uc = unsafe { &mut *(uc as *mut libc::ucontext_t) };
        let g = &mut uc.uc_mcontext.gregs;
        let rip = g[libc::REG_RIP as usize] as u64;
        if g[libc::REG_RAX as usize] == -(libc::EINTR as i64) && rip == slot.sc_pc {
            // SAFETY: rip points just after a 2-byte `syscall` instruction in mapped code.
            let insn = unsafe { std::ptr::read_unaligned((rip - 2) as *const [u8; 2]) };
            if insn == [0x0f, 0x05] {
                g[libc::REG_RAX as usize] = slot.sc_nr;
                g[libc::REG_RIP as usize] = (rip - 2) as i64;
            }
        }
    }
    take_own_signals(slot);
    let mut pd: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int.
    unsafe {
        sys::syscall3(
            libc::SYS_prctl,
            libc::PR_GET_PDEATHSIG as u64,
            &mut pd as *mut libc::c_int as u64,
            0,
        )
    };
    slot.pdeathsig = pd;
    park(slot as *mut Slot);
    // Released (after a checkpoint, or in a restored process): the signals this thread took
    // go back to it. Only the thread itself may queue a siginfo of kill/tgkill to itself.
    put_back_own_signals(slot);
    if sys::gettid() == sys::getpid_real() {
        // The process leader may do the same for process-directed ones the checkpoint
        // thread could not queue back.
        crate::signals::put_back_deferred();
    }
    // SAFETY: restore the interrupted code's errno.
    unsafe { *libc::__errno_location() = errno };
}

/// The signals pending for the calling thread alone (SigPnd of /proc/thread-self/status),
/// read with raw system calls into a stack buffer (this runs in a signal handler).
fn private_pending() -> u64 {
    let mut buf = [0u8; 4096];
    // SAFETY: open/read/close of a /proc file into our stack buffer.
    let n = unsafe {
        let fd = sys::syscall3(
            libc::SYS_open,
            c"/proc/thread-self/status".as_ptr() as u64,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            0,
        );
        if fd < 0 {
            return 0;
        }
        let mut got = 0usize;
        while got < buf.len() {
            let r = sys::syscall3(
                libc::SYS_read,
                fd as u64,
                buf.as_mut_ptr().add(got) as u64,
                (buf.len() - got) as u64,
            );
            if r <= 0 {
                break;
            }
            got += r as usize;
        }
        sys::syscall3(libc::SYS_close, fd as u64, 0, 0);
        got
    };
    let text = &buf[..n];
    let key = b"\nSigPnd:";
    let Some(at) = text.windows(key.len()).position(|w| w == key) else {
        return 0;
    };
    let mut v: u64 = 0;
    for &c in text[at + key.len()..]
        .iter()
        .skip_while(|c| c.is_ascii_whitespace())
    {
        match (c as char).to_digit(16) {
            Some(d) => v = (v << 4) | d as u64,
            None => break,
        }
    }
    v
}

/// Takes the calling thread's own pending signals with their siginfo into its slot (every
/// instance of a queued real-time signal, in order). A signal also pending for the whole
/// process is left there once the thread's own instances are taken (`signals` takes it).
fn take_own_signals(slot: &mut Slot) {
    slot.nsigs = 0;
    let mut mask = private_pending();
    let skip = crate::vids::CKPT_SIG.load(Ordering::Relaxed);
    for sig in 1..=64i32 {
        if mask & (1 << (sig - 1)) == 0
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
        while (slot.nsigs as usize) < THREAD_SIGS && mask & set != 0 {
            let mut info = [0u64; 16];
            // SAFETY: rt_sigtimedwait(set, info, timeout, 8) with locals.
            let r = unsafe {
                sys::syscall6(
                    libc::SYS_rt_sigtimedwait,
                    &set as *const u64 as u64,
                    info.as_mut_ptr() as u64,
                    &zero as *const libc::timespec as u64,
                    8,
                    0,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            crate::signals::virtualize_sender(&mut info);
            siginfos_of(slot)[slot.nsigs as usize] = info;
            slot.nsigs += 1;
            mask = private_pending();
        }
    }
}

/// Queues the signals the calling thread took back to itself; they stay pending until it
/// returns from the handler with its own mask.
fn put_back_own_signals(slot: &mut Slot) {
    let pid = sys::getpid_real();
    let tid = sys::gettid();
    let store = siginfos_of(slot);
    for info in store.iter().take((slot.nsigs as usize).min(THREAD_SIGS)) {
        let sig = (info[0] & 0xffff_ffff) as i32;
        // SAFETY: rt_tgsigqueueinfo to a thread of our own process with the recorded siginfo.
        let r = unsafe {
            sys::syscall6(
                libc::SYS_rt_tgsigqueueinfo,
                pid as u64,
                tid as u64,
                sig as u64,
                info.as_ptr() as u64,
                0,
                0,
            )
        };
        if r < 0 {
            crate::warn!(
                "could not queue signal {sig} to thread {} again: errno {}",
                slot.vtid,
                -r
            );
        }
    }
    slot.nsigs = 0;
}

#[inline(never)]
fn park(slot: *mut Slot) {
    // SAFETY: the slot is ours between SIGNALED and PARKED; its ctx outlives the call.
    let r = unsafe { __ckpt_save_context(&mut (*slot).ctx) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { (*slot).state.store(PARKED, Ordering::Release) };
    } else {
        // Resumed on a new kernel thread after a restart: r is our slot.
        after_restore(r as *mut Slot);
    }
    PARK_EVENTS.fetch_add(1, Ordering::Release);
    sys::futex_wake(&PARK_EVENTS);
    wait_release();
}

fn wait_release() {
    while RELEASE.load(Ordering::Acquire) == 0 {
        sys::futex_wait(&RELEASE, 0, None);
    }
}

/// Re-creates the per-thread kernel state of a restored thread.
#[inline(never)]
fn after_restore(slot: *mut Slot) {
    // SAFETY: the checkpoint thread handed this slot to us and waits for RESTORED.
    let slot = unsafe { &mut *slot };
    let tid = sys::gettid();
    slot.real_tid.store(tid, Ordering::Relaxed);
    register_thread_state(slot.fs_base, slot.robust_head, slot.robust_len);
    if slot.pdeathsig != 0 {
        // SAFETY: PR_SET_PDEATHSIG for this (new) thread, as the old one had it.
        unsafe {
            sys::syscall3(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG as u64,
                slot.pdeathsig as u64,
                0,
            )
        };
    }
    if slot.altstack.ss_flags & libc::SS_DISABLE == 0 && !slot.altstack.ss_sp.is_null() {
        let mut ss = slot.altstack;
        ss.ss_flags &= !libc::SS_ONSTACK;
        // SAFETY: re-installs the thread's own alternate stack description.
        unsafe {
            sys::syscall3(
                libc::SYS_sigaltstack,
                &ss as *const libc::stack_t as u64,
                0,
                0,
            )
        };
    }
    slot.state.store(RESTORED, Ordering::Release);
}

/// rseq and robust-list registration for the calling (restored) thread.
pub fn register_thread_state(fs_base: u64, robust_head: u64, robust_len: u64) {
    if robust_head != 0 {
        // SAFETY: the list head lives in this thread's restored `struct pthread`.
        unsafe { sys::syscall3(libc::SYS_set_robust_list, robust_head, robust_len, 0) };
    }
    if RSEQ_ENABLED.load(Ordering::Relaxed) != 0 {
        let area = (fs_base as i64 + RSEQ_OFFSET.load(Ordering::Relaxed)) as u64;
        // SAFETY: glibc's per-thread rseq area (32 bytes, aligned) in restored memory.
        unsafe { sys::syscall6(libc::SYS_rseq, area, 32, 0, RSEQ_SIG as u64, 0, 0) };
    }
    let off = TID_OFFSET.load(Ordering::Relaxed);
    if off != 0 {
        // SAFETY: glibc's `tid` field of this thread's `struct pthread`.
        unsafe { std::ptr::write_volatile((fs_base + off as u64) as *mut i32, sys::gettid()) };
    }
}

fn read_syscall(pid: i32, tid: i32) -> (i64, u64) {
    let path = format!("/proc/{pid}/task/{tid}/syscall");
    let Ok(s) = std::fs::read_to_string(path) else {
        return (-1, 0);
    };
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() < 9 {
        return (-1, 0);
    }
    let nr = f[0].parse::<i64>().unwrap_or(-1);
    let pc = u64::from_str_radix(f[8].trim_start_matches("0x"), 16).unwrap_or(0);
    (nr, pc)
}

/// Stops every thread but the caller. On failure every thread is running again.
pub fn suspend_all(sig: i32, timeout_ms: u64) -> Result<usize, String> {
    let me = sys::gettid();
    let pid = sys::getpid_real();
    RELEASE.store(0, Ordering::Release);
    for s in slots().iter_mut() {
        s.seen = false;
    }
    let start = sys::monotonic_ns();
    loop {
        let tids = sys::list_numeric_dir("/proc/self/task")
            .map_err(|e| format!("listing /proc/self/task: {e}"))?;
        let mut new = 0;
        let mut pending = 0;
        for &t in &tids {
            if t == me || crate::is_runtime_thread(t) {
                continue;
            }
            let slot = match find_slot(t) {
                Some(s) => s,
                None => {
                    let Some(s) = slots()
                        .iter_mut()
                        .find(|s| s.state.load(Ordering::Relaxed) == FREE)
                    else {
                        resume_all();
                        return Err(format!("more than {MAX_THREADS} threads"));
                    };
                    s.real_tid.store(t, Ordering::Relaxed);
                    s.vtid = crate::vids::virtual_of_new_thread(t);
                    s.state.store(RESTORED, Ordering::Release); // placeholder: "known, running"
                    s
                }
            };
            slot.seen = true;
            let st = slot.state.load(Ordering::Acquire);
            if st == PARKED {
                continue;
            }
            if st != SIGNALED {
                let (nr, pc) = read_syscall(pid, t);
                slot.name = [0; 16];
                if let Ok(n) = std::fs::read(format!("/proc/self/task/{t}/comm")) {
                    let n = n.strip_suffix(b"\n").unwrap_or(&n);
                    let k = n.len().min(15);
                    slot.name[..k].copy_from_slice(&n[..k]);
                }
                slot.sc_nr = nr;
                slot.sc_pc = pc;
                slot.state.store(SIGNALED, Ordering::Release);
                if sys::tgkill(pid, t, sig) < 0 {
                    // Exited meanwhile.
                    slot.state.store(FREE, Ordering::Release);
                    continue;
                }
                new += 1;
            }
            pending += 1;
        }
        // Forget threads that have exited.
        for s in slots().iter_mut() {
            let st = s.state.load(Ordering::Acquire);
            if st != FREE && !tids.contains(&s.real_tid.load(Ordering::Relaxed)) {
                s.state.store(FREE, Ordering::Release);
            }
        }
        if new == 0 && pending == 0 {
            break;
        }
        if sys::monotonic_ns() - start > timeout_ms * 1_000_000 {
            let stuck: Vec<String> = slots()
                .iter()
                .filter(|s| s.state.load(Ordering::Relaxed) == SIGNALED)
                .map(|s| s.real_tid.load(Ordering::Relaxed).to_string())
                .collect();
            resume_all();
            return Err(format!(
                "thread(s) {} did not stop within {} ms (is the checkpoint signal blocked with a raw syscall?)",
                stuck.join(", "),
                timeout_ms
            ));
        }
        let ev = PARK_EVENTS.load(Ordering::Acquire);
        sys::futex_wait(&PARK_EVENTS, ev, Some(2));
    }
    Ok(slots()
        .iter()
        .filter(|s| s.state.load(Ordering::Relaxed) == PARKED)
        .count())
}

/// In the child of a fork: only the forking thread exists; no thread is parked.
pub fn forget_all() {
    for s in slots().iter_mut() {
        s.state.store(FREE, Ordering::Relaxed);
    }
    RELEASE.store(1, Ordering::Release);
}

/// Lets every parked thread continue.
pub fn resume_all() {
    for s in slots().iter_mut() {
        if s.state.load(Ordering::Acquire) != FREE {
            s.state.store(RESTORED, Ordering::Release); // running, known
        }
    }
    RELEASE.store(1, Ordering::Release);
    sys::futex_wake(&RELEASE);
}

/// After a restart: one new kernel thread per parked slot, each resuming in its handler.
pub fn recreate_all() -> Result<usize, String> {
    let off = TID_OFFSET.load(Ordering::Relaxed);
    let mut n = 0;
    for s in slots().iter_mut() {
        if s.state.load(Ordering::Acquire) != PARKED {
            if s.state.load(Ordering::Relaxed) != FREE {
                s.state.store(FREE, Ordering::Relaxed);
            }
            continue;
        }
        let tid_addr = if off != 0 { s.fs_base + off as u64 } else { 0 };
        let slot_ptr = s as *mut Slot as u64;
        // SAFETY: the slot's context was saved by that thread in its handler; its stack and
        // TLS are restored memory and no other thread runs on them.
        let r = unsafe { clone_into(&s.ctx, s.fs_base, tid_addr, slot_ptr) };
        if r < 0 {
            return Err(format!("clone for thread {} failed: errno {}", s.vtid, -r));
        }
        n += 1;
    }
    // Wait until each reports RESTORED.
    let start = sys::monotonic_ns();
    loop {
        let waiting = slots()
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == PARKED)
            .count();
        if waiting == 0 {
            break;
        }
        if sys::monotonic_ns() - start > 10_000_000_000 {
            return Err(format!("{waiting} restored thread(s) did not start"));
        }
        let ev = PARK_EVENTS.load(Ordering::Acquire);
        sys::futex_wait(&PARK_EVENTS, ev, Some(2));
    }
    Ok(n)
}

/// Finds glibc's `struct pthread` tid offset by looking for each thread's tid at the same
/// offset from both thread pointers.
pub fn discover_tid_offset(fs_a: u64, tid_a: i32, fs_b: u64, tid_b: i32) -> i32 {
    if fs_a == 0 || fs_b == 0 || tid_a == tid_b {
        return 0;
    }
    let mut off = 4;
    while off < 2048 {
        // SAFETY: both thread control blocks are larger than 2 KiB in glibc and mapped.
        let (a, b) = unsafe {
            (
                std::ptr::read_volatile((fs_a + off) as *const i32),
                std::ptr::read_volatile((fs_b + off) as *const i32),
            )
        };
        if a == tid_a && b == tid_b {
            return off as i32;
        }
        off += 4;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real-time signals queued to one thread are taken by it with their values, leave
    /// nothing pending, and come back to the same thread, in order, values intact.
    #[test]
    fn own_signals_taken_and_put_back_with_values() {
        // SAFETY: fork; the child runs single-threaded and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                let sig = libc::SIGRTMIN() + 3;
                let me = sys::getpid_real();
                let tid = sys::gettid();
                // SAFETY: blocking the signal, then queueing three instances to ourselves.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, sig);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    for v in [5u64, 6, 7] {
                        let mut info = [0u64; 16];
                        info[0] = sig as u64;
                        info[1] = (libc::SI_QUEUE as u32) as u64;
                        info[2] = me as u64;
                        info[3] = v;
                        sys::syscall6(
                            libc::SYS_rt_tgsigqueueinfo,
                            me as u64,
                            tid as u64,
                            sig as u64,
                            info.as_ptr() as u64,
                            0,
                            0,
                        );
                    }
                }
                let slot = &mut slots()[0];
                slot.real_tid.store(tid, Ordering::Relaxed);
                take_own_signals(slot);
                if slot.nsigs != 3 || private_pending() != 0 {
                    return 2;
                }
                put_back_own_signals(slot);
                if private_pending() & (1 << (sig - 1)) == 0 {
                    return 3;
                }
                for want in [5usize, 6, 7] {
                    // SAFETY: sigtimedwait with locals.
                    unsafe {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, sig);
                        let mut info: libc::siginfo_t = std::mem::zeroed();
                        let ts = libc::timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        };
                        if libc::sigtimedwait(&set, &mut info, &ts) != sig
                            || info.si_value().sival_ptr as usize != want
                        {
                            return 4;
                        }
                    }
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
