//! signalfd: the signal mask from /proc/self/fdinfo. The signals themselves are the
//! process's pending signals, restored with them.

use ckpt_image::FdKind;

pub fn describe(fd: i32, fdinfo: &str) -> Result<FdKind, String> {
    for l in fdinfo.lines() {
        if let Some(v) = l.strip_prefix("sigmask:") {
            if let Ok(mask) = u64::from_str_radix(v.trim(), 16) {
                return Ok(FdKind::SignalFd { mask });
            }
        }
    }
    Err(format!("fd {fd} (signalfd): no sigmask in its fdinfo"))
}

pub fn create(fd: i32, mask: u64, flags: i32) -> Result<i32, String> {
    let mut f = libc::SFD_CLOEXEC;
    if flags & libc::O_NONBLOCK != 0 {
        f |= libc::SFD_NONBLOCK;
    }
    // SAFETY: signalfd4(-1, &mask, 8, flags): the kernel reads 8 bytes of mask.
    let n = unsafe {
        crate::sys::syscall6(
            libc::SYS_signalfd4,
            -1i64 as u64,
            &mask as *const u64 as u64,
            8,
            f as u64,
            0,
            0,
        )
    };
    if n < 0 {
        return Err(format!(
            "fd {fd}: signalfd: {}",
            std::io::Error::from_raw_os_error(-n as i32)
        ));
    }
    Ok(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signalfd_round_trip() {
        let mask: u64 = (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGRTMIN() + 2 - 1));
        let fd = create(-1, mask, libc::O_NONBLOCK).unwrap();
        let k = describe(fd, &crate::files::fdinfo(fd)).unwrap();
        assert_eq!(k, FdKind::SignalFd { mask });
        // SAFETY: F_GETFL on our fd.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0);
        // SAFETY: closing a test fd.
        unsafe { libc::close(fd) };
    }
}
