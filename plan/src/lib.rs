//! The restore plan: a flat, fixed-layout binary handed from `ckpt restart` (which parses
//! and validates the image with std Rust) to `ckpt-restore` (no libc, no parsing): a header
//! followed by `n_ops` operations, executed in order. Both sides use these `repr(C)`
//! definitions, so the layout cannot drift. The plan lives in a memfd whose number is the
//! restorer's only argument.
#![no_std]

pub mod crc;

pub const PLAN_MAGIC: u64 = u64::from_le_bytes(*b"CKPTPLAN");
/// 2: `Op` carries the CRC-32C of an `OP_READ` run (the restorer verifies it) and reads
/// use `Op::fd`; the header says how many threads may read.
pub const PLAN_VERSION: u32 = 3;

/// The restorer is linked at this fixed address (non-PIE, static); `ckpt restart` refuses
/// an image with a region inside `[RESTORER_BASE, RESTORER_BASE + RESTORER_SPAN)`.
pub const RESTORER_BASE: u64 = 0x1f00_0000_0000;
pub const RESTORER_SPAN: u64 = 0x4000_0000; // 1 GiB window: image, stack, plan, scratch
/// Where the restorer maps the plan (inside its window).
pub const PLAN_ADDR: u64 = RESTORER_BASE + 0x1000_0000;
/// Scratch spot for the vdso/vvar group while it is moved.
pub const VDSO_SCRATCH: u64 = RESTORER_BASE + 0x2000_0000;

/// mmap a fresh anonymous private region at `addr` (MAP_FIXED), read-write until a
/// later `OP_PROTECT`. `flags` may carry `FLAG_GROWSDOWN`/`FLAG_NORESERVE`.
pub const OP_MAP_ANON: u32 = 1;
/// mmap `fd` at `addr` with `prot`, MAP_PRIVATE|MAP_FIXED, file offset `off`.
pub const OP_MAP_FILE: u32 = 2;
/// pread `len` bytes from image `fd` (the header's `image_fd` if `fd` is -1, parent slot
/// k if `fd` is -2 - k) at offset
/// `off` into `addr` (which is writable) and check that their CRC-32C is `crc`; a mismatch
/// ends the restore with a message naming the address. Consecutive `OP_READ`s may run in
/// any order and in parallel (`PlanHeader::read_threads`).
pub const OP_READ: u32 = 3;
/// mprotect(`addr`, `len`, `prot`).
pub const OP_PROTECT: u32 = 4;
/// mmap `fd` MAP_SHARED|MAP_FIXED at `addr` with `prot`, offset `off`.
pub const OP_MAP_SHARED_FILE: u32 = 5;

/// Open, read-only, the image of the same process in generation `addr` of the same
/// checkpoint directory (`<dir>/gen-NNNNNN/<the image's file name>`, derived from the
/// image fd's path) as parent slot `fd` (0..`MAX_PARENTS`); an `OP_READ` with `fd` = -2 - k
/// reads from slot k (incremental images).
pub const OP_OPEN_PARENT: u32 = 6;
pub const MAX_PARENTS: usize = 16;

pub const FLAG_GROWSDOWN: u32 = 1;
pub const FLAG_NORESERVE: u32 = 2;

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Op {
    pub kind: u32,
    pub prot: u32,
    pub flags: u32,
    pub fd: i32,
    pub addr: u64,
    pub len: u64,
    pub off: u64,
    /// `OP_READ`: CRC-32C of the `len` bytes.
    pub crc: u32,
    pub _reserved: u32,
}

/// The registers the restorer loads before jumping into the restored runtime: exactly the
/// callee-saved set the runtime's `save_context` stored, plus the thread pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JumpContext {
    pub rbx: u64,
    pub rbp: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rsp: u64,
    pub rip: u64,
    pub fs_base: u64,
}

/// Mirrors the kernel's `struct prctl_mm_map` (PR_SET_MM_MAP), set so that brk, the
/// argument/environment areas and auxv read back as before the checkpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// Where the kernel's [vvar], [vvar_vclock] and [vdso] must end up (0 length = absent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoPlan {
    pub vvar_addr: u64,
    pub vvar_len: u64,
    pub vclock_addr: u64,
    pub vclock_len: u64,
    pub vdso_addr: u64,
    pub vdso_len: u64,
}

/// Written by the restorer into the restored runtime's memory at `restore_info_addr`
/// just before the jump.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreInfo {
    pub magic: u64,
    pub restorer_lo: u64,
    pub restorer_hi: u64,
    /// A memfd holding the restart parameters (JSON), or -1.
    pub info_fd: i64,
}
pub const RESTORE_INFO_MAGIC: u64 = u64::from_le_bytes(*b"RESTORED");

/// Descriptors the restorer closes (image, one per mapped file, shared objects): an MPI
/// launcher maps ~75 distinct files.
pub const MAX_CLOSE_FDS: usize = 1024;
pub const MM_MAP_VALID: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PlanHeader {
    pub magic: u64,
    pub version: u32,
    pub n_ops: u32,
    /// Size of this header in bytes (checked by the restorer).
    pub header_size: u32,
    pub image_fd: i32,
    pub info_fd: i32,
    /// `MM_MAP_VALID` when `mm` should be applied.
    pub mm_flags: u32,
    pub jump: JumpContext,
    pub mm: MmMap,
    pub vdso: VdsoPlan,
    pub restore_info_addr: u64,
    /// File descriptors the restorer closes before the jump (plan, image, libraries).
    pub n_close: u32,
    /// Threads (including the restorer's own) that may execute the `OP_READ`s; 0 or 1:
    /// one.
    pub read_threads: u32,
    pub close_fds: [i32; MAX_CLOSE_FDS],
}

impl Default for PlanHeader {
    fn default() -> Self {
        PlanHeader {
            magic: PLAN_MAGIC,
            version: PLAN_VERSION,
            n_ops: 0,
            header_size: core::mem::size_of::<PlanHeader>() as u32,
            image_fd: -1,
            info_fd: -1,
            mm_flags: 0,
            jump: JumpContext::default(),
            mm: MmMap::default(),
            vdso: VdsoPlan::default(),
            restore_info_addr: 0,
            n_close: 0,
            read_threads: 1,
            close_fds: [-1; MAX_CLOSE_FDS],
        }
    }
}

/// Views a plain-old-data value as bytes (for writing the plan).
///
/// # Safety
/// `T` must be one of this crate's `repr(C)` structs (no padding with undefined contents
/// is read by the restorer; all fields are integers).
pub unsafe fn as_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: the caller guarantees T is plain data; the slice covers exactly `v`.
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) }
}
