//! Terminals: pseudo-terminal pairs the job owns, and the terminal the job runs on.
//!
//! **Pty pairs** (`/dev/ptmx` master + `/dev/pts/N` slave, as `script`, `tmux` or Open
//! MPI's orted create them): every fd of a pair is described as `FdKind::Pty`. At the
//! Drain phase one process holding the master (the winner of the F_SETOWN claim, see
//! `tree::claim_pipes`) records the slave's termios, window size, lock and packet mode,
//! and reads out the bytes in flight in both directions: what the slave wrote and the
//! master did not read yet (read from the master), and what the master wrote and the
//! slave did not read yet (read from the slave with canonical mode switched off for the
//! moment, so that a partial line comes out too). After the snapshot the bytes are put
//! back the same way they are put into the new pair after a restart (`refill`): with
//! echo, signals, input/output translation and the special characters switched off for
//! the moment, so that every byte is seen once and nothing is echoed or translated twice.
//! `ckpt restart` creates one new pair per index (termios and window size applied) and
//! hands both sides to every process; each fd becomes a dup of the new master or slave.
//!
//! **The terminal of stdin/stdout/stderr** belongs to whoever runs the job: after a
//! restart the job is attached to the terminal of the `ckpt restart` command. Its saved
//! termios are applied to that terminal (when the restored job is in its foreground),
//! and SIGWINCH is sent to the foreground group once the job runs again, so full-screen
//! programs read the new window size and redraw.
//!
//! **Controlling terminal and foreground group**: a session leader whose controlling
//! terminal was a pty of the job takes the new slave as its controlling terminal
//! (TIOCSCTTY); the foreground group is set again (virtual → real) once every process of
//! the tree is back. `tcgetpgrp`, `tcsetpgrp` and `tcgetsid` are interposed so that the
//! program keeps seeing virtual ids.

use ckpt_image::{FdKind, FdMeta, PtyState, TerminalMeta, Termios};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

const TIOCGPTN: libc::c_ulong = 0x8004_5430;
const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const PTS_MAJOR_FIRST: u32 = 136;
const PTS_MAJOR_LAST: u32 = 143;

/// A pair drained at this checkpoint, until its bytes are put back.
struct Pending {
    master: i32,
    /// Our own descriptor of the slave (-1: none; then nothing went to the slave).
    slave: i32,
    state: PtyState,
}

static mut PENDING: Vec<Pending> = Vec::new();
static OUTSTANDING: AtomicBool = AtomicBool::new(false);
static mut SAVED: Option<TerminalMeta> = None;
/// After a restart: the process group to send SIGWINCH to once the threads run (0: none).
static WINCH_PGRP: AtomicI32 = AtomicI32::new(0);

fn pending() -> &'static mut Vec<Pending> {
    // SAFETY: only the checkpoint thread uses PENDING.
    unsafe { &mut *std::ptr::addr_of_mut!(PENDING) }
}

fn saved() -> &'static Option<TerminalMeta> {
    // SAFETY: written by the checkpoint thread at the Drain phase, read by it afterwards.
    unsafe { &*std::ptr::addr_of!(SAVED) }
}

/// The terminal state recorded at the last checkpoint (for the image).
pub fn meta() -> Option<TerminalMeta> {
    saved().clone()
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Whether an fd (its /proc link and stat) is a pty master or slave.
pub fn is_pty(st: &libc::stat, link: &str) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && (is_master(st, link) || slave_index(st.st_rdev).is_some())
}

fn is_master(st: &libc::stat, link: &str) -> bool {
    let (ma, mi) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    (ma == 5 && mi == 2) || link == "/dev/ptmx" || link.ends_with("/pts/ptmx")
}

fn slave_index(rdev: libc::dev_t) -> Option<u32> {
    let ma = libc::major(rdev);
    (PTS_MAJOR_FIRST..=PTS_MAJOR_LAST)
        .contains(&ma)
        .then(|| (ma - PTS_MAJOR_FIRST) * 256 + libc::minor(rdev))
}

fn master_index(fd: i32) -> Option<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN into an unsigned int.
    (unsafe { libc::ioctl(fd, TIOCGPTN, &mut n) } == 0).then_some(n)
}

/// Describes a pty fd. A slave whose master no process of the job holds is a terminal
/// from outside the job: refused (fds 0-2 never get here, they follow the restarting
/// command's terminal).
pub fn describe(fd: i32, link: &str, st: &libc::stat) -> Result<FdKind, String> {
    if is_master(st, link) {
        let index = master_index(fd)
            .ok_or_else(|| format!("fd {fd} ({link}): cannot read the pty number (TIOCGPTN)"))?;
        return Ok(FdKind::Pty {
            index,
            master: true,
            state: None,
        });
    }
    let index = slave_index(st.st_rdev).unwrap_or(0);
    if !crate::tree::pty_master_in_job(index) {
        return Err(format!(
            "fd {fd} ({link}) is a terminal whose master is not held by the job (only stdin/stdout/stderr may be the terminal the job runs on; a pty the job opened itself is restored with its master)"
        ));
    }
    Ok(FdKind::Pty {
        index,
        master: false,
        state: None,
    })
}

fn get_termios(fd: i32) -> Option<Termios> {
    // SAFETY: tcgetattr into a zeroed termios.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    Some(Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
    })
}

fn to_libc(t: &Termios) -> libc::termios {
    // SAFETY: a zeroed termios is a valid value.
    let mut k: libc::termios = unsafe { std::mem::zeroed() };
    k.c_iflag = t.iflag;
    k.c_oflag = t.oflag;
    k.c_cflag = t.cflag;
    k.c_lflag = t.lflag;
    k.c_line = t.line;
    for (d, s) in k.c_cc.iter_mut().zip(t.cc.iter()) {
        *d = *s;
    }
    // The speed lives in c_cflag (CBAUD) for the kernel; glibc's copies follow it.
    k.c_ispeed = t.cflag & libc::CBAUD;
    k.c_ospeed = t.cflag & libc::CBAUD;
    k
}

pub fn set_termios(fd: i32, t: &Termios) -> Result<(), String> {
    let k = to_libc(t);
    // SAFETY: tcsetattr with a filled termios; TCSANOW never flushes queued bytes.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &k) } != 0 {
        return Err(format!(
            "setting terminal modes on fd {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn winsize(fd: i32) -> [u16; 4] {
    // SAFETY: TIOCGWINSZ into a zeroed winsize.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) };
    [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel]
}

fn int_ioctl(fd: i32, req: libc::c_ulong) -> i32 {
    let mut v: libc::c_int = 0;
    // SAFETY: an ioctl that writes one int.
    unsafe { libc::ioctl(fd, req, &mut v) };
    v
}

/// Lets the kernel's buffer work on `fd`'s side run: poll(2) on a tty flushes its
/// pending input into the line discipline.
fn settle(fd: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) };
}

/// Reads everything readable from a non-blocking tty fd.
fn read_all(fd: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        settle(fd);
        let before = out.len();
        loop {
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n > 0 {
                out.extend_from_slice(&buf[..n as usize]);
                continue;
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if out.len() == before {
            return out;
        }
    }
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
            return Err(format!("putting bytes back into a pty (fd {fd}): {e}"));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// The slave side of the pair of master `m`, opened by us (the program's descriptions
/// are left alone). `None` when the slave is locked.
fn open_slave(m: i32, index: u32) -> Option<i32> {
    let fl = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER returns a new fd of the slave (Linux 4.13+).
    let s = unsafe { libc::ioctl(m, TIOCGPTPEER, fl) };
    if s >= 0 {
        return Some(s);
    }
    let p = std::ffi::CString::new(format!("/dev/pts/{index}")).ok()?;
    // SAFETY: open with a NUL-terminated path.
    let s = unsafe { libc::open(p.as_ptr(), fl) };
    (s >= 0).then_some(s)
}

/// Drains every pty pair this process is the drainer of (see the module comment) and
/// records its state on the master's FdMeta.
pub fn drain(fds: &mut [FdMeta]) -> Result<(), String> {
    refill()?;
    pending().clear();
    let mut done: Vec<u32> = Vec::new();
    for f in fds.iter_mut() {
        let (fd, index) = match f.kind {
            FdKind::Pty {
                index,
                master: true,
                ..
            } if !done.contains(&index) => (f.fd, index),
            _ => continue,
        };
        done.push(index);
        if !crate::tree::drains(fd) {
            continue;
        }
        let termios = get_termios(fd)
            .ok_or_else(|| format!("fd {fd} (pty {index}): cannot read its terminal modes"))?;
        let packet = int_ioctl(fd, TIOCGPKT) != 0;
        let mut st = PtyState {
            termios: termios.clone(),
            winsize: winsize(fd),
            locked: int_ioctl(fd, TIOCGPTLCK) != 0,
            packet,
            ..PtyState::default()
        };
        // SAFETY: status flags of the master's description; put back below.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        unsafe {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            if packet {
                libc::ioctl(fd, libc::TIOCPKT, &0i32);
            }
        }
        // Only a slave some process of the job holds is opened: opening and closing one
        // nobody holds would hang the pair up.
        let slave = if !st.locked && crate::tree::pty_slave_in_job(index) {
            open_slave(fd, index).unwrap_or(-1)
        } else {
            -1
        };
        if slave >= 0 {
            // Input still in the kernel's buffers goes through the line discipline now,
            // with the program's modes: its echo reaches the master before it is drained.
            settle(slave);
        }
        let to_master = read_all(fd);
        let mut to_slave = Vec::new();
        if slave >= 0 {
            let mut raw = termios.clone();
            raw.lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
            if raw.cc.len() > libc::VTIME {
                raw.cc[libc::VMIN] = 0;
                raw.cc[libc::VTIME] = 0;
            }
            let r = set_termios(slave, &raw);
            to_slave = read_all(slave);
            let back = set_termios(slave, &termios);
            if let Err(e) = r.and(back) {
                // SAFETY: flags back; our slave fd closed.
                unsafe {
                    libc::fcntl(fd, libc::F_SETFL, fl);
                    libc::close(slave);
                }
                return Err(format!("pty {index}: {e}"));
            }
        }
        // SAFETY: the description's flags as they were.
        unsafe { libc::fcntl(fd, libc::F_SETFL, fl) };
        st.to_master = hex(&to_master);
        st.to_slave = hex(&to_slave);
        if let FdKind::Pty { state, .. } = &mut f.kind {
            *state = Some(st.clone());
        }
        pending().push(Pending {
            master: fd,
            slave,
            state: st,
        });
    }
    OUTSTANDING.store(!pending().is_empty(), Ordering::Release);
    Ok(())
}

/// Puts the drained bytes back into their pairs (once; after the snapshot or an abort).
pub fn refill() -> Result<(), String> {
    if !OUTSTANDING.swap(false, Ordering::AcqRel) {
        return Ok(());
    }
    let mut first_err = Ok(());
    for p in pending().drain(..) {
        let r = put_back(p.master, p.slave, &p.state);
        if p.slave >= 0 {
            // SAFETY: closing our own slave fd.
            unsafe { libc::close(p.slave) };
        }
        if first_err.is_ok() {
            first_err = r;
        }
    }
    first_err
}

/// Puts `st`'s bytes into the pair (`m`, `s`) and leaves it with `st`'s modes: the bytes
/// for the slave are written to the master, those for the master to the slave, with echo,
/// translations, signals and special characters off meanwhile (a canonical slave stays
/// canonical, so its lines are lines again and a partial line stays partial).
pub fn put_back(m: i32, s: i32, st: &PtyState) -> Result<(), String> {
    let to_slave = unhex(&st.to_slave);
    let to_master = unhex(&st.to_master);
    if s >= 0 && (!to_slave.is_empty() || !to_master.is_empty()) {
        let mut t = st.termios.clone();
        t.iflag &= !(libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IUCLC
            | libc::ISTRIP
            | libc::IXON
            | libc::IXOFF
            | libc::PARMRK
            | libc::BRKINT
            | libc::IMAXBEL);
        t.oflag &= !libc::OPOST;
        t.lflag &= !(libc::ECHO
            | libc::ECHOE
            | libc::ECHOK
            | libc::ECHONL
            | libc::ECHOCTL
            | libc::ECHOPRT
            | libc::ECHOKE
            | libc::ISIG
            | libc::IEXTEN
            | libc::TOSTOP);
        let canonical = t.lflag & libc::ICANON != 0;
        // In canonical mode an end-of-file (Ctrl-D) waits in the queue as a NUL byte that
        // ends a "line": it is written back as the EOF character, so it is one again.
        let mut data = to_slave.clone();
        if canonical {
            // Special characters become bytes the data does not hold ('\n' still ends a
            // line): one for EOF, another for erase/kill/EOL. Not NUL: the kernel does not
            // treat 0 as "disabled" here.
            let mut free = (1u8..=255).filter(|b| *b != b'\n' && !to_slave.contains(b));
            let eof = free.next().unwrap_or(0xfe);
            let other = free.next().unwrap_or(0xff);
            for k in [libc::VERASE, libc::VKILL, libc::VEOL, libc::VEOL2] {
                if k < t.cc.len() {
                    t.cc[k] = other;
                }
            }
            if libc::VEOF < t.cc.len() {
                t.cc[libc::VEOF] = eof;
            }
            for b in data.iter_mut() {
                if *b == 0 {
                    *b = eof;
                }
            }
        }
        set_termios(s, &t)?;
        let r = write_all(m, &data).and_then(|_| {
            settle(s);
            write_all(s, &to_master)
        });
        settle(m);
        settle(s);
        set_termios(s, &st.termios)?;
        r?;
    } else if s >= 0 {
        set_termios(s, &st.termios)?;
    }
    // SAFETY: packet mode and lock on the master, as recorded.
    unsafe {
        if st.packet {
            libc::ioctl(m, libc::TIOCPKT, &1i32);
        }
        if st.locked {
            libc::ioctl(m, TIOCSPTLCK, &1i32);
        }
    }
    Ok(())
}

/// Forgets the pairs drained before the snapshot (in a restored process their fds are
/// not ours: the restore refills the new pairs).
pub fn forget_pending() {
    OUTSTANDING.store(false, Ordering::Release);
    std::mem::forget(std::mem::take(pending()));
}

/// Device number of the controlling terminal and the foreground group of it (real), from
/// /proc/self/stat (fields 7 and 8).
fn ctty() -> (u64, i32) {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = s.rfind(')') else {
        return (0, 0);
    };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let nr = f.get(4).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let tpgid = f.get(5).and_then(|v| v.parse::<i32>().ok()).unwrap_or(-1);
    (nr as u64, tpgid)
}

/// Records the process's terminal (at the Drain phase, after `files::dump`).
pub fn dump_terminal(fds: &[FdMeta]) {
    let (nr, tpgid) = ctty();
    // tty_nr: major in bits 8-15, minor in bits 0-7 and 20-31.
    let major = ((nr >> 8) & 0xfff) as u32;
    let minor = ((nr & 0xff) | ((nr >> 12) & 0xfff00)) as u32;
    let ctty_pty = (PTS_MAJOR_FIRST..=PTS_MAJOR_LAST)
        .contains(&major)
        .then(|| (major - PTS_MAJOR_FIRST) * 256 + minor)
        .filter(|i| {
            fds.iter()
                .any(|f| matches!(f.kind, FdKind::Pty { index, .. } if index == *i))
                || crate::tree::pty_master_in_job(*i)
        });
    let stdio = fds
        .iter()
        .filter(|f| f.fd <= 2 && matches!(f.kind, FdKind::Inherited))
        // SAFETY: isatty on our own fd.
        .find(|f| unsafe { libc::isatty(f.fd) } == 1)
        .and_then(|f| get_termios(f.fd));
    let m = TerminalMeta {
        ctty_pty,
        foreground: if tpgid > 0 {
            crate::vids::virtual_of(tpgid)
        } else {
            0
        },
        stdio,
    };
    let any = m.ctty_pty.is_some() || m.stdio.is_some() || nr != 0;
    // SAFETY: only the checkpoint thread writes SAVED.
    unsafe { *std::ptr::addr_of_mut!(SAVED) = any.then_some(m) };
}

/// The real session and process group (libc's getsid/getpgrp are the interposed, virtual
/// ones).
fn real_sid() -> i32 {
    // SAFETY: getsid(0) has no memory arguments.
    unsafe { crate::sys::syscall3(libc::SYS_getsid, 0, 0, 0) as i32 }
}

fn real_pgrp() -> i32 {
    // SAFETY: getpgid(0) has no memory arguments.
    unsafe { crate::sys::syscall3(libc::SYS_getpgid, 0, 0, 0) as i32 }
}

/// The fd (0-2) on which this process has the restarting command's terminal, if any.
fn stdio_tty() -> Option<i32> {
    // SAFETY: isatty on fds 0-2.
    (0..=2).find(|&fd| unsafe { libc::isatty(fd) } == 1)
}

/// After the fds are restored (with the new pairs' sides still open as `ptys`: index,
/// master, slave): bytes put back into the pairs this process drained, and the
/// controlling terminal taken again by a session leader whose terminal was a pty of the
/// job.
pub fn restore(fds: &[FdMeta], ptys: &[(u32, i32, i32)]) -> Result<(), String> {
    for f in fds {
        if let FdKind::Pty {
            index,
            state: Some(st),
            ..
        } = &f.kind
        {
            let Some(&(_, m, s)) = ptys.iter().find(|(i, _, _)| i == index) else {
                return Err(format!("pty {index}: no new pair was created for it"));
            };
            put_back(m, s, st).map_err(|e| format!("pty {index}: {e}"))?;
        }
    }
    let Some(t) = saved() else { return Ok(()) };
    if let Some(index) = t.ctty_pty {
        let me = crate::sys::getpid_real();
        let leader = real_sid() == me;
        if let (true, Some(&(_, _, s))) = (leader, ptys.iter().find(|(i, _, _)| *i == index)) {
            // SAFETY: TIOCSCTTY on the new slave, in a session leader without a terminal.
            if unsafe { libc::ioctl(s, libc::TIOCSCTTY, 0) } != 0 {
                crate::warn!(
                    "cannot make pty {index} the controlling terminal again: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

/// Once every process of the tree is back (virtual ids known): the foreground group of a
/// controlling terminal this process owns again, and for the job's own terminal (the
/// restarting command's) the saved modes. Returns nothing; SIGWINCH goes out in
/// `after_resume`.
pub fn after_barrier(is_root: bool) {
    WINCH_PGRP.store(0, Ordering::Relaxed);
    let Some(t) = saved() else { return };
    let me = crate::sys::getpid_real();
    let (sid, pgrp) = (real_sid(), real_pgrp());
    if t.ctty_pty.is_some() && sid == me && t.foreground > 0 {
        // SAFETY: opening our controlling terminal.
        let fd = unsafe {
            libc::open(
                c"/dev/tty".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            let real = crate::vids::real_of(t.foreground);
            // SAFETY: TIOCSPGRP with a local; SIGTTOU is blocked in this thread.
            unsafe {
                libc::ioctl(fd, libc::TIOCSPGRP, &real);
                libc::close(fd);
            }
        }
    }
    if !is_root {
        return;
    }
    let Some(fd) = stdio_tty() else { return };
    let mut fg: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP into a local.
    unsafe { libc::ioctl(fd, libc::TIOCGPGRP, &mut fg) };
    if fg != pgrp {
        // Restarted in the background: the terminal's modes belong to its foreground job.
        return;
    }
    if let Some(m) = &t.stdio {
        if let Err(e) = set_termios(fd, m) {
            crate::warn!("{e}");
        }
    }
    // The foreground group the job had on its terminal, if it was another group of the job.
    if t.foreground > 0 && t.ctty_pty.is_none() {
        let real = crate::vids::real_of(t.foreground);
        if real != pgrp && real != t.foreground {
            // SAFETY: TIOCSPGRP with a local; SIGTTOU is blocked in this thread.
            unsafe { libc::ioctl(fd, libc::TIOCSPGRP, &real) };
        }
    }
    let mut now: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP into a local.
    unsafe { libc::ioctl(fd, libc::TIOCGPGRP, &mut now) };
    WINCH_PGRP.store(now, Ordering::Relaxed);
}

/// After the threads run again: SIGWINCH to the foreground group of the job's terminal,
/// so that full-screen programs take the new window size and redraw.
pub fn after_resume() {
    let g = WINCH_PGRP.swap(0, Ordering::Relaxed);
    if g > 0 {
        // SAFETY: signalling the job's foreground process group.
        unsafe { crate::sys::syscall3(libc::SYS_kill, (-g) as u64, libc::SIGWINCH as u64, 0) };
    }
}

/// Interposed `tcgetpgrp(3)`: the foreground group as a virtual id.
#[no_mangle]
pub extern "C" fn tcgetpgrp(fd: libc::c_int) -> libc::pid_t {
    let mut p: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP into a local.
    if unsafe { libc::ioctl(fd, libc::TIOCGPGRP, &mut p) } < 0 {
        return -1;
    }
    crate::vids::virtual_of(p)
}

/// Interposed `tcsetpgrp(3)`: takes a virtual process group.
#[no_mangle]
pub extern "C" fn tcsetpgrp(fd: libc::c_int, pgrp: libc::pid_t) -> libc::c_int {
    let real = crate::vids::real_of(pgrp);
    // SAFETY: TIOCSPGRP with a local.
    unsafe { libc::ioctl(fd, libc::TIOCSPGRP, &real) }
}

/// Interposed `tcgetsid(3)`: the session as a virtual id.
#[no_mangle]
pub extern "C" fn tcgetsid(fd: libc::c_int) -> libc::pid_t {
    let mut p: libc::pid_t = 0;
    // SAFETY: TIOCGSID into a local.
    if unsafe { libc::ioctl(fd, libc::TIOCGSID, &mut p) } < 0 {
        return -1;
    }
    crate::vids::virtual_of(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openpty() -> (i32, i32) {
        // SAFETY: creating a test pair.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0);
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let s = libc::ioctl(m, TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            assert!(s >= 0);
            (m, s)
        }
    }

    /// A pair in canonical mode with echo and ONLCR: bytes in flight both ways (a
    /// complete line and a partial one towards the slave) are drained, put back into a
    /// new pair, and read there exactly once, untranslated and not echoed again.
    #[test]
    fn pair_drained_and_put_back_into_a_new_pair() {
        let (m, s) = openpty();
        let mut t = get_termios(s).unwrap();
        t.lflag |= libc::ICANON | libc::ECHO;
        t.oflag |= libc::OPOST | libc::ONLCR;
        t.cc[libc::VINTR] = 7;
        set_termios(s, &t).unwrap();
        write_all(m, b"first line\npart").unwrap();
        settle(s); // the echo comes first
        write_all(s, b"out\n").unwrap();
        settle(s);
        settle(m);
        let fl = |fd| {
            // SAFETY: test fds.
            unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        };
        fl(m);
        let to_master = read_all(m);
        // echo of the input, then the slave's output with NL -> CR NL.
        assert_eq!(to_master, b"first line\r\npartout\r\n");
        // Data towards the slave, as `drain` reads it.
        let mut raw = t.clone();
        raw.lflag &= !(libc::ICANON | libc::ECHO);
        raw.cc[libc::VMIN] = 0;
        raw.cc[libc::VTIME] = 0;
        set_termios(s, &raw).unwrap();
        fl(s);
        let to_slave = read_all(s);
        set_termios(s, &t).unwrap();
        assert_eq!(to_slave, b"first line\npart");
        let st = PtyState {
            termios: t.clone(),
            winsize: [24, 80, 0, 0],
            to_slave: hex(&to_slave),
            to_master: hex(b"out\r\n"),
            ..PtyState::default()
        };
        // Put back into a new pair (canonical, echo on): one line readable, no echo.
        let (m3, s3) = openpty();
        put_back(m3, s3, &st).unwrap();
        fl(s3);
        fl(m3);
        let mut buf = [0u8; 256];
        // SAFETY: reading test fds.
        let n = unsafe { libc::read(s3, buf.as_mut_ptr() as *mut libc::c_void, 256) };
        assert_eq!(&buf[..n.max(0) as usize], b"first line\n");
        // SAFETY: as above.
        let n = unsafe { libc::read(s3, buf.as_mut_ptr() as *mut libc::c_void, 256) };
        assert!(n < 0, "the partial line must stay partial");
        assert_eq!(read_all(m3), b"out\r\n");
        assert_eq!(get_termios(s3).unwrap(), t);
        // An end-of-file in a canonical queue (drained as NUL) is one again.
        let (m4, s4) = openpty();
        let st4 = PtyState {
            termios: t.clone(),
            to_slave: hex(b"ab\0"),
            ..PtyState::default()
        };
        put_back(m4, s4, &st4).unwrap();
        fl(s4);
        // SAFETY: as above.
        let n = unsafe { libc::read(s4, buf.as_mut_ptr() as *mut libc::c_void, 256) };
        assert_eq!(&buf[..n.max(0) as usize], b"ab", "EOF ends the line");
        // SAFETY: as above.
        let n = unsafe { libc::read(s4, buf.as_mut_ptr() as *mut libc::c_void, 256) };
        assert!(n < 0, "nothing after the EOF");
        // SAFETY: closing test fds.
        unsafe {
            libc::close(m4);
            libc::close(s4);
        }
        // The partial line completes with what the master writes next.
        write_all(m3, b"ial\n").unwrap();
        settle(s3);
        // SAFETY: as above.
        let n = unsafe { libc::read(s3, buf.as_mut_ptr() as *mut libc::c_void, 256) };
        assert_eq!(&buf[..n.max(0) as usize], b"partial\n");
        for fd in [m, s, m3, s3] {
            // SAFETY: closing test fds.
            unsafe { libc::close(fd) };
        }
    }
}
