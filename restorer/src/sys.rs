//! Raw system calls, the mem* functions the compiler expects, and minimal output.
//! Everything unsafe in the restorer that is not the plan walk itself lives here.

use core::arch::asm;

pub const SYS_READ: usize = 0;
pub const SYS_WRITE: usize = 1;
pub const SYS_OPEN: usize = 2;
pub const SYS_CLOSE: usize = 3;
pub const SYS_FSTAT: usize = 5;
pub const SYS_MMAP: usize = 9;
pub const SYS_MPROTECT: usize = 10;
pub const SYS_MUNMAP: usize = 11;
pub const SYS_RT_SIGPROCMASK: usize = 14;
pub const SYS_PREAD64: usize = 17;
pub const SYS_MREMAP: usize = 25;
pub const SYS_PRCTL: usize = 157;
pub const SYS_ARCH_PRCTL: usize = 158;
pub const SYS_EXIT_GROUP: usize = 231;
pub const SYS_CLONE: usize = 56;
pub const SYS_EXIT: usize = 60;
pub const SYS_READLINK: usize = 89;
pub const SYS_FUTEX: usize = 202;
pub const SYS_CACHESTAT: usize = 451;
pub const O_DIRECT: usize = 0o40000;
pub const O_CLOEXEC: usize = 0o2000000;
pub const FUTEX_WAIT: usize = 0;
pub const EINVAL: isize = 22;

pub const PROT_R: usize = 1;
pub const MAP_PRIVATE: usize = 0x02;
pub const MAP_FIXED: usize = 0x10;
pub const MAP_ANONYMOUS: usize = 0x20;
pub const MAP_GROWSDOWN: usize = 0x100;
pub const MAP_NORESERVE: usize = 0x4000;
pub const MAP_FIXED_NOREPLACE: usize = 0x100000;
pub const MAP_SHARED: usize = 0x01;
pub const MREMAP_MAYMOVE: usize = 1;
pub const MREMAP_FIXED: usize = 2;
pub const ARCH_SET_FS: usize = 0x1002;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;
pub const EINTR: isize = 4;

/// # Safety
/// A raw system call: the caller is responsible for the validity of every argument for
/// syscall `n`.
#[inline(always)]
pub unsafe fn sc6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: the syscall instruction clobbers only rax, rcx and r11, declared here; the
    // kernel does not touch our stack.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// See [`sc6`].
#[inline(always)]
pub unsafe fn sc3(n: usize, a: usize, b: usize, c: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { sc6(n, a, b, c, 0, 0, 0) }
}

pub fn write_all(fd: usize, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice for its length.
        let r = unsafe { sc3(SYS_WRITE, fd, buf.as_ptr() as usize, buf.len()) };
        if r == -EINTR {
            continue;
        }
        if r <= 0 {
            return;
        }
        buf = &buf[r as usize..];
    }
}

pub fn hex(v: u64, out: &mut [u8; 18]) -> &[u8] {
    out[0] = b'0';
    out[1] = b'x';
    for i in 0..16 {
        let nib = ((v >> ((15 - i) * 4)) & 0xf) as u8;
        out[2 + i] = if nib < 10 { b'0' + nib } else { b'a' + nib - 10 };
    }
    &out[..]
}

pub fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes an integer and does not return.
        unsafe {
            sc3(SYS_EXIT_GROUP, code, 0, 0);
        }
    }
}

/// Prints `ckpt-restore: <msg> <v1> <v2>` and exits with status 127.
pub fn die(msg: &str, v1: u64, v2: u64) -> ! {
    let mut b = [0u8; 18];
    write_all(2, b"ckpt-restore: fatal: ");
    write_all(2, msg.as_bytes());
    write_all(2, b" ");
    write_all(2, hex(v1, &mut b));
    write_all(2, b" ");
    write_all(2, hex(v2, &mut b));
    write_all(2, b"\n");
    exit(127)
}

/// Decimal digits of `v` (into the tail of `out`).
pub fn dec(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

pub fn warn(msg: &str, v: u64) {
    let mut b = [0u8; 18];
    write_all(2, b"ckpt-restore: warning: ");
    write_all(2, msg.as_bytes());
    write_all(2, b" ");
    write_all(2, hex(v, &mut b));
    write_all(2, b"\n");
}

// The compiler lowers copies and zeroing to these symbols; there is no libc to provide
// them. `rep movsb`/`rep stosb` cannot be turned back into calls to themselves.

/// # Safety
/// Standard memcpy contract: non-overlapping valid ranges of `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees both ranges are valid for n bytes.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard memmove contract: valid ranges of `n` bytes, possibly overlapping.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is correct when dst is below src or the ranges are disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored afterwards.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

/// # Safety
/// Standard memset contract: `dst` valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: caller guarantees dst is writable for n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard memcmp contract.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: caller guarantees both ranges are readable for n bytes.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard bcmp contract.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
