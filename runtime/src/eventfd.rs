//! eventfd: the counter and EFD_SEMAPHORE mode come from /proc/self/fdinfo (reading the fd
//! would consume the counter); restored by creating an eventfd and writing the counter.

use ckpt_image::FdKind;

/// `fdinfo` is the text of /proc/self/fdinfo/<fd>.
pub fn describe(fd: i32, fdinfo: &str) -> Result<FdKind, String> {
    let mut count = None;
    let mut semaphore = false;
    for l in fdinfo.lines() {
        if let Some(v) = l.strip_prefix("eventfd-count:") {
            count = u64::from_str_radix(v.trim(), 16).ok();
        } else if let Some(v) = l.strip_prefix("eventfd-semaphore:") {
            semaphore = v.trim() == "1";
        }
    }
    let count = count.ok_or_else(|| format!("fd {fd} (eventfd): no counter in its fdinfo"))?;
    if !fdinfo.contains("eventfd-semaphore:") {
        // Kernels before 6.7 do not show the mode: refuse rather than guess.
        return Err(format!(
            "fd {fd} is an eventfd but this kernel does not show its semaphore mode in /proc/self/fdinfo (needs Linux 6.7 or later)"
        ));
    }
    Ok(FdKind::EventFd { count, semaphore })
}

/// A new eventfd with the recorded counter and mode; `flags` are the fd's status flags.
pub fn create(fd: i32, count: u64, semaphore: bool, flags: i32) -> Result<i32, String> {
    let mut f = libc::EFD_CLOEXEC;
    if semaphore {
        f |= libc::EFD_SEMAPHORE;
    }
    if flags & libc::O_NONBLOCK != 0 {
        f |= libc::EFD_NONBLOCK;
    }
    // SAFETY: eventfd with integer arguments.
    let n = unsafe { libc::eventfd(0, f) };
    if n < 0 {
        return Err(format!(
            "fd {fd}: eventfd: {}",
            std::io::Error::last_os_error()
        ));
    }
    if count > 0 {
        // SAFETY: writing 8 bytes from a local to our new eventfd (never blocks: it is empty
        // and count <= 0xfffffffffffffffe, the largest value an eventfd can hold).
        let r = unsafe { libc::write(n, &count as *const u64 as *const libc::c_void, 8) };
        if r != 8 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing our own fd.
            unsafe { libc::close(n) };
            return Err(format!("fd {fd}: setting the eventfd counter: {e}"));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_round_trip() {
        // SAFETY: test fds.
        let fd = unsafe { libc::eventfd(0, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK) };
        let v: u64 = 5;
        // SAFETY: writes 8 bytes.
        assert_eq!(
            unsafe { libc::write(fd, &v as *const u64 as *const _, 8) },
            8
        );
        let info = crate::files::fdinfo(fd);
        let k = describe(fd, &info).unwrap();
        assert_eq!(
            k,
            FdKind::EventFd {
                count: 5,
                semaphore: true
            }
        );
        // SAFETY: F_GETFL.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let n = create(fd, 5, true, fl).unwrap();
        let mut got: u64 = 0;
        // SAFETY: reads 8 bytes; semaphore mode hands out 1 per read.
        assert_eq!(
            unsafe { libc::read(n, &mut got as *mut u64 as *mut _, 8) },
            8
        );
        assert_eq!(got, 1);
        let info2 = crate::files::fdinfo(n);
        assert_eq!(
            describe(n, &info2).unwrap(),
            FdKind::EventFd {
                count: 4,
                semaphore: true
            }
        );
        // SAFETY: the new one must be non-blocking too.
        assert!(unsafe { libc::fcntl(n, libc::F_GETFL) } & libc::O_NONBLOCK != 0);
        // SAFETY: closing test fds.
        unsafe {
            libc::close(fd);
            libc::close(n);
        }
    }
}
