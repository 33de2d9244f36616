//! epoll: every registration (target fd, events incl. EPOLLET/EPOLLONESHOT, 64-bit data)
//! from the `tfd:` lines of /proc/self/fdinfo. The instance is created with the other fds;
//! the registrations are added once every fd is back at its number.

use ckpt_image::{EpollTarget, FdKind};

fn field<'a>(l: &'a str, key: &str) -> Option<&'a str> {
    let i = l.find(key)? + key.len();
    l[i..].split_whitespace().next()
}

pub fn describe(fd: i32, fdinfo: &str, skip: &[i32]) -> Result<FdKind, String> {
    let mut targets = Vec::new();
    for l in fdinfo.lines() {
        if !l.starts_with("tfd:") {
            continue;
        }
        let bad = || format!("fd {fd} (epoll): cannot parse fdinfo line {l:?}");
        let tfd: i32 = field(l, "tfd:")
            .and_then(|v| v.parse().ok())
            .ok_or_else(bad)?;
        let events = field(l, "events:")
            .and_then(|v| u32::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let data = field(l, "data:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        let ino = field(l, "ino:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(bad)?;
        if skip.contains(&tfd) {
            return Err(format!(
                "fd {fd} (epoll) watches fd {tfd}, which is the checkpoint runtime's own"
            ));
        }
        // SAFETY: fstat into a zeroed buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(tfd, &mut st) } != 0 || st.st_ino != ino {
            return Err(format!(
                "fd {fd} (epoll) holds a registration for fd {tfd} whose file is no longer open at that number (closed after epoll_ctl while another descriptor keeps it alive); such a registration cannot be recreated"
            ));
        }
        targets.push(EpollTarget {
            fd: tfd,
            events,
            data,
        });
    }
    // fdinfo lists them in the kernel's tree order; keep a stable order by fd.
    targets.sort_by_key(|t| t.fd);
    Ok(FdKind::Epoll { targets })
}

pub fn create(fd: i32) -> Result<i32, String> {
    // SAFETY: epoll_create1 with a flag.
    let n = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if n < 0 {
        return Err(format!(
            "fd {fd}: epoll_create1: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(n)
}

/// Re-adds the registrations of the epoll instance now at `fd` (targets at their numbers).
pub fn add_targets(fd: i32, targets: &[EpollTarget]) -> Result<(), String> {
    for t in targets {
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // EPOLLWAKEUP needs CAP_BLOCK_SUSPEND; the kernel drops it silently without.
        // SAFETY: epoll_ctl with a local event.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, t.fd, &mut ev) } != 0 {
            return Err(format!(
                "fd {fd} (epoll): re-adding fd {} (events {:#x}): {}",
                t.fd,
                t.events,
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
    fn epoll_round_trip_with_flags_and_data() {
        // SAFETY: test fds.
        let (e1, e2) = unsafe { (libc::eventfd(1, 0), libc::eventfd(0, 0)) };
        let ep = create(-1).unwrap();
        for (fd, events, data) in [
            (
                e1,
                (libc::EPOLLIN | libc::EPOLLET) as u32,
                0xdead_beef_1234_5678u64,
            ),
            (e2, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, 42),
        ] {
            add_targets(ep, &[EpollTarget { fd, events, data }]).unwrap();
        }
        let k = describe(ep, &crate::files::fdinfo(ep), &[]).unwrap();
        let FdKind::Epoll { targets } = &k else {
            panic!()
        };
        assert_eq!(targets.len(), 2);
        let ep2 = create(-1).unwrap();
        add_targets(ep2, targets).unwrap();
        assert_eq!(describe(ep2, &crate::files::fdinfo(ep2), &[]).unwrap(), k);
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: epoll_wait into a local array.
        let n = unsafe { libc::epoll_wait(ep2, evs.as_mut_ptr(), 4, 0) };
        assert_eq!(n, 1);
        let d = evs[0].u64;
        assert_eq!(d, 0xdead_beef_1234_5678);
        // A registration whose fd number was closed is refused.
        // SAFETY: dup, then close the registered number.
        let e3 = unsafe { libc::eventfd(0, 0) };
        let keep = unsafe { libc::dup(e3) };
        add_targets(
            ep2,
            &[EpollTarget {
                fd: e3,
                events: libc::EPOLLIN as u32,
                data: 1,
            }],
        )
        .unwrap();
        // SAFETY: closing test fds.
        unsafe { libc::close(e3) };
        let err = describe(ep2, &crate::files::fdinfo(ep2), &[]).unwrap_err();
        assert!(err.contains("no longer open"), "{err}");
        for fd in [e1, e2, ep, ep2, keep] {
            // SAFETY: closing test fds.
            unsafe { libc::close(fd) };
        }
    }
}
