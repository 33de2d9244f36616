//! Process trees: which processes belong to the job, who drains a pipe shared between
//! processes, and the restart area through which the processes of a restored tree learn
//! each other's new pids and wait for each other before running on.

use std::sync::atomic::{AtomicU32, Ordering};

/// Whether `pid` runs the runtime (is a process of a checkpointed job).
fn in_job(pid: i32) -> bool {
    crate::process::runs_runtime(pid)
}

fn ppid_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let close = s.rfind(')')?;
            s[close + 2..].split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The root of this process's job tree is the topmost ancestor that runs the runtime.
pub fn is_root() -> bool {
    !in_job(crate::sys::getppid_real())
}

/// The job's processes that a pipe of ours may be shared with: every process of our tree
/// (walk up to the root, then everything below it).
fn job_processes() -> Vec<i32> {
    let mut root = crate::sys::getpid_real();
    loop {
        let p = ppid_of(root);
        if p <= 1 || !in_job(p) {
            break;
        }
        root = p;
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tids) = crate::sys::list_numeric_dir(&format!("/proc/{p}/task")) {
            for t in tids {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/task/{t}/children")) {
                    for c in s.split_whitespace().filter_map(|v| v.parse::<i32>().ok()) {
                        if !out.contains(&c) && in_job(c) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// Whether another process of the job holds the write end (`write`) or the read end of
/// pipe `inode`.
pub fn pipe_in_job(inode: u64, write: bool) -> bool {
    let me = crate::sys::getpid_real();
    let want = format!("pipe:[{inode}]");
    for p in job_processes() {
        if p == me {
            continue;
        }
        if let Ok(fds) = crate::sys::list_numeric_dir(&format!("/proc/{p}/fd")) {
            for fd in fds {
                let same = std::fs::read_link(format!("/proc/{p}/fd/{fd}"))
                    .map(|l| l.to_string_lossy() == want)
                    .unwrap_or(false);
                if same && fd_is_write(p, fd) == write {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether process `p` has an fd on `link` (e.g. "socket:[123]").
fn holds(p: i32, link: &str) -> bool {
    crate::sys::list_numeric_dir(&format!("/proc/{p}/fd"))
        .map(|fds| {
            fds.into_iter().any(|fd| {
                std::fs::read_link(format!("/proc/{p}/fd/{fd}"))
                    .map(|l| l.to_string_lossy() == link)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// Whether some process of the job (this one included) has an fd on `link` (e.g.
/// "socket:[123]").
pub fn held_in_job(link: &str) -> bool {
    job_processes().into_iter().any(|p| holds(p, link))
}

/// Whether a process of the same job outside this process tree (another task of the job
/// on this host: same checkpoint directory in its environment) holds `link`. Such a
/// connection is re-established at restart through the coordinator's rendezvous.
pub fn held_by_other_tree(link: &str) -> bool {
    let want = format!("CKPT_DIR={}", crate::config().ckpt_dir);
    let me = job_processes();
    let Ok(pids) = crate::sys::list_numeric_dir("/proc") else {
        return false;
    };
    pids.into_iter().filter(|p| !me.contains(p)).any(|p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .map(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            .unwrap_or(false)
            && holds(p, link)
    })
}

/// Whether some process of the job holds the master of pty `index` (a `/dev/ptmx` fd whose
/// fdinfo says `tty-index: index`).
pub fn pty_master_in_job(index: u32) -> bool {
    let want = format!("tty-index:\t{index}\n");
    for p in job_processes() {
        if let Ok(fds) = crate::sys::list_numeric_dir(&format!("/proc/{p}/fd")) {
            for fd in fds {
                let ptmx = std::fs::read_link(format!("/proc/{p}/fd/{fd}"))
                    .map(|l| {
                        let l = l.to_string_lossy();
                        l == "/dev/ptmx" || l.ends_with("/pts/ptmx")
                    })
                    .unwrap_or(false);
                if ptmx
                    && std::fs::read_to_string(format!("/proc/{p}/fdinfo/{fd}"))
                        .map(|s| s.contains(&want))
                        .unwrap_or(false)
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether some process of the job holds the slave of pty `index`.
pub fn pty_slave_in_job(index: u32) -> bool {
    held_in_job(&format!("/dev/pts/{index}"))
}

/// Whether this process saves shared-memory object `ino`: of the job's processes that map
/// it, the one with the lowest pid does (all of them compute the same answer while the job
/// is stopped).
pub fn shm_saver(ino: u64) -> bool {
    let me = crate::sys::getpid_real();
    let maps_it = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/maps"))
            .map(|m| {
                crate::memory::parse_maps(&m)
                    .iter()
                    .any(|e| e.shared && e.ino == ino)
            })
            .unwrap_or(false)
    };
    !job_processes()
        .into_iter()
        .any(|p| p < me && p != me && maps_it(p))
}

/// Whether fd `fd` of process `pid` is open for writing (from its fdinfo flags).
fn fd_is_write(pid: i32, fd: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
        })
        .map(|f| f & libc::O_ACCMODE != libc::O_RDONLY)
        .unwrap_or(false)
}

/// Read ends of pipes whose bytes another process may drain too. Each process of the job
/// claims every pipe read end it holds with F_SETOWN during the suspend phase; the last
/// claim wins, so after the barrier exactly one process (per open file description) finds
/// itself the owner and drains. The previous owners are put back afterwards.
#[repr(C)]
#[derive(Clone, Copy)]
struct FOwnerEx {
    type_: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;
const F_OWNER_PID: libc::c_int = 1;

static CLAIMS: std::sync::Mutex<Vec<(i32, FOwnerEx)>> = std::sync::Mutex::new(Vec::new());

pub fn claim_pipes() {
    let me = crate::sys::getpid_real();
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    claims.clear();
    let Ok(fds) = crate::sys::list_numeric_dir("/proc/self/fd") else {
        return;
    };
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_pipe = link.starts_with("pipe:[");
        // A pty master is drained by one of its holders too (see `tty`).
        let is_ptmx = link == "/dev/ptmx" || link.ends_with("/pts/ptmx");
        // SAFETY: fcntl on our own fd.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 || !(is_ptmx || is_pipe && fl & libc::O_ACCMODE == libc::O_RDONLY) {
            continue;
        }
        let mut old = FOwnerEx { type_: 0, pid: 0 };
        // SAFETY: F_GETOWN_EX / F_SETOWN_EX with a valid struct on our own fd.
        unsafe {
            libc::fcntl(fd, F_GETOWN_EX, &mut old);
            let ours = FOwnerEx {
                type_: F_OWNER_PID,
                pid: me,
            };
            libc::fcntl(fd, F_SETOWN_EX, &ours);
        }
        claims.push((fd, old));
    }
}

/// Whether this process won the claim on read end `fd` (drains it). Pipes never claimed
/// (no other process of the job can hold them) are always ours.
pub fn drains(fd: i32) -> bool {
    let claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    if !claims.iter().any(|(f, _)| *f == fd) {
        return true;
    }
    let mut now = FOwnerEx { type_: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX on our own fd.
    unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut now) };
    now.pid == crate::sys::getpid_real()
}

/// Puts back the owners the claims replaced.
pub fn release_pipes() {
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    for (fd, old) in claims.drain(..) {
        // SAFETY: restoring the owner of our own fd.
        unsafe { libc::fcntl(fd, F_SETOWN_EX, &old) };
    }
}

/// The shared restart area of a restored process tree (see cli/src/restart.rs): header
/// (magic, n, arrived), then n (vpid, real pid) pairs, then n release words (used by the
/// stand-ins of zombies, see `zombies`).
pub struct Area {
    base: *mut u8,
    len: usize,
}

const AREA_MAGIC: u32 = 0x434b_5052;
const AREA_HEADER: usize = 16;

impl Area {
    pub fn map(fd: i32) -> Result<Area, String> {
        // SAFETY: fstat into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(format!(
                "restart area fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let len = st.st_size as usize;
        // SAFETY: mapping the shared memfd every process of the tree maps.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED || len < AREA_HEADER {
            return Err(format!(
                "cannot map the restart area: {}",
                std::io::Error::last_os_error()
            ));
        }
        let a = Area {
            base: p as *mut u8,
            len,
        };
        if a.word(0).load(Ordering::Relaxed) != AREA_MAGIC || AREA_HEADER + a.n() * 12 > len {
            return Err("the restart area is malformed".into());
        }
        Ok(a)
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: off is a 4-aligned offset inside the mapping; AtomicU32 has u32 layout.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    fn n(&self) -> usize {
        self.word(4).load(Ordering::Relaxed) as usize
    }

    /// Every (vpid, real pid) pair of the tree.
    pub fn pairs(&self) -> Vec<(i32, i32)> {
        (0..self.n())
            .map(|i| {
                let o = AREA_HEADER + i * 8;
                (
                    self.word(o).load(Ordering::Acquire) as i32,
                    self.word(o + 4).load(Ordering::Acquire) as i32,
                )
            })
            .collect()
    }

    /// Lets the stand-in of exited child `vpid` end; returns its real pid.
    pub fn release(&self, vpid: i32) -> Result<i32, String> {
        let n = self.n();
        let i = (0..n)
            .find(|&i| self.word(AREA_HEADER + i * 8).load(Ordering::Acquire) as i32 == vpid)
            .ok_or_else(|| format!("exited child {vpid} has no stand-in in the restart area"))?;
        let real = self.word(AREA_HEADER + i * 8 + 4).load(Ordering::Acquire) as i32;
        let w = self.word(AREA_HEADER + n * 8 + i * 4);
        w.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE (shared) on the area word.
        unsafe {
            crate::sys::syscall6(
                libc::SYS_futex,
                w.as_ptr() as u64,
                libc::FUTEX_WAKE as u64,
                1,
                0,
                0,
                0,
            )
        };
        Ok(real)
    }

    /// Waits until every process of the tree has arrived (restored its state and refilled
    /// its pipes), so that none runs on while another still restores.
    pub fn barrier(&self, timeout_ms: u64) -> Result<(), String> {
        let arrived = self.word(8);
        let n = self.n() as u32;
        arrived.fetch_add(1, Ordering::AcqRel);
        // SAFETY: FUTEX_WAKE (shared) on the area word.
        unsafe {
            crate::sys::syscall6(
                libc::SYS_futex,
                arrived.as_ptr() as u64,
                libc::FUTEX_WAKE as u64,
                i32::MAX as u64,
                0,
                0,
                0,
            )
        };
        let start = crate::sys::monotonic_ns();
        loop {
            let v = arrived.load(Ordering::Acquire);
            if v >= n {
                return Ok(());
            }
            if crate::sys::monotonic_ns() - start > timeout_ms * 1_000_000 {
                return Err(format!(
                    "only {v} of {n} processes of the tree were restored within {timeout_ms} ms"
                ));
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            // SAFETY: FUTEX_WAIT (shared) on the area word with a timeout.
            unsafe {
                crate::sys::syscall6(
                    libc::SYS_futex,
                    arrived.as_ptr() as u64,
                    libc::FUTEX_WAIT as u64,
                    v as u64,
                    &ts as *const libc::timespec as u64,
                    0,
                    0,
                )
            };
        }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}
