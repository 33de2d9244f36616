//! `ckpt-restore`: the only code that runs while a process's address space is replaced.
//!
//! `ckpt restart` validates the image and writes a *plan* (see the `ckpt-plan` crate) into
//! a memfd, then execs this program with the memfd's number as its only argument. We:
//! 1. switch to a stack inside our own fixed window and block every signal;
//! 2. map the plan, check its magic and version;
//! 3. unmap everything except our window and the kernel's [vvar]/[vvar_vclock]/[vdso];
//! 4. move those three, together, to the addresses they had at checkpoint time;
//! 5. run the plan's operations (map, read page data, protect) in order;
//! 6. restore the kernel's view of brk/args/env/auxv (PR_SET_MM_MAP), close the plan's fds,
//!    leave a note for the runtime and jump to the checkpoint thread's saved context.
//!
//! No libc, no allocation, no parsing beyond /proc/self/maps and fixed structs.
#![no_std]
#![no_main]

mod sys;

use ckpt_plan::*;
use core::arch::{asm, global_asm};
use sys::*;

const STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

#[no_mangle]
static mut RESTORER_STACK: Stack = Stack([0; STACK_SIZE]);

global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "lea rsp, [rip + RESTORER_STACK + {size}]",
    "call {main}",
    "ud2",
    size = const STACK_SIZE,
    main = sym rmain,
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    die("internal error (panic)", 0, 0)
}

const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const PAGE: u64 = 4096;

fn parse_dec(mut p: *const u8) -> Option<usize> {
    let mut v: usize = 0;
    let mut n = 0;
    loop {
        // SAFETY: p walks a NUL-terminated argv string provided by the kernel.
        let c = unsafe { *p };
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() || n > 9 {
            return None;
        }
        v = v * 10 + (c - b'0') as usize;
        n += 1;
        // SAFETY: still inside the NUL-terminated string.
        p = unsafe { p.add(1) };
    }
    if n == 0 {
        None
    } else {
        Some(v)
    }
}

/// One mapping of our own process, as far as we need to know.
#[derive(Clone, Copy, Default)]
struct Vma {
    start: u64,
    end: u64,
    /// 1 = [vvar], 2 = [vvar_vclock], 3 = [vdso], 4 = [vsyscall], 0 = other
    special: u8,
}

const MAX_VMAS: usize = 128;
static mut MAPS_BUF: [u8; 64 * 1024] = [0; 64 * 1024];

fn hexval(s: &[u8]) -> u64 {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0,
        };
        v = (v << 4) | d as u64;
    }
    v
}

/// Reads /proc/self/maps (our own, a freshly exec'd static binary: a dozen lines).
fn read_maps(out: &mut [Vma; MAX_VMAS]) -> usize {
    let path = b"/proc/self/maps\0";
    // SAFETY: path is NUL-terminated; O_RDONLY.
    let fd = unsafe { sc3(SYS_OPEN, path.as_ptr() as usize, 0, 0) };
    if fd < 0 {
        die("cannot open /proc/self/maps; errno", (-fd) as u64, 0);
    }
    // SAFETY: single-threaded; MAPS_BUF is only used here.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(MAPS_BUF) };
    let mut len = 0usize;
    loop {
        if len == buf.len() {
            die("/proc/self/maps larger than expected", len as u64, 0);
        }
        // SAFETY: reading into the unused tail of buf.
        let r = unsafe { sc3(SYS_READ, fd as usize, buf.as_mut_ptr() as usize + len, buf.len() - len) };
        if r == -EINTR {
            continue;
        }
        if r < 0 {
            die("reading /proc/self/maps failed; errno", (-r) as u64, 0);
        }
        if r == 0 {
            break;
        }
        len += r as usize;
    }
    // SAFETY: closing the fd we opened.
    unsafe { sc3(SYS_CLOSE, fd as usize, 0, 0) };
    let data = &buf[..len];
    let mut n = 0;
    for line in data.split(|&c| c == b'\n') {
        if line.is_empty() {
            continue;
        }
        let dash = match line.iter().position(|&c| c == b'-') {
            Some(d) => d,
            None => continue,
        };
        let sp = match line.iter().position(|&c| c == b' ') {
            Some(s) => s,
            None => continue,
        };
        let start = hexval(&line[..dash]);
        let end = hexval(&line[dash + 1..sp]);
        let special = if line.ends_with(b"[vvar]") {
            1
        } else if line.ends_with(b"[vvar_vclock]") {
            2
        } else if line.ends_with(b"[vdso]") {
            3
        } else if line.ends_with(b"[vsyscall]") {
            4
        } else {
            0
        };
        if n == MAX_VMAS {
            die("too many mappings in the restorer", n as u64, 0);
        }
        out[n] = Vma { start, end, special };
        n += 1;
    }
    n
}

fn munmap(lo: u64, hi: u64) {
    if hi > lo {
        // SAFETY: unmapping a range that holds none of our own code, data or stack.
        let r = unsafe { sc3(SYS_MUNMAP, lo as usize, (hi - lo) as usize, 0) };
        if r < 0 {
            die("munmap failed", lo, (-r) as u64);
        }
    }
}

fn mremap(from: u64, len: u64, to: u64) {
    // SAFETY: moving a whole kernel-provided VMA to a destination we have made free.
    let r = unsafe {
        sc6(SYS_MREMAP, from as usize, len as usize, len as usize, MREMAP_MAYMOVE | MREMAP_FIXED, to as usize, 0)
    };
    if r < 0 || r as u64 != to {
        die("mremap of the vdso/vvar failed", from, to);
    }
}

/// Unmaps everything but our window and the vdso group; moves the group to its recorded
/// place.
fn clear_address_space(plan: &PlanHeader) {
    let mut vmas = [Vma::default(); MAX_VMAS];
    let n = read_maps(&mut vmas);
    let vmas = &mut vmas[..n];
    // Sort by start (insertion sort: a dozen entries).
    for i in 1..vmas.len() {
        let mut j = i;
        while j > 0 && vmas[j - 1].start > vmas[j].start {
            vmas.swap(j - 1, j);
            j -= 1;
        }
    }
    // Unmap every gap between the ranges we keep.
    let win_lo = RESTORER_BASE;
    let win_hi = RESTORER_BASE + RESTORER_SPAN;
    let mut cursor = PAGE;
    for v in vmas.iter() {
        let keep = v.special != 0 || (v.start >= win_lo && v.end <= win_hi);
        if !keep || v.start >= TASK_SIZE {
            continue;
        }
        if v.start > cursor {
            munmap_outside_window(cursor, v.start);
        }
        if v.end > cursor {
            cursor = v.end;
        }
    }
    munmap_outside_window(cursor, TASK_SIZE);

    // Move the vdso group: first all three into scratch space inside our window (so no
    // destination can overlap a source), then each to its recorded address.
    let targets = [
        (1u8, plan.vdso.vvar_addr, plan.vdso.vvar_len),
        (2u8, plan.vdso.vclock_addr, plan.vdso.vclock_len),
        (3u8, plan.vdso.vdso_addr, plan.vdso.vdso_len),
    ];
    let mut scratch = VDSO_SCRATCH;
    let mut moved = [(0u64, 0u64); 4];
    for v in vmas.iter() {
        if v.special == 0 || v.special == 4 {
            continue;
        }
        let len = v.end - v.start;
        mremap(v.start, len, scratch);
        moved[v.special as usize] = (scratch, len);
        scratch += len + PAGE;
    }
    for (kind, addr, len) in targets {
        let (cur, cur_len) = moved[kind as usize];
        if len == 0 {
            if cur_len != 0 {
                munmap(cur, cur + cur_len);
            }
            continue;
        }
        if cur_len != len {
            die("vdso/vvar layout differs from the checkpointed kernel (kind, size)", kind as u64, cur_len);
        }
        mremap(cur, len, addr);
    }
}

/// munmap [lo, hi) except our own window.
fn munmap_outside_window(lo: u64, hi: u64) {
    let wl = RESTORER_BASE;
    let wh = RESTORER_BASE + RESTORER_SPAN;
    if hi <= wl || lo >= wh {
        munmap(lo, hi);
    } else {
        if lo < wl {
            munmap(lo, wl);
        }
        if hi > wh {
            munmap(wh, hi);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Page data: every OP_READ of a stretch is claimed by one of (at most) two threads, read in
// chunks (from the page cache if the data is there, else with O_DIRECT straight into the
// destination, so that a cold image is not copied through the page cache) and its CRC-32C
// is computed on the bytes just placed (still in the cache) and compared with the plan's.

/// Bytes per read system call.
const READ_CHUNK: u64 = 2 << 20;
/// Smaller reads go through the page cache even when it is cold: a small O_DIRECT read is
/// one synchronous disk round trip, while buffered reads of neighbouring small runs (an
/// incremental image's changed pages) share the readahead.
const DIRECT_MIN: usize = 256 << 10;
/// Below this many bytes of page data the second thread is not worth starting.
const PARALLEL_MIN: u64 = 32 << 20;
const WORKER_STACK_SIZE: usize = 64 * 1024;
/// The image and its parents (and any descriptor a plan names directly).
const MAX_SOURCES: usize = MAX_PARENTS + 4;

static mut CRC: ckpt_plan::crc::Crc32c = ckpt_plan::crc::Crc32c::empty();

#[repr(C, align(16))]
struct WorkerStack([u8; WORKER_STACK_SIZE]);
static mut WORKER_STACK: WorkerStack = WorkerStack([0; WORKER_STACK_SIZE]);

/// The stretch being read, shared with the worker thread (written before it starts).
struct Reads {
    ops: *const Op,
    n: usize,
    image_fd: isize,
    /// (buffered fd, O_DIRECT fd or -1) per image file.
    sources: [(isize, isize); MAX_SOURCES],
    n_sources: usize,
}
static mut READS: Reads = Reads {
    ops: core::ptr::null(),
    n: 0,
    image_fd: -1,
    sources: [(-1, -1); MAX_SOURCES],
    n_sources: 0,
};
static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// The worker's tid; the kernel clears it (and wakes a futex waiter) when the worker exits.
static WORKER_TID: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn crc_tables() -> &'static ckpt_plan::crc::Crc32c {
    // SAFETY: initialised by read_all before any reader runs, read-only afterwards.
    unsafe { &*core::ptr::addr_of!(CRC) }
}

fn reads() -> &'static Reads {
    // SAFETY: written by read_all before the worker starts, read-only while reads run.
    unsafe { &*core::ptr::addr_of!(READS) }
}

/// Opens a second, O_DIRECT description of `fd` (via /proc/self/fd); -1 if refused.
fn open_direct(fd: isize) -> isize {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut d = [0u8; 20];
    let digits = dec(fd as u64, &mut d);
    path[14..14 + digits.len()].copy_from_slice(digits);
    // SAFETY: NUL-terminated path (the array's tail is zero).
    let r = unsafe { sc3(SYS_OPEN, path.as_ptr() as usize, O_DIRECT | O_CLOEXEC, 0) };
    if r < 0 {
        -1
    } else {
        r
    }
}

/// Descriptors of the parent images (OP_OPEN_PARENT), -1 if not open.
static mut PARENT_FDS: [isize; MAX_PARENTS] = [-1; MAX_PARENTS];

/// The descriptor an OP_READ reads from.
fn op_fd(image_fd: isize, op: &Op) -> isize {
    if op.fd >= 0 {
        return op.fd as isize;
    }
    if op.fd == -1 {
        return image_fd;
    }
    let k = (-2 - op.fd as i64) as usize;
    // SAFETY: filled by OP_OPEN_PARENT before any read, read-only afterwards.
    let fds = unsafe { &*core::ptr::addr_of!(PARENT_FDS) };
    match fds.get(k) {
        Some(&fd) if fd >= 0 => fd,
        _ => die("a read names a parent image that was not opened (slot)", k as u64, op.addr),
    }
}

/// OP_OPEN_PARENT: `<dir>/gen-NNNNNN/<file>` from the image's own path `<dir>/gen-M/<file>`.
fn open_parent(plan: &PlanHeader, op: &Op) {
    let slot = op.fd as usize;
    if op.fd < 0 || slot >= MAX_PARENTS {
        die("bad parent slot", op.fd as u64, 0);
    }
    let mut link = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut d = [0u8; 20];
    let digits = dec(plan.image_fd as u64, &mut d);
    link[14..14 + digits.len()].copy_from_slice(digits);
    let mut cur = [0u8; 1024];
    // SAFETY: readlink into a local buffer.
    let n = unsafe { sc3(SYS_READLINK, link.as_ptr() as usize, cur.as_mut_ptr() as usize, cur.len() - 1) };
    if n <= 0 || n as usize >= cur.len() - 1 {
        die("cannot find the image's path (readlink), errno", (-n) as u64, 0);
    }
    let cur = &cur[..n as usize];
    let slash = |s: &[u8]| s.iter().rposition(|&c| c == b'/');
    let (Some(f), Some(g)) = (slash(cur), slash(&cur[..slash(cur).unwrap_or(0)])) else {
        die("the image's path has no generation directory", 0, 0)
    };
    let mut path = [0u8; 1100];
    let mut len = 0usize;
    let mut put = |b: &[u8], path: &mut [u8; 1100]| {
        path[len..len + b.len()].copy_from_slice(b);
        len += b.len();
    };
    put(&cur[..=g], &mut path);
    put(b"gen-", &mut path);
    let mut gd = [0u8; 20];
    let gdig = dec(op.addr, &mut gd);
    for _ in gdig.len()..6 {
        put(b"0", &mut path);
    }
    put(gdig, &mut path);
    put(&cur[f..], &mut path);
    path[len] = 0;
    // SAFETY: NUL-terminated path; read-only open.
    let fd = unsafe { sc3(SYS_OPEN, path.as_ptr() as usize, O_CLOEXEC, 0) };
    if fd < 0 {
        write_all(2, b"ckpt-restore: fatal: cannot open the parent image ");
        write_all(2, &path[..len]);
        write_all(2, b" this incremental image takes page data from; errno ");
        write_all(2, dec((-fd) as u64, &mut d));
        write_all(2, b"\n");
        exit(127);
    }
    // SAFETY: single-threaded here (reads have not started).
    unsafe { (*core::ptr::addr_of_mut!(PARENT_FDS))[slot] = fd };
}

fn close_parents() {
    // SAFETY: single-threaded (all reads done).
    let fds = unsafe { &mut *core::ptr::addr_of_mut!(PARENT_FDS) };
    for fd in fds.iter_mut() {
        if *fd >= 0 {
            // SAFETY: closing a descriptor we opened.
            unsafe { sc3(SYS_CLOSE, *fd as usize, 0, 0) };
            *fd = -1;
        }
    }
}

fn direct_for(fd: isize) -> isize {
    let rd = reads();
    for &(f, d) in &rd.sources[..rd.n_sources] {
        if f == fd {
            return d;
        }
    }
    -1
}

/// Reads `ops[lo..hi]` (all OP_READ) and verifies them; returns when all are in place.
fn read_all(plan: &PlanHeader, ops: &[Op], lo: usize, hi: usize) {
    let stretch = &ops[lo..hi];
    // SAFETY: single-threaded here: no reader runs yet.
    unsafe {
        (*core::ptr::addr_of_mut!(CRC)).init();
        let r = &mut *core::ptr::addr_of_mut!(READS);
        r.ops = stretch.as_ptr();
        r.n = stretch.len();
        r.image_fd = plan.image_fd as isize;
        r.n_sources = 0;
        for op in stretch {
            let fd = op_fd(plan.image_fd as isize, op);
            if r.sources[..r.n_sources].iter().any(|&(f, _)| f == fd) {
                continue;
            }
            if r.n_sources == MAX_SOURCES {
                die("page data comes from too many image files", MAX_SOURCES as u64, 0);
            }
            r.sources[r.n_sources] = (fd, open_direct(fd));
            r.n_sources += 1;
        }
    }
    NEXT.store(0, core::sync::atomic::Ordering::SeqCst);
    let total: u64 = stretch.iter().map(|o| o.len).sum();
    let two = plan.read_threads >= 2 && stretch.len() >= 2 && total >= PARALLEL_MIN;
    if two {
        spawn_worker();
    }
    claim_reads();
    if two {
        wait_worker();
    }
    for &(_, d) in &reads().sources[..reads().n_sources] {
        if d >= 0 {
            // SAFETY: closing the O_DIRECT descriptor we opened.
            unsafe { sc3(SYS_CLOSE, d as usize, 0, 0) };
        }
    }
}

/// Claims and executes reads until none is left (both threads run this).
fn claim_reads() {
    let rd = reads();
    loop {
        let i = NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        if i >= rd.n {
            return;
        }
        // SAFETY: i < n; the ops live in the plan mapping for the whole restore.
        let op = unsafe { &*rd.ops.add(i) };
        read_one(op);
    }
}

fn read_one(op: &Op) {
    let rd = reads();
    let fd = op_fd(rd.image_fd, op);
    let mut dfd = direct_for(fd);
    let crc = crc_tables();
    let mut sum = 0u32;
    let mut done = 0u64;
    while done < op.len {
        let n = (op.len - done).min(READ_CHUNK) as usize;
        let dst = (op.addr + done) as usize;
        let off = (op.off + done) as usize;
        let r;
        if dfd >= 0 && n >= DIRECT_MIN && !cached(fd, off, n) {
            // Not (all) in the page cache: straight from the disk into the destination,
            // instead of through new page-cache pages and a copy.
            // SAFETY: pread into the writable destination; page aligned (format rule).
            r = unsafe { sc6(SYS_PREAD64, dfd as usize, dst, n, off, 0, 0) };
            if r == -EINVAL {
                dfd = -1;
                continue;
            }
        } else {
            // SAFETY: the destination was mapped writable by an earlier op.
            r = unsafe { sc6(SYS_PREAD64, fd as usize, dst, n, off, 0, 0) };
        }
        if r == -EINTR {
            continue;
        }
        if r <= 0 {
            read_failed(op, fd, op.addr + done, r);
        }
        // SAFETY: the kernel just wrote r bytes at dst.
        let placed = unsafe { core::slice::from_raw_parts(dst as *const u8, r as usize) };
        sum = crc.append(sum, placed);
        done += r as u64;
    }
    if sum != op.crc {
        crc_mismatch(op, fd, sum);
    }
}

/// Whether every page of `[off, off + len)` of `fd` is in the page cache (cachestat(2),
/// Linux 6.5; which, unlike a RWF_NOWAIT read, starts no readahead). Without cachestat:
/// assume it is (buffered reads, as before O_DIRECT was used).
fn cached(fd: isize, off: usize, len: usize) -> bool {
    let range = [off as u64, len as u64];
    let mut st = [0u64; 5];
    // SAFETY: cachestat(fd, &range, &st, 0) into local buffers of the kernel's layout.
    let r = unsafe {
        sc6(SYS_CACHESTAT, fd as usize, range.as_ptr() as usize, st.as_mut_ptr() as usize, 0, 0, 0)
    };
    if r < 0 {
        return true;
    }
    st[0] >= (len as u64).div_ceil(PAGE)
}

/// Writes the path of `fd` (from /proc/self/fd) to stderr.
fn write_fd_path(fd: isize) {
    let mut link = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0";
    let mut d = [0u8; 20];
    let digits = dec(fd as u64, &mut d);
    link[14..14 + digits.len()].copy_from_slice(digits);
    let mut buf = [0u8; 512];
    // SAFETY: readlink into a local buffer.
    let r = unsafe { sc3(SYS_READLINK, link.as_ptr() as usize, buf.as_mut_ptr() as usize, buf.len()) };
    if r > 0 {
        write_all(2, &buf[..r as usize]);
    } else {
        write_all(2, b"the image");
    }
}

fn read_failed(_op: &Op, fd: isize, at: u64, r: isize) -> ! {
    let (mut h, mut d) = ([0u8; 18], [0u8; 20]);
    write_all(2, b"ckpt-restore: fatal: reading the page data for address ");
    write_all(2, hex(at, &mut h));
    write_all(2, b" from ");
    write_fd_path(fd);
    if r == 0 {
        write_all(2, b" failed: the file ends early (truncated image)");
    } else {
        write_all(2, b" failed: errno ");
        write_all(2, dec((-r) as u64, &mut d));
    }
    write_all(2, b"; the restore is abandoned\n");
    exit(127)
}

/// The address space is gone at this point: say exactly what is damaged and exit.
fn crc_mismatch(op: &Op, fd: isize, got: u32) -> ! {
    let (mut h, mut d) = ([0u8; 18], [0u8; 20]);
    write_all(2, b"ckpt-restore: fatal: the image is damaged: the page data for address ");
    write_all(2, hex(op.addr, &mut h));
    write_all(2, b" (");
    write_all(2, dec(op.len, &mut d));
    write_all(2, b" bytes at file offset ");
    write_all(2, dec(op.off, &mut d));
    write_all(2, b" of ");
    write_fd_path(fd);
    write_all(2, b") has checksum ");
    write_all(2, &hex(got as u64, &mut h)[10..]);
    write_all(2, b", the image records ");
    write_all(2, &hex(op.crc as u64, &mut h)[10..]);
    write_all(2, b" (CRC-32C); the restore is abandoned\n");
    exit(127)
}

/// Starts the second reader: a bare thread (no TLS, no libc) on its own stack in our
/// window, sharing everything; it runs `claim_reads` and exits.
fn spawn_worker() {
    const CLONE_VM: usize = 0x100;
    const CLONE_FS: usize = 0x200;
    const CLONE_FILES: usize = 0x400;
    const CLONE_SIGHAND: usize = 0x800;
    const CLONE_THREAD: usize = 0x10000;
    const CLONE_SYSVSEM: usize = 0x40000;
    const CLONE_PARENT_SETTID: usize = 0x100000;
    const CLONE_CHILD_CLEARTID: usize = 0x200000;
    let flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
        | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
    let top = core::ptr::addr_of_mut!(WORKER_STACK) as usize + WORKER_STACK_SIZE;
    let tid = WORKER_TID.as_ptr() as usize;
    let r: isize;
    // SAFETY: clone(2) of a thread onto a stack nobody else uses; the child calls
    // worker_main at once (which never returns) and touches nothing of ours but the
    // shared statics of the read stretch.
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "call {entry}",
            "ud2",
            "2:",
            entry = sym worker_main,
            inlateout("rax") SYS_CLONE as isize => r,
            in("rdi") flags,
            in("rsi") top,
            in("rdx") tid,
            in("r10") tid,
            in("r8") 0usize,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    if r < 0 {
        // Not fatal: this thread reads everything.
        WORKER_TID.store(0, core::sync::atomic::Ordering::SeqCst);
    }
}

extern "C" fn worker_main() -> ! {
    claim_reads();
    loop {
        // SAFETY: exit(0) ends this thread only; the kernel then clears WORKER_TID.
        unsafe { sc3(SYS_EXIT, 0, 0, 0) };
    }
}

fn wait_worker() {
    loop {
        let t = WORKER_TID.load(core::sync::atomic::Ordering::SeqCst);
        if t == 0 {
            return;
        }
        // SAFETY: futex wait on our own static word until the kernel clears it.
        unsafe { sc6(SYS_FUTEX, WORKER_TID.as_ptr() as usize, FUTEX_WAIT, t as usize, 0, 0, 0) };
    }
}

fn run_ops(plan: &PlanHeader, ops: &[Op]) {
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        match op.kind {
            OP_MAP_ANON | OP_MAP_FILE | OP_MAP_SHARED_FILE => {
                let mut flags = MAP_FIXED;
                let fd: isize;
                if op.kind == OP_MAP_ANON {
                    flags |= MAP_PRIVATE | MAP_ANONYMOUS;
                    fd = -1;
                } else if op.kind == OP_MAP_FILE {
                    flags |= MAP_PRIVATE;
                    fd = op.fd as isize;
                } else {
                    flags |= MAP_SHARED;
                    fd = op.fd as isize;
                }
                if op.flags & FLAG_GROWSDOWN != 0 {
                    flags |= MAP_GROWSDOWN;
                }
                if op.flags & FLAG_NORESERVE != 0 {
                    flags |= MAP_NORESERVE;
                }
                // SAFETY: the address space outside our window is empty; the plan was
                // checked by `ckpt restart` not to touch the window.
                let r = unsafe {
                    sc6(SYS_MMAP, op.addr as usize, op.len as usize, op.prot as usize, flags, fd as usize, op.off as usize)
                };
                if r < 0 || r as u64 != op.addr {
                    die("mmap of a region failed (op, address)", i as u64, op.addr);
                }
            }
            OP_READ => {
                // A stretch of reads: executed together, possibly by two threads.
                let mut j = i + 1;
                while j < ops.len() && ops[j].kind == OP_READ {
                    j += 1;
                }
                read_all(plan, ops, i, j);
                i = j;
                continue;
            }
            OP_OPEN_PARENT => open_parent(plan, op),
            OP_PROTECT => {
                // SAFETY: changes protection of a region mapped by an earlier op.
                let r = unsafe { sc3(SYS_MPROTECT, op.addr as usize, op.len as usize, op.prot as usize) };
                if r < 0 {
                    die("mprotect failed (address, errno)", op.addr, (-r) as u64);
                }
            }
            _ => die("unknown plan operation", op.kind as u64, i as u64),
        }
        i += 1;
    }
}

/// Loads the callee-saved registers of the saved context and jumps to it with rax = 1
/// (the runtime's `save_context` then "returns" 1: restored).
///
/// # Safety
/// `ctx` must describe a context saved by the restored runtime in the memory now mapped.
unsafe fn jump(ctx: &JumpContext) -> ! {
    // SAFETY: arch_prctl(ARCH_SET_FS) installs the checkpoint thread's thread pointer.
    let r = unsafe { sc3(SYS_ARCH_PRCTL, ARCH_SET_FS, ctx.fs_base as usize, 0) };
    if r < 0 {
        die("arch_prctl(ARCH_SET_FS) failed", ctx.fs_base, (-r) as u64);
    }
    // SAFETY: we leave this program for good; the registers come from the saved context.
    unsafe {
        asm!(
            "mov rbx, [rax + 0]",
            "mov rbp, [rax + 8]",
            "mov r12, [rax + 16]",
            "mov r13, [rax + 24]",
            "mov r14, [rax + 32]",
            "mov r15, [rax + 40]",
            "mov rsp, [rax + 48]",
            "mov rcx, [rax + 56]",
            "mov eax, 1",
            "jmp rcx",
            in("rax") ctx as *const JumpContext,
            options(noreturn)
        );
    }
}

/// # Safety
/// Called once from `_start` with the kernel's initial stack pointer.
unsafe extern "C" fn rmain(sp: *const usize) -> ! {
    // Block every signal until the runtime restores the program's mask.
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask(SIG_SETMASK=2, &all, NULL, 8).
    unsafe { sc6(SYS_RT_SIGPROCMASK, 2, &all as *const u64 as usize, 0, 8, 0, 0) };

    // SAFETY: the kernel's initial stack: argc, then argv pointers.
    let argc = unsafe { *sp };
    if argc != 2 {
        write_all(2, b"ckpt-restore: internal tool of ckpt; run `ckpt restart` instead\n");
        exit(2);
    }
    // SAFETY: argv[1] exists (argc == 2) and is NUL-terminated.
    let plan_fd = match parse_dec(unsafe { *(sp.add(2)) as *const u8 }) {
        Some(fd) => fd,
        None => die("bad plan fd argument", 0, 0),
    };

    // Map the plan into our window.
    let mut st = [0u64; 18]; // struct stat is 144 bytes on x86_64
    // SAFETY: fstat into a buffer of the right size.
    let r = unsafe { sc3(SYS_FSTAT, plan_fd, st.as_mut_ptr() as usize, 0) };
    if r < 0 {
        die("cannot stat the plan fd", plan_fd as u64, (-r) as u64);
    }
    let size = st[6]; // st_size at byte offset 48
    if size < core::mem::size_of::<PlanHeader>() as u64 || size > 0x0f00_0000 {
        die("plan has a bad size", size, 0);
    }
    // SAFETY: PLAN_ADDR is inside our private window and free (NOREPLACE checks it).
    let r = unsafe {
        sc6(SYS_MMAP, PLAN_ADDR as usize, size as usize, PROT_R, MAP_PRIVATE | MAP_FIXED_NOREPLACE, plan_fd, 0)
    };
    if r < 0 || r as u64 != PLAN_ADDR {
        die("cannot map the plan", size, (-r) as u64);
    }
    // The mapping keeps the plan; the descriptor must not leak into the program.
    // SAFETY: closing the plan fd we were given.
    unsafe { sc3(SYS_CLOSE, plan_fd, 0, 0) };
    // SAFETY: the mapping holds at least one PlanHeader (size checked), page aligned.
    let plan: &PlanHeader = unsafe { &*(PLAN_ADDR as *const PlanHeader) };
    if plan.magic != PLAN_MAGIC || plan.version != PLAN_VERSION
        || plan.header_size as usize != core::mem::size_of::<PlanHeader>()
    {
        die("plan has a wrong magic/version/size (ckpt and ckpt-restore from different builds?)",
            plan.version as u64, plan.header_size as u64);
    }
    let ops_bytes = plan.n_ops as u64 * core::mem::size_of::<Op>() as u64;
    if plan.header_size as u64 + ops_bytes > size {
        die("plan is truncated", size, ops_bytes);
    }
    // SAFETY: bounds checked just above; Op is plain data with alignment 8 and the header
    // size is a multiple of 8.
    let ops: &[Op] = unsafe {
        core::slice::from_raw_parts((PLAN_ADDR + plan.header_size as u64) as *const Op, plan.n_ops as usize)
    };

    clear_address_space(plan);
    run_ops(plan, ops);
    close_parents();

    if plan.mm_flags & MM_MAP_VALID != 0 {
        // SAFETY: prctl(PR_SET_MM, PR_SET_MM_MAP, &mm, sizeof mm); the kernel validates it.
        let r = unsafe {
            sc6(SYS_PRCTL, PR_SET_MM, PR_SET_MM_MAP, &plan.mm as *const MmMap as usize,
                core::mem::size_of::<MmMap>(), 0, 0)
        };
        if r < 0 {
            warn("PR_SET_MM_MAP refused (brk/arg/env not restored); errno", (-r) as u64);
        }
    }

    for i in 0..(plan.n_close as usize).min(MAX_CLOSE_FDS) {
        // SAFETY: closing descriptors `ckpt restart` opened for us.
        unsafe { sc3(SYS_CLOSE, plan.close_fds[i] as usize, 0, 0) };
    }

    if plan.restore_info_addr != 0 {
        let info = RestoreInfo {
            magic: RESTORE_INFO_MAGIC,
            restorer_lo: RESTORER_BASE,
            restorer_hi: RESTORER_BASE + RESTORER_SPAN,
            info_fd: plan.info_fd as i64,
        };
        // SAFETY: the runtime's RestoreInfo slot, now mapped writable with its memory.
        unsafe { core::ptr::write_volatile(plan.restore_info_addr as *mut RestoreInfo, info) };
    }
    let jump_ctx = plan.jump;
    // SAFETY: the context was saved by the runtime at checkpoint time; its memory is back.
    unsafe { jump(&jump_ctx) }
}
