//! File descriptors: what each open fd is at checkpoint time, and reopening them after a
//! restart at the same numbers, flags and offsets.

use ckpt_image::{FdKind, FdMeta};
use std::ffi::CString;

/// Devices reopened by path. `/dev/tty` is the controlling terminal: after a restart, the
/// restarting command's (bash keeps one open as fd 255).
const DEVICES: &[&str] = &[
    "/dev/tty",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// Describes every fd of the process except `skip` (the runtime's own). `Err` names an fd
/// that cannot be checkpointed yet. Contents of memfds and deleted files and the locks held
/// are saved in the runtime's memory on the way (see `memfd`, `locks`).
/// `CKPT_SKIP_UNSUPPORTED=1` (`ckpt launch --skip-unsupported`): a descriptor that cannot be
/// checkpointed is left out (restored as /dev/null) with a warning instead of refusing.
pub static SKIP_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn dump(skip: &[i32]) -> Result<Vec<FdMeta>, String> {
    let mut fds = crate::sys::list_numeric_dir("/proc/self/fd")
        .map_err(|e| format!("listing /proc/self/fd: {e}"))?;
    fds.sort_unstable();
    crate::memfd::clear();
    let mut out: Vec<FdMeta> = Vec::new();
    // (fd, dev, ino) of every fd described so far, to find shared descriptions.
    let mut seen: Vec<(i32, u64, u64)> = Vec::new();
    for fd in fds {
        if skip.contains(&fd) {
            continue;
        }
        // SAFETY: fstat into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        let is_pipe = st.st_mode & libc::S_IFMT == libc::S_IFIFO;
        if let Some(&(of, _, _)) = seen
            .iter()
            .find(|(o, d, i)| *d == st.st_dev && *i == st.st_ino && same_description(*o, fd))
        {
            // Pipe ends inside the process are matched by inode in `pipes`; a pipe fd
            // sharing the description of an inherited fd (e.g. `exec 3>&1`) is a Dup.
            let of_inherited = out
                .iter()
                .any(|m| m.fd == of && matches!(m.kind, FdKind::Inherited));
            if fd > 2 && (!is_pipe || of_inherited) {
                // SAFETY: F_GETFD on an open fd.
                let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                // SAFETY: as above.
                let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                if fl >= 0 {
                    out.push(FdMeta {
                        fd,
                        flags: fl,
                        cloexec: fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
                        kind: FdKind::Dup { of },
                    });
                    continue;
                }
            }
        }
        match describe_in(fd, skip) {
            Ok(Some(m)) => {
                seen.push((fd, st.st_dev, st.st_ino));
                out.push(m);
            }
            Ok(None) => {}
            Err(e) if SKIP_UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed) => {
                // The user asked for it (`ckpt launch --skip-unsupported`): the fd is left
                // out of the image and comes back as /dev/null, with a warning.
                crate::warn!("{e}: skipped (--skip-unsupported); it is /dev/null after a restart");
                // SAFETY: F_GETFD on an open fd.
                let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                out.push(FdMeta {
                    fd,
                    flags: libc::O_RDWR,
                    cloexec: fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
                    kind: FdKind::Device {
                        path: "/dev/null".into(),
                    },
                });
            }
            Err(e) => return Err(e),
        }
    }
    crate::pipes::check(&out)?;
    crate::locks::dump(&out)?;
    Ok(out)
}

/// Whether two fds share one open file description (kcmp; without it — kernels built
/// without CONFIG_KCMP, or seccomp — every fd is its own description, as before).
fn same_description(a: i32, b: i32) -> bool {
    let pid = crate::sys::getpid_real() as u64;
    // SAFETY: kcmp(pid, pid, KCMP_FILE, a, b) compares two of our own fds.
    let r = unsafe { crate::sys::syscall6(libc::SYS_kcmp, pid, pid, 0, a as u64, b as u64, 0) };
    r == 0
}

/// The text of /proc/self/fdinfo/<fd> (empty if unreadable).
pub fn fdinfo(fd: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default()
}

/// Describes one fd (`None` if it was closed meanwhile).
#[allow(dead_code)]
pub fn describe(fd: i32) -> Result<Option<FdMeta>, String> {
    describe_in(fd, &[])
}

fn describe_in(fd: i32, skip: &[i32]) -> Result<Option<FdMeta>, String> {
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
    // The root process's stdin/stdout/stderr are the restarting command's; another
    // process of a tree keeps what it had (a pipe to its neighbour in a pipeline, a file),
    // unless that cannot be restored (a terminal): then it inherits too.
    if fd <= 2 {
        if !crate::tree::is_root() {
            if let Ok(Some(m)) = classify(fd, fl, cloexec, skip) {
                // A pipe to outside the job (the terminal's pipe of the shell that ran
                // the job) comes from the restarting command, through the root.
                let outside = matches!(m.kind, FdKind::Pipe { inode, write_end, .. } if !crate::tree::pipe_in_job(inode, !write_end));
                if !outside {
                    return Ok(Some(m));
                }
            }
        }
        return Ok(Some(FdMeta {
            fd,
            flags: fl,
            cloexec,
            kind: FdKind::Inherited,
        }));
    }
    classify(fd, fl, cloexec, skip)
}

fn classify(fd: i32, fl: i32, cloexec: bool, skip: &[i32]) -> Result<Option<FdMeta>, String> {
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
    let deleted = link.ends_with(" (deleted)");
    let kind = if fl & libc::O_PATH != 0 && link.starts_with('/') && !deleted {
        FdKind::Path { path: link }
    } else if let Some(what) = link.strip_prefix("anon_inode:") {
        let info = fdinfo(fd);
        match what {
            "[eventfd]" => crate::eventfd::describe(fd, &info)?,
            "[timerfd]" => crate::timerfd::describe(fd, &info)?,
            "[signalfd]" => crate::signalfd::describe(fd, &info)?,
            "[eventpoll]" => crate::epoll::describe(fd, &info, skip)?,
            "inotify" => crate::inotify::describe(fd, &info)?,
            "[pidfd]" => crate::vids::describe_pidfd(fd, &info)?,
            _ => {
                return Err(format!(
                    "fd {fd} ({link}) is a special file of a kind not supported (userfaultfd, perf, bpf, io_uring, pidfd, fanotify... cannot be checkpointed)"
                ))
            }
        }
    } else if fmt == libc::S_IFREG
        && (link.starts_with("/memfd:") || (deleted && link.starts_with('/')))
    {
        crate::memfd::describe(fd, &link, &st)?
    } else if fmt == libc::S_IFREG && link.starts_with('/') && !deleted {
        // SAFETY: lseek on a regular file fd.
        let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        proc_of_job(fd, &link)?;
        FdKind::Regular {
            path: proc_self_path(&link),
            offset: off.max(0) as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            content: if fl & libc::O_ACCMODE == libc::O_RDONLY && (st.st_size as u64) <= DIGEST_MAX
            {
                digest(fd, st.st_size as u64)
            } else {
                None
            },
        }
    } else if fmt == libc::S_IFDIR && link.starts_with('/') {
        proc_of_job(fd, &link)?;
        FdKind::Directory {
            path: proc_self_path(&link),
        }
    } else if crate::tty::is_pty(&st, &link) {
        crate::tty::describe(fd, &link, &st)?
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
    } else if fmt == libc::S_IFIFO && link.starts_with('/') && !deleted {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD into an int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if queued > 0 {
            return Err(format!("fd {fd} is the FIFO {link} with {queued} bytes in it (data in named pipes is not kept yet)"));
        }
        FdKind::Fifo { path: link }
    } else if fmt == libc::S_IFSOCK {
        crate::sockets::describe(fd, st.st_ino)?
    } else {
        let what = if link.ends_with(" (deleted)") {
            "a deleted file that is not a regular file"
        } else if fmt == libc::S_IFCHR {
            "a character device other than tty/null/zero/full/random/urandom or a pseudo-terminal"
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

/// A descriptor on `/proc/<pid>/...` of *another* process of the job cannot be reopened
/// after a restart before the tree's new pids are known: refused.
fn proc_of_job(fd: i32, link: &str) -> Result<(), String> {
    let Some(rest) = link.strip_prefix("/proc/") else {
        return Ok(());
    };
    let num: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(pid) = num.parse::<i32>() else {
        return Ok(());
    };
    if pid != crate::sys::getpid_real() && crate::process::runs_runtime(pid) {
        return Err(format!(
            "fd {fd} is open on {link}, a /proc directory of another process of the job (vpid {}): such descriptors cannot be reopened after a restart; open them again when needed (paths opened by name are translated)",
            crate::vids::virtual_of(pid)
        ));
    }
    Ok(())
}

/// `/proc/<our pid>/...` becomes `/proc/self/...`: the pid changes with a restart.
fn proc_self_path(p: &str) -> String {
    let pid = crate::sys::getpid_real().to_string();
    match p
        .strip_prefix("/proc/")
        .and_then(|r| r.strip_prefix(pid.as_str()))
    {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/proc/self{rest}"),
        _ => p.to_string(),
    }
}

/// Reopens the fds after a restart. Fds 0-2 are the restarting command's (inherited).
/// Every new descriptor is first created above all recorded numbers, then moved into
/// place, so that no step can clobber a descriptor restored before it. Then: fds sharing a
/// description are dup'd, epoll registrations re-added (their targets are all in place),
/// memfd seals added, and, once every temporary descriptor is closed, locks taken again.
pub fn restore(
    fds: &[FdMeta],
    pipes: &[crate::pipes::PipeData],
    inherited_pipes: &[(u64, i32, i32)],
    inherited_sockets: &[(u64, i32)],
    inherited_ptys: &[(u32, i32, i32)],
) -> Result<(), String> {
    let min_fd = fds.iter().map(|f| f.fd).max().unwrap_or(2).max(9) + 1;
    let mut temps: Vec<(i32, i32)> = crate::pipes::recreate(fds, pipes, min_fd, inherited_pipes)?;
    let mut made: Vec<(u64, i32)> = Vec::new();
    let result = (|| {
        for f in fds {
            let nfd = match &f.kind {
                FdKind::Inherited | FdKind::Pipe { .. } | FdKind::Dup { .. } => continue,
                FdKind::Regular { path, .. }
                | FdKind::Directory { path }
                | FdKind::Device { path }
                | FdKind::Path { path } => open_like(f, path)?,
                FdKind::EventFd { count, semaphore } => {
                    crate::eventfd::create(f.fd, *count, *semaphore, f.flags)?
                }
                FdKind::TimerFd { .. } => crate::timerfd::create(f.fd, &f.kind, f.flags)?,
                FdKind::SignalFd { mask } => crate::signalfd::create(f.fd, *mask, f.flags)?,
                FdKind::Epoll { .. } => crate::epoll::create(f.fd)?,
                FdKind::Inotify { watches } => crate::inotify::create(f.fd, watches, f.flags)?,
                FdKind::Socket { .. } => crate::sockets::create(&f.kind, inherited_sockets)?,
                FdKind::Fifo { path } => open_fifo(f, path)?,
                FdKind::Pty { index, master, .. } => {
                    let Some(&(_, m, s)) = inherited_ptys.iter().find(|(i, _, _)| i == index)
                    else {
                        return Err(format!("fd {}: no new pair for pty {index}", f.fd));
                    };
                    // SAFETY: a new descriptor of the new pair's side.
                    let n = unsafe {
                        libc::fcntl(if *master { m } else { s }, libc::F_DUPFD_CLOEXEC, 0)
                    };
                    if n < 0 {
                        return Err(format!(
                            "fd {}: dup of pty {index}: {}",
                            f.fd,
                            std::io::Error::last_os_error()
                        ));
                    }
                    n
                }
                FdKind::Memfd { .. } | FdKind::Deleted { .. } => {
                    crate::memfd::open(f.fd, &f.kind, f.flags, &mut made, min_fd)?
                }
                // Holds the number until the tree's pids are known (`vids::reopen_pidfds`).
                FdKind::PidFd { .. } => open_like(f, "/dev/null")?,
            };
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
                FdKind::Pipe { .. } | FdKind::Pty { .. } => {
                    // SAFETY: status flags (O_NONBLOCK) of the pipe end or pty side.
                    unsafe { libc::fcntl(f.fd, libc::F_SETFL, f.flags & libc::O_NONBLOCK) };
                }
                _ => {}
            }
        }
        for f in fds {
            if let FdKind::Dup { of } = f.kind {
                // SAFETY: dup3 of a restored fd onto the recorded number.
                if unsafe { libc::dup3(of, f.fd, if f.cloexec { libc::O_CLOEXEC } else { 0 }) } < 0
                {
                    return Err(format!(
                        "fd {} (same file as fd {of}): dup3 failed: {}",
                        f.fd,
                        std::io::Error::last_os_error()
                    ));
                }
            }
        }
        for f in fds {
            if let FdKind::Epoll { targets } = &f.kind {
                crate::epoll::add_targets(f.fd, targets)?;
            }
        }
        crate::memfd::seal(&made, fds)
    })();
    for (_, t) in &temps {
        // SAFETY: closing our temporaries (the recorded numbers hold their own dups).
        unsafe { libc::close(*t) };
    }
    for (_, b) in &made {
        // SAFETY: closing the memfds/files we created (the fds hold their own opens).
        unsafe { libc::close(*b) };
    }
    crate::memfd::clear();
    result?;
    crate::locks::restore()
}

/// Opens a FIFO again without blocking for a peer: a reader with O_NONBLOCK (then the
/// recorded status flags), a writer read-write (a write-only open would fail without a
/// reader).
fn open_fifo(f: &FdMeta, path: &str) -> Result<i32, String> {
    let c = CString::new(path).map_err(|_| format!("fd {}: bad path", f.fd))?;
    let mode = if f.flags & libc::O_ACCMODE == libc::O_RDONLY {
        libc::O_RDONLY
    } else {
        libc::O_RDWR
    };
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), mode | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "fd {}: cannot reopen the FIFO {path}: {}",
            f.fd,
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the recorded status flags (O_NONBLOCK or not) on our fd.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            f.flags & (libc::O_NONBLOCK | libc::O_APPEND),
        )
    };
    Ok(fd)
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
    if let (
        FdKind::Regular {
            dev, ino, content, ..
        },
        false,
    ) = (&f.kind, path.starts_with("/proc/"))
    {
        // SAFETY: fstat into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(nfd, &mut st) };
        if (st.st_dev != *dev || st.st_ino != *ino) && !rewritten_tmpfs(path, st.st_ino) {
            let same_content =
                content.is_some_and(|(size, h)| digest(nfd, st.st_size as u64) == Some((size, h)));
            if !same_content {
                // SAFETY: closing our own fd.
                unsafe { libc::close(nfd) };
                return Err(format!(
                    "fd {}: {} is not the same file as at checkpoint time (replaced{}); put the original back or restart from a checkpoint taken with this file",
                    f.fd,
                    path,
                    if content.is_some() {
                        ", with other content"
                    } else {
                        "?"
                    }
                ));
            }
            crate::log::emit(
                3,
                &format!(
                    "fd {}: {} was replaced by a file with the same content; using it",
                    f.fd, path
                ),
            );
        }
    }
    Ok(nfd)
}

/// Read-only files up to this size get a content digest (see `FdKind::Regular::content`).
const DIGEST_MAX: u64 = 1 << 20;

/// (size, xxh3) of the first `size` bytes of `fd`, read with pread (the offset is kept);
/// None when the file is larger than [`DIGEST_MAX`] or cannot be read whole.
fn digest(fd: i32, size: u64) -> Option<(u64, u64)> {
    if size > DIGEST_MAX {
        return None;
    }
    let mut buf = vec![0u8; size as usize];
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: pread into the unfilled tail of our own buffer.
        let n = unsafe {
            libc::pread(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
                got as libc::off_t,
            )
        };
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Some((size, ckpt_image::incremental::page_hash(&buf)))
}

/// Whether `path` is a tmpfs file that `ckpt restart` wrote back from the image (then it
/// may be a new inode): this process maps that very file again.
fn rewritten_tmpfs(path: &str, ino: u64) -> bool {
    crate::memory::on_tmpfs(path)
        && std::fs::read_to_string("/proc/self/maps")
            .map(|m| {
                crate::memory::parse_maps(&m)
                    .iter()
                    .any(|e| e.shared && e.ino == ino && e.name == path)
            })
            .unwrap_or(false)
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
        restore(std::slice::from_ref(&me), &[], &[], &[], &[]).unwrap();
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

    /// A read-only file replaced by an identical copy (as Slurm writes a requeued job's
    /// batch script again) is accepted; one with other content is refused by name.
    #[test]
    fn replaced_file_accepted_only_with_the_same_content() {
        let dir = std::env::temp_dir().join(format!("ckpt-files-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("script.sh");
        std::fs::write(&path, b"#!/bin/bash\necho one\necho two\n").unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        f.seek(SeekFrom::Start(12)).unwrap();
        let fd = f.as_raw_fd();
        let me = describe(fd).unwrap().expect("fd open");
        assert!(
            matches!(
                me.kind,
                FdKind::Regular {
                    content: Some((30, _)),
                    ..
                }
            ),
            "{:?}",
            me.kind
        );
        drop(f);
        // Replacements are written beside and renamed over the file, so that each is a new
        // inode while the old one still exists (a removed inode number may be reused).
        let mut n = 0;
        let mut replace = |bytes: &[u8]| {
            n += 1;
            std::fs::hard_link(&path, dir.join(format!("old{n}"))).unwrap();
            let tmp = dir.join("script.sh.new");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        // replaced (new inode), same bytes: accepted, offset kept
        replace(b"#!/bin/bash\necho one\necho two\n");
        restore(std::slice::from_ref(&me), &[], &[], &[], &[]).unwrap();
        // SAFETY: querying the restored fd.
        assert_eq!(unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }, 12);
        // SAFETY: closing the fd restore opened.
        unsafe { libc::close(fd) };
        // replaced with other content: refused, naming the file
        replace(b"#!/bin/bash\necho ONE\necho two\n");
        let e = restore(std::slice::from_ref(&me), &[], &[], &[], &[]).unwrap_err();
        assert!(
            e.contains("script.sh") && e.contains("other content"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
