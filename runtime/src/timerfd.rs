//! timerfd: clock, settime flags and unread expirations from /proc/self/fdinfo; the time
//! left and the interval from timerfd_gettime (which also folds a periodic timer's missed
//! expirations into the tick count, as a read would). Restored armed with the same time
//! left (an absolute timer gets `now + time left` on its clock, keeping its flags) and the
//! unread expirations put back with TFD_IOC_SET_TICKS.

use ckpt_image::FdKind;

const TFD_IOC_SET_TICKS: u64 = 0x4008_5400; // _IOW('T', 0, u64)
const TFD_TIMER_ABSTIME: i32 = 1;

fn ts_ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn ns_ts(n: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (n / 1_000_000_000) as i64,
        tv_nsec: (n % 1_000_000_000) as i64,
    }
}

pub fn describe(fd: i32, _fdinfo: &str) -> Result<FdKind, String> {
    // SAFETY: timerfd_gettime into a zeroed local.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::timerfd_gettime(fd, &mut cur) } != 0 {
        return Err(format!(
            "fd {fd} (timerfd): timerfd_gettime: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Re-read fdinfo after gettime: it may have added missed periods to `ticks`.
    let info = crate::files::fdinfo(fd);
    let (mut clockid, mut ticks, mut flags) = (None, None, 0);
    for l in info.lines() {
        if let Some(v) = l.strip_prefix("clockid:") {
            clockid = v.trim().parse::<i32>().ok();
        } else if let Some(v) = l.strip_prefix("ticks:") {
            ticks = v.trim().parse::<u64>().ok();
        } else if let Some(v) = l.strip_prefix("settime flags:") {
            flags = i32::from_str_radix(v.trim(), 8).unwrap_or(0);
        }
    }
    let (Some(clockid), Some(ticks)) = (clockid, ticks) else {
        return Err(format!("fd {fd} (timerfd): unexpected fdinfo format"));
    };
    Ok(FdKind::TimerFd {
        clockid,
        settime_flags: flags,
        value_ns: ts_ns(&cur.it_value),
        interval_ns: ts_ns(&cur.it_interval),
        ticks,
    })
}

pub fn create(fd: i32, k: &FdKind, flags: i32) -> Result<i32, String> {
    let FdKind::TimerFd {
        clockid,
        settime_flags,
        value_ns,
        interval_ns,
        ticks,
    } = *k
    else {
        return Err(format!("fd {fd}: not a timerfd"));
    };
    let mut f = libc::TFD_CLOEXEC;
    if flags & libc::O_NONBLOCK != 0 {
        f |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create with integer arguments.
    let n = unsafe { libc::timerfd_create(clockid, f) };
    if n < 0 {
        return Err(format!(
            "fd {fd}: timerfd_create(clock {clockid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    let fail = |what: &str| {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own fd.
        unsafe { libc::close(n) };
        Err(format!("fd {fd}: timerfd {what}: {e}"))
    };
    if value_ns > 0 {
        let mut value = ns_ts(value_ns);
        let mut sf = 0;
        if settime_flags & TFD_TIMER_ABSTIME != 0 {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime into a local.
            unsafe { libc::clock_gettime(clockid, &mut now) };
            value = ns_ts(ts_ns(&now) + value_ns);
            sf = settime_flags;
        }
        let its = libc::itimerspec {
            it_interval: ns_ts(interval_ns),
            it_value: value,
        };
        // SAFETY: timerfd_settime with a local itimerspec.
        if unsafe { libc::timerfd_settime(n, sf, &its, std::ptr::null_mut()) } != 0 {
            return fail("settime");
        }
    }
    if ticks > 0 {
        // SAFETY: TFD_IOC_SET_TICKS reads one u64.
        if unsafe { libc::ioctl(n, TFD_IOC_SET_TICKS as _, &ticks as *const u64) } != 0 {
            return fail("TFD_IOC_SET_TICKS (needs CONFIG_CHECKPOINT_RESTORE)");
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(fd: i32, flags: i32, value: libc::timespec, interval: libc::timespec) {
        let its = libc::itimerspec {
            it_interval: interval,
            it_value: value,
        };
        // SAFETY: test timer.
        assert_eq!(
            unsafe { libc::timerfd_settime(fd, flags, &its, std::ptr::null_mut()) },
            0
        );
    }

    #[test]
    fn timerfd_round_trip_relative_absolute_and_ticks() {
        // A periodic monotonic timer with 3 expirations unread.
        // SAFETY: test fds.
        let a = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
        arm(a, 0, ns_ts(1_000_000), ns_ts(20_000_000));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let ka = describe(a, "").unwrap();
        let FdKind::TimerFd {
            clockid,
            value_ns,
            interval_ns,
            ticks,
            ..
        } = ka
        else {
            panic!()
        };
        assert_eq!(clockid, libc::CLOCK_MONOTONIC);
        assert_eq!(interval_ns, 20_000_000);
        assert!(value_ns > 0 && value_ns <= 20_000_000, "{value_ns}");
        assert!(ticks >= 2, "{ticks}");
        // SAFETY: F_GETFL.
        let na = create(a, &ka, unsafe { libc::fcntl(a, libc::F_GETFL) }).unwrap();
        let mut got: u64 = 0;
        // SAFETY: reads the expiration count.
        assert_eq!(
            unsafe { libc::read(na, &mut got as *mut u64 as *mut _, 8) },
            8
        );
        assert!(got >= ticks, "{got} < {ticks}");
        // An absolute realtime timer 10 s ahead, with cancel-on-set.
        // SAFETY: test fd.
        let b = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, 0) };
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: local timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        now.tv_sec += 10;
        arm(b, 3, now, ns_ts(0));
        let kb = describe(b, "").unwrap();
        let nb = create(b, &kb, 0).unwrap();
        let kb2 = describe(nb, "").unwrap();
        let (
            FdKind::TimerFd {
                clockid: c1,
                settime_flags: f1,
                value_ns: v1,
                ..
            },
            FdKind::TimerFd {
                clockid: c2,
                settime_flags: f2,
                value_ns: v2,
                ..
            },
        ) = (kb, kb2)
        else {
            panic!()
        };
        assert_eq!((c1, f1), (c2, f2));
        assert_eq!(f1, 3);
        assert!(v1 >= v2 && v1 - v2 < 500_000_000, "{v1} {v2}");
        // A disarmed timer stays disarmed.
        // SAFETY: test fd.
        let c = unsafe { libc::timerfd_create(libc::CLOCK_BOOTTIME, 0) };
        let kc = describe(c, "").unwrap();
        let nc = create(c, &kc, 0).unwrap();
        assert_eq!(describe(nc, "").unwrap(), kc);
        for fd in [a, na, b, nb, c, nc] {
            // SAFETY: closing test fds.
            unsafe { libc::close(fd) };
        }
    }
}
