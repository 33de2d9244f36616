//! memfds and deleted-but-open regular files: their contents are read at the checkpoint
//! (pread into the runtime's allocator: threads are parked) and kept in the runtime's
//! memory, hence in the image; after a restart a memfd is created again with the same name,
//! contents and seals, and a deleted file becomes an unlinked file (O_TMPFILE) in its old
//! directory, or a memfd where that is not possible. Fds opened separately on one such
//! file share the new file again.

use ckpt_image::FdKind;

/// The contents of one memfd or deleted file, by inode.
#[derive(Clone, Debug, Default)]
pub struct Blob {
    pub inode: u64,
    pub data: Vec<u8>,
}

/// Bytes of the contents saved at the last checkpoint (threads parked: the runtime's
/// allocator only).
static mut BLOBS: Vec<Blob> = Vec::new();

#[allow(static_mut_refs)]
fn blobs() -> &'static mut Vec<Blob> {
    // SAFETY: only the checkpoint thread uses BLOBS (drain, restore, clear).
    unsafe { &mut *std::ptr::addr_of_mut!(BLOBS) }
}

/// Drops the saved contents (after the snapshot took them, or after a restore used them).
pub fn clear() {
    *blobs() = Vec::new();
}

/// Reads the whole file behind `fd` (`size` bytes) with pread.
fn read_all(fd: i32, size: u64) -> Result<Vec<u8>, String> {
    let mut data = vec![0u8; size as usize];
    let mut off = 0usize;
    while off < data.len() {
        // SAFETY: pread into our buffer within its length.
        let n = unsafe {
            libc::pread(
                fd,
                data[off..].as_mut_ptr() as *mut libc::c_void,
                data.len() - off,
                off as i64,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if e.raw_os_error() == Some(libc::EBADF) {
                // Opened write-only: read through a new read-only description.
                return read_via_proc(fd, size);
            }
            return Err(format!("fd {fd}: reading its contents: {e}"));
        }
        if n == 0 {
            data.truncate(off);
            break;
        }
        off += n as usize;
    }
    Ok(data)
}

fn read_via_proc(fd: i32, size: u64) -> Result<Vec<u8>, String> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
    // SAFETY: open with a NUL-terminated path.
    let r = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if r < 0 {
        return Err(format!(
            "fd {fd} is open write-only and cannot be reopened to read its contents: {}",
            std::io::Error::last_os_error()
        ));
    }
    let d = read_all(r, size);
    // SAFETY: closing our own fd.
    unsafe { libc::close(r) };
    d
}

/// Describes a memfd (`link` is `/memfd:NAME (deleted)`) or a deleted regular file and
/// saves its contents once per inode.
pub fn describe(fd: i32, link: &str, st: &libc::stat) -> Result<FdKind, String> {
    // SAFETY: lseek on our fd.
    let offset = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }.max(0) as u64;
    let size = st.st_size.max(0) as u64;
    let base = link.strip_suffix(" (deleted)").unwrap_or(link);
    let kind = if let Some(name) = base.strip_prefix("/memfd:") {
        // SAFETY: F_GET_SEALS on our fd (EINVAL when sealing is not allowed: no seals).
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) }.max(0);
        if [
            "ckpt-restart-info",
            "ckpt-restore-plan",
            "ckpt-restore",
            "ckpt-inotify-gap",
        ]
        .contains(&name)
        {
            return Err(format!("fd {fd} ({link}) belongs to ckpt itself"));
        }
        FdKind::Memfd {
            name: name.to_string(),
            inode: st.st_ino,
            size,
            seals,
            offset,
        }
    } else {
        FdKind::Deleted {
            path: base.to_string(),
            inode: st.st_ino,
            size,
            offset,
        }
    };
    if !blobs().iter().any(|b| b.inode == st.st_ino) {
        let data = read_all(fd, size)?;
        blobs().push(Blob {
            inode: st.st_ino,
            data,
        });
    }
    Ok(kind)
}

/// Creates the file for `k` once per inode (`made` remembers them) and returns a new
/// description of it opened like the recorded fd (`flags`).
/// `min_fd`: the new file is kept at or above it (clear of every number being restored).
pub fn open(
    fd: i32,
    k: &FdKind,
    flags: i32,
    made: &mut Vec<(u64, i32)>,
    min_fd: i32,
) -> Result<i32, String> {
    let (inode, offset) = match k {
        FdKind::Memfd { inode, offset, .. } | FdKind::Deleted { inode, offset, .. } => {
            (*inode, *offset)
        }
        _ => return Err(format!("fd {fd}: not a memfd")),
    };
    let base = match made.iter().find(|(i, _)| *i == inode) {
        Some(&(_, b)) => b,
        None => {
            let low = make(fd, k)?;
            // SAFETY: moving our new fd above every recorded number.
            let b = unsafe { libc::fcntl(low, libc::F_DUPFD_CLOEXEC, min_fd) };
            // SAFETY: closing the original number.
            unsafe { libc::close(low) };
            if b < 0 {
                return Err(format!(
                    "fd {fd}: F_DUPFD: {}",
                    std::io::Error::last_os_error()
                ));
            }
            made.push((inode, b));
            b
        }
    };
    // A new open file description with the recorded access mode and flags.
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_LARGEFILE;
    let p = std::ffi::CString::new(format!("/proc/self/fd/{base}")).unwrap();
    // SAFETY: open with a NUL-terminated path.
    let n = unsafe { libc::open(p.as_ptr(), (flags & keep) | libc::O_CLOEXEC) };
    if n < 0 {
        return Err(format!(
            "fd {fd}: reopening the recreated file: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: lseek on our new fd.
    unsafe { libc::lseek(n, offset as i64, libc::SEEK_SET) };
    Ok(n)
}

/// Adds the recorded seals once every description is open (a write seal would stop the
/// contents from being written, and F_SEAL_SEAL must come last).
pub fn seal(made: &[(u64, i32)], fds: &[ckpt_image::FdMeta]) -> Result<(), String> {
    for (inode, b) in made {
        for f in fds {
            if let FdKind::Memfd {
                inode: i, seals, ..
            } = &f.kind
            {
                if i == inode && *seals != 0 {
                    // SAFETY: F_ADD_SEALS on our memfd.
                    if unsafe { libc::fcntl(*b, libc::F_ADD_SEALS, *seals) } != 0 {
                        return Err(format!(
                            "fd {}: adding seals {seals:#x}: {}",
                            f.fd,
                            std::io::Error::last_os_error()
                        ));
                    }
                    break;
                }
            }
        }
    }
    Ok(())
}

fn make(fd: i32, k: &FdKind) -> Result<i32, String> {
    let (inode, size) = match k {
        FdKind::Memfd { inode, size, .. } | FdKind::Deleted { inode, size, .. } => (*inode, *size),
        _ => unreachable!(),
    };
    let n = match k {
        FdKind::Memfd { name, seals, .. } => {
            let c = std::ffi::CString::new(name.as_str()).unwrap_or_default();
            let mut fl = libc::MFD_CLOEXEC;
            // F_SEAL_SEAL alone means "sealing not allowed": created without MFD_ALLOW_SEALING.
            if *seals != libc::F_SEAL_SEAL {
                fl |= libc::MFD_ALLOW_SEALING;
            }
            // SAFETY: memfd_create with a NUL-terminated name.
            unsafe { libc::memfd_create(c.as_ptr(), fl) }
        }
        FdKind::Deleted { path, .. } => {
            let dir = std::path::Path::new(path)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/tmp".into());
            let c = std::ffi::CString::new(dir).unwrap_or_default();
            // SAFETY: open(O_TMPFILE) of a directory with a NUL-terminated path.
            let t = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if t >= 0 {
                t
            } else {
                // SAFETY: as above.
                unsafe { libc::memfd_create(c"ckpt-deleted".as_ptr(), libc::MFD_CLOEXEC) }
            }
        }
        _ => unreachable!(),
    };
    if n < 0 {
        return Err(format!(
            "fd {fd}: creating a file for its saved contents: {}",
            std::io::Error::last_os_error()
        ));
    }
    let data = blobs()
        .iter()
        .find(|b| b.inode == inode)
        .map(|b| b.data.as_slice())
        .unwrap_or(&[]);
    let mut off = 0;
    while off < data.len() {
        // SAFETY: pwrite from our buffer.
        let w = unsafe {
            libc::pwrite(
                n,
                data[off..].as_ptr() as *const libc::c_void,
                data.len() - off,
                off as i64,
            )
        };
        if w <= 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing our own fd.
            unsafe { libc::close(n) };
            return Err(format!("fd {fd}: writing its saved contents: {e}"));
        }
        off += w as usize;
    }
    // SAFETY: ftruncate our new file to the recorded size (sparse tail, if any).
    unsafe { libc::ftruncate(n, size as i64) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_and_deleted_round_trip() {
        // SAFETY: test fds.
        let m = unsafe { libc::memfd_create(c"hello".as_ptr(), libc::MFD_ALLOW_SEALING) };
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        // SAFETY: writes from our buffer.
        assert_eq!(
            unsafe { libc::write(m, payload.as_ptr() as *const _, payload.len()) },
            payload.len() as isize
        );
        // SAFETY: seals and an offset.
        unsafe {
            libc::fcntl(
                m,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            );
            libc::lseek(m, 1234, libc::SEEK_SET);
        }
        let path = std::env::temp_dir().join(format!("ckpt-deleted-{}", std::process::id()));
        std::fs::write(&path, b"gone but open").unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: test fd.
        let d = unsafe { libc::open(c.as_ptr(), libc::O_RDWR) };
        std::fs::remove_file(&path).unwrap();
        clear();
        let mut metas = Vec::new();
        for fd in [m, d] {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            // SAFETY: fstat into a zeroed buffer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::fstat(fd, &mut st) };
            let k = describe(fd, link.to_str().unwrap(), &st).unwrap();
            metas.push(ckpt_image::FdMeta {
                fd,
                // SAFETY: F_GETFL.
                flags: unsafe { libc::fcntl(fd, libc::F_GETFL) },
                cloexec: false,
                kind: k,
            });
        }
        assert!(
            matches!(&metas[0].kind, FdKind::Memfd { name, size: 100_000, offset: 1234, .. } if name == "hello")
        );
        assert!(matches!(&metas[1].kind, FdKind::Deleted { size: 13, .. }));
        let mut made = Vec::new();
        let n0 = open(m, &metas[0].kind, metas[0].flags, &mut made, 600).unwrap();
        let n1 = open(d, &metas[1].kind, metas[1].flags, &mut made, 600).unwrap();
        seal(&made, &metas).unwrap();
        // SAFETY: queries on the new fds.
        unsafe {
            assert_eq!(libc::lseek(n0, 0, libc::SEEK_CUR), 1234);
            assert_eq!(
                libc::fcntl(n0, libc::F_GET_SEALS),
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW
            );
        }
        let mut back = vec![0u8; 100_000];
        // SAFETY: pread into our buffer.
        assert_eq!(
            unsafe { libc::pread(n0, back.as_mut_ptr() as *mut _, back.len(), 0) },
            100_000
        );
        assert_eq!(back, payload);
        let mut b2 = [0u8; 32];
        // SAFETY: pread into our buffer.
        let r = unsafe { libc::pread(n1, b2.as_mut_ptr() as *mut _, 32, 0) };
        assert_eq!(&b2[..r as usize], b"gone but open");
        for fd in [m, d, n0, n1] {
            // SAFETY: closing test fds.
            unsafe { libc::close(fd) };
        }
        for (_, b) in made {
            // SAFETY: closing test fds.
            unsafe { libc::close(b) };
        }
        clear();
    }
}
