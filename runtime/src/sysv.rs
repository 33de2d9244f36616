//! SysV IPC: semaphore sets, message queues and shared memory segments.
//!
//! The kernel gives a re-created object a new id, so the ids the program holds are
//! *virtual*: `semget`/`msgget`/`shmget` and every call taking an id are interposed, and a
//! lock-free table translates the program's id (the first id the object had) to the
//! kernel's. Every id the process obtained or used successfully is in the table (inherited
//! across fork; an id first seen in a call is taken as it is). Before a restart the table
//! is the identity.
//!
//! Dump (Drain, threads parked): for every object of the table that still exists, its key,
//! mode and contents: semaphore values (`GETALL`), queued messages in order with their
//! types (`msgrcv(MSG_COPY)`, which does not remove them), a segment's size (its bytes are
//! in the mapping's pages when this process maps it, else read here). The process's own
//! SEM_UNDO adjustments are kept by the interposed `semop` (the kernel does not show them).
//! Restore: `ckpt restart` creates each object once (same key; an existing object with
//! that key is the killed job's and is replaced), fills it, and passes (kind, vid, real) to
//! every process; the runtime installs the table, puts its SEM_UNDO adjustments back (a
//! `semop` pair with a net change of zero to the value) and replaces each mapping of a
//! segment by the new segment (`shmat(SHM_REMAP)`) after copying the mapped bytes into it.
//!
//! A blocking `semop`/`msgsnd`/`msgrcv` interrupted by a checkpoint returns EINTR from the
//! kernel; the interposer retries it (with the id translated again after a restart). Calls
//! made with `syscall(2)` directly are not translated.

use ckpt_image::{SemAdj, SysvMessage, SysvObject};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

pub const SEM: u32 = 1;
pub const MSG: u32 = 2;
pub const SHM: u32 = 3;

const CAP: usize = 256;
const FREE: u32 = 0;
const BUSY: u32 = 1;
const READY: u32 = 2;

struct Entry {
    state: AtomicU32,
    kind: AtomicU32,
    vid: AtomicI32,
    real: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const E: Entry = Entry {
    state: AtomicU32::new(FREE),
    kind: AtomicU32::new(0),
    vid: AtomicI32::new(0),
    real: AtomicI32::new(0),
};
static TABLE: [Entry; CAP] = [E; CAP];

struct Adj {
    state: AtomicU32,
    vid: AtomicI32,
    num: AtomicU32,
    adj: AtomicI32,
}
#[allow(clippy::declare_interior_mutable_const)]
const A: Adj = Adj {
    state: AtomicU32::new(FREE),
    vid: AtomicI32::new(0),
    num: AtomicU32::new(0),
    adj: AtomicI32::new(0),
};
static ADJ: [Adj; CAP] = [A; CAP];

/// Incremented at every checkpoint's suspend: an EINTR seen across a change is ours.
pub static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Starts a checkpoint's epoch (at suspend).
pub fn new_epoch() {
    EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Virtual ids given to objects created after a restart whose kernel id is another
/// object's virtual id.
static NEXT_VID: AtomicI32 = AtomicI32::new(0x4000_0000);

fn find(kind: u32, vid: i32) -> Option<&'static Entry> {
    TABLE.iter().find(|e| {
        e.state.load(Ordering::Acquire) == READY
            && e.kind.load(Ordering::Relaxed) == kind
            && e.vid.load(Ordering::Relaxed) == vid
    })
}

fn insert(kind: u32, vid: i32, real: i32) {
    if let Some(e) = find(kind, vid) {
        e.real.store(real, Ordering::Release);
        return;
    }
    for e in TABLE.iter() {
        if e.state
            .compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            e.kind.store(kind, Ordering::Relaxed);
            e.vid.store(vid, Ordering::Relaxed);
            e.real.store(real, Ordering::Relaxed);
            e.state.store(READY, Ordering::Release);
            return;
        }
    }
    crate::warn!("SysV IPC table full: object {real} will not be checkpointed");
}

fn forget(kind: u32, vid: i32) {
    if let Some(e) = find(kind, vid) {
        e.state.store(FREE, Ordering::Release);
    }
    if kind == SEM {
        for a in ADJ.iter() {
            if a.state.load(Ordering::Acquire) == READY && a.vid.load(Ordering::Relaxed) == vid {
                a.state.store(FREE, Ordering::Release);
            }
        }
    }
}

/// The kernel's id of the program's id `vid` (identity when unknown).
pub fn real_of(kind: u32, vid: i32) -> i32 {
    find(kind, vid)
        .map(|e| e.real.load(Ordering::Acquire))
        .unwrap_or(vid)
}

/// The program's id of a new kernel id.
fn new_vid(kind: u32, real: i32) -> i32 {
    if let Some(e) = TABLE.iter().find(|e| {
        e.state.load(Ordering::Acquire) == READY
            && e.kind.load(Ordering::Relaxed) == kind
            && e.real.load(Ordering::Relaxed) == real
    }) {
        return e.vid.load(Ordering::Relaxed);
    }
    let vid = if find(kind, real).is_some() {
        NEXT_VID.fetch_add(1, Ordering::Relaxed)
    } else {
        real
    };
    insert(kind, vid, real);
    vid
}

/// Makes an id the program used known (an id obtained elsewhere, e.g. passed by a parent
/// that exec'd this program).
fn note_used(kind: u32, vid: i32) {
    if find(kind, vid).is_none() {
        insert(kind, vid, vid);
    }
}

fn add_adj(vid: i32, num: u16, delta: i32) {
    for a in ADJ.iter() {
        if a.state.load(Ordering::Acquire) == READY
            && a.vid.load(Ordering::Relaxed) == vid
            && a.num.load(Ordering::Relaxed) == num as u32
        {
            a.adj.fetch_add(delta, Ordering::AcqRel);
            return;
        }
    }
    for a in ADJ.iter() {
        if a.state
            .compare_exchange(FREE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            a.vid.store(vid, Ordering::Relaxed);
            a.num.store(num as u32, Ordering::Relaxed);
            a.adj.store(delta, Ordering::Relaxed);
            a.state.store(READY, Ordering::Release);
            return;
        }
    }
    crate::warn!("SEM_UNDO table full: an adjustment of set {vid} will not be checkpointed");
}

fn ret(r: i64) -> i64 {
    if r < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = (-r) as i32 };
        -1
    } else {
        r
    }
}

fn sc(n: i64, a: u64, b: u64, c: u64, d: u64, e: u64) -> i64 {
    // SAFETY: the SysV IPC system calls with the caller's (translated) arguments.
    unsafe { crate::sys::syscall6(n, a, b, c, d, e, 0) }
}

/// Runs a blocking call again when a checkpoint interrupted it (EINTR across an epoch
/// change), translating the id again.
fn retrying(kind: u32, vid: i32, mut call: impl FnMut(i32) -> i64) -> i64 {
    loop {
        let epoch = EPOCH.load(Ordering::Acquire);
        let r = call(real_of(kind, vid));
        if r == -(libc::EINTR as i64) && EPOCH.load(Ordering::Acquire) != epoch {
            continue;
        }
        return r;
    }
}

// --- the interposed functions ------------------------------------------------------------

#[no_mangle]
pub extern "C" fn semget(key: libc::key_t, nsems: libc::c_int, flg: libc::c_int) -> libc::c_int {
    let r = sc(libc::SYS_semget, key as u64, nsems as u64, flg as u64, 0, 0);
    if r < 0 {
        return ret(r) as i32;
    }
    new_vid(SEM, r as i32)
}

#[no_mangle]
pub extern "C" fn msgget(key: libc::key_t, flg: libc::c_int) -> libc::c_int {
    let r = sc(libc::SYS_msgget, key as u64, flg as u64, 0, 0, 0);
    if r < 0 {
        return ret(r) as i32;
    }
    new_vid(MSG, r as i32)
}

#[no_mangle]
pub extern "C" fn shmget(key: libc::key_t, size: libc::size_t, flg: libc::c_int) -> libc::c_int {
    let r = sc(libc::SYS_shmget, key as u64, size as u64, flg as u64, 0, 0);
    if r < 0 {
        return ret(r) as i32;
    }
    new_vid(SHM, r as i32)
}

fn record_undo(semid: i32, sops: *const libc::sembuf, n: usize) {
    // SAFETY: the kernel accepted `n` sembufs at `sops`.
    let ops = unsafe { std::slice::from_raw_parts(sops, n) };
    for op in ops {
        if op.sem_flg as i32 & libc::SEM_UNDO != 0 && op.sem_op != 0 {
            add_adj(semid, op.sem_num, -(op.sem_op as i32));
        }
    }
}

/// # Safety
/// Same contract as libc's semtimedop.
#[no_mangle]
pub unsafe extern "C" fn semtimedop(
    semid: libc::c_int,
    sops: *mut libc::sembuf,
    nsops: libc::size_t,
    timeout: *const libc::timespec,
) -> libc::c_int {
    note_used(SEM, semid);
    let r = retrying(SEM, semid, |real| {
        sc(
            libc::SYS_semtimedop,
            real as u64,
            sops as u64,
            nsops as u64,
            timeout as u64,
            0,
        )
    });
    if r == 0 {
        record_undo(semid, sops, nsops);
    }
    ret(r) as i32
}

/// # Safety
/// Same contract as libc's semop.
#[no_mangle]
pub unsafe extern "C" fn semop(
    semid: libc::c_int,
    sops: *mut libc::sembuf,
    nsops: libc::size_t,
) -> libc::c_int {
    // SAFETY: forwarded.
    unsafe { semtimedop(semid, sops, nsops, std::ptr::null()) }
}

/// # Safety
/// Same contract as libc's semctl (the fourth argument, when the command takes one, is the
/// `union semun` passed in a register).
#[no_mangle]
pub unsafe extern "C" fn semctl(
    semid: libc::c_int,
    semnum: libc::c_int,
    cmd: libc::c_int,
    arg: u64,
) -> libc::c_int {
    let base = cmd & 0xff;
    // IPC_INFO, SEM_INFO, SEM_STAT(_ANY) take an index, not an id.
    if matches!(base, 3 | 19 | 18 | 20) {
        return ret(sc(
            libc::SYS_semctl,
            semid as u64,
            semnum as u64,
            cmd as u64,
            arg,
            0,
        )) as i32;
    }
    note_used(SEM, semid);
    let r = sc(
        libc::SYS_semctl,
        real_of(SEM, semid) as u64,
        semnum as u64,
        cmd as u64,
        arg,
        0,
    );
    if r >= 0 && base == libc::IPC_RMID {
        forget(SEM, semid);
    }
    if r >= 0 && (base == libc::SETALL || base == libc::SETVAL) {
        // Setting values clears every process's adjustments of those semaphores.
        for a in ADJ.iter() {
            if a.state.load(Ordering::Acquire) == READY
                && a.vid.load(Ordering::Relaxed) == semid
                && (base == libc::SETALL || a.num.load(Ordering::Relaxed) == semnum as u32)
            {
                a.adj.store(0, Ordering::Release);
            }
        }
    }
    if r > 0 && base == libc::GETPID {
        return crate::vids::virtual_of(r as i32);
    }
    ret(r) as i32
}

/// # Safety
/// Same contract as libc's msgsnd.
#[no_mangle]
pub unsafe extern "C" fn msgsnd(
    msqid: libc::c_int,
    msgp: *const libc::c_void,
    msgsz: libc::size_t,
    flg: libc::c_int,
) -> libc::c_int {
    note_used(MSG, msqid);
    let r = retrying(MSG, msqid, |real| {
        sc(
            libc::SYS_msgsnd,
            real as u64,
            msgp as u64,
            msgsz as u64,
            flg as u64,
            0,
        )
    });
    ret(r) as i32
}

/// # Safety
/// Same contract as libc's msgrcv.
#[no_mangle]
pub unsafe extern "C" fn msgrcv(
    msqid: libc::c_int,
    msgp: *mut libc::c_void,
    msgsz: libc::size_t,
    typ: libc::c_long,
    flg: libc::c_int,
) -> libc::ssize_t {
    note_used(MSG, msqid);
    let r = retrying(MSG, msqid, |real| {
        sc(
            libc::SYS_msgrcv,
            real as u64,
            msgp as u64,
            msgsz as u64,
            typ as u64,
            flg as u64,
        )
    });
    ret(r) as libc::ssize_t
}

/// # Safety
/// Same contract as libc's msgctl.
#[no_mangle]
pub unsafe extern "C" fn msgctl(
    msqid: libc::c_int,
    cmd: libc::c_int,
    buf: *mut libc::msqid_ds,
) -> libc::c_int {
    let base = cmd & 0xff;
    // IPC_INFO, MSG_INFO, MSG_STAT(_ANY) take an index.
    if matches!(base, 3 | 12 | 11 | 13) {
        return ret(sc(
            libc::SYS_msgctl,
            msqid as u64,
            cmd as u64,
            buf as u64,
            0,
            0,
        )) as i32;
    }
    note_used(MSG, msqid);
    let r = sc(
        libc::SYS_msgctl,
        real_of(MSG, msqid) as u64,
        cmd as u64,
        buf as u64,
        0,
        0,
    );
    if r >= 0 && base == libc::IPC_RMID {
        forget(MSG, msqid);
    }
    if r >= 0 && base == libc::IPC_STAT && !buf.is_null() {
        // SAFETY: the kernel filled the caller's buffer.
        unsafe {
            (*buf).msg_lspid = crate::vids::virtual_of((*buf).msg_lspid);
            (*buf).msg_lrpid = crate::vids::virtual_of((*buf).msg_lrpid);
        }
    }
    ret(r) as i32
}

/// # Safety
/// Same contract as libc's shmat.
#[no_mangle]
pub unsafe extern "C" fn shmat(
    shmid: libc::c_int,
    addr: *const libc::c_void,
    flg: libc::c_int,
) -> *mut libc::c_void {
    note_used(SHM, shmid);
    let r = sc(
        libc::SYS_shmat,
        real_of(SHM, shmid) as u64,
        addr as u64,
        flg as u64,
        0,
        0,
    );
    if r < 0 && r > -4096 {
        ret(r);
        return usize::MAX as *mut libc::c_void;
    }
    r as usize as *mut libc::c_void
}

/// # Safety
/// Same contract as libc's shmctl.
#[no_mangle]
pub unsafe extern "C" fn shmctl(
    shmid: libc::c_int,
    cmd: libc::c_int,
    buf: *mut libc::shmid_ds,
) -> libc::c_int {
    let base = cmd & 0xff;
    // IPC_INFO, SHM_INFO, SHM_STAT(_ANY) take an index.
    if matches!(base, 3 | 14 | 13 | 15) {
        return ret(sc(
            libc::SYS_shmctl,
            shmid as u64,
            cmd as u64,
            buf as u64,
            0,
            0,
        )) as i32;
    }
    note_used(SHM, shmid);
    let r = sc(
        libc::SYS_shmctl,
        real_of(SHM, shmid) as u64,
        cmd as u64,
        buf as u64,
        0,
        0,
    );
    if r >= 0 && base == libc::IPC_RMID {
        // The segment lives on while mapped (key becomes private); its mappings stay
        // shared memory of the job (a deleted /SYSV mapping).
        forget(SHM, shmid);
    }
    if r >= 0 && base == libc::IPC_STAT && !buf.is_null() {
        // SAFETY: the kernel filled the caller's buffer.
        unsafe {
            (*buf).shm_cpid = crate::vids::virtual_of((*buf).shm_cpid);
            (*buf).shm_lpid = crate::vids::virtual_of((*buf).shm_lpid);
        }
    }
    ret(r) as i32
}

// --- dump --------------------------------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether this process maps SysV segment `real` (maps shows it as /SYSV<key> with the
/// shmid as inode), and the mappings: (start, end, offset).
fn mappings_of(real: i32) -> Vec<(u64, u64, u64)> {
    let Ok(m) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    crate::memory::parse_maps(&m)
        .into_iter()
        .filter(|e| e.shared && e.name.starts_with("/SYSV") && e.ino == real as u64)
        .map(|e| (e.start, e.end, e.offset))
        .collect()
}

/// Describes every SysV object this process knows, and its SEM_UNDO adjustments.
pub fn dump() -> Result<(Vec<SysvObject>, Vec<SemAdj>), String> {
    let mut out = Vec::new();
    for e in TABLE.iter() {
        if e.state.load(Ordering::Acquire) != READY {
            continue;
        }
        let (kind, vid, real) = (
            e.kind.load(Ordering::Relaxed),
            e.vid.load(Ordering::Relaxed),
            e.real.load(Ordering::Relaxed),
        );
        match kind {
            SEM => {
                // SAFETY: plain data filled by the kernel.
                let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
                let r = sc(
                    libc::SYS_semctl,
                    real as u64,
                    0,
                    libc::IPC_STAT as u64,
                    &mut ds as *mut libc::semid_ds as u64,
                    0,
                );
                if r < 0 {
                    continue; // removed meanwhile
                }
                let n = ds.sem_nsems as usize;
                let mut values = vec![0u16; n];
                let r = sc(
                    libc::SYS_semctl,
                    real as u64,
                    0,
                    libc::GETALL as u64,
                    values.as_mut_ptr() as u64,
                    0,
                );
                if r < 0 {
                    return Err(format!("reading semaphore set {vid}: errno {}", -r));
                }
                out.push(SysvObject::Sem {
                    vid,
                    real,
                    key: ds.sem_perm.__key,
                    mode: ds.sem_perm.mode as u32 & 0o777,
                    values,
                });
            }
            MSG => {
                // SAFETY: plain data filled by the kernel.
                let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
                let r = sc(
                    libc::SYS_msgctl,
                    real as u64,
                    libc::IPC_STAT as u64,
                    &mut ds as *mut libc::msqid_ds as u64,
                    0,
                    0,
                );
                if r < 0 {
                    continue;
                }
                let mut messages = Vec::new();
                let mut buf = vec![0u8; 8 + 65536];
                for pos in 0..ds.msg_qnum as u64 {
                    let r = sc(
                        libc::SYS_msgrcv,
                        real as u64,
                        buf.as_mut_ptr() as u64,
                        65536,
                        pos,
                        (libc::IPC_NOWAIT | libc::MSG_COPY | libc::MSG_NOERROR) as u64,
                    );
                    if r < 0 {
                        return Err(format!(
                            "reading message {pos} of SysV message queue {vid}: {} (msgrcv with MSG_COPY needs a kernel with CONFIG_CHECKPOINT_RESTORE)",
                            std::io::Error::from_raw_os_error(-r as i32)
                        ));
                    }
                    let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap());
                    messages.push(SysvMessage {
                        mtype,
                        data: hex(&buf[8..8 + r as usize]),
                    });
                }
                out.push(SysvObject::Msg {
                    vid,
                    real,
                    key: ds.msg_perm.__key,
                    mode: ds.msg_perm.mode as u32 & 0o777,
                    qbytes: ds.msg_qbytes as u64,
                    messages,
                });
            }
            SHM => {
                // SAFETY: plain data filled by the kernel.
                let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
                let r = sc(
                    libc::SYS_shmctl,
                    real as u64,
                    libc::IPC_STAT as u64,
                    &mut ds as *mut libc::shmid_ds as u64,
                    0,
                    0,
                );
                if r < 0 {
                    continue;
                }
                let size = ds.shm_segsz as u64;
                let maps = mappings_of(real);
                let whole = size.div_ceil(4096) * 4096;
                for (s, e, off) in &maps {
                    if *off != 0 || e - s != whole {
                        return Err(format!(
                            "SysV segment {vid} is mapped only in part ({s:#x}-{e:#x}, offset {off:#x}, segment {size} bytes): not supported"
                        ));
                    }
                }
                let data = if maps.is_empty() {
                    let p = sc(
                        libc::SYS_shmat,
                        real as u64,
                        0,
                        libc::SHM_RDONLY as u64,
                        0,
                        0,
                    );
                    if p < 0 && p > -4096 {
                        return Err(format!("reading SysV segment {vid}: errno {}", -p));
                    }
                    // SAFETY: our temporary read-only attachment of `size` bytes.
                    let h = hex(unsafe {
                        std::slice::from_raw_parts(p as usize as *const u8, size as usize)
                    });
                    sc(libc::SYS_shmdt, p as u64, 0, 0, 0, 0);
                    Some(h)
                } else {
                    None
                };
                out.push(SysvObject::Shm {
                    vid,
                    real,
                    key: ds.shm_perm.__key,
                    mode: ds.shm_perm.mode as u32 & 0o777,
                    size,
                    data,
                });
            }
            _ => {}
        }
    }
    let adj = ADJ
        .iter()
        .filter(|a| a.state.load(Ordering::Acquire) == READY && a.adj.load(Ordering::Relaxed) != 0)
        .filter(|a| {
            out.iter()
                .any(|o| o.kind() == "sem" && o.vid() == a.vid.load(Ordering::Relaxed))
        })
        .map(|a| SemAdj {
            vid: a.vid.load(Ordering::Relaxed),
            num: a.num.load(Ordering::Relaxed) as u16,
            adj: a.adj.load(Ordering::Relaxed),
        })
        .collect();
    Ok((out, adj))
}

// --- restore -----------------------------------------------------------------------------

/// After a restart: installs the kernel ids `ckpt restart` gave the objects
/// ((kind, vid, real)), puts the SEM_UNDO adjustments back and moves every mapping of a
/// segment onto the new segment. Runs before the tree barrier (no user code runs).
pub fn restore(
    objs: &[SysvObject],
    adj: &[SemAdj],
    ids: &[(String, i32, i32)],
) -> Result<(), String> {
    let kind_of = |k: &str| match k {
        "sem" => SEM,
        "msg" => MSG,
        _ => SHM,
    };
    // The table as it was, with the new kernel ids; objects without one are gone.
    for e in TABLE.iter() {
        if e.state.load(Ordering::Acquire) == READY {
            let (k, v) = (
                e.kind.load(Ordering::Relaxed),
                e.vid.load(Ordering::Relaxed),
            );
            match ids.iter().find(|(kk, vv, _)| kind_of(kk) == k && *vv == v) {
                Some((_, _, r)) => e.real.store(*r, Ordering::Release),
                None => e.state.store(FREE, Ordering::Release),
            }
        }
    }
    for a in adj {
        let real = real_of(SEM, a.vid);
        // Positive operation first, so neither blocks: the value ends unchanged and the
        // kernel's adjustment for this process is `a.adj`.
        let undo = libc::SEM_UNDO as i16;
        let ops: [(i16, i16); 2] = if a.adj > 0 {
            [(a.adj as i16, 0), (-(a.adj as i16), undo)]
        } else {
            [(-(a.adj as i16), undo), (a.adj as i16, 0)]
        };
        for (op, flg) in ops {
            let mut b = libc::sembuf {
                sem_num: a.num,
                sem_op: op,
                sem_flg: flg | libc::IPC_NOWAIT as i16,
            };
            let r = sc(
                libc::SYS_semop,
                real as u64,
                &mut b as *mut libc::sembuf as u64,
                1,
                0,
                0,
            );
            if r < 0 {
                return Err(format!(
                    "putting back the SEM_UNDO adjustment {} of semaphore {} of set {}: errno {}",
                    a.adj, a.num, a.vid, -r
                ));
            }
        }
    }
    for o in objs {
        if let SysvObject::Shm { vid, real: old, .. } = o {
            let real = real_of(SHM, *vid);
            for (start, end, _) in old_mappings(*old) {
                remap(*vid, real, start, end)?;
            }
        }
    }
    Ok(())
}

/// The mappings of a segment at the checkpoint: after the restore they are shared-memory
/// mappings whose maps name still says /SYSV, with the old shmid as inode only if the
/// restorer named them so; they are found by the recorded region list instead.
fn old_mappings(old: i32) -> Vec<(u64, u64, u64)> {
    REGIONS
        .iter()
        .filter(|r| {
            r.state.load(Ordering::Acquire) == READY && r.shmid.load(Ordering::Relaxed) == old
        })
        .map(|r| {
            (
                r.start.load(Ordering::Relaxed),
                r.end.load(Ordering::Relaxed),
                0,
            )
        })
        .collect()
}

struct Mapped {
    state: AtomicU32,
    shmid: AtomicI32,
    start: AtomicU64,
    end: AtomicU64,
}
#[allow(clippy::declare_interior_mutable_const)]
const M: Mapped = Mapped {
    state: AtomicU32::new(FREE),
    shmid: AtomicI32::new(0),
    start: AtomicU64::new(0),
    end: AtomicU64::new(0),
};
/// The SysV mappings of this process at the last checkpoint (kept in the image).
static REGIONS: [Mapped; 64] = [M; 64];

/// Records the SysV mappings at the checkpoint (Drain), for `restore`.
pub fn note_mappings() -> Result<(), String> {
    for r in REGIONS.iter() {
        r.state.store(FREE, Ordering::Release);
    }
    let m = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let mut i = 0;
    for e in crate::memory::parse_maps(&m) {
        // (maps names every segment "/SYSV<key> (deleted)"; one removed with IPC_RMID is
        // not in the table, is not re-created, and stays plain shared memory of the job.)
        if e.shared && e.name.starts_with("/SYSV") {
            if i == REGIONS.len() {
                return Err("more than 64 SysV shared memory mappings".into());
            }
            let r = &REGIONS[i];
            r.shmid.store(e.ino as i32, Ordering::Relaxed);
            r.start.store(e.start, Ordering::Relaxed);
            r.end.store(e.end, Ordering::Relaxed);
            r.state.store(READY, Ordering::Release);
            i += 1;
        }
    }
    Ok(())
}

/// Copies the bytes of the mapping at start..end into segment `real`, then maps the
/// segment there instead (keeping the protection: read-only stays read-only).
fn remap(vid: i32, real: i32, start: u64, end: u64) -> Result<(), String> {
    let len = (end - start) as usize;
    let tmp = sc(libc::SYS_shmat, real as u64, 0, 0, 0, 0);
    if tmp < 0 && tmp > -4096 {
        return Err(format!(
            "attaching new SysV segment for {vid}: errno {}",
            -tmp
        ));
    }
    // SAFETY: both ranges are mapped, of `len` bytes at least (same segment size).
    unsafe { std::ptr::copy_nonoverlapping(start as *const u8, tmp as usize as *mut u8, len) };
    sc(libc::SYS_shmdt, tmp as u64, 0, 0, 0, 0);
    let writable = std::fs::read_to_string("/proc/self/maps")
        .ok()
        .and_then(|m| {
            crate::memory::parse_maps(&m)
                .into_iter()
                .find(|e| e.start == start)
                .map(|e| e.prot.write)
        })
        .unwrap_or(true);
    let flg = libc::SHM_REMAP | if writable { 0 } else { libc::SHM_RDONLY };
    let r = sc(libc::SYS_shmat, real as u64, start, flg as u64, 0, 0);
    if r as u64 != start {
        return Err(format!(
            "mapping new SysV segment for {vid} at {start:#x}: errno {}",
            -r
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_then_restore_into_new_objects() {
        // SAFETY: test-local SysV objects, removed at the end.
        unsafe {
            let s = semget(libc::IPC_PRIVATE, 3, 0o600);
            assert!(s >= 0);
            let vals = [4u16, 0, 9];
            assert_eq!(semctl(s, 0, libc::SETALL, vals.as_ptr() as u64), 0);
            let mut op = libc::sembuf {
                sem_num: 0,
                sem_op: -1,
                sem_flg: libc::SEM_UNDO as i16,
            };
            assert_eq!(semop(s, &mut op, 1), 0);
            let q = msgget(libc::IPC_PRIVATE, 0o600);
            assert!(q >= 0);
            for (t, txt) in [(5i64, &b"hello"[..]), (2, b"w"), (5, b"")] {
                let mut m = vec![0u8; 8 + txt.len()];
                m[..8].copy_from_slice(&t.to_ne_bytes());
                m[8..].copy_from_slice(txt);
                assert_eq!(msgsnd(q, m.as_ptr() as _, txt.len(), 0), 0);
            }
            let h = shmget(libc::IPC_PRIVATE, 5000, 0o600);
            assert!(h >= 0);
            let p = shmat(h, std::ptr::null(), 0) as *mut u8;
            *p.add(4999) = 0x5a;
            assert_eq!(shmdt_raw(p), 0);

            let (objs, adj) = dump().unwrap();
            assert_eq!(
                adj,
                vec![SemAdj {
                    vid: s,
                    num: 0,
                    adj: 1
                }]
            );
            let sem = objs
                .iter()
                .find(|o| o.kind() == "sem" && o.vid() == s)
                .unwrap();
            assert!(matches!(sem, SysvObject::Sem { values, .. } if values == &vec![3, 0, 9]));
            let msg = objs
                .iter()
                .find(|o| o.kind() == "msg" && o.vid() == q)
                .unwrap();
            match msg {
                SysvObject::Msg { messages, .. } => {
                    let v: Vec<(i64, &str)> = messages
                        .iter()
                        .map(|m| (m.mtype, m.data.as_str()))
                        .collect();
                    assert_eq!(v, vec![(5, "68656c6c6f"), (2, "77"), (5, "")]);
                }
                _ => unreachable!(),
            }
            let shm = objs
                .iter()
                .find(|o| o.kind() == "shm" && o.vid() == h)
                .unwrap();
            match shm {
                SysvObject::Shm {
                    size,
                    data: Some(d),
                    ..
                } => {
                    assert_eq!(*size, 5000);
                    assert_eq!(&d[2 * 4999..], "5a");
                }
                _ => panic!("{shm:?}"),
            }
            // Restore side: a new semaphore set stands in for `s`; the table translates and
            // the adjustment is put back with the values unchanged.
            let s2 = sc(libc::SYS_semget, 0, 3, 0o600, 0, 0) as i32;
            let v2 = [3u16, 0, 9];
            sc(
                libc::SYS_semctl,
                s2 as u64,
                0,
                libc::SETALL as u64,
                v2.as_ptr() as u64,
                0,
            );
            restore(
                &objs,
                &adj,
                &[
                    ("sem".into(), s, s2),
                    ("msg".into(), q, q),
                    ("shm".into(), h, h),
                ],
            )
            .unwrap();
            assert_eq!(real_of(SEM, s), s2);
            let mut got = [0u16; 3];
            assert_eq!(semctl(s, 0, libc::GETALL, got.as_mut_ptr() as u64), 0);
            assert_eq!(got, [3, 0, 9]);
            // The kernel now holds +1 for semaphore 0 for this process: undoing our own
            // -1 gives it back at exit; check by releasing the adjustment explicitly.
            let mut up = libc::sembuf {
                sem_num: 0,
                sem_op: 1,
                sem_flg: libc::SEM_UNDO as i16,
            };
            assert_eq!(semop(s, &mut up, 1), 0);
            for (k, id) in [(SEM, s), (MSG, q), (SHM, h)] {
                let n = match k {
                    SEM => semctl(id, 0, libc::IPC_RMID, 0),
                    MSG => msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                    _ => shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                };
                assert_eq!(n, 0);
            }
            sc(libc::SYS_semctl, s as u64, 0, libc::IPC_RMID as u64, 0, 0);
        }
    }

    unsafe fn shmdt_raw(p: *mut u8) -> i64 {
        sc(libc::SYS_shmdt, p as u64, 0, 0, 0, 0)
    }
}
