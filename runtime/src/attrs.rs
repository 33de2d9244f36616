//! Process and thread attributes the kernel does not keep across a restart: nice value and
//! CPU affinity of every thread, personality, dumpable, no_new_privs, child-subreaper.
//! Seccomp filters and namespaces the program created cannot be recreated by an
//! unprivileged restart: they refuse the checkpoint with a message.
//!
//! Captured at the Drain phase; the process-wide ones and those a new thread inherits are
//! applied on the restored checkpoint thread before the threads are recreated
//! (`restore_process`), the per-thread ones to each thread's new tid right before the
//! threads are released (`restore_threads`). What needs privilege the restarting user lacks
//! (a nice value below the one it may set, CPUs not in its cgroup) is restored as far as
//! possible with a warning; a restore never gains privilege.

const PR_GET_CHILD_SUBREAPER: i32 = 37;
const PR_SET_CHILD_SUBREAPER: i32 = 36;

#[derive(Clone, Debug, Default)]
pub struct ThreadAttrs {
    pub vtid: i32,
    pub nice: i32,
    /// sched_getaffinity bytes (empty: unknown).
    pub affinity: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct Attrs {
    pub personality: u64,
    pub dumpable: i32,
    pub no_new_privs: bool,
    pub subreaper: bool,
    pub threads: Vec<ThreadAttrs>,
}

static mut SAVED: Option<Attrs> = None;

fn saved() -> &'static mut Option<Attrs> {
    // SAFETY: only the checkpoint thread uses SAVED.
    unsafe { &mut *std::ptr::addr_of_mut!(SAVED) }
}

fn status_field(tid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// Refuses what cannot be recreated: seccomp filters, namespaces not shared with the parent.
pub fn check(tid: i32) -> Result<(), String> {
    // A filter inherited from the parent (a container's default seccomp profile, a batch
    // system's) is the environment's: a restart in the same environment has it too. Only
    // filters the program added itself cannot be recreated.
    let ppid = crate::sys::getppid_real();
    let parent = |key: &str| -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{ppid}/status")).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    if let Some(v) = status_field(tid, "Seccomp:") {
        let mine: u64 = status_field(tid, "Seccomp_filters:")
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::from(v != "0"));
        let theirs: u64 = parent("Seccomp_filters:")
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::from(parent("Seccomp:").is_some_and(|p| p != "0")));
        if v != "0" && mine > theirs {
            return Err(format!(
                "it installed a seccomp filter (Seccomp: {v}, {mine} filter(s), its parent {theirs}); filters cannot be installed again by an unprivileged restart (run it without the filter, or install the filter after a restart)"
            ));
        }
    }
    for ns in ["user", "mnt", "net", "ipc", "uts", "cgroup", "time"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}"));
        let parent = std::fs::read_link(format!("/proc/{ppid}/ns/{ns}"));
        if let (Ok(m), Ok(p)) = (mine, parent) {
            if m != p {
                return Err(format!(
                    "it is in its own {ns} namespace ({}), not its parent's: namespaces cannot be recreated by an unprivileged restart",
                    m.display()
                ));
            }
        }
    }
    let pid = std::fs::read_link("/proc/self/ns/pid");
    let kids = std::fs::read_link("/proc/self/ns/pid_for_children");
    if let (Ok(a), Ok(b)) = (pid, kids) {
        if a != b {
            return Err("it created a pid namespace for its children (unshare(CLONE_NEWPID)): namespaces cannot be recreated by an unprivileged restart".into());
        }
    }
    Ok(())
}

fn affinity(tid: i32) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    // SAFETY: sched_getaffinity writes at most buf.len() bytes.
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_sched_getaffinity,
            tid as u64,
            buf.len() as u64,
            buf.as_mut_ptr() as u64,
        )
    };
    if r <= 0 {
        return Vec::new();
    }
    buf.truncate(r as usize);
    buf
}

fn nice_of(tid: i32) -> i32 {
    // The raw system call returns 20 - nice (never negative).
    // SAFETY: getpriority(PRIO_PROCESS, tid).
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_getpriority,
            libc::PRIO_PROCESS as u64,
            tid as u64,
            0,
        )
    };
    if r < 0 {
        0
    } else {
        20 - r as i32
    }
}

/// Records the attributes (Drain phase) after checking what cannot be restored.
/// `threads`: (vtid, real tid) of every parked thread; `main_tid`: the main thread's.
pub fn dump(threads: &[(i32, i32)], main_tid: i32) -> Result<(), String> {
    check(main_tid)?;
    // Per task: the main thread's (the checkpoint thread's own may be older).
    let personality = std::fs::read_to_string(format!("/proc/self/task/{main_tid}/personality"))
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        // SAFETY: personality(0xffffffff) only queries.
        .unwrap_or_else(
            || unsafe { crate::sys::syscall3(libc::SYS_personality, 0xffff_ffff, 0, 0) } as u64,
        );
    // SAFETY: prctl queries.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    let mut sub: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int.
    unsafe {
        libc::prctl(
            PR_GET_CHILD_SUBREAPER,
            &mut sub as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    let no_new_privs = status_field(main_tid, "NoNewPrivs:").as_deref() == Some("1");
    let threads = threads
        .iter()
        .map(|&(vtid, tid)| ThreadAttrs {
            vtid,
            nice: nice_of(tid),
            affinity: affinity(tid),
        })
        .collect();
    *saved() = Some(Attrs {
        personality,
        dumpable,
        no_new_privs,
        subreaper: sub != 0,
        threads,
    });
    Ok(())
}

/// Drain-phase entry point: the parked threads from the thread table.
pub fn dump_parked() -> Result<(), String> {
    let vpid = crate::vids::VPID.load(std::sync::atomic::Ordering::Relaxed);
    let mut v = Vec::new();
    let mut main = crate::sys::gettid();
    for s in crate::threads::slots().iter() {
        if s.state.load(std::sync::atomic::Ordering::Relaxed) == crate::threads::PARKED {
            let t = s.real_tid.load(std::sync::atomic::Ordering::Relaxed);
            if s.vtid == vpid {
                main = t;
            }
            v.push((s.vtid, t));
        }
    }
    dump(&v, main)
}

/// Process-wide and inherited attributes, on the restored checkpoint thread before the
/// threads are recreated.
pub fn restore_process() {
    let Some(a) = saved().clone() else { return };
    // SAFETY: personality with the recorded value.
    unsafe { crate::sys::syscall3(libc::SYS_personality, a.personality, 0, 0) };
    if a.no_new_privs {
        // SAFETY: prctl with integer arguments (inherited by the threads cloned next).
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    }
    if a.subreaper {
        // SAFETY: as above.
        unsafe { libc::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    if a.dumpable != 1 && a.dumpable >= 0 {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, a.dumpable, 0, 0, 0) };
    }
}

/// Per-thread nice and affinity, to each restored thread's new tid (`real_of` maps vtids).
pub fn restore_threads(real_of: &dyn Fn(i32) -> i32) {
    let Some(a) = saved().clone() else { return };
    for t in &a.threads {
        let tid = real_of(t.vtid);
        if nice_of(tid) != t.nice {
            // SAFETY: setpriority(PRIO_PROCESS, tid, nice) on a thread of ours.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, t.nice) } != 0 {
                crate::warn!(
                    "thread {}: cannot restore nice value {}: {}",
                    t.vtid,
                    t.nice,
                    std::io::Error::last_os_error()
                );
            }
        }
        if !t.affinity.is_empty() {
            // SAFETY: sched_setaffinity with the recorded mask bytes.
            let r = unsafe {
                crate::sys::syscall3(
                    libc::SYS_sched_setaffinity,
                    tid as u64,
                    t.affinity.len() as u64,
                    t.affinity.as_ptr() as u64,
                )
            };
            if r < 0 {
                crate::warn!(
                    "thread {}: cannot restore its CPU affinity: {}",
                    t.vtid,
                    std::io::Error::from_raw_os_error(-r as i32)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_attrs_round_trip() {
        // A helper thread: set its nice and affinity, record, reset, restore, compare.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(crate::sys::gettid()).unwrap();
            done_rx.recv().unwrap();
        });
        let tid = rx.recv().unwrap();
        // SAFETY: raising the helper's nice value (always allowed).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 7) };
        let mut one = [0u8; 128];
        one[0] = 1; // CPU 0
                    // SAFETY: affinity of the helper to CPU 0.
        unsafe {
            crate::sys::syscall3(
                libc::SYS_sched_setaffinity,
                tid as u64,
                128,
                one.as_ptr() as u64,
            )
        };
        dump(&[(4242, tid)], crate::sys::gettid()).unwrap();
        let rec = saved().clone().unwrap();
        assert_eq!(rec.threads[0].nice, 7);
        assert_eq!(rec.threads[0].affinity[0], 1);
        let all = [0xffu8; 128];
        // SAFETY: widen the affinity again (nice cannot be lowered unprivileged: keep it).
        unsafe {
            crate::sys::syscall3(
                libc::SYS_sched_setaffinity,
                tid as u64,
                128,
                all.as_ptr() as u64,
            )
        };
        if let Some(a) = saved().as_mut() {
            a.threads[0].nice = 9;
        }
        restore_threads(&|v| if v == 4242 { tid } else { v });
        assert_eq!(nice_of(tid), 9);
        assert_eq!(affinity(tid)[0], 1);
        done_tx.send(()).unwrap();
        h.join().unwrap();
        *saved() = None;
        check(crate::sys::gettid()).unwrap();
    }
}
