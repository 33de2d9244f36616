//! Children that ended before a checkpoint and were not yet waited for (zombies).
//!
//! Dump: during the Drain phase every child that is a zombie is described (virtual pid,
//! group, session, name, and how it ended, read with `waitid(WNOWAIT)`, which leaves it
//! waitable). Restore: `ckpt restart` forks a stand-in child with the zombie's place in the
//! restart area; the stand-in waits on its *release word*. The restored parent, once its
//! signal dispositions are back and before it arrives at the tree barrier, releases each of
//! its stand-ins, waits (`WNOWAIT`) until the stand-in has ended the recorded way, and
//! removes the SIGCHLD this caused unless SIGCHLD was pending at the checkpoint (the
//! program got that SIGCHLD before the checkpoint already). So after a restart the parent
//! finds the child waitable at once, with the same pid (virtual) and status.

use ckpt_image::Zombie;

/// The kernel's `siginfo_t` fields a `waitid` fills for SIGCHLD.
#[repr(C)]
struct ChildInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    status: i32,
    _rest: [u8; 100],
}

const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;
const CLD_DUMPED: i32 = 3;

/// (state, pgrp, session) of process `pid` from /proc/<pid>/stat.
fn stat_of(pid: i32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    let mut it = s[close + 2..].split_whitespace();
    let state = it.next()?.chars().next()?;
    let _ppid = it.next()?;
    let pgrp = it.next()?.parse().ok()?;
    let sid = it.next()?.parse().ok()?;
    Some((state, pgrp, sid))
}

/// How child `pid` ended, if it has ended (it stays waitable).
fn peek_end(pid: i32) -> Option<(bool, i32, bool)> {
    // SAFETY: zeroed plain data filled by the kernel.
    let mut info: ChildInfo = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo buffer; WNOWAIT reaps nothing.
    let r = unsafe {
        crate::sys::syscall6(
            libc::SYS_waitid,
            libc::P_PID as u64,
            pid as u64,
            &mut info as *mut ChildInfo as u64,
            (libc::WEXITED | libc::WNOWAIT | libc::WNOHANG) as u64,
            0,
            0,
        )
    };
    if r < 0 || info.pid != pid {
        return None;
    }
    match info.code {
        CLD_EXITED => Some((false, info.status, false)),
        CLD_KILLED => Some((true, info.status, false)),
        CLD_DUMPED => Some((true, info.status, true)),
        _ => None,
    }
}

/// The description of child `pid` if it is a zombie (`None` if it is not).
pub fn dump(pid: i32) -> Option<Zombie> {
    let (state, pgrp, sid) = stat_of(pid)?;
    if state != 'Z' {
        return None;
    }
    let (killed, code, core_dumped) = peek_end(pid)?;
    Some(Zombie {
        vpid: crate::vids::virtual_of(pid),
        pgid: crate::vids::virtual_of(pgrp),
        sid: crate::vids::virtual_of(sid),
        comm: crate::process::comm_of(pid),
        killed,
        code,
        core_dumped,
    })
}

/// Lets this process's zombie stand-ins end (restore side; see the module comment). Runs
/// on the checkpoint thread, which blocks every signal, before the tree barrier.
pub fn release(
    zombies: &[Zombie],
    area: &crate::tree::Area,
    sigchld_was_pending: bool,
) -> Result<(), String> {
    if zombies.is_empty() {
        return Ok(());
    }
    let mut reals = Vec::new();
    for z in zombies {
        let real = area.release(z.vpid)?;
        reals.push(real);
    }
    for (z, real) in zombies.iter().zip(&reals) {
        // SAFETY: zeroed plain data filled by the kernel.
        let mut info: ChildInfo = unsafe { std::mem::zeroed() };
        // SAFETY: blocking waitid(WNOWAIT) on our own child: returns once it has ended.
        let r = unsafe {
            crate::sys::syscall6(
                libc::SYS_waitid,
                libc::P_PID as u64,
                *real as u64,
                &mut info as *mut ChildInfo as u64,
                (libc::WEXITED | libc::WNOWAIT) as u64,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(format!(
                "the stand-in of exited child {} (pid {real}) cannot be waited for: {}",
                z.vpid,
                std::io::Error::from_raw_os_error(-r as i32)
            ));
        }
    }
    if !sigchld_was_pending {
        // The SIGCHLDs of the stand-ins (coalesced into one): the program had its SIGCHLD
        // before the checkpoint.
        let set: u64 = 1 << (libc::SIGCHLD - 1);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: dequeues a pending SIGCHLD (blocked in this thread) without waiting.
        unsafe {
            crate::sys::syscall6(
                libc::SYS_rt_sigtimedwait,
                &set as *const u64 as u64,
                0,
                &zero as *const libc::timespec as u64,
                8,
                0,
                0,
            )
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fork_ending(how: impl FnOnce()) -> i32 {
        // SAFETY: the child only calls async-signal-safe functions and ends.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            how();
            // SAFETY: ending the child.
            unsafe { libc::_exit(99) };
        }
        pid
    }

    #[test]
    fn zombies_are_described_and_stay_waitable() {
        // SAFETY: the children end at once.
        let a = fork_ending(|| unsafe { libc::_exit(7) });
        // SAFETY: as above.
        let b = fork_ending(|| unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::raise(libc::SIGTERM);
        });
        // Wait until both are zombies without reaping them.
        for p in [a, b] {
            while stat_of(p).map(|s| s.0) != Some('Z') {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let za = dump(a).expect("a is a zombie");
        assert_eq!((za.vpid, za.killed, za.code), (a, false, 7));
        let zb = dump(b).expect("b is a zombie");
        assert_eq!((zb.vpid, zb.killed, zb.code), (b, true, libc::SIGTERM));
        // The round trip: the description, as JSON in the image and back.
        let back: Zombie = serde_json::from_str(&serde_json::to_string(&za).unwrap()).unwrap();
        assert_eq!(back, za);
        // Describing did not reap them: the program still gets the same statuses.
        let mut st = 0;
        // SAFETY: reaping our own children.
        assert_eq!(unsafe { libc::waitpid(a, &mut st, 0) }, a);
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::waitpid(b, &mut st, 0) }, b);
        assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM);
        // A living process is not a zombie.
        assert!(dump(crate::sys::getpid_real()).is_none());
    }
}
