//! Process-wide attributes: signal dispositions, rlimits, umask, cwd, the kernel's view of
//! the memory layout (brk, args, env, auxv) and what the restoring machine must match.

use ckpt_image::{MmFields, Requirements};

/// The kernel's `struct sigaction` for rt_sigaction.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub const NSIG: usize = 64;

/// Every disposition (index = signal number - 1).
pub fn dump_sigactions() -> [KSigaction; NSIG] {
    let mut out = [KSigaction::default(); NSIG];
    for sig in 1..=NSIG {
        // SAFETY: rt_sigaction query (act = NULL) into our buffer.
        unsafe {
            crate::sys::syscall6(
                libc::SYS_rt_sigaction,
                sig as u64,
                0,
                &mut out[sig - 1] as *mut KSigaction as u64,
                8,
                0,
                0,
            )
        };
    }
    out
}

pub fn restore_sigactions(all: &[KSigaction; NSIG]) {
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            continue;
        }
        // SAFETY: installs a disposition recorded from this very program's memory.
        unsafe {
            crate::sys::syscall6(
                libc::SYS_rt_sigaction,
                sig as u64,
                &all[sig - 1] as *const KSigaction as u64,
                0,
                8,
                0,
                0,
            )
        };
    }
}

pub fn dump_rlimits() -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    for r in 0..16u32 {
        let mut l = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 query of our own process.
        if unsafe { libc::prlimit64(0, r as _, std::ptr::null(), &mut l) } == 0 {
            v.push((r, l.rlim_cur, l.rlim_max));
        }
    }
    v
}

pub fn restore_rlimits(v: &[(u32, u64, u64)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for &(r, cur, max) in v {
        let l = libc::rlimit64 {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: prlimit64 set on our own process.
        if unsafe { libc::prlimit64(0, r as _, &l, std::ptr::null_mut()) } != 0 {
            // Raising a hard limit needs privilege: keep the soft limit at least.
            let mut now = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: query then set within the current hard limit.
            unsafe {
                libc::prlimit64(0, r as _, std::ptr::null(), &mut now);
                let l2 = libc::rlimit64 {
                    rlim_cur: cur.min(now.rlim_max),
                    rlim_max: now.rlim_max,
                };
                libc::prlimit64(0, r as _, &l2, std::ptr::null_mut());
            }
            warnings.push(format!("rlimit {r}: could not restore hard limit {max}"));
        }
    }
    warnings
}

pub fn umask() -> u32 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("Umask:") {
                return u32::from_str_radix(v.trim(), 8).unwrap_or(0o022);
            }
        }
    }
    0o022
}

pub fn cwd() -> String {
    std::fs::read_link("/proc/self/cwd")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into())
}

/// Parses /proc/self/stat for the mm fields PR_SET_MM_MAP takes.
pub fn mm_fields() -> MmFields {
    let mut m = MmFields::default();
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return m;
    };
    let Some(close) = s.rfind(')') else { return m };
    // Field 3 (state) is the first after ") ".
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let get = |n: usize| -> u64 { f.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    m.start_code = get(26);
    m.end_code = get(27);
    m.start_stack = get(28);
    m.start_data = get(45);
    m.end_data = get(46);
    m.start_brk = get(47);
    m.arg_start = get(48);
    m.arg_end = get(49);
    m.env_start = get(50);
    m.env_end = get(51);
    // SAFETY: brk(0) returns the current break.
    m.brk = unsafe { crate::sys::syscall3(libc::SYS_brk, 0, 0, 0) } as u64;
    m
}

pub fn read_auxv() -> Vec<(u64, u64)> {
    let Ok(b) = std::fs::read("/proc/self/auxv") else {
        return Vec::new();
    };
    b.chunks_exact(16)
        .map(|c| {
            (
                u64::from_ne_bytes(c[..8].try_into().unwrap()),
                u64::from_ne_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect()
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// FNV-1a of a memory range (the vdso).
pub fn hash_range(start: u64, end: u64) -> u64 {
    // SAFETY: the caller passes a readable mapping (the vdso).
    let b = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// XCR0: which register state the kernel saves in signal frames.
pub fn xsave_features() -> u64 {
    // SAFETY: cpuid is always available on x86_64.
    let c = std::arch::x86_64::__cpuid(1);
    if c.ecx & (1 << 27) == 0 {
        return 0; // no OSXSAVE
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is allowed when OSXSAVE is set.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    ((hi as u64) << 32) | lo as u64
}

pub fn requirements(vdso: Option<(u64, u64)>) -> Requirements {
    Requirements {
        kernel_release: kernel_release(),
        vdso_hash: vdso.map(|(a, b)| hash_range(a, b)).unwrap_or(0),
        xsave_features: xsave_features(),
        page_size: 4096,
    }
}

/// The pending-signal sets of a task: (SigPnd, ShdPnd) from /proc/self/task/<tid>/status.
pub fn pending_signals(tid: i32) -> (u64, u64) {
    let (mut own, mut shared) = (0, 0);
    if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) {
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("SigPnd:") {
                own = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("ShdPnd:") {
                shared = u64::from_str_radix(v.trim(), 16).unwrap_or(0);
            }
        }
    }
    (own, shared)
}

/// Child processes of this process (any thread), excluding `except`.
pub fn children(except: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tids) = crate::sys::list_numeric_dir("/proc/self/task") {
        for t in tids {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{t}/children")) {
                out.extend(
                    s.split_whitespace()
                        .filter_map(|v| v.parse::<i32>().ok())
                        .filter(|p| !except.contains(p)),
                );
            }
        }
    }
    out
}

/// Whether process `pid` has the runtime loaded (a zombie has no memory: false).
pub fn runs_runtime(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| {
            // The runtime is libckpt.so, or after a restore its copy libckpt-<version>.so.
            m.lines().any(|l| {
                let name = l.rsplit('/').next().unwrap_or("");
                l.contains('/') && name.starts_with("libckpt") && name.ends_with(".so")
            })
        })
        .unwrap_or(false)
}

pub fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigactions_round_trip() {
        extern "C" fn h(_: i32) {}
        // SAFETY: installing a handler for SIGUSR2 in the test process.
        unsafe { libc::signal(libc::SIGUSR2, h as *const () as usize) };
        let saved = dump_sigactions();
        assert_eq!(
            saved[libc::SIGUSR2 as usize - 1].handler,
            h as *const () as usize as u64
        );
        // SAFETY: reset to default, then restore the recorded table.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_DFL) };
        restore_sigactions(&saved);
        let again = dump_sigactions();
        assert_eq!(
            again[libc::SIGUSR2 as usize - 1].handler,
            h as *const () as usize as u64
        );
        assert_eq!(
            again[libc::SIGUSR2 as usize - 1].flags,
            saved[libc::SIGUSR2 as usize - 1].flags
        );
    }

    #[test]
    fn mm_fields_are_ordered() {
        let m = mm_fields();
        assert!(m.start_code < m.end_code);
        assert!(m.start_brk <= m.brk);
        assert!(m.arg_start < m.arg_end);
        assert!(m.env_start <= m.env_end);
    }

    #[test]
    fn rlimits_round_trip() {
        let v = dump_rlimits();
        assert!(v.len() >= 15);
        assert!(restore_rlimits(&v).is_empty());
        assert_eq!(dump_rlimits(), v);
    }
}
