//! Sockets (AF_UNIX, AF_INET, AF_INET6).
//!
//! Checkpoint: each socket's domain, type, state, addresses and important options are
//! recorded; the bytes waiting in a stream socket's receive queue are *peeked* (not
//! consumed, so nothing has to be put back), and a connected socket must have its peer in
//! the job. Restart: `ckpt restart` re-creates every connected pair (a socketpair, or a new
//! loopback TCP connection) with the peeked bytes already in the right receive queues and
//! hands the ends down; listening and bound sockets are bound again by their process.
//! A restored TCP connection has new port numbers (getsockname tells the new ones).

use ckpt_image::FdKind;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn addr(fd: i32, peer: bool) -> Option<Vec<u8>> {
    // SAFETY: zeroed sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = &mut ss as *mut _ as *mut libc::sockaddr;
    // SAFETY: getsockname/getpeername into a sockaddr_storage.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes.
    Some(unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) }.to_vec())
}

const OPTS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    // Before bind: an IPv6 socket beside an IPv4 one on the same port (Open MPI listens
    // on both) can only be bound again with its V6ONLY as it was.
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
];

/// The job ends after this checkpoint (`hold`): every TCP socket of the process is set to
/// reset rather than close gracefully when the process dies (SO_LINGER 0), so that no
/// connection stays in TIME_WAIT on its port: a restart right away must be able to bind
/// the same listening ports again (a TIME_WAIT left by a listener without SO_REUSEADDR
/// blocks that for a minute).
pub fn reset_on_exit() {
    let Ok(fds) = crate::sys::list_numeric_dir("/proc/self/fd") else {
        return;
    };
    for fd in fds {
        let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
        let stype = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
        if (domain == libc::AF_INET || domain == libc::AF_INET6) && stype == libc::SOCK_STREAM {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt with a linger struct from the stack on our own socket.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &l as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    }
}

/// Describes socket `fd` (threads are parked).
pub fn describe(fd: i32, inode: u64) -> Result<FdKind, String> {
    let domain = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(-1);
    let stype = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).unwrap_or(-1);
    if ![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6].contains(&domain) {
        return Err(format!("fd {fd} is a socket of family {domain} (only UNIX, IPv4 and IPv6 sockets are supported)"));
    }
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    let local = addr(fd, false).unwrap_or_default();
    let remote = addr(fd, true);
    let state = if listening {
        "listening"
    } else if remote.is_some() {
        "connected"
    } else if local.len() > 2
        && !(domain == libc::AF_UNIX && local.len() <= 2)
        && has_address(domain, &local)
    {
        "bound"
    } else {
        "unbound"
    };
    let mut options = Vec::new();
    let is_tcp = domain != libc::AF_UNIX && stype == libc::SOCK_STREAM;
    for &(level, name) in OPTS {
        if (level == libc::IPPROTO_TCP && !is_tcp)
            || (level == libc::IPPROTO_IPV6 && domain != libc::AF_INET6)
        {
            continue;
        }
        if let Some(v) = getsockopt_int(fd, level, name) {
            options.push((level, name, v));
        }
    }
    let mut rx = Vec::new();
    let mut peer_inode = 0;
    let messages = if domain == libc::AF_UNIX && stype != libc::SOCK_STREAM && !listening {
        peek_messages(fd)?
    } else {
        Vec::new()
    };
    let udp = domain != libc::AF_UNIX && stype == libc::SOCK_DGRAM;
    if state == "connected" {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD into an int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        if queued > 0 && stype == libc::SOCK_STREAM {
            rx = vec![0u8; queued as usize + 65536];
            // SAFETY: peeking into our buffer, non-blocking.
            let n = unsafe {
                libc::recv(
                    fd,
                    rx.as_mut_ptr() as *mut libc::c_void,
                    rx.len(),
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            rx.truncate(n.max(0) as usize);
            if (rx.len() as libc::c_int) < queued {
                return Err(format!(
                    "fd {fd}: could read only {} of the {queued} bytes waiting in the socket",
                    rx.len()
                ));
            }
        }
        if udp {
            // UDP: connected again to the same address at restart (datagrams in flight
            // may be lost, as UDP allows).
        } else if domain == libc::AF_UNIX {
            peer_inode = crate::sockdiag::unix_peer(inode).unwrap_or(0);
            let peer_ok =
                peer_inode != 0 && crate::tree::held_in_job(&format!("socket:[{peer_inode}]"));
            if !peer_ok && crate::sockdiag::unix_listener_in_job(remote.as_deref().unwrap_or(&[])) {
                return Err(pending(fd, remote.as_deref().unwrap_or(&[])));
            }
            if !peer_ok {
                return Err(format!(
                    "fd {fd} is a UNIX socket connected to a process outside the job (only connections between the job's processes can be restored)"
                ));
            }
        } else if !crate::sockdiag::tcp_peer_in_job(&local, remote.as_deref().unwrap_or(&[])) {
            if crate::sockdiag::tcp_listener_in_job(remote.as_deref().unwrap_or(&[])) {
                return Err(pending(fd, remote.as_deref().unwrap_or(&[])));
            }
            return Err(format!(
                "fd {fd} is a TCP connection to {} outside the job (only connections between the job's processes can be restored)",
                show(remote.as_deref().unwrap_or(&[]))
            ));
        }
    }
    Ok(FdKind::Socket {
        inode,
        domain,
        stype,
        state: state.into(),
        local: hex(&local),
        remote: hex(remote.as_deref().unwrap_or(&[])),
        peer_inode,
        rx: hex(&rx),
        options,
        messages,
    })
}

/// The refusal of a connection that waits in a listening socket's accept queue.
fn pending(fd: i32, listener: &[u8]) -> String {
    let name = if listener.len() > 2
        && u16::from_ne_bytes([listener[0], listener[1]]) as i32 == libc::AF_UNIX
    {
        String::from_utf8_lossy(&listener[2..])
            .trim_end_matches('\0')
            .replace('\0', "@")
    } else {
        show(listener)
    };
    format!(
        "fd {fd} is connected to the listening socket {name} of the job, which has not accepted the connection yet (connections waiting to be accepted cannot be checkpointed: accept them before the checkpoint)"
    )
}

/// The messages waiting in a UNIX datagram or seqpacket socket, in order, with their
/// senders' addresses, read without consuming them: with `SO_PEEK_OFF` set, each
/// `MSG_PEEK` moves on to the next message. Refuses descriptors in flight.
fn peek_messages(fd: i32) -> Result<Vec<(String, String)>, String> {
    let old = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    let set = |v: libc::c_int| {
        // SAFETY: setsockopt of an int on the socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                &v as *const _ as *const libc::c_void,
                4,
            )
        }
    };
    if set(0) != 0 {
        return Err(format!(
            "fd {fd}: SO_PEEK_OFF: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let res = loop {
        // SAFETY: zeroed plain data, pointed at our buffers below.
        let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut ctl = [0u64; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&ctl);
        // SAFETY: recvmsg into our buffers, peeking, non-blocking.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                break Ok(());
            }
            break Err(format!("fd {fd}: peeking message {}: {e}", out.len()));
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            break Err(format!(
                "fd {fd}: message {} is larger than 1 MiB",
                out.len()
            ));
        }
        if msg.msg_controllen > 0 {
            break Err(format!(
                "fd {fd}: message {} carries control data (file descriptors or credentials in flight cannot be checkpointed)",
                out.len()
            ));
        }
        // SAFETY: the kernel wrote msg_namelen bytes of the address.
        let sender = unsafe {
            std::slice::from_raw_parts(
                &name as *const _ as *const u8,
                (msg.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_un>()),
            )
        };
        out.push((hex(sender), hex(&buf[..n as usize])));
        if out.len() > 100_000 {
            break Err(format!("fd {fd}: more than 100000 messages waiting"));
        }
    };
    set(old);
    res.map(|_| out)
}

fn has_address(domain: i32, sa: &[u8]) -> bool {
    match domain {
        libc::AF_UNIX => sa.len() > 2,
        libc::AF_INET => sa.len() >= 4 && (sa[2] != 0 || sa[3] != 0),
        libc::AF_INET6 => sa.len() >= 4 && (sa[2] != 0 || sa[3] != 0),
        _ => false,
    }
}

/// A readable form of a sockaddr for messages.
pub fn show(sa: &[u8]) -> String {
    if sa.len() >= 8 && u16::from_ne_bytes([sa[0], sa[1]]) as i32 == libc::AF_INET {
        return format!(
            "{}.{}.{}.{}:{}",
            sa[4],
            sa[5],
            sa[6],
            sa[7],
            u16::from_be_bytes([sa[2], sa[3]])
        );
    }
    if sa.len() >= 24 && u16::from_ne_bytes([sa[0], sa[1]]) as i32 == libc::AF_INET6 {
        let ip: [u8; 16] = sa[8..24].try_into().unwrap();
        return format!(
            "[{}]:{}",
            std::net::Ipv6Addr::from(ip),
            u16::from_be_bytes([sa[2], sa[3]])
        );
    }
    hex(sa)
}

/// Re-creates a socket after a restart: connected ones come from `inherited` (inode → fd
/// created by `ckpt restart`); listening and bound ones are bound again here.
pub fn create(kind: &FdKind, inherited: &[(u64, i32)]) -> Result<i32, String> {
    let FdKind::Socket {
        inode,
        domain,
        stype,
        state,
        local,
        remote,
        options,
        ..
    } = kind
    else {
        return Err("not a socket".into());
    };
    let fd = if let Some(&(_, f)) = inherited.iter().find(|(i, _)| i == inode) {
        // SAFETY: duplicating the end handed down to us.
        unsafe { libc::dup(f) }
    } else {
        let udp = *domain != libc::AF_UNIX && *stype == libc::SOCK_DGRAM;
        if state == "connected" && !udp {
            return Err(format!(
                "socket:[{inode}] was connected, but its peer was not restored with it"
            ));
        }
        // SAFETY: a new socket of the recorded family and type.
        let fd = unsafe { libc::socket(*domain, *stype, 0) };
        if fd < 0 {
            return Err(format!(
                "socket({domain}, {stype}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if state == "listening" || state == "bound" || (udp && state == "connected") {
            let sa = unhex(local);
            if *domain == libc::AF_UNIX && sa.len() > 3 && sa[2] != 0 {
                // A path name: the old socket file is in the way.
                let end = sa[2..]
                    .iter()
                    .position(|&c| c == 0)
                    .map(|p| p + 2)
                    .unwrap_or(sa.len());
                let path = std::ffi::OsStr::from_bytes_compat(&sa[2..end]);
                let _ = std::fs::remove_file(path);
            } else {
                let one: libc::c_int = 1;
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
            for &(level, name, v) in options.iter().filter(|o| o.0 == libc::IPPROTO_IPV6) {
                // SAFETY: setsockopt of an int option read at checkpoint, before the bind.
                unsafe {
                    libc::setsockopt(fd, level, name, &v as *const _ as *const libc::c_void, 4)
                };
            }
            // SAFETY: bind to the recorded address bytes.
            if unsafe {
                libc::bind(
                    fd,
                    sa.as_ptr() as *const libc::sockaddr,
                    sa.len() as libc::socklen_t,
                )
            } != 0
            {
                let e = std::io::Error::last_os_error();
                // SAFETY: closing our socket.
                unsafe { libc::close(fd) };
                return Err(format!(
                    "socket:[{inode}]: binding {} again: {e}",
                    show(&sa)
                ));
            }
            if udp && state == "connected" {
                let ra = unhex(remote);
                // SAFETY: connect to the recorded address bytes.
                if unsafe {
                    libc::connect(
                        fd,
                        ra.as_ptr() as *const libc::sockaddr,
                        ra.len() as libc::socklen_t,
                    )
                } != 0
                {
                    return Err(format!(
                        "socket:[{inode}]: connecting to {} again: {}",
                        show(&ra),
                        std::io::Error::last_os_error()
                    ));
                }
            }
            // SAFETY: listen on our bound socket.
            if state == "listening" && unsafe { libc::listen(fd, 128) } != 0 {
                return Err(format!(
                    "socket:[{inode}]: listen: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        fd
    };
    if fd < 0 {
        return Err(format!(
            "socket:[{inode}]: {}",
            std::io::Error::last_os_error()
        ));
    }
    for &(level, name, v) in options {
        // SAFETY: setsockopt of an int option we read at checkpoint time.
        unsafe { libc::setsockopt(fd, level, name, &v as *const _ as *const libc::c_void, 4) };
    }
    Ok(fd)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}
impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_peeked_in_order_with_boundaries() {
        for stype in [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            let mut sv = [0i32; 2];
            // SAFETY: creating a test socketpair.
            assert_eq!(
                unsafe { libc::socketpair(libc::AF_UNIX, stype, 0, sv.as_mut_ptr()) },
                0
            );
            for m in [&b"one"[..], b"", b"three!"] {
                // SAFETY: sending test messages.
                assert_eq!(
                    unsafe { libc::send(sv[0], m.as_ptr() as *const libc::c_void, m.len(), 0) },
                    m.len() as isize
                );
            }
            let got = peek_messages(sv[1]).unwrap();
            let data: Vec<Vec<u8>> = got.iter().map(|(_, d)| unhex(d)).collect();
            assert_eq!(data, vec![b"one".to_vec(), vec![], b"three!".to_vec()]);
            // Nothing was consumed, and peeking is off again.
            assert_eq!(
                getsockopt_int(sv[1], libc::SOL_SOCKET, libc::SO_PEEK_OFF),
                Some(-1)
            );
            let mut b = [0u8; 16];
            for want in [&b"one"[..], b"", b"three!"] {
                // SAFETY: receiving into our buffer.
                let n = unsafe { libc::recv(sv[1], b.as_mut_ptr() as *mut libc::c_void, 16, 0) };
                assert_eq!(&b[..n as usize], want);
            }
            // SAFETY: closing test fds.
            unsafe {
                libc::close(sv[0]);
                libc::close(sv[1]);
            }
        }
    }

    #[test]
    fn socketpair_peek_keeps_bytes_and_records_state() {
        let mut sv = [0i32; 2];
        // SAFETY: creating a test socketpair.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) },
            0
        );
        // SAFETY: writing test bytes.
        unsafe { libc::write(sv[0], b"abc".as_ptr() as *const libc::c_void, 3) };
        // The peer is in this very process: the job check finds it.
        let ino = |fd: i32| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        let k = describe(sv[1], ino(sv[1])).unwrap();
        match &k {
            FdKind::Socket {
                state,
                rx,
                peer_inode,
                ..
            } => {
                assert_eq!(state, "connected");
                assert_eq!(unhex(rx), b"abc");
                assert_eq!(*peer_inode, ino(sv[0]));
            }
            other => panic!("{other:?}"),
        }
        // Peeking did not consume.
        let mut b = [0u8; 8];
        // SAFETY: reading back.
        let n = unsafe { libc::read(sv[1], b.as_mut_ptr() as *mut libc::c_void, 8) };
        assert_eq!(&b[..n as usize], b"abc");
        // SAFETY: closing test fds.
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
    }
}
