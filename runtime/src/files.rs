//! File descriptors: what each open fd is at checkpoint time, and reopening them after a
//! restart at the same numbers, flags and offsets.

use ckpt_image::{FdKind, FdMeta};
use std::ffi::CString;

const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Describes every fd of the process except `skip` (the runtime's own). `Err` names an fd
/// that cannot be checkpointed yet.
pub fn dump(skip: &[i32]) -> Result<Vec<FdMeta>, String> {
    let fds = crate::sys::list_numeric_dir("/proc/self/fd")
        .map_err(|e| format!("listing /proc/self/fd: {e}"))?;
    let mut out = Vec::new();
    for fd in fds {
        if skip.contains(&fd) {
            continue;
        }
        if let Some(m) = describe(fd)? {
            out.push(m);
        }
    }
    crate::pipes::check(&out)?;
    Ok(out)
}

/// Describes one fd (`None` if it was closed meanwhile).
pub fn describe(fd: i32) -> Result<Option<FdMeta>, String> {
    // SAFETY: fcntl on an fd number; failure (closed meanwhile) is handled.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    if fl < 0 {
        return Ok(None);
    }
    let cloexec = fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0;
    if fd <= 2 {
        return Ok(Some(FdMeta {
            fd,
            flags: fl,
            cloexec,
            kind: FdKind::Inherited,
        }));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Ok(None);
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = if fmt == libc::S_IFREG && link.starts_with('/') && !link.ends_with(" (deleted)") {
        // SAFETY: lseek on a regular file fd.
        let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        FdKind::Regular {
            path: link,
            offset: off.max(0) as u64,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    } else if fmt == libc::S_IFDIR && link.starts_with('/') {
        FdKind::Directory { path: link }
    } else if fmt == libc::S_IFCHR && DEVICES.contains(&link.as_str()) {
        FdKind::Device { path: link }
    } else if fmt == libc::S_IFIFO && link.starts_with("pipe:") {
        // SAFETY: F_GETPIPE_SZ on a pipe fd.
        let cap = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) }.max(0) as u64;
        FdKind::Pipe {
            inode: st.st_ino,
            write_end: fl & libc::O_ACCMODE == libc::O_WRONLY,
            capacity: cap,
            buffered: 0,
        }
    } else {
        let what = if link.starts_with("socket:") {
            "a socket (sockets come with process-tree support)"
        } else if link.starts_with("anon_inode:") {
            "a special file (eventfd/timerfd/epoll/signalfd/inotify are not supported yet)"
        } else if link.ends_with(" (deleted)") {
            "a deleted file (not supported yet)"
        } else if fmt == libc::S_IFCHR {
            "a character device other than null/zero/full/random/urandom (terminals are supported on fds 0-2 only)"
        } else {
            "a kind of file not supported yet"
        };
        return Err(format!("fd {fd} ({link}) is {what}"));
    };
    Ok(Some(FdMeta {
        fd,
        flags: fl,
        cloexec,
        kind,
    }))
}

/// Reopens the fds after a restart. Fds 0-2 are the restarting command's (inherited).
/// Every new descriptor is first created above all recorded numbers, then moved into
/// place, so that no step can clobber a descriptor restored before it.
pub fn restore(fds: &[FdMeta], pipes: &[crate::pipes::PipeData]) -> Result<(), String> {
    let min_fd = fds.iter().map(|f| f.fd).max().unwrap_or(2).max(9) + 1;
    let mut temps: Vec<(i32, i32)> = crate::pipes::recreate(fds, pipes, min_fd)?;
    let result = (|| {
        for f in fds {
            let path = match &f.kind {
                FdKind::Inherited | FdKind::Pipe { .. } => continue,
                FdKind::Regular { path, .. }
                | FdKind::Directory { path }
                | FdKind::Device { path } => path,
            };
            let nfd = open_like(f, path)?;
            // SAFETY: moving our new fd above every recorded number.
            let t = unsafe { libc::fcntl(nfd, libc::F_DUPFD_CLOEXEC, min_fd) };
            // SAFETY: closing the original number.
            unsafe { libc::close(nfd) };
            if t < 0 {
                return Err(format!(
                    "fd {}: F_DUPFD: {}",
                    f.fd,
                    std::io::Error::last_os_error()
                ));
            }
            temps.push((f.fd, t));
        }
        for f in fds {
            let Some(&(_, t)) = temps.iter().find(|(fd, _)| *fd == f.fd) else {
                continue;
            };
            // SAFETY: dup3 onto the recorded number (free: the restorer closed its own fds).
            if unsafe { libc::dup3(t, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }) } < 0 {
                return Err(format!(
                    "fd {}: dup3 failed: {}",
                    f.fd,
                    std::io::Error::last_os_error()
                ));
            }
            match &f.kind {
                FdKind::Regular { offset, .. } => {
                    // SAFETY: lseek on the reopened regular file.
                    unsafe { libc::lseek(f.fd, *offset as i64, libc::SEEK_SET) };
                }
                FdKind::Pipe { .. } => {
                    // SAFETY: status flags (O_NONBLOCK) of the pipe end.
                    unsafe { libc::fcntl(f.fd, libc::F_SETFL, f.flags & libc::O_NONBLOCK) };
                }
                _ => {}
            }
        }
        Ok(())
    })();
    for (_, t) in &temps {
        // SAFETY: closing our temporaries (the recorded numbers hold their own dups).
        unsafe { libc::close(*t) };
    }
    result
}

fn open_like(f: &FdMeta, path: &str) -> Result<i32, String> {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_DIRECT
        | libc::O_NOATIME
        | libc::O_DIRECTORY
        | libc::O_PATH
        | libc::O_LARGEFILE;
    let flags = (f.flags & keep) | libc::O_CLOEXEC;
    let c = CString::new(path).map_err(|_| format!("fd {}: bad path", f.fd))?;
    // SAFETY: open with a NUL-terminated path.
    let nfd = unsafe { libc::open(c.as_ptr(), flags) };
    if nfd < 0 {
        return Err(format!(
            "fd {}: cannot reopen {}: {}",
            f.fd,
            path,
            std::io::Error::last_os_error()
        ));
    }
    if let FdKind::Regular { dev, ino, .. } = &f.kind {
        // SAFETY: fstat into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(nfd, &mut st) };
        if st.st_dev != *dev || st.st_ino != *ino {
            // SAFETY: closing our own fd.
            unsafe { libc::close(nfd) };
            return Err(format!(
                "fd {}: {} is not the same file as at checkpoint time (replaced?)",
                f.fd, path
            ));
        }
    }
    Ok(nfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn dump_and_restore_regular_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("ckpt-files-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.txt");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .unwrap();
        f.write_all(b"hello world").unwrap();
        f.seek(SeekFrom::Start(3)).unwrap();
        let fd = f.as_raw_fd();
        let me = describe(fd).unwrap().expect("fd open");
        match &me.kind {
            FdKind::Regular {
                offset, path: p, ..
            } => {
                assert_eq!(*offset, 3);
                assert_eq!(p, path.to_str().unwrap());
            }
            k => panic!("unexpected kind {k:?}"),
        }
        assert!(me.flags & libc::O_APPEND != 0);
        drop(f); // fd is closed; restore must bring it back at the same number
        restore(std::slice::from_ref(&me), &[]).unwrap();
        // SAFETY: querying the restored fd.
        let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        assert_eq!(off, 3);
        // SAFETY: as above.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(fl & libc::O_APPEND != 0);
        // SAFETY: closing the fd restore opened.
        unsafe { libc::close(fd) };
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
