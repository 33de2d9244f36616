//! Interval timers (setitimer/alarm: ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF) and POSIX
//! timers (timer_create), with the time left and the interval.
//!
//! Captured at the Drain phase (threads parked): getitimer for the three interval timers;
//! /proc/self/timers for the POSIX timers (id, signal, sigev_value, notify kind and target
//! thread, clock) and timer_gettime for each. Restored right before the threads are
//! released, armed with the time left at the checkpoint (relative: the time the program
//! was not running does not count, see "Time across a restart" in docs/architecture.md).
//! POSIX timer ids come back identical: with PR_TIMER_CREATE_RESTORE_IDS (Linux 6.15+)
//! timer_create takes the id to use; on older kernels timers are created in id order and
//! gaps are filled with placeholders deleted afterwards. A SIGEV_THREAD_ID timer targets
//! the restored thread's new kernel tid. Overrun counts are not kept. Timers on CPU-time
//! clocks of a single thread or of another process are refused at checkpoint time.

const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
const SIGEV_THREAD_ID: i32 = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    pub value: u64,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID.
    pub notify: i32,
    /// Virtual tid of the target thread (SIGEV_THREAD_ID).
    pub vtid: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Timers {
    /// (which, interval, value) as getitimer returned them, for ITIMER_REAL/VIRTUAL/PROF.
    pub itimers: Vec<(i32, libc::timeval, libc::timeval)>,
    pub posix: Vec<PosixTimer>,
}

static mut SAVED: Option<Timers> = None;

fn saved() -> &'static mut Option<Timers> {
    // SAFETY: only the checkpoint thread uses SAVED.
    unsafe { &mut *std::ptr::addr_of_mut!(SAVED) }
}

fn ts_ns(t: &libc::timespec) -> u64 {
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
fn ns_ts(n: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (n / 1_000_000_000) as i64,
        tv_nsec: (n % 1_000_000_000) as i64,
    }
}

/// Parses /proc/self/timers (ids, signal, value, notify, clock).
pub fn parse(text: &str, tid_to_vtid: &dyn Fn(i32) -> i32) -> Result<Vec<PosixTimer>, String> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("ID:") {
            out.push(PosixTimer {
                id: v
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad timer line {l:?}"))?,
                ..Default::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        if let Some(v) = l.strip_prefix("signal:") {
            let (s, val) = v.trim().split_once('/').unwrap_or((v.trim(), "0"));
            t.signo = s.parse().unwrap_or(0);
            t.value = u64::from_str_radix(val, 16).unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("notify:") {
            let (kind, target) = v.trim().split_once('/').unwrap_or((v.trim(), ""));
            t.notify = match kind {
                "signal" => libc::SIGEV_SIGNAL,
                "none" => libc::SIGEV_NONE,
                other => {
                    return Err(format!(
                        "POSIX timer {}: notify kind {other} not supported",
                        t.id
                    ))
                }
            };
            if let Some(tid) = target.strip_prefix("tid.") {
                t.notify |= SIGEV_THREAD_ID;
                t.vtid = tid_to_vtid(tid.parse().unwrap_or(0));
            }
        } else if let Some(v) = l.strip_prefix("ClockID:") {
            t.clock = v.trim().parse().unwrap_or(-1);
            if !matches!(t.clock, 0 | 1 | 2 | 7 | 8 | 9 | 11) {
                return Err(format!(
                    "POSIX timer {} is on clock {} (a CPU clock of one thread or of another process): not supported",
                    t.id, t.clock
                ));
            }
        }
    }
    Ok(out)
}

/// Records every timer (Drain phase).
pub fn dump() -> Result<(), String> {
    let mut t = Timers::default();
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        // SAFETY: getitimer into a zeroed local.
        let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getitimer(which, &mut v) };
        if v.it_value.tv_sec != 0 || v.it_value.tv_usec != 0 {
            t.itimers.push((which, v.it_interval, v.it_value));
        }
    }
    let text = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    t.posix = parse(&text, &crate::threads::virtual_tid)?;
    for p in t.posix.iter_mut() {
        // SAFETY: timer_gettime(id) into a zeroed local.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let r = unsafe {
            crate::sys::syscall3(
                libc::SYS_timer_gettime,
                p.id as u64,
                &mut cur as *mut _ as u64,
                0,
            )
        };
        if r < 0 {
            return Err(format!("timer_gettime({}): errno {}", p.id, -r));
        }
        p.value_ns = ts_ns(&cur.it_value);
        p.interval_ns = ts_ns(&cur.it_interval);
    }
    *saved() = Some(t);
    Ok(())
}

#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

fn create_one(p: &PosixTimer, tid: i32, want_id: i32) -> Result<i32, String> {
    let sev = KSigevent {
        value: p.value,
        signo: p.signo,
        notify: p.notify,
        tid,
        _pad: [0; 11],
    };
    let mut id: i32 = want_id;
    // SAFETY: timer_create(clock, &sev, &id) with locals.
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_timer_create,
            p.clock as u64,
            &sev as *const KSigevent as u64,
            &mut id as *mut i32 as u64,
        )
    };
    if r < 0 {
        return Err(format!(
            "timer_create for POSIX timer {}: {}",
            p.id,
            std::io::Error::from_raw_os_error(-r as i32)
        ));
    }
    Ok(id)
}

/// Re-creates the recorded timers (restored process, threads recreated, not yet released).
pub fn restore() -> Result<(), String> {
    let Some(t) = saved().clone() else {
        return Ok(());
    };
    let mut posix = t.posix.clone();
    posix.sort_by_key(|p| p.id);
    // SAFETY: prctl with integer arguments (EINVAL before Linux 6.15).
    let exact = unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } == 0;
    let res = (|| {
        let mut fillers = Vec::new();
        for p in &posix {
            let tid = if p.notify & SIGEV_THREAD_ID != 0 {
                crate::threads::real_tid(p.vtid)
            } else {
                0
            };
            let id = if exact {
                create_one(p, tid, p.id)?
            } else {
                loop {
                    let id = create_one(p, tid, 0)?;
                    if id >= p.id {
                        break id;
                    }
                    fillers.push(id);
                }
            };
            if id != p.id {
                return Err(format!("POSIX timer {} came back as id {id}", p.id));
            }
            if p.value_ns > 0 {
                let its = libc::itimerspec {
                    it_interval: ns_ts(p.interval_ns),
                    it_value: ns_ts(p.value_ns),
                };
                // SAFETY: timer_settime(id, 0, &its, NULL).
                let r = unsafe {
                    crate::sys::syscall6(
                        libc::SYS_timer_settime,
                        id as u64,
                        0,
                        &its as *const _ as u64,
                        0,
                        0,
                        0,
                    )
                };
                if r < 0 {
                    return Err(format!("timer_settime({id}): errno {}", -r));
                }
            }
        }
        for id in fillers {
            // SAFETY: deleting our placeholder timer.
            unsafe { crate::sys::syscall3(libc::SYS_timer_delete, id as u64, 0, 0) };
        }
        Ok(())
    })();
    if exact {
        // SAFETY: as above.
        unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    }
    res?;
    for (which, interval, value) in &t.itimers {
        let v = libc::itimerval {
            it_interval: *interval,
            it_value: *value,
        };
        // SAFETY: setitimer with a local value.
        if unsafe { libc::setitimer(*which, &v, std::ptr::null_mut()) } != 0 {
            return Err(format!(
                "setitimer({which}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if *which != libc::ITIMER_REAL {
            // The kernel adds one scheduler tick to a CPU-time itimer when it is set; take
            // it back so that the time left does not grow with every restart.
            // SAFETY: getitimer into a zeroed local.
            let mut got: libc::itimerval = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::getitimer(*which, &mut got) };
            let us = |t: &libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
            let extra = us(&got.it_value) - us(value);
            if extra > 0 && us(value) > 2 * extra {
                let left = us(value) - extra;
                let v2 = libc::itimerval {
                    it_interval: *interval,
                    it_value: libc::timeval {
                        tv_sec: left / 1_000_000,
                        tv_usec: left % 1_000_000,
                    },
                };
                // SAFETY: setitimer with a local value.
                unsafe { libc::setitimer(*which, &v2, std::ptr::null_mut()) };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers_parse() {
        let text = "ID: 5\nsignal: 12/0000000000001234\nnotify: signal/pid.5339\nClockID: 1\nID: 7\nsignal: 35/00007f0000000010\nnotify: signal/tid.5340\nClockID: 0\nID: 8\nsignal: 0/0000000000000000\nnotify: none/pid.5339\nClockID: 7\n";
        let v = parse(text, &|t| t - 5000).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            (v[0].id, v[0].signo, v[0].value, v[0].notify, v[0].clock),
            (5, 12, 0x1234, 0, 1)
        );
        assert_eq!(
            (v[1].notify, v[1].vtid, v[1].value),
            (4, 340, 0x7f0000000010)
        );
        assert_eq!((v[2].notify, v[2].clock), (libc::SIGEV_NONE, 7));
        assert!(parse(
            "ID: 1\nsignal: 1/0\nnotify: signal/pid.1\nClockID: -6\n",
            &|t| t
        )
        .is_err());
    }

    #[test]
    fn posix_timer_round_trip_keeps_id_value_and_interval() {
        // SIGEV_NONE timers: nothing is delivered to the test process.
        let p = PosixTimer {
            id: 0,
            clock: libc::CLOCK_MONOTONIC,
            signo: 0,
            value: 0,
            notify: libc::SIGEV_NONE,
            vtid: 0,
            value_ns: 50_000_000_000,
            interval_ns: 7_000_000,
        };
        let a = create_one(&p, 0, 0).unwrap();
        let b = create_one(&p, 0, 0).unwrap();
        // SAFETY: deleting a test timer; leaves a gap at a.
        unsafe { crate::sys::syscall3(libc::SYS_timer_delete, a as u64, 0, 0) };
        let text = std::fs::read_to_string("/proc/self/timers").unwrap();
        let mut found = parse(&text, &|t| t).unwrap();
        found.retain(|t| t.id == b);
        assert_eq!(found.len(), 1);
        // SAFETY: delete b, then restore it with its recorded id and times.
        unsafe { crate::sys::syscall3(libc::SYS_timer_delete, b as u64, 0, 0) };
        let mut rec = found[0].clone();
        rec.value_ns = 50_000_000_000;
        rec.interval_ns = 7_000_000;
        *saved() = Some(Timers {
            itimers: vec![],
            posix: vec![rec],
        });
        restore().unwrap();
        // SAFETY: timer_gettime of the restored id.
        let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
        let r = unsafe {
            crate::sys::syscall3(
                libc::SYS_timer_gettime,
                b as u64,
                &mut cur as *mut _ as u64,
                0,
            )
        };
        assert_eq!(r, 0);
        assert_eq!(ts_ns(&cur.it_interval), 7_000_000);
        assert!(ts_ns(&cur.it_value) > 49_000_000_000);
        // SAFETY: cleanup.
        unsafe { crate::sys::syscall3(libc::SYS_timer_delete, b as u64, 0, 0) };
        *saved() = None;
    }
}
