//! `ckpt restart`: validate the newest complete generation, build the restore plan and
//! exec the restorer (this process becomes the restored program, so the program keeps
//! this command's stdin/stdout/stderr, and its exit status is this command's).
//!
//! Everything that can be checked is checked here, with std Rust, before the address
//! space is given up: image checksums, the kernel and vdso, CPU register state, the
//! files that mappings and descriptors refer to. The restorer only executes the plan.

use anyhow::{bail, Context};
use ckpt_image::{CkptDir, FdKind, ImageReader, PageRun, ProcessMeta, RegionKind};
use ckpt_plan::*;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

static RESTORER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ckpt-restore.bin"));

/// Which process of a generation to restore.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// The generation must hold exactly one process.
    Only,
    Rank(i32),
    Vpid(i32),
}

/// Restores generation `generation` (default: newest complete) of `dir` in this process.
/// `step`: only the processes of that job step (Slurm: "batch", "0", ...). With a rank, the
/// process of that rank *and its descendants* are restored (a task that forked). Returns
/// only on error (on success the process image is replaced).
pub fn run(
    dir: &Path,
    generation: Option<u64>,
    which: Which,
    step: Option<&str>,
) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let cd = CkptDir::open(&dir)
        .with_context(|| format!("opening checkpoint directory {}", dir.display()))?;
    let gens = cd.generations()?;
    let gen = match generation {
        Some(n) => {
            let g = gens
                .iter()
                .find(|g| g.number == n)
                .with_context(|| format!("there is no generation {n} in {}", dir.display()))?;
            if let Some(p) = g.problem() {
                bail!(
                    "generation {n} in {} cannot be restored: {p}",
                    dir.display()
                );
            }
            g.clone()
        }
        None => match cd.newest_complete()? {
            Some(g) => g,
            None => {
                let mut msg = format!("{} holds no complete checkpoint", dir.display());
                for g in &gens {
                    if let Some(p) = g.problem() {
                        msg.push_str(&format!("\n  generation {}: {p}", g.number));
                    }
                }
                bail!(msg);
            }
        },
    };
    let manifest = gen
        .manifest
        .as_ref()
        .context("complete generation without manifest")?;
    let list = || {
        manifest
            .processes
            .iter()
            .map(|p| {
                format!(
                    "vpid {} ({}{})",
                    p.vpid,
                    p.program,
                    p.rank.map(|r| format!(", rank {r}")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The processes of the step asked for (every process when the images name no step).
    let mut selected: Vec<&ckpt_image::ManifestProcess> = manifest.processes.iter().collect();
    if let Some(s) = step {
        if manifest.processes.iter().any(|p| p.step.is_some()) {
            selected.retain(|p| p.step.as_deref() == Some(s));
            if selected.is_empty() {
                bail!(
                    "generation {} has no process of job step {s} [{}]",
                    gen.number,
                    list()
                );
            }
        }
    }
    let proc_ = match which {
        Which::Only if selected.len() == 1 && !ckpt_image::is_reexec_file(&selected[0].file) => {
            selected[0]
        }
        Which::Only => return restore_tree(&dir, &gen, manifest, &selected),
        Which::Rank(r) => {
            selected.retain(|p| p.rank == Some(r));
            match selected.len() {
                0 => bail!(
                    "generation {} has no process of rank {r}{} [{}]",
                    gen.number,
                    step.map(|s| format!(" in job step {s}"))
                        .unwrap_or_default(),
                    list()
                ),
                1 if !ckpt_image::is_reexec_file(&selected[0].file) => selected[0],
                // The task forked: restore its tree.
                _ => return restore_tree(&dir, &gen, manifest, &selected),
            }
        }
        Which::Vpid(v) => manifest
            .processes
            .iter()
            .find(|p| p.vpid == v)
            .with_context(|| {
                format!(
                    "generation {} has no process with vpid {v} [{}]",
                    gen.number,
                    list()
                )
            })?,
    };
    let img_path = gen.path.join(&proc_.file);
    let img = Loaded::open(&img_path)?;
    if !img.meta.zombies.is_empty() {
        // Exited children are re-created by the tree restore (restart area, stand-ins).
        return restore_tree(&dir, &gen, manifest, &[proc_]);
    }
    let socket = crate::coord::restart_socket(&dir)?;
    let info = serde_json::json!({
        "socket": socket,
        "ckpt_dir": dir.to_string_lossy(),
        "generation": gen.number,
    });
    let shared = shared_objects(&[&img])?;
    let socks = connected_sockets(&[&img], &dir, gen.number, &socket)?;
    let sysv = crate::sysv::recreate(&[&img.meta])?;
    let mut info = info;
    info["sysv"] = serde_json::json!(sysv);
    info["sockets"] = serde_json::json!(socks
        .iter()
        .map(|(i, fd)| serde_json::json!({"inode": i, "fd": fd}))
        .collect::<Vec<_>>());
    info["ptys"] = ptys_json(&pty_pairs(&[&img])?);
    let prepared = prepare(&img, &info, &shared)?;
    take_group(&img.meta);
    exec_restorer(prepared.plan_fd)
}

/// A job on a terminal whose root led its own process group (a job-control shell, or a
/// program such a shell started) leads one again: the restarting command (when it is not
/// a group leader already, e.g. run by `sh -c` or as a tmux command) moves into a new group
/// and, if its group had the terminal's foreground, takes the foreground with it. So the
/// root keeps its pgid (as a virtual id) and a shell in the job can hand the terminal to
/// its jobs and take it back. Without a terminal nothing changes (a batch system may track
/// its tasks by process group).
fn take_group(meta: &ProcessMeta) {
    if meta.pgid != meta.vpid {
        return;
    }
    // SAFETY: plain queries and job-control calls on our own process and terminal; the
    // signal mask is put back before returning.
    unsafe {
        let me = libc::getpid();
        if libc::getpgrp() == me || libc::getsid(0) == me {
            return;
        }
        let Some(tty) = (0..=2).find(|&fd| libc::isatty(fd) == 1) else {
            return;
        };
        let foreground = libc::tcgetpgrp(tty) == libc::getpgrp();
        if libc::setpgid(0, 0) != 0 || !foreground {
            return;
        }
        // Now in a background group: SIGTTOU must not stop us while taking the terminal.
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        libc::tcsetpgrp(tty, me);
        libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

/// A new pseudo-terminal pair for every pty of the generation (by index at checkpoint),
/// with the slave's termios and the window size the pair had; the bytes in flight are put
/// back by the process that drained them. Returns (index, master fd, slave fd), inherited
/// by every process of the tree (which keeps dups where it had the pair).
fn pty_pairs(imgs: &[&Loaded]) -> anyhow::Result<Vec<(u32, RawFd, RawFd)>> {
    let mut out: Vec<(u32, RawFd, RawFd)> = Vec::new();
    for l in imgs {
        for f in &l.meta.files {
            let FdKind::Pty { index, .. } = f.kind else {
                continue;
            };
            if out.iter().any(|(i, _, _)| *i == index) {
                continue;
            }
            let state = imgs
                .iter()
                .flat_map(|o| o.meta.files.iter())
                .find_map(|g| match &g.kind {
                    FdKind::Pty {
                        index: i,
                        state: Some(st),
                        ..
                    } if *i == index => Some(st.clone()),
                    _ => None,
                });
            // SAFETY: opening a new pair (no O_CLOEXEC: inherited across exec).
            let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
            // SAFETY: unlocking our own new master.
            if m < 0 || unsafe { libc::grantpt(m) } != 0 || unsafe { libc::unlockpt(m) } != 0 {
                bail!(
                    "creating a pseudo-terminal for pty {index}: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: TIOCGPTPEER (Linux 4.13+) opens the slave of our master.
            let mut s = unsafe { libc::ioctl(m, 0x5441, libc::O_RDWR | libc::O_NOCTTY) };
            if s < 0 {
                let mut name = [0 as libc::c_char; 64];
                // SAFETY: ptsname_r into a local buffer, then open of that NUL-terminated path.
                unsafe {
                    if libc::ptsname_r(m, name.as_mut_ptr(), name.len()) == 0 {
                        s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                    }
                }
            }
            if s < 0 {
                bail!(
                    "opening the slave of a new pseudo-terminal: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: wrapping our new fds to move them high.
            let (m, s) = unsafe {
                (
                    high(std::fs::File::from_raw_fd(m))?,
                    high(std::fs::File::from_raw_fd(s))?,
                )
            };
            if let Some(st) = state {
                // SAFETY: a zeroed termios filled from the image, set on our new slave;
                // the window size on our master.
                unsafe {
                    let mut t: libc::termios = std::mem::zeroed();
                    t.c_iflag = st.termios.iflag;
                    t.c_oflag = st.termios.oflag;
                    t.c_cflag = st.termios.cflag;
                    t.c_lflag = st.termios.lflag;
                    t.c_line = st.termios.line;
                    for (d, c) in t.c_cc.iter_mut().zip(st.termios.cc.iter()) {
                        *d = *c;
                    }
                    t.c_ispeed = t.c_cflag & libc::CBAUD;
                    t.c_ospeed = t.c_cflag & libc::CBAUD;
                    if libc::tcsetattr(s, libc::TCSANOW, &t) != 0 {
                        bail!(
                            "setting the modes of the new pty for pty {index}: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                    let w = libc::winsize {
                        ws_row: st.winsize[0],
                        ws_col: st.winsize[1],
                        ws_xpixel: st.winsize[2],
                        ws_ypixel: st.winsize[3],
                    };
                    libc::ioctl(m, libc::TIOCSWINSZ, &w);
                }
            }
            out.push((index, m, s));
        }
    }
    Ok(out)
}

fn ptys_json(p: &[(u32, RawFd, RawFd)]) -> serde_json::Value {
    serde_json::json!(p
        .iter()
        .map(|(i, m, s)| serde_json::json!({"index": i, "master_fd": m, "slave_fd": s}))
        .collect::<Vec<_>>())
}

/// One validated image, ready to be planned.
struct Loaded {
    path: std::path::PathBuf,
    meta: ProcessMeta,
    runs: Vec<PageRun>,
}

impl Loaded {
    /// Opens one image, validates its structure and checks it against this machine. The
    /// page data is not read here: the restorer checks each run's CRC-32C as it places it
    /// (reading a large image twice cost as much as the restore itself).
    fn open(path: &Path) -> anyhow::Result<Loaded> {
        let reader = ImageReader::open(path)?;
        let meta = reader.meta()?;
        let runs = reader.page_runs()?;
        // An incremental image: its parents must be there, be the very files it
        // references, and hold the referenced page data (structure only: the restorer
        // checks the CRCs). The restorer finds them next to this image by generation.
        let own_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        for p in reader.parents()? {
            if Some(&p.file) != own_name.as_ref() {
                bail!(
                    "{}: takes page data from {} of generation {}, not an image of the same name",
                    path.display(),
                    p.file,
                    p.generation
                );
            }
        }
        if reader.parents()?.len() > MAX_PARENTS {
            bail!(
                "{}: takes page data from more than {MAX_PARENTS} images",
                path.display()
            );
        }
        reader.open_parents(&runs)?;
        check_machine(&meta, path)?;
        check_files(&meta, path)?;
        Ok(Loaded {
            path: path.to_path_buf(),
            meta,
            runs,
        })
    }
}

/// The descriptors of one process's restore: its plan (the restorer's argument), and every
/// descriptor that belongs to it alone (closed in the other processes of a tree).
struct Prepared {
    plan_fd: RawFd,
    own_fds: Vec<RawFd>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// A new connected pair for every connected socket of the generation: a socketpair for
/// UNIX sockets, a new loopback TCP connection for TCP ones. The bytes that were waiting in
/// each end's receive queue are sent from the other end, so they wait there again (the
/// messages of a datagram or seqpacket pair one by one, keeping their boundaries). UNIX
/// datagram sockets with a name or a one-way connection are made here too (see
/// `unix_datagram_sockets`). A TCP connection whose other end is not among `imgs` (a
/// process restored by another `ckpt restart`, maybe on another host) is re-established
/// through the coordinator's rendezvous (see `rendezvous.rs`). Returns (socket inode at
/// checkpoint, fd) for every socket.
fn connected_sockets(
    imgs: &[&Loaded],
    dir: &Path,
    generation: u64,
    coordinator: &str,
) -> anyhow::Result<Vec<(u64, RawFd)>> {
    let mut ends: Vec<End> = Vec::new();
    for l in imgs {
        for f in &l.meta.files {
            if let FdKind::Socket {
                inode,
                domain,
                stype,
                state,
                local,
                remote,
                peer_inode,
                rx,
                messages,
                ..
            } = &f.kind
            {
                if let Some(e) = ends.iter_mut().find(|e| e.inode == *inode) {
                    e.holders += 1;
                } else {
                    ends.push(End {
                        holders: 1,
                        inode: *inode,
                        domain: *domain,
                        stype: *stype,
                        state: state.clone(),
                        local: unhex(local),
                        remote: unhex(remote),
                        peer: *peer_inode,
                        rx: unhex(rx),
                        messages: messages.iter().map(|(a, d)| (unhex(a), unhex(d))).collect(),
                        cwd: l.meta.attrs.cwd.clone(),
                    });
                }
            }
        }
    }
    // Ports the restored processes bind again.
    let bound_ports: Vec<u16> = ends
        .iter()
        .filter(|e| e.domain != libc::AF_UNIX && (e.state == "listening" || e.state == "bound"))
        .filter_map(|e| crate::rendezvous::sockaddr(&e.local).map(|a| a.port()))
        .collect();
    let mut out: Vec<(u64, RawFd)> = Vec::new();
    for i in 0..ends.len() {
        let e = &ends[i];
        if e.state != "connected" || out.iter().any(|(ino, _)| *ino == e.inode) {
            continue;
        }
        let udp = e.domain != libc::AF_UNIX && e.stype == libc::SOCK_DGRAM;
        if udp {
            continue; // connected again by its process
        }
        let j = ends.iter().position(|o| {
            o.inode != e.inode
                && o.state == "connected"
                && if e.domain == libc::AF_UNIX {
                    o.inode == e.peer && o.peer == e.inode
                } else {
                    o.local == e.remote && o.remote == e.local
                }
        });
        let Some(j) = j else {
            if e.domain == libc::AF_UNIX && e.stype == libc::SOCK_DGRAM {
                continue; // a one-way connection: `unix_datagram_sockets`
            }
            if e.domain == libc::AF_INET || e.domain == libc::AF_INET6 {
                let s = crate::rendezvous::reconnect(
                    dir,
                    coordinator,
                    generation,
                    &crate::rendezvous::RemoteEnd {
                        local: &e.local,
                        remote: &e.remote,
                        rx: &e.rx,
                    },
                )?;
                // SAFETY: moving our new socket high, without close-on-exec.
                let fd = unsafe { high(std::fs::File::from_raw_fd(s.into_raw_fd()))? };
                out.push((e.inode, fd));
                continue;
            }
            bail!(
                "socket:[{}] was connected to a UNIX socket of a process that is not restored with this one; restore them together (one ckpt restart of their process tree)",
                e.inode
            );
        };
        let (a, b) = if e.domain == libc::AF_UNIX {
            let mut sv = [0i32; 2];
            // SAFETY: socketpair into a local array (inherited across exec: no CLOEXEC).
            if unsafe { libc::socketpair(libc::AF_UNIX, e.stype, 0, sv.as_mut_ptr()) } != 0 {
                bail!("socketpair: {}", std::io::Error::last_os_error());
            }
            (sv[0], sv[1])
        } else {
            let v6 = e.domain == libc::AF_INET6;
            // The new connection's ports must not be ports that the restored processes
            // bind again (their listening and bound sockets): those binds would fail.
            let mut tries = 0;
            loop {
                let lst = std::net::TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })
                    .context("listening on loopback to re-create a TCP connection")?;
                let c = std::net::TcpStream::connect(lst.local_addr()?)
                    .context("re-creating a TCP connection")?;
                let (s, _) = lst.accept()?;
                let clash = [c.local_addr()?.port(), s.local_addr()?.port()]
                    .iter()
                    .any(|p| bound_ports.contains(p));
                tries += 1;
                if !clash || tries > 64 {
                    break (c.into_raw_fd(), s.into_raw_fd());
                }
            }
        };
        // SAFETY: wrapping our new fds to move them high and clear close-on-exec.
        let (a, b) = unsafe {
            (
                high(std::fs::File::from_raw_fd(a))?,
                high(std::fs::File::from_raw_fd(b))?,
            )
        };
        // What waited for end i is sent by end j's new socket, and vice versa.
        refill_end(&ends[i], b)?;
        refill_end(&ends[j], a)?;
        out.push((ends[i].inode, a));
        out.push((ends[j].inode, b));
    }
    unix_datagram_sockets(&ends, &mut out)?;
    // A listening or bound socket shared by several processes (inherited across fork: a
    // pre-forked server, a shared UDP socket) is made once here and inherited by all.
    for e in &ends {
        let shared = e.holders > 1
            && (e.state == "listening"
                || e.state == "bound"
                || (e.state == "connected"
                    && e.domain != libc::AF_UNIX
                    && e.stype == libc::SOCK_DGRAM));
        if shared && !out.iter().any(|(ino, _)| *ino == e.inode) {
            let fd = shared_socket(e).with_context(|| format!("socket:[{}]", e.inode))?;
            out.push((e.inode, fd));
        }
    }
    Ok(out)
}

/// A new socket bound (and listening, or connected for UDP) like `e`.
fn shared_socket(e: &End) -> anyhow::Result<RawFd> {
    // SAFETY: a new socket of the recorded family and type.
    let fd = unsafe { libc::socket(e.domain, e.stype, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: wrapping our new fd to move it high and clear close-on-exec.
    let fd = high(unsafe { std::fs::File::from_raw_fd(fd) })?;
    let one: libc::c_int = 1;
    if e.domain != libc::AF_UNIX {
        // SAFETY: setsockopt on our new socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                4,
            )
        };
    }
    let r = in_dir(&e.cwd, || {
        if let Some(p) = (e.domain == libc::AF_UNIX)
            .then(|| unix_path(&e.local))
            .flatten()
        {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&p)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(&p);
            }
        }
        // SAFETY: bind to the recorded address bytes.
        unsafe {
            libc::bind(
                fd,
                e.local.as_ptr() as *const libc::sockaddr,
                e.local.len() as u32,
            )
        }
    });
    if r != 0 {
        bail!("binding again: {}", std::io::Error::last_os_error());
    }
    // SAFETY: listen / connect on our bound socket.
    if e.state == "listening" && unsafe { libc::listen(fd, 128) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    if e.state == "connected"
        // SAFETY: as above.
        && unsafe { libc::connect(fd, e.remote.as_ptr() as *const libc::sockaddr, e.remote.len() as u32) } != 0
    {
        bail!("connecting again: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// A socket of the generation, as `connected_sockets` sees it.
struct End {
    /// How many processes hold it.
    holders: usize,
    inode: u64,
    domain: i32,
    stype: i32,
    state: String,
    local: Vec<u8>,
    remote: Vec<u8>,
    peer: u64,
    rx: Vec<u8>,
    messages: Vec<(Vec<u8>, Vec<u8>)>,
    /// The working directory of its process (relative socket paths).
    cwd: String,
}

/// Sends what waited in `e`'s receive queue from `from`, its new peer.
fn refill_end(e: &End, from: RawFd) -> anyhow::Result<()> {
    use std::io::Write as _;
    if e.stype == libc::SOCK_STREAM {
        // SAFETY: borrowing our fd for writes without closing it.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(from) });
        return f.write_all(&e.rx).context("refilling a socket");
    }
    for (k, (_, data)) in e.messages.iter().enumerate() {
        // SAFETY: one message from our buffer, without waiting.
        let n = unsafe {
            libc::send(
                from,
                data.as_ptr() as *const libc::c_void,
                data.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n != data.len() as isize {
            bail!(
                "putting back message {k} of {} of socket:[{}]: {}",
                e.messages.len(),
                e.inode,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Runs `f` with the working directory `cwd` (relative socket paths), then returns.
fn in_dir<T>(cwd: &str, f: impl FnOnce() -> T) -> T {
    let back = std::env::current_dir().ok();
    let _ = std::env::set_current_dir(cwd);
    let r = f();
    if let Some(b) = back {
        let _ = std::env::set_current_dir(b);
    }
    r
}

/// The file of a UNIX path name (None for abstract and unnamed addresses).
fn unix_path(sa: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if sa.len() <= 2 || sa[2] == 0 {
        return None;
    }
    let end = sa[2..]
        .iter()
        .position(|&c| c == 0)
        .map(|p| p + 2)
        .unwrap_or(sa.len());
    Some(std::ffi::OsStr::from_bytes(&sa[2..end]).into())
}

/// A new UNIX datagram socket bound to `sa` (a stale socket file in the way is removed).
fn bound_datagram(sa: &[u8], cwd: &str) -> anyhow::Result<RawFd> {
    // SAFETY: a new socket, bound below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    let r = in_dir(cwd, || {
        if let Some(p) = unix_path(sa) {
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(&p)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(&p);
            }
        }
        // SAFETY: bind to the recorded address bytes.
        unsafe { libc::bind(fd, sa.as_ptr() as *const libc::sockaddr, sa.len() as u32) }
    });
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our socket.
        unsafe { libc::close(fd) };
        bail!("binding a datagram socket to {} again: {e}", show_unix(sa));
    }
    Ok(fd)
}

fn show_unix(sa: &[u8]) -> String {
    if sa.len() <= 2 {
        return "(unnamed)".into();
    }
    let name = String::from_utf8_lossy(&sa[2..])
        .trim_end_matches('\0')
        .to_string();
    if sa[2] == 0 {
        format!("@{}", &name[1.min(name.len())..])
    } else {
        name
    }
}

/// UNIX datagram sockets that have a name, or a connection to a named socket, are made by
/// `ckpt restart`: all of them are bound first, then connected, then the datagrams that
/// waited in each are sent to it again from their sender's address — by the generation's
/// socket of that name, or by a temporary socket bound to it — so `recvfrom` tells the
/// same sender and a reply reaches it.
fn unix_datagram_sockets(ends: &[End], out: &mut Vec<(u64, RawFd)>) -> anyhow::Result<()> {
    let mut made: Vec<(usize, RawFd)> = Vec::new();
    for (i, e) in ends.iter().enumerate() {
        if e.domain != libc::AF_UNIX
            || e.stype != libc::SOCK_DGRAM
            || out.iter().any(|(ino, _)| *ino == e.inode)
        {
            continue;
        }
        let named = e.local.len() > 2;
        if !named && e.state != "connected" {
            continue; // an unnamed, unconnected socket: made by its process
        }
        let fd = if named {
            bound_datagram(&e.local, &e.cwd).with_context(|| format!("socket:[{}]", e.inode))?
        } else {
            // SAFETY: a new unnamed socket.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) }
        };
        // SAFETY: wrapping our new fd to move it high and clear close-on-exec.
        let fd = high(unsafe { std::fs::File::from_raw_fd(fd) })?;
        made.push((i, fd));
    }
    for &(i, fd) in &made {
        let e = &ends[i];
        if e.state == "connected" {
            // SAFETY: connect to the recorded peer address.
            let r = in_dir(&e.cwd, || unsafe {
                libc::connect(
                    fd,
                    e.remote.as_ptr() as *const libc::sockaddr,
                    e.remote.len() as u32,
                )
            });
            if r != 0 {
                bail!(
                    "socket:[{}]: connecting to {} again: {}",
                    e.inode,
                    show_unix(&e.remote),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    for &(i, fd) in &made {
        let e = &ends[i];
        if e.messages.is_empty() {
            continue;
        }
        if e.local.len() <= 2 {
            bail!(
                "socket:[{}] is unnamed and has {} datagrams waiting that no socket of the job can send again",
                e.inode,
                e.messages.len()
            );
        }
        let _ = fd;
        for (k, (sender, data)) in e.messages.iter().enumerate() {
            let own = made
                .iter()
                .find(|(j, _)| sender.len() > 2 && ends[*j].local == *sender)
                .map(|(_, f)| *f);
            let from = match own {
                Some(f) => f,
                None if sender.len() > 2 => bound_datagram(sender, &e.cwd)?,
                // SAFETY: a new unnamed socket.
                None => unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) },
            };
            // SAFETY: one datagram from our buffer to the receiver's address.
            let n = in_dir(&e.cwd, || unsafe {
                libc::sendto(
                    from,
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    libc::MSG_DONTWAIT,
                    e.local.as_ptr() as *const libc::sockaddr,
                    e.local.len() as u32,
                )
            });
            let err = std::io::Error::last_os_error();
            if own.is_none() {
                // SAFETY: closing our temporary sender; its file goes too.
                unsafe { libc::close(from) };
                if let Some(p) = unix_path(sender) {
                    in_dir(&e.cwd, || std::fs::remove_file(p).ok());
                }
            }
            if n != data.len() as isize {
                bail!(
                    "putting back datagram {k} of {} of socket:[{}] ({}): {err}",
                    e.messages.len(),
                    e.inode,
                    show_unix(&e.local)
                );
            }
        }
    }
    for (i, fd) in made {
        out.push((ends[i].inode, fd));
    }
    Ok(())
}

/// One new memfd per shared-memory object of the generation, filled with the pages its
/// saving process stored; named `shm:<ino>` for the plan.
fn shared_objects(imgs: &[&Loaded]) -> anyhow::Result<Vec<(String, RawFd)>> {
    use std::os::unix::fs::FileExt;
    let mut out: Vec<(String, RawFd)> = Vec::new();
    let mut sizes: Vec<(u64, u64)> = Vec::new();
    for l in imgs {
        for r in &l.meta.regions {
            if let RegionKind::SharedMem { ino, pgoff, .. } = r.kind {
                let end = pgoff * 4096 + (r.end - r.start);
                match sizes.iter_mut().find(|(i, _)| *i == ino) {
                    Some((_, s)) => *s = (*s).max(end),
                    None => sizes.push((ino, end)),
                }
            }
        }
    }
    for (ino, size) in sizes {
        // A file on tmpfs is written back at its path (emptied first: pages the image
        // does not hold were zero), then mapped; other objects become a memfd.
        let tmpfs = imgs
            .iter()
            .flat_map(|l| &l.meta.regions)
            .find_map(|r| match &r.kind {
                RegionKind::SharedMem {
                    ino: i,
                    name,
                    file: Some(t),
                    ..
                } if *i == ino => Some((name.clone(), *t)),
                _ => None,
            });
        let (fd, size) = match &tmpfs {
            Some((path, t)) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(t.mode)
                    .open(path)
                    .with_context(|| {
                        format!("writing back {path} (a tmpfs file the program maps)")
                    })?;
                (high(f)?, t.size)
            }
            None => (memfd(&format!("ckpt-shm-{ino}"), false, &[])?, size),
        };
        // SAFETY: sizing our new memfd or file.
        if unsafe { libc::ftruncate(fd, size as i64) } != 0 {
            bail!(
                "sizing shared memory object {ino}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: wrapping our fd for positioned writes; released without closing.
        let f = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut filled = false;
        for l in imgs {
            let saved: Vec<&ckpt_image::Region> = l
                .meta
                .regions
                .iter()
                .filter(|r| matches!(r.kind, RegionKind::SharedMem { ino: i, saved: true, .. } if i == ino))
                .collect();
            if saved.is_empty() || filled {
                continue;
            }
            let reader = ImageReader::open(&l.path)?;
            for r in saved {
                let RegionKind::SharedMem { pgoff, .. } = r.kind else {
                    continue;
                };
                for run in l
                    .runs
                    .iter()
                    .filter(|x| x.addr >= r.start && x.addr < r.end)
                {
                    let mut buf = vec![0u8; run.len as usize];
                    reader.read_run(run, &mut buf)?;
                    f.write_all_at(&buf, pgoff * 4096 + (run.addr - r.start))
                        .with_context(|| format!("filling shared memory object {ino}"))?;
                }
            }
            filled = true;
        }
        if let Some((path, _)) = &tmpfs {
            f.sync_data()
                .with_context(|| format!("writing back {path}"))?;
        }
        let _ = f.into_raw_fd();
        out.push((format!("shm:{ino}"), fd));
    }
    Ok(out)
}

fn prepare(
    img: &Loaded,
    info: &serde_json::Value,
    shared: &[(String, RawFd)],
) -> anyhow::Result<Prepared> {
    let (meta, img_path) = (&img.meta, &img.path);
    // Descriptors handed to the restorer, placed high so that none is 0-2.
    let image_fd = high(
        std::fs::File::open(img_path).with_context(|| format!("opening {}", img_path.display()))?,
    )?;
    let mut close = vec![image_fd];
    let mut file_fds: Vec<(String, RawFd)> = Vec::new();
    for r in &meta.regions {
        if let RegionKind::File { path, .. } = &r.kind {
            if !file_fds.iter().any(|(p, _)| p == path) {
                // A shared writable mapping needs a writable descriptor.
                let rw = meta.regions.iter().any(|o| {
                    o.shared
                        && o.prot.write
                        && matches!(&o.kind, RegionKind::File { path: p, .. } if p == path)
                });
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(rw)
                    .open(path)
                    .with_context(|| format!("opening {path} (mapped by the program)"))?;
                let fd = high(f)?;
                file_fds.push((path.clone(), fd));
                close.push(fd);
            }
        }
    }
    // Shared-memory objects: mapped like files, closed by the restorer, but shared with the
    // other processes of a tree (not in `own_fds`).
    let own_count = close.len();
    for (name, fd) in shared {
        file_fds.push((name.clone(), *fd));
        close.push(*fd);
    }
    if close.len() + 1 > MAX_CLOSE_FDS {
        bail!(
            "the program maps {} distinct files; at most {} are supported",
            file_fds.len(),
            MAX_CLOSE_FDS - 2
        );
    }
    let info_fd = memfd("ckpt-restart-info", false, info.to_string().as_bytes())?;
    let (header, ops) = build_plan(
        meta, &img.runs, image_fd, info_fd, &file_fds, &close, img_path,
    )?;
    let mut plan_bytes = Vec::new();
    // SAFETY: PlanHeader and Op are repr(C) plain data.
    unsafe {
        plan_bytes.extend_from_slice(as_bytes(&header));
        for op in &ops {
            plan_bytes.extend_from_slice(as_bytes(op));
        }
    }
    let plan_fd = memfd("ckpt-restore-plan", false, &plan_bytes)?;
    let mut own_fds = close[..own_count].to_vec();
    own_fds.push(info_fd);
    own_fds.push(plan_fd);
    Ok(Prepared { plan_fd, own_fds })
}

/// Replaces this process with the restorer running `plan_fd` (returns only on error).
fn exec_restorer(plan_fd: RawFd) -> anyhow::Result<()> {
    let exe_fd = memfd("ckpt-restore", true, RESTORER)?;
    let argv0 = CString::new("ckpt-restore").unwrap();
    let argv1 = CString::new(plan_fd.to_string()).unwrap();
    let argv = [argv0.as_ptr(), argv1.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: execveat of our memfd with NUL-terminated argv/envp; returns only on error.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe_fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    bail!(
        "cannot execute the restorer: {}",
        std::io::Error::last_os_error()
    )
}

/// Layout of the shared restart area (a memfd every process of a tree maps): a header,
/// then one (vpid, real pid) pair per process. The runtime reads it after a restore.
const AREA_MAGIC: u32 = 0x434b_5052; // "RPKC"
const AREA_HEADER: usize = 16; // magic u32, n u32, arrived u32 (futex), pad u32

/// One process of a tree to restore: from its image, or re-executed (a launcher such as
/// srun, see `ckpt_image::reexec`).
struct Node {
    vpid: i32,
    vppid: i32,
    pgid: i32,
    sid: i32,
    program: String,
    kind: NodeKind,
}

enum NodeKind {
    /// Index into the loaded images.
    Image(usize),
    /// Executed again; the old job step whose tasks its new step restores, if known.
    Reexec(Box<ckpt_image::ReexecSpec>, Option<String>),
}

/// Restores the processes `procs` of a generation as one process tree: this process becomes
/// the root; the others are forked from their restored parents' places before each execs its
/// restorer (or, for a re-executed launcher, its program again). Pipes between processes
/// are created here, before forking, and inherited.
fn restore_tree(
    dir: &Path,
    gen: &ckpt_image::GenerationInfo,
    manifest: &ckpt_image::Manifest,
    procs: &[&ckpt_image::ManifestProcess],
) -> anyhow::Result<()> {
    let mut imgs = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    for p in procs {
        let path = gen.path.join(&p.file);
        if ckpt_image::is_reexec_file(&p.file) {
            let s = ckpt_image::ReexecSpec::load(&path)?;
            if s.uid != uid {
                bail!(
                    "{}: written by uid {}, but this restart runs as uid {uid}: a restart never changes user",
                    path.display(),
                    s.uid
                );
            }
            nodes.push(Node {
                vpid: s.vpid,
                vppid: s.vppid,
                pgid: 0,
                sid: 0,
                program: s.program.clone(),
                kind: NodeKind::Reexec(Box::new(s), None),
            });
        } else {
            let l = Loaded::open(&path)?;
            nodes.push(Node {
                vpid: l.meta.vpid,
                vppid: l.meta.vppid,
                pgid: l.meta.pgid,
                sid: l.meta.sid,
                program: l.meta.program.clone(),
                kind: NodeKind::Image(imgs.len()),
            });
            imgs.push(l);
        }
    }
    let vpids: Vec<i32> = nodes.iter().map(|n| n.vpid).collect();
    let roots: Vec<usize> = (0..nodes.len())
        .filter(|&i| !vpids.contains(&nodes[i].vppid))
        .collect();
    if roots.len() != 1 {
        let names: Vec<String> = roots
            .iter()
            .map(|&i| format!("vpid {} ({})", nodes[i].vpid, nodes[i].program))
            .collect();
        bail!(
            "generation {} holds {} separate process trees [{}]; restore them one by one with --vpid (a process whose parent exited is its own tree)",
            gen.number,
            roots.len(),
            names.join(", ")
        );
    }
    let root_node = roots[0];
    let NodeKind::Image(root) = nodes[root_node].kind else {
        bail!(
            "the root of the process tree, vpid {} ({}), is a launcher that is re-executed, not restored: nothing to restore",
            nodes[root_node].vpid,
            nodes[root_node].program
        );
    };
    // Re-executed launchers (srun) start their job step again; its tasks are restored from
    // the images of the step the launcher ran. Running launchers and the steps that still
    // had processes at the checkpoint correspond one to one, in the order they started.
    let mut old_steps: Vec<u64> = manifest
        .processes
        .iter()
        .filter(|p| !procs.iter().any(|q| q.vpid == p.vpid))
        .filter_map(|p| p.step.as_deref().and_then(|s| s.parse::<u64>().ok()))
        .collect();
    old_steps.sort_unstable();
    old_steps.dedup();
    let mut launchers: Vec<usize> = (0..nodes.len())
        .filter(|&i| matches!(nodes[i].kind, NodeKind::Reexec(..)))
        .collect();
    launchers.sort_by_key(|&i| nodes[i].vpid);
    if launchers.len() != old_steps.len() && !launchers.is_empty() {
        eprintln!(
            "ckpt: warning: {} launcher(s) to re-execute but {} job step(s) with images in generation {}: launchers are matched to steps in start order; a launcher without a step starts it from the beginning",
            launchers.len(),
            old_steps.len(),
            gen.number
        );
    }
    for (k, &i) in launchers.iter().enumerate() {
        if let (Some(s), NodeKind::Reexec(_, slot)) = (old_steps.get(k), &mut nodes[i].kind) {
            *slot = Some(s.to_string());
        }
    }
    if imgs.iter().any(|l| l.meta.host != imgs[root].meta.host) {
        bail!(
            "generation {} spans several hosts; multi-host restart is not supported yet",
            gen.number
        );
    }

    // Pipes with ends in several processes: one new pipe each, inherited by every process.
    let mut shared: Vec<(u64, RawFd, RawFd)> = Vec::new();
    for l in &imgs {
        for f in &l.meta.files {
            if let FdKind::Pipe { inode, .. } = f.kind {
                let holders =
                    imgs.iter()
                        .filter(|o| {
                            o.meta.files.iter().any(
                                |g| matches!(g.kind, FdKind::Pipe { inode: i, .. } if i == inode),
                            )
                        })
                        .count();
                if holders > 1 && !shared.iter().any(|(i, _, _)| *i == inode) {
                    let mut p = [0i32; 2];
                    // SAFETY: pipe2 into a local array (no O_CLOEXEC: inherited across exec).
                    if unsafe { libc::pipe2(p.as_mut_ptr(), 0) } != 0 {
                        bail!("pipe2: {}", std::io::Error::last_os_error());
                    }
                    // SAFETY: wrapping our new fds to move them high.
                    let (r, w) = unsafe {
                        (
                            high(std::fs::File::from_raw_fd(p[0]))?,
                            high(std::fs::File::from_raw_fd(p[1]))?,
                        )
                    };
                    shared.push((inode, r, w));
                }
            }
        }
    }
    // Exited children not yet waited for: (parent's node index, description); each gets
    // a place in the area after the living processes.
    let zombies: Vec<(usize, ckpt_image::Zombie)> = imgs
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            let node = nodes
                .iter()
                .position(|x| matches!(x.kind, NodeKind::Image(k) if k == i))
                .unwrap_or(i);
            l.meta.zombies.iter().map(move |z| (node, z.clone()))
        })
        .collect();
    // The shared area: pid map, the restart barrier (re-executed launchers do not take part
    // in it: they count as arrived), the stand-ins' release words.
    let live = nodes.len();
    let n = live + zombies.len();
    let area_len = AREA_HEADER + n * 12;
    let mut init = vec![0u8; area_len];
    init[0..4].copy_from_slice(&AREA_MAGIC.to_le_bytes());
    init[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    let reexecs = nodes
        .iter()
        .filter(|x| matches!(x.kind, NodeKind::Reexec(..)))
        .count() as u32;
    init[8..12].copy_from_slice(&reexecs.to_le_bytes());
    let area_fd = memfd("ckpt-restart-area", false, &init)?;
    // SAFETY: mapping our memfd shared; inherited by every forked process.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            area_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            area_fd,
            0,
        )
    };
    if area == libc::MAP_FAILED {
        bail!(
            "mmap of the restart area: {}",
            std::io::Error::last_os_error()
        );
    }
    let socket = crate::coord::restart_socket(dir)?;
    let pipes_json: Vec<serde_json::Value> = shared
        .iter()
        .map(|(i, r, w)| serde_json::json!({"inode": i, "read_fd": r, "write_fd": w}))
        .collect();
    let refs: Vec<&Loaded> = imgs.iter().collect();
    let shared_mem = shared_objects(&refs)?;
    let metas: Vec<&ProcessMeta> = imgs.iter().map(|l| &l.meta).collect();
    let sysv = crate::sysv::recreate(&metas)?;
    let socks = connected_sockets(&refs, dir, gen.number, &socket)?;
    let ptys = ptys_json(&pty_pairs(&refs)?);
    let socks_json: Vec<serde_json::Value> = socks
        .iter()
        .map(|(i, fd)| serde_json::json!({"inode": i, "fd": fd}))
        .collect();
    let mut prepared = Vec::new();
    for (k, l) in imgs.iter().enumerate() {
        let node_index = nodes
            .iter()
            .position(|x| matches!(x.kind, NodeKind::Image(i) if i == k))
            .unwrap_or(k);
        let info = serde_json::json!({
            "socket": socket,
            "ckpt_dir": dir.to_string_lossy(),
            "generation": gen.number,
            "area_fd": area_fd,
            "area_index": node_index,
            "pipes": pipes_json,
            "sockets": socks_json,
            "ptys": ptys,
            "sysv": sysv,
        });
        prepared.push(prepare(l, &info, &shared_mem)?);
    }
    // Fork the tree: each process forks its children (in the order they were born, vpid
    // order), then becomes its own restored self.
    let mut me = root_node;
    take_group(&imgs[root].meta);
    let mut queue: Vec<usize> = Vec::new();
    loop {
        record_in_area(area, me, nodes[me].vpid);
        set_group(&nodes, me, area, n);
        let mut kids: Vec<usize> = (0..live)
            .filter(|&i| nodes[i].vppid == nodes[me].vpid && i != me)
            .collect();
        kids.sort_by_key(|&i| nodes[i].vpid);
        queue.clear();
        for (k, (_, z)) in zombies.iter().enumerate().filter(|(_, (p, _))| *p == me) {
            let idx = live + k;
            // SAFETY: as below; the child only runs `stand_in`, which never returns.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                bail!("fork: {}", std::io::Error::last_os_error());
            }
            if pid == 0 {
                stand_in(area, n, idx, z);
            }
            record_pid_in_area(area, idx, z.vpid, pid);
        }
        let mut became_child = None;
        for c in kids {
            // SAFETY: this process is single-threaded; the child only runs this function's
            // plain code and then execs.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                bail!("fork: {}", std::io::Error::last_os_error());
            }
            if pid == 0 {
                became_child = Some(c);
                break;
            }
        }
        match became_child {
            Some(c) => me = c,
            None => break,
        }
    }
    let me = match &nodes[me].kind {
        NodeKind::Image(k) => *k,
        NodeKind::Reexec(spec, step) => reexec(spec, step.as_deref(), gen.number),
    };
    // Keep only what belongs to this process (and the shared pipes and area).
    for (k, p) in prepared.iter().enumerate() {
        if k != me {
            for fd in &p.own_fds {
                // SAFETY: closing another process's descriptors in this one.
                unsafe { libc::close(*fd) };
            }
        }
    }
    exec_restorer(prepared[me].plan_fd)
}

fn record_in_area(area: *mut libc::c_void, index: usize, vpid: i32) {
    // SAFETY: getpid has no preconditions.
    record_pid_in_area(area, index, vpid, unsafe { libc::getpid() });
}

fn record_pid_in_area(area: *mut libc::c_void, index: usize, vpid: i32, pid: i32) {
    // SAFETY: the area holds n pairs after the header; index < n.
    unsafe {
        let p = (area as *mut u8).add(AREA_HEADER + index * 8) as *mut i32;
        p.write_volatile(vpid);
        p.add(1).write_volatile(pid);
    }
}

/// The stand-in of a child that had ended before the checkpoint: it takes the child's
/// group and name, counts as arrived at the tree barrier, waits until its restored parent
/// releases it (after the parent's signal dispositions are back, see the runtime's
/// `zombies`), and ends the recorded way. Never returns.
fn stand_in(area: *mut libc::c_void, n: usize, index: usize, z: &ckpt_image::Zombie) -> ! {
    // SAFETY: a freshly forked single-threaded child using raw libc calls on its own state
    // and on the shared area (index < n).
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        if z.sid == z.vpid {
            libc::setsid();
        }
        if z.pgid == z.vpid {
            libc::setpgid(0, 0);
        } else if let Some(r) = real_in_area(area, n, z.pgid) {
            libc::setpgid(0, r);
        }
        let mut name = [0u8; 16];
        let b = z.comm.as_bytes();
        name[..b.len().min(15)].copy_from_slice(&b[..b.len().min(15)]);
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let base = area as *mut u8;
        let arrived = &*(base.add(8) as *const std::sync::atomic::AtomicU32);
        arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        libc::syscall(
            libc::SYS_futex,
            arrived.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
        );
        let w =
            &*(base.add(AREA_HEADER + n * 8 + index * 4) as *const std::sync::atomic::AtomicU32);
        while w.load(std::sync::atomic::Ordering::Acquire) == 0 {
            let ts = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAIT, 0, &ts);
        }
        end_as(z)
    }
}

/// Ends this process the way `z` ended: the same exit status, or the same signal (with
/// no core dump).
fn end_as(z: &ckpt_image::Zombie) -> ! {
    // SAFETY: raw calls ending this process.
    unsafe {
        if z.killed {
            let rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &rl);
            libc::signal(z.code, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, z.code);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            // Raw calls: a preloaded runtime must not translate these pids.
            libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), z.code);
            libc::_exit(128 + z.code)
        }
        libc::_exit(z.code)
    }
}

fn real_in_area(area: *mut libc::c_void, n: usize, vpid: i32) -> Option<i32> {
    for i in 0..n {
        // SAFETY: reading pairs written by processes forked before us.
        let (v, r) = unsafe {
            let p = (area as *mut u8).add(AREA_HEADER + i * 8) as *const i32;
            (p.read_volatile(), p.add(1).read_volatile())
        };
        if v == vpid && r != 0 {
            return Some(r);
        }
    }
    None
}

/// Executes a launcher again in this (forked) process, in place of restoring it: its
/// program, arguments, start-up environment and directory, with stdin/stdout/stderr
/// inherited. It keeps its vpid (`CKPT_VPID`) so that its restored parent still waits for
/// it, and its new job step restores the tasks of `step` (`CKPT_RESTORE_STEP`). Never
/// returns.
fn reexec(spec: &ckpt_image::ReexecSpec, step: Option<&str>, generation: u64) -> ! {
    let mut env: Vec<CString> = spec
        .env
        .iter()
        .filter(|e| {
            ![
                "CKPT_VPID=",
                "CKPT_RESTORE_STEP=",
                "CKPT_RESTORE_GEN=",
                "CKPT_RESTART=",
            ]
            .iter()
            .any(|k| e.starts_with(k))
        })
        .filter_map(|e| CString::new(e.as_str()).ok())
        .collect();
    let extra = [
        Some(format!("CKPT_VPID={}:{}", spec.vpid, spec.vppid)),
        step.map(|s| format!("CKPT_RESTORE_STEP={s}")),
        step.map(|_| format!("CKPT_RESTORE_GEN={generation}")),
    ];
    env.extend(
        extra
            .into_iter()
            .flatten()
            .filter_map(|e| CString::new(e).ok()),
    );
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .filter_map(|a| CString::new(a.as_str()).ok())
        .collect();
    let exe = CString::new(spec.exe.as_str()).unwrap_or_default();
    let cwd = CString::new(spec.cwd.as_str()).unwrap_or_default();
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: in the forked child: close every descriptor above stdio (the other processes'
    // objects, the area), change directory and exec with NUL-terminated arrays that live
    // until execve.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        if libc::chdir(cwd.as_ptr()) != 0 {
            eprintln!(
                "ckpt: re-executing {} (vpid {}): cannot enter {}: {}; staying in the current directory",
                spec.program,
                spec.vpid,
                spec.cwd,
                std::io::Error::last_os_error()
            );
        }
        libc::execve(exe.as_ptr(), argp.as_ptr(), envp.as_ptr());
    }
    eprintln!(
        "ckpt: cannot re-execute {} (vpid {}) as {}: {}",
        spec.program,
        spec.vpid,
        spec.exe,
        std::io::Error::last_os_error()
    );
    // SAFETY: ending the forked child without running the parent's exit handlers.
    unsafe { libc::_exit(127) }
}

/// Sessions and process groups as they were (for processes other than the root, which
/// stays in the group of the shell that runs `ckpt restart`; re-executed launchers stay in
/// their parent's).
fn set_group(nodes: &[Node], me: usize, area: *mut libc::c_void, n: usize) {
    let m = &nodes[me];
    let is_root = !nodes.iter().any(|o| o.vpid == m.vppid);
    if is_root || matches!(m.kind, NodeKind::Reexec(..)) {
        return;
    }
    if m.sid == m.vpid {
        // SAFETY: setsid in a freshly forked child (never a group leader yet).
        unsafe { libc::setsid() };
    }
    if m.pgid == m.vpid {
        // SAFETY: becoming a group leader.
        unsafe { libc::setpgid(0, 0) };
    } else if let Some(r) = real_in_area(area, n, m.pgid) {
        // SAFETY: joining the group of a process restored before us.
        unsafe { libc::setpgid(0, r) };
    }
}

fn high(f: std::fs::File) -> anyhow::Result<RawFd> {
    // SAFETY: duplicating an fd we own to a number >= 100 without close-on-exec.
    let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 100) };
    if fd < 0 {
        bail!("fcntl(F_DUPFD): {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn memfd(name: &str, cloexec: bool, data: &[u8]) -> anyhow::Result<RawFd> {
    let c = CString::new(name).unwrap();
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), if cloexec { libc::MFD_CLOEXEC } else { 0 }) };
    if fd < 0 {
        bail!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: we own the new fd.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).context("writing a memfd")?;
    std::io::Seek::rewind(&mut f).context("rewinding a memfd")?;
    let f = f.into_raw_fd();
    if cloexec {
        return Ok(f);
    }
    // SAFETY: move it high too, keep it open across exec.
    let h = unsafe { libc::fcntl(f, libc::F_DUPFD, 100) };
    // SAFETY: closing the original number.
    unsafe { libc::close(f) };
    if h < 0 {
        bail!("fcntl(F_DUPFD): {}", std::io::Error::last_os_error());
    }
    Ok(h)
}

type VdsoGroup = (Option<(u64, u64)>, Vec<(String, u64)>);

/// The current process's [vdso] extent and the kernel's vdso group sizes by name.
fn own_vdso() -> VdsoGroup {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut vdso = None;
    let mut sizes = Vec::new();
    for l in maps.lines() {
        let name = l.split_whitespace().nth(5).unwrap_or("");
        if !matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]") {
            continue;
        }
        let range = l.split_whitespace().next().unwrap_or("");
        let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap_or(0),
            u64::from_str_radix(b, 16).unwrap_or(0),
        );
        if name == "[vdso]" {
            vdso = Some((a, b));
        }
        sizes.push((name.to_string(), b - a));
    }
    (vdso, sizes)
}

fn fnv(start: u64, end: u64) -> u64 {
    // SAFETY: [start, end) is this process's own [vdso], always readable.
    let b = unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn xcr0() -> u64 {
    let c = std::arch::x86_64::__cpuid(1);
    if c.ecx & (1 << 27) == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is valid when OSXSAVE is set.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    ((hi as u64) << 32) | lo as u64
}

/// Refuses an image this machine cannot run: other kernel build (cached vdso pointers),
/// CPU register state the kernel here does not save, another user.
fn check_machine(meta: &ProcessMeta, img: &Path) -> anyhow::Result<()> {
    let here = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let req = &meta.requirements;
    if req.kernel_release != here {
        bail!(
            "{}: the image was taken under kernel {} but this machine runs {}; restore on a machine with the same kernel build",
            img.display(),
            req.kernel_release,
            here
        );
    }
    let (vdso, sizes) = own_vdso();
    if let Some((a, b)) = vdso {
        if req.vdso_hash != 0 && fnv(a, b) != req.vdso_hash {
            bail!("{}: the kernel's vdso differs from the checkpointed one (same release, other build?)", img.display());
        }
    }
    for r in &meta.regions {
        let name = match r.kind {
            RegionKind::Vdso => "[vdso]",
            RegionKind::Vvar => "[vvar]",
            RegionKind::VvarVclock => "[vvar_vclock]",
            _ => continue,
        };
        let here = sizes.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        if here != Some(r.end - r.start) {
            bail!(
                "{}: {name} is {:?} bytes here but was {} at checkpoint time",
                img.display(),
                here,
                r.end - r.start
            );
        }
    }
    let x = xcr0();
    if req.xsave_features & !x != 0 {
        bail!(
            "{}: the image holds CPU register state (XCR0 {:#x}) this machine does not provide (XCR0 {:#x})",
            img.display(),
            req.xsave_features,
            x
        );
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid != meta.uid && uid != 0 {
        bail!(
            "{}: the image belongs to uid {}, you are uid {uid}",
            img.display(),
            meta.uid
        );
    }
    if uid != meta.uid {
        bail!("{}: the image belongs to uid {}; restore it as that user (a restore never changes identity)", img.display(), meta.uid);
    }
    Ok(())
}

/// Mapped files must be the very files of the checkpoint; descriptors' files must exist.
fn check_files(meta: &ProcessMeta, img: &Path) -> anyhow::Result<()> {
    for r in &meta.regions {
        if r.start < RESTORER_BASE + RESTORER_SPAN && r.end > RESTORER_BASE {
            bail!(
                "{}: region {:#x}-{:#x} overlaps the restorer's fixed window {:#x}-{:#x}",
                img.display(),
                r.start,
                r.end,
                RESTORER_BASE,
                RESTORER_BASE + RESTORER_SPAN
            );
        }
        if let RegionKind::File {
            path,
            dev,
            ino,
            size,
            mtime_ns,
            ..
        } = &r.kind
        {
            let md = std::fs::metadata(path).with_context(|| {
                format!(
                    "{}: the program mapped {path}, which is gone",
                    img.display()
                )
            })?;
            let m = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            // The program itself may have written through a shared writable mapping.
            let written = r.shared && r.prot.write;
            if md.dev() != *dev
                || md.ino() != *ino
                || (!written && (md.size() != *size || m != *mtime_ns))
            {
                bail!(
                    "{}: {path} changed since the checkpoint (it is mapped by the program; reinstalling or editing it breaks the restore)",
                    img.display()
                );
            }
        }
    }
    let tmpfs: Vec<&String> = meta
        .regions
        .iter()
        .filter_map(|r| match &r.kind {
            RegionKind::SharedMem {
                name,
                file: Some(_),
                ..
            } => Some(name),
            _ => None,
        })
        .collect();
    for f in &meta.files {
        match &f.kind {
            // Written back from the image before the restore (a mapped tmpfs file).
            FdKind::Regular { path, .. } if tmpfs.contains(&path) => {}
            FdKind::Regular { path, .. }
            | FdKind::Directory { path }
            | FdKind::Device { path }
            | FdKind::Fifo { path } => {
                std::fs::metadata(path).with_context(|| {
                    format!(
                        "{}: fd {} refers to {path}, which is gone",
                        img.display(),
                        f.fd
                    )
                })?;
            }
            FdKind::Path { path } => {
                std::fs::symlink_metadata(path).with_context(|| {
                    format!(
                        "{}: fd {} (O_PATH) refers to {path}, which is gone",
                        img.display(),
                        f.fd
                    )
                })?;
            }
            FdKind::Inotify { watches } => {
                for w in watches {
                    std::fs::metadata(&w.path).with_context(|| {
                        format!(
                            "{}: fd {} (inotify) watches {} (wd {}), which is gone",
                            img.display(),
                            f.fd,
                            w.path,
                            w.wd
                        )
                    })?;
                }
            }
            // Recreated from what the image holds.
            FdKind::Inherited
            | FdKind::Socket { .. }
            | FdKind::Pipe { .. }
            | FdKind::Dup { .. }
            | FdKind::EventFd { .. }
            | FdKind::TimerFd { .. }
            | FdKind::SignalFd { .. }
            | FdKind::Epoll { .. }
            | FdKind::Memfd { .. }
            | FdKind::Pty { .. }
            | FdKind::PidFd { .. }
            | FdKind::Deleted { .. } => {}
        }
    }
    Ok(())
}

fn prot_bits(p: &ckpt_image::Prot) -> u32 {
    (if p.read { PROT_READ } else { 0 })
        | (if p.write { PROT_WRITE } else { 0 })
        | (if p.exec { PROT_EXEC } else { 0 })
}

fn build_plan(
    meta: &ProcessMeta,
    runs: &[PageRun],
    image_fd: RawFd,
    info_fd: RawFd,
    file_fds: &[(String, RawFd)],
    close: &[RawFd],
    img: &Path,
) -> anyhow::Result<(PlanHeader, Vec<Op>)> {
    let mut h = PlanHeader {
        image_fd,
        info_fd,
        ..Default::default()
    };
    let mut maps = Vec::new();
    let mut reads = Vec::new();
    // Generations of the parent images, in slot order.
    let mut parents: Vec<u64> = Vec::new();
    let mut protects = Vec::new();
    let mut sorted: Vec<&PageRun> = runs.iter().collect();
    sorted.sort_by_key(|r| r.addr);
    let mut ri = 0;
    for r in &meta.regions {
        let final_prot = prot_bits(&r.prot);
        match r.kind {
            RegionKind::Vdso => {
                h.vdso.vdso_addr = r.start;
                h.vdso.vdso_len = r.end - r.start;
                continue;
            }
            RegionKind::Vvar => {
                h.vdso.vvar_addr = r.start;
                h.vdso.vvar_len = r.end - r.start;
                continue;
            }
            RegionKind::VvarVclock => {
                h.vdso.vclock_addr = r.start;
                h.vdso.vclock_len = r.end - r.start;
                continue;
            }
            _ => {}
        }
        // Runs belonging to this region (regions and runs are both sorted).
        if ri < sorted.len() && sorted[ri].addr < r.start {
            bail!(
                "{}: page data at {:#x} lies outside every region",
                img.display(),
                sorted[ri].addr
            );
        }
        let first = ri;
        while ri < sorted.len() && sorted[ri].addr < r.end {
            if sorted[ri].addr + sorted[ri].len > r.end {
                bail!(
                    "{}: page data at {:#x} crosses the end of its region",
                    img.display(),
                    sorted[ri].addr
                );
            }
            ri += 1;
        }
        // Shared memory comes from its new object, already filled (see `SharedObjects`).
        let shared_mem = matches!(r.kind, RegionKind::SharedMem { .. });
        let has_data = ri > first && !shared_mem;
        let map_prot = if has_data {
            final_prot | PROT_WRITE | PROT_READ
        } else {
            final_prot
        };
        let len = r.end - r.start;
        let op = match &r.kind {
            RegionKind::File { path, offset, .. } => {
                let fd = file_fds
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, fd)| *fd)
                    .context("file fd")?;
                Op {
                    kind: if r.shared {
                        OP_MAP_SHARED_FILE
                    } else {
                        OP_MAP_FILE
                    },
                    prot: map_prot,
                    flags: 0,
                    fd,
                    addr: r.start,
                    len,
                    off: *offset,
                    ..Default::default()
                }
            }
            RegionKind::SharedMem { ino, pgoff, .. } => {
                let key = format!("shm:{ino}");
                let fd = file_fds
                    .iter()
                    .find(|(p, _)| *p == key)
                    .map(|(_, fd)| *fd)
                    .context("shared memory object fd")?;
                Op {
                    kind: OP_MAP_SHARED_FILE,
                    prot: map_prot,
                    flags: 0,
                    fd,
                    addr: r.start,
                    len,
                    off: pgoff * 4096,
                    ..Default::default()
                }
            }
            RegionKind::Stack => Op {
                kind: OP_MAP_ANON,
                prot: map_prot,
                flags: FLAG_GROWSDOWN,
                fd: -1,
                addr: r.start,
                len,
                off: 0,
                ..Default::default()
            },
            _ => Op {
                kind: OP_MAP_ANON,
                prot: map_prot,
                flags: 0,
                fd: -1,
                addr: r.start,
                len,
                off: 0,
                ..Default::default()
            },
        };
        maps.push(op);
        for run in sorted[first..ri].iter().filter(|_| !shared_mem) {
            // Runs of parent images read from parent slots (OP_OPEN_PARENT).
            let fd = if run.generation == 0 {
                -1
            } else {
                let k = match parents.iter().position(|&g| g == run.generation) {
                    Some(k) => k,
                    None => {
                        parents.push(run.generation);
                        parents.len() - 1
                    }
                };
                -2 - k as i32
            };
            reads.push(Op {
                kind: OP_READ,
                prot: 0,
                flags: 0,
                fd,
                addr: run.addr,
                len: run.len,
                off: run.offset,
                crc: run.crc32c,
                _reserved: 0,
            });
        }
        if map_prot != final_prot {
            protects.push(Op {
                kind: OP_PROTECT,
                prot: final_prot,
                flags: 0,
                fd: -1,
                addr: r.start,
                len,
                off: 0,
                ..Default::default()
            });
        }
    }
    if ri != sorted.len() {
        bail!(
            "{}: page data at {:#x} lies outside every region",
            img.display(),
            sorted[ri].addr
        );
    }
    let e = &meta.entry;
    if e.rip == 0 || e.rsp == 0 || e.restore_info_addr == 0 {
        bail!("{}: the image has no restart entry", img.display());
    }
    h.jump = JumpContext {
        rbx: e.rbx,
        rbp: e.rbp,
        r12: e.r12,
        r13: e.r13,
        r14: e.r14,
        r15: e.r15,
        rsp: e.rsp,
        rip: e.rip,
        fs_base: e.fs_base,
    };
    h.restore_info_addr = e.restore_info_addr;
    let m = &meta.attrs.mm;
    let auxv_bytes = (meta.attrs.auxv.len().min(63) * 16) as u32;
    h.mm = MmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: if auxv_bytes <= 416 && m.auxv_addr != 0 {
            m.auxv_addr
        } else {
            0
        },
        auxv_size: if auxv_bytes <= 416 && m.auxv_addr != 0 {
            auxv_bytes
        } else {
            0
        },
        exe_fd: u32::MAX,
    };
    if m.start_code < m.end_code
        && m.start_brk <= m.brk
        && m.arg_start <= m.arg_end
        && m.env_start <= m.env_end
    {
        h.mm_flags = MM_MAP_VALID;
    }
    h.n_close = close.len() as u32;
    for (i, fd) in close.iter().enumerate() {
        h.close_fds[i] = *fd;
    }
    if parents.len() > MAX_PARENTS {
        bail!(
            "{}: takes page data from more than {MAX_PARENTS} images",
            img.display()
        );
    }
    let mut ops = maps;
    for (k, g) in parents.iter().enumerate() {
        ops.push(Op {
            kind: OP_OPEN_PARENT,
            fd: k as i32,
            addr: *g,
            ..Default::default()
        });
    }
    ops.extend(reads);
    ops.extend(protects);
    h.n_ops = ops.len() as u32;
    h.read_threads = std::thread::available_parallelism()
        .map(|n| n.get().min(2) as u32)
        .unwrap_or(1);
    Ok((h, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named datagram socket is made with its waiting datagrams, each from its recorded
    /// sender (here a name no socket of the generation has: a temporary socket sends).
    #[test]
    fn datagram_socket_refilled_from_its_senders() {
        let dir = std::env::temp_dir().join(format!("ckpt-dgram-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = |name: &str| {
            let mut v = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
            v.extend_from_slice(dir.join(name).to_str().unwrap().as_bytes());
            v.push(0);
            v
        };
        let e = End {
            holders: 1,
            inode: 1,
            domain: libc::AF_UNIX,
            stype: libc::SOCK_DGRAM,
            state: "bound".into(),
            local: addr("srv"),
            remote: vec![],
            peer: 0,
            rx: vec![],
            messages: vec![(addr("cli"), b"hello".to_vec()), (vec![], b"".to_vec())],
            cwd: "/".into(),
        };
        let mut out = Vec::new();
        unix_datagram_sockets(&[e], &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let fd = out[0].1;
        let mut b = [0u8; 16];
        // SAFETY: zeroed sockaddr for recvfrom.
        let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut fl = std::mem::size_of::<libc::sockaddr_un>() as u32;
        // SAFETY: receiving into our buffers.
        let n = unsafe {
            libc::recvfrom(
                fd,
                b.as_mut_ptr() as _,
                16,
                libc::MSG_DONTWAIT,
                &mut from as *mut _ as _,
                &mut fl,
            )
        };
        assert_eq!(&b[..n as usize], b"hello");
        // SAFETY: the kernel wrote fl bytes.
        let sender =
            unsafe { std::slice::from_raw_parts(&from as *const _ as *const u8, fl as usize) };
        assert_eq!(sender, &addr("cli")[..]);
        fl = std::mem::size_of::<libc::sockaddr_un>() as u32;
        // SAFETY: as above.
        let n = unsafe {
            libc::recvfrom(
                fd,
                b.as_mut_ptr() as _,
                16,
                libc::MSG_DONTWAIT,
                &mut from as *mut _ as _,
                &mut fl,
            )
        };
        assert_eq!(n, 0);
        assert!(fl as usize <= 2, "unnamed sender");
        // The temporary sender's file is gone.
        assert!(!dir.join("cli").exists());
        // SAFETY: closing our fd.
        unsafe { libc::close(fd) };
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The stand-in of an exited child ends with the recorded status or signal.
    #[test]
    fn stand_in_ends_as_recorded() {
        for (killed, code) in [
            (false, 0),
            (false, 42),
            (true, libc::SIGTERM),
            (true, libc::SIGSEGV),
        ] {
            let z = ckpt_image::Zombie {
                vpid: 1,
                pgid: 0,
                sid: 0,
                comm: "x".into(),
                killed,
                code,
                core_dumped: false,
            };
            // SAFETY: the child only ends itself.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                end_as(&z);
            }
            let mut st = 0;
            // SAFETY: reaping our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
            if killed {
                assert!(libc::WIFSIGNALED(st), "{st:#x}");
                assert_eq!(libc::WTERMSIG(st), code);
                assert!(!libc::WCOREDUMP(st));
            } else {
                assert!(libc::WIFEXITED(st), "{st:#x}");
                assert_eq!(libc::WEXITSTATUS(st), code);
            }
        }
    }
}
