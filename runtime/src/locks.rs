//! Advisory locks held by the process: flock, OFD and POSIX (fcntl) locks, read from the
//! `lock:` lines of /proc/self/fdinfo and taken again on restore, once every fd is back
//! (and after the restore's temporary descriptors are closed: closing any descriptor of a
//! file drops the process's POSIX locks on it). A lock another process took meanwhile
//! fails the restart with a message naming the fd, the file and the range. Leases and
//! delegations are refused at checkpoint time.

use ckpt_image::{FdKind, FdMeta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockKind {
    Flock,
    Ofd,
    Posix,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub fd: i32,
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Inclusive end; None = to the end of the file.
    pub end: Option<u64>,
    /// The file, as dev:ino text from fdinfo (POSIX locks are per process and per file).
    pub file: String,
}

static mut LOCKS: Vec<Lock> = Vec::new();

fn locks() -> &'static mut Vec<Lock> {
    // SAFETY: only the checkpoint thread uses LOCKS.
    unsafe { &mut *std::ptr::addr_of_mut!(LOCKS) }
}

/// Parses the `lock:` lines of one fd's fdinfo.
pub fn parse(fd: i32, fdinfo: &str) -> Result<Vec<Lock>, String> {
    let mut out = Vec::new();
    for l in fdinfo.lines() {
        let Some(rest) = l.strip_prefix("lock:") else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        // "1:" TYPE ADVISORY|MANDATORY READ|WRITE PID MAJ:MIN:INO START END
        if w.len() < 8 || w[1] == "->" {
            continue;
        }
        let kind = match w[1] {
            "FLOCK" => LockKind::Flock,
            "OFDLCK" => LockKind::Ofd,
            "POSIX" => LockKind::Posix,
            other => {
                return Err(format!(
                    "fd {fd} holds a {other} (leases and delegations cannot be checkpointed)"
                ))
            }
        };
        let write = match w[3] {
            "WRITE" => true,
            "READ" => false,
            other => return Err(format!("fd {fd}: lock of unknown mode {other}")),
        };
        let start = w[6]
            .parse()
            .map_err(|_| format!("fd {fd}: bad lock line {l:?}"))?;
        let end = if w[7] == "EOF" {
            None
        } else {
            Some(
                w[7].parse()
                    .map_err(|_| format!("fd {fd}: bad lock line {l:?}"))?,
            )
        };
        out.push(Lock {
            fd,
            kind,
            write,
            start,
            end,
            file: w[5].to_string(),
        });
    }
    Ok(out)
}

/// Records the locks of every fd (Dup fds share their description's locks; POSIX locks
/// once per file and range).
pub fn dump(fds: &[FdMeta]) -> Result<(), String> {
    let mut all: Vec<Lock> = Vec::new();
    for f in fds {
        if matches!(f.kind, FdKind::Dup { .. } | FdKind::Inherited) {
            continue;
        }
        let info = crate::files::fdinfo(f.fd);
        if !info.contains("lock:") {
            continue;
        }
        for l in parse(f.fd, &info)? {
            let dup = all.iter().any(|o| {
                o.kind == l.kind
                    && o.file == l.file
                    && o.start == l.start
                    && o.end == l.end
                    && (l.kind == LockKind::Posix || o.fd == l.fd)
            });
            if !dup {
                all.push(l);
            }
        }
    }
    *locks() = all;
    Ok(())
}

/// Takes every recorded lock again (fds are at their numbers).
pub fn restore() -> Result<(), String> {
    take(locks())
}

pub fn take(v: &[Lock]) -> Result<(), String> {
    for l in v {
        let r = match l.kind {
            LockKind::Flock => {
                let op = if l.write {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                };
                // SAFETY: flock on a restored fd.
                unsafe { libc::flock(l.fd, op | libc::LOCK_NB) }
            }
            LockKind::Ofd | LockKind::Posix => {
                // SAFETY: a zeroed struct flock, then filled.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = if l.write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                } as i16;
                fl.l_whence = libc::SEEK_SET as i16;
                fl.l_start = l.start as i64;
                fl.l_len = l.end.map(|e| (e - l.start + 1) as i64).unwrap_or(0);
                let cmd = if l.kind == LockKind::Ofd {
                    libc::F_OFD_SETLK
                } else {
                    libc::F_SETLK
                };
                // SAFETY: fcntl lock request with a local struct flock.
                unsafe { libc::fcntl(l.fd, cmd, &fl) }
            }
        };
        if r != 0 {
            let path = std::fs::read_link(format!("/proc/self/fd/{}", l.fd))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(format!(
                "fd {} ({path}): cannot take its {:?} {} lock on bytes {}..{} again: {} (another process holds it now?)",
                l.fd,
                l.kind,
                if l.write { "write" } else { "read" },
                l.start,
                l.end.map(|e| e.to_string()).unwrap_or_else(|| "EOF".into()),
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_round_trip() {
        let dir = std::env::temp_dir().join(format!("ckpt-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let open = |n: &str| {
            let c = std::ffi::CString::new(dir.join(n).to_str().unwrap()).unwrap();
            // SAFETY: test fd, moved to a high number other tests running in parallel
            // do not reuse.
            unsafe {
                let t = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
                let h = libc::fcntl(t, libc::F_DUPFD, 700);
                libc::close(t);
                h
            }
        };
        let (a, b, c) = (open("a"), open("b"), open("c"));
        // SAFETY: test locks.
        unsafe {
            assert_eq!(libc::flock(a, libc::LOCK_SH), 0);
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_WRLCK as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = 10;
            fl.l_len = 5;
            assert_eq!(libc::fcntl(b, libc::F_SETLK, &fl), 0);
            fl.l_len = 0;
            fl.l_type = libc::F_RDLCK as i16;
            assert_eq!(libc::fcntl(c, libc::F_OFD_SETLK, &fl), 0);
        }
        let mut got = Vec::new();
        for fd in [a, b, c] {
            got.extend(parse(fd, &crate::files::fdinfo(fd)).unwrap());
        }
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].kind.clone(), got[0].write),
            (LockKind::Flock, false)
        );
        assert_eq!(
            (got[1].kind.clone(), got[1].start, got[1].end),
            (LockKind::Posix, 10, Some(14))
        );
        assert_eq!((got[2].kind.clone(), got[2].end), (LockKind::Ofd, None));
        // Drop them (close), reopen at the same numbers, take them again.
        for (fd, n) in [(a, "a"), (b, "b"), (c, "c")] {
            // SAFETY: test fds.
            unsafe {
                libc::close(fd);
                let c = std::ffi::CString::new(dir.join(n).to_str().unwrap()).unwrap();
                let t = libc::open(c.as_ptr(), libc::O_RDWR);
                libc::dup2(t, fd);
                libc::close(t);
            }
        }
        assert!(parse(b, &crate::files::fdinfo(b)).unwrap().is_empty());
        take(&got).unwrap();
        let mut again = Vec::new();
        for fd in [a, b, c] {
            again.extend(parse(fd, &crate::files::fdinfo(fd)).unwrap());
        }
        let strip = |v: &[Lock]| {
            v.iter()
                .map(|l| (l.fd, l.kind.clone(), l.write, l.start, l.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&again), strip(&got));
        for fd in [a, b, c] {
            // SAFETY: closing test fds.
            unsafe { libc::close(fd) };
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
