//! Raw system calls and the few libc-free primitives the runtime uses while user threads
//! are parked (they may hold glibc's locks, so nothing here may take one).

use core::arch::asm;
use std::sync::atomic::AtomicU32;

/// # Safety
/// A raw system call: every argument must be valid for syscall `n`.
#[inline(always)]
pub unsafe fn syscall6(n: i64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> i64 {
    let ret: i64;
    // SAFETY: the syscall instruction clobbers rax, rcx, r11 only (declared).
    unsafe {
        asm!("syscall", inlateout("rax") n => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret
}

/// # Safety
/// See [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(n: i64, a: u64, b: u64, c: u64) -> i64 {
    // SAFETY: forwarded.
    unsafe { syscall6(n, a, b, c, 0, 0, 0) }
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { syscall3(libc::SYS_gettid, 0, 0, 0) as i32 }
}

pub fn getpid_real() -> i32 {
    // SAFETY: getpid has no arguments.
    unsafe { syscall3(libc::SYS_getpid, 0, 0, 0) as i32 }
}

pub fn getppid_real() -> i32 {
    // SAFETY: getppid has no arguments.
    unsafe { syscall3(libc::SYS_getppid, 0, 0, 0) as i32 }
}

pub fn tgkill(pid: i32, tid: i32, sig: i32) -> i64 {
    // SAFETY: integer arguments only.
    unsafe { syscall3(libc::SYS_tgkill, pid as u64, tid as u64, sig as u64) }
}

pub fn get_fs_base() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: ARCH_GET_FS writes one u64 to the given address.
    unsafe { syscall3(libc::SYS_arch_prctl, 0x1003, &mut v as *mut u64 as u64, 0) };
    v
}

pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ms: Option<u64>) {
    let ts;
    let tsp = match timeout_ms {
        Some(ms) => {
            ts = libc::timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) * 1_000_000) as i64,
            };
            &ts as *const libc::timespec as u64
        }
        None => 0,
    };
    // SAFETY: FUTEX_WAIT_PRIVATE on a live atomic; the kernel only reads it.
    unsafe {
        syscall6(
            libc::SYS_futex,
            word.as_ptr() as u64,
            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
            expected as u64,
            tsp,
            0,
            0,
        )
    };
}

pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE_PRIVATE on a live atomic.
    unsafe {
        syscall6(
            libc::SYS_futex,
            word.as_ptr() as u64,
            (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
            i32::MAX as u64,
            0,
            0,
            0,
        )
    };
}

/// Writes all of `buf` to `fd` with raw syscalls.
pub fn write_all(fd: i32, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: buf is readable for its length.
        let r = unsafe {
            syscall3(
                libc::SYS_write,
                fd as u64,
                buf.as_ptr() as u64,
                buf.len() as u64,
            )
        };
        if r == -(libc::EINTR as i64) {
            continue;
        }
        if r <= 0 {
            return false;
        }
        buf = &buf[r as usize..];
    }
    true
}

pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: does not return.
        unsafe { syscall3(libc::SYS_exit_group, code as u64, 0, 0) };
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe {
        syscall3(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC as u64,
            &mut ts as *mut _ as u64,
            0,
        )
    };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lists the numeric entries of a /proc directory (tasks, fds) with getdents64, without
/// glibc's opendir (which allocates with malloc).
pub fn list_numeric_dir(path: &str) -> std::io::Result<Vec<i32>> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path)?;
    let fd = dir.as_raw_fd();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    loop {
        // SAFETY: getdents64 fills at most buf.len() bytes.
        let n = unsafe {
            syscall3(
                libc::SYS_getdents64,
                fd as u64,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
            )
        };
        if n < 0 {
            return Err(std::io::Error::from_raw_os_error(-n as i32));
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let name = &buf[off + 19..off + reclen];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if let Ok(s) = std::str::from_utf8(&name[..end]) {
                if let Ok(v) = s.parse::<i32>() {
                    out.push(v);
                }
            }
            off += reclen;
        }
    }
    if path == "/proc/self/fd" {
        // Our own directory fd is not one of the program's.
        out.retain(|&v| v != fd);
    }
    Ok(out)
}
