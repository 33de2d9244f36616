//! Pipes whose both ends are open in this process: the bytes in flight are drained at the
//! checkpoint (kept in the runtime's memory, hence in the image), put back right after the
//! snapshot, and put into a new pipe on restore, so the program reads every byte once.

use ckpt_image::{FdKind, FdMeta};

/// Bytes drained from one pipe.
#[derive(Clone, Debug, Default)]
pub struct PipeData {
    pub inode: u64,
    pub capacity: u64,
    pub data: Vec<u8>,
}

fn ends(fds: &[FdMeta], inode: u64, write: bool) -> Vec<i32> {
    fds.iter()
        .filter(|f| matches!(f.kind, FdKind::Pipe { inode: i, write_end: w, .. } if i == inode && w == write))
        .map(|f| f.fd)
        .collect()
}

fn inodes(fds: &[FdMeta]) -> Vec<u64> {
    let mut v: Vec<u64> = fds
        .iter()
        .filter_map(|f| match f.kind {
            FdKind::Pipe { inode, .. } => Some(inode),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Refuses pipes with an end outside this process.
pub fn check(fds: &[FdMeta]) -> Result<(), String> {
    for ino in inodes(fds) {
        let (r, w) = (ends(fds, ino, false), ends(fds, ino, true));
        let missing_ok = (!r.is_empty() || crate::tree::pipe_in_job(ino, false))
            && (!w.is_empty() || crate::tree::pipe_in_job(ino, true));
        if !missing_ok {
            let (fd, missing) = if r.is_empty() {
                (w[0], "read")
            } else {
                (r[0], "write")
            };
            return Err(format!(
                "fd {fd} is one end of pipe:[{ino}] whose {missing} end is held by no process of the job (a pipe to a process outside the job cannot be restored)"
            ));
        }
    }
    Ok(())
}

/// Reads everything buffered in each pipe (threads are parked, nobody else reads).
pub fn drain(fds: &mut [FdMeta]) -> Result<Vec<PipeData>, String> {
    let mut out = Vec::new();
    for ino in inodes(fds) {
        // Only a holder of a read end can drain; of several processes holding it, the
        // one that won the claim (see `tree::claim_pipes`).
        let Some(&rfd) = ends(fds, ino, false).first() else {
            continue;
        };
        if !crate::tree::drains(rfd) {
            continue;
        }
        // SAFETY: fcntl on an open fd of ours.
        let fl = unsafe { libc::fcntl(rfd, libc::F_GETFL) };
        // SAFETY: as above; the flag is put back below.
        unsafe { libc::fcntl(rfd, libc::F_SETFL, fl | libc::O_NONBLOCK) };
        let mut data = Vec::new();
        let mut buf = vec![0u8; 65536];
        let res = loop {
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::read(rfd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n > 0 {
                data.extend_from_slice(&buf[..n as usize]);
                continue;
            }
            if n == 0 {
                break Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break Ok(()),
                Some(libc::EINTR) => continue,
                _ => break Err(format!("draining pipe:[{ino}] (fd {rfd}): {e}")),
            }
        };
        // SAFETY: restore the description's flags.
        unsafe { libc::fcntl(rfd, libc::F_SETFL, fl) };
        res?;
        // SAFETY: F_GETPIPE_SZ on a pipe fd.
        let capacity = unsafe { libc::fcntl(rfd, libc::F_GETPIPE_SZ) }.max(0) as u64;
        for f in fds.iter_mut() {
            if let FdKind::Pipe {
                inode, buffered, ..
            } = &mut f.kind
            {
                if *inode == ino {
                    *buffered = data.len() as u64;
                }
            }
        }
        out.push(PipeData {
            inode: ino,
            capacity,
            data,
        });
    }
    Ok(out)
}

fn write_all(fd: i32, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        // SAFETY: writing from our buffer.
        let n = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("refilling a pipe (fd {fd}): {e}"));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Puts drained bytes back into the live pipes (after the snapshot).
pub fn refill(fds: &[FdMeta], pipes: &[PipeData]) -> Result<(), String> {
    for p in pipes {
        if p.data.is_empty() {
            continue;
        }
        let w = ends(fds, p.inode, true);
        if let Some(&fd) = w.first() {
            write_all(fd, &p.data)?;
        } else if let Some(&rfd) = ends(fds, p.inode, false).first() {
            // The write end is in another process: open the pipe for writing through
            // our read end.
            let path = std::ffi::CString::new(format!("/proc/self/fd/{rfd}")).unwrap();
            // SAFETY: open with a NUL-terminated path; closed below.
            let wfd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if wfd < 0 {
                return Err(format!(
                    "reopening pipe:[{}] for writing: {}",
                    p.inode,
                    std::io::Error::last_os_error()
                ));
            }
            let r = write_all(wfd, &p.data);
            // SAFETY: closing our temporary fd.
            unsafe { libc::close(wfd) };
            r?;
        }
    }
    Ok(())
}

/// After a restart: a new pipe per recorded pipe, filled with its bytes. Returns, per fd
/// number of a pipe end, the temporary fd holding the new end.
///
/// `inherited` lists pipes shared with other processes of a restored tree: `ckpt restart`
/// created them before forking, as (inode, read fd, write fd); they are used instead of a
/// new pipe.
pub fn recreate(
    fds: &[FdMeta],
    pipes: &[PipeData],
    min_fd: i32,
    inherited: &[(u64, i32, i32)],
) -> Result<Vec<(i32, i32)>, String> {
    let mut map = Vec::new();
    for ino in inodes(fds) {
        let mut p = [0i32; 2];
        if let Some(&(_, r, w)) = inherited.iter().find(|(i, _, _)| *i == ino) {
            // SAFETY: duplicating the inherited ends (the originals are closed by the caller).
            p = unsafe { [libc::dup(r), libc::dup(w)] };
            if p[0] < 0 || p[1] < 0 {
                return Err(format!(
                    "dup of an inherited pipe: {}",
                    std::io::Error::last_os_error()
                ));
            }
        // SAFETY: pipe2 into a local array.
        } else if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
        }
        let mut moved = [0i32; 2];
        for k in 0..2 {
            // SAFETY: moving the new fds above every number we must restore.
            moved[k] = unsafe { libc::fcntl(p[k], libc::F_DUPFD_CLOEXEC, min_fd) };
            // SAFETY: closing the original number.
            unsafe { libc::close(p[k]) };
            if moved[k] < 0 {
                return Err(format!("F_DUPFD: {}", std::io::Error::last_os_error()));
            }
        }
        let data = pipes.iter().find(|d| d.inode == ino);
        if let Some(d) = data {
            if d.capacity > 0 {
                // SAFETY: F_SETPIPE_SZ on our new pipe (may fail above the user limit).
                unsafe { libc::fcntl(moved[1], libc::F_SETPIPE_SZ, d.capacity as libc::c_int) };
            }
            write_all(moved[1], &d.data)?;
        }
        let (r, w) = (ends(fds, ino, false), ends(fds, ino, true));
        // An end this process does not hold (the pipe is shared with another process of a
        // restored tree) must not stay open here: the reader would never see end-of-file.
        for (k, held) in [(0, &r), (1, &w)] {
            if held.is_empty() {
                // SAFETY: closing our temporary copy of an end we do not hold.
                unsafe { libc::close(moved[k]) };
            }
        }
        for fd in r {
            map.push((fd, moved[0]));
        }
        for fd in w {
            map.push((fd, moved[1]));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(fd: i32, ino: u64, w: bool) -> FdMeta {
        FdMeta {
            fd,
            flags: if w { libc::O_WRONLY } else { libc::O_RDONLY },
            cloexec: false,
            kind: FdKind::Pipe {
                inode: ino,
                write_end: w,
                capacity: 0,
                buffered: 0,
            },
        }
    }

    #[test]
    fn drain_refill_and_recreate_keep_every_byte_once() {
        let mut p = [0i32; 2];
        // SAFETY: creating a test pipe.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        write_all(p[1], b"hello pipe").unwrap();
        let mut fds = vec![meta(p[0], 7, false), meta(p[1], 7, true)];
        check(&fds).unwrap();
        let d = drain(&mut fds).unwrap();
        assert_eq!(d[0].data, b"hello pipe");
        assert!(matches!(fds[0].kind, FdKind::Pipe { buffered: 10, .. }));
        refill(&fds, &d).unwrap();
        let mut buf = [0u8; 32];
        // SAFETY: reading the refilled bytes back.
        let n = unsafe { libc::read(p[0], buf.as_mut_ptr() as *mut libc::c_void, 32) };
        assert_eq!(&buf[..n as usize], b"hello pipe");
        let map = recreate(&fds, &d, 100, &[]).unwrap();
        let (_, newr) = map.iter().find(|(fd, _)| *fd == p[0]).copied().unwrap();
        // SAFETY: reading from the recreated pipe.
        let n = unsafe { libc::read(newr, buf.as_mut_ptr() as *mut libc::c_void, 32) };
        assert_eq!(&buf[..n as usize], b"hello pipe");
        for (_, t) in map {
            // SAFETY: closing test fds.
            unsafe { libc::close(t) };
        }
        // SAFETY: closing test fds.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }

    #[test]
    fn one_ended_pipe_is_refused() {
        let fds = vec![meta(5, 9, false)];
        let e = check(&fds).unwrap_err();
        assert!(e.contains("fd 5") && e.contains("write end"), "{e}");
    }
}
