//! Finding a socket's peer: the kernel's UNIX socket diagnostics (netlink, no privilege
//! needed) for UNIX sockets, /proc/net/tcp{,6} for TCP connections.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;

/// The inode of the UNIX socket connected to socket `inode`.
pub fn unix_peer(inode: u64) -> Option<u64> {
    // SAFETY: a netlink socket of our own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: we own fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + unix_diag_req (24)
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req[24..28].copy_from_slice(&(inode as u32).to_ne_bytes());
    req[28..32].copy_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]); // no cookie
                                             // SAFETY: sending our request buffer.
    if unsafe {
        libc::send(
            sock.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
        )
    } < 0
    {
        return None;
    }
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n <= 0 {
            return None;
        }
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?);
            if len < 16 || off + len > n as usize {
                return None;
            }
            if ty == libc::NLMSG_DONE as u16 || ty == libc::NLMSG_ERROR as u16 {
                return None;
            }
            // unix_diag_msg: family u8, type u8, state u8, pad u8, ino u32, cookie [u32; 2]
            let m = &buf[off + 16..off + len];
            if m.len() >= 16 && u32::from_ne_bytes(m[4..8].try_into().ok()?) as u64 == inode {
                let mut a = 16usize;
                while a + 4 <= m.len() {
                    let alen = u16::from_ne_bytes(m[a..a + 2].try_into().ok()?) as usize;
                    let aty = u16::from_ne_bytes(m[a + 2..a + 4].try_into().ok()?);
                    if alen < 4 {
                        break;
                    }
                    if aty == UNIX_DIAG_PEER && alen >= 8 {
                        return Some(u32::from_ne_bytes(m[a + 4..a + 8].try_into().ok()?) as u64);
                    }
                    a += (alen + 3) & !3;
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// Parses "0100007F:1F90" (IPv4) or a 32-hex-digit IPv6 address, as /proc/net/tcp prints
/// them, into (address bytes, port).
fn parse_proc_addr(s: &str) -> Option<(Vec<u8>, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut bytes = Vec::new();
    for i in 0..a.len() / 8 {
        let w = u32::from_str_radix(&a[8 * i..8 * i + 8], 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    Some((bytes, port))
}

/// (address bytes, port) of a sockaddr_in / sockaddr_in6.
fn sockaddr_parts(sa: &[u8]) -> Option<(Vec<u8>, u16)> {
    let fam = u16::from_ne_bytes(sa.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(sa.get(2..4)?.try_into().ok()?);
    match fam {
        libc::AF_INET => Some((sa.get(4..8)?.to_vec(), port)),
        libc::AF_INET6 => Some((sa.get(8..24)?.to_vec(), port)),
        _ => None,
    }
}

/// Whether the other end of the TCP connection local→remote is held by a process of the job.
pub fn tcp_peer_in_job(local: &[u8], remote: &[u8]) -> bool {
    let (Some(l), Some(r)) = (sockaddr_parts(local), sockaddr_parts(remote)) else {
        return false;
    };
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(pl), Some(pr)) = (parse_proc_addr(f[1]), parse_proc_addr(f[2])) else {
                continue;
            };
            // The peer's local end is our remote end, and the other way round.
            if pl == r && pr == l {
                let ino = f[9];
                let link = format!("socket:[{ino}]");
                if crate::tree::held_in_job(&link) || crate::tree::held_by_other_tree(&link) {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether `remote` is the address of a listening TCP socket of the job: the connection
/// then waits in its accept queue (the accepted end has no descriptor yet).
pub fn tcp_listener_in_job(remote: &[u8]) -> bool {
    let Some(r) = sockaddr_parts(remote) else {
        return false;
    };
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some((la, lp)) = parse_proc_addr(f[1]) else {
                continue;
            };
            let any = la.iter().all(|&b| b == 0);
            if lp == r.1
                && (la == r.0 || any)
                && crate::tree::held_in_job(&format!("socket:[{}]", f[9]))
            {
                return true;
            }
        }
    }
    false
}

/// Whether the UNIX path or abstract name `remote` (sockaddr bytes) is that of a listening
/// socket of the job (from /proc/net/unix: flag __SO_ACCEPTCON).
pub fn unix_listener_in_job(remote: &[u8]) -> bool {
    if remote.len() <= 2 {
        return false;
    }
    let raw = &remote[2..];
    let name: String = if raw[0] == 0 {
        format!(
            "@{}",
            String::from_utf8_lossy(&raw[1..]).trim_end_matches('\0')
        )
    } else {
        String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string()
    };
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && u32::from_str_radix(f[3], 16)
                .map(|fl| fl & 0x10000 != 0)
                .unwrap_or(false)
            && f[7] == name
            && crate::tree::held_in_job(&format!("socket:[{}]", f[6]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_addresses() {
        let (a, p) = parse_proc_addr("0100007F:1F90").unwrap();
        assert_eq!(a, vec![127, 0, 0, 1]);
        assert_eq!(p, 8080);
    }

    #[test]
    fn finds_a_socketpair_peer() {
        use std::os::unix::fs::MetadataExt;
        let mut sv = [0i32; 2];
        // SAFETY: a test socketpair.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) },
            0
        );
        let ino = |fd: i32| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .unwrap()
                .ino()
        };
        assert_eq!(unix_peer(ino(sv[0])), Some(ino(sv[1])));
        // SAFETY: closing test fds.
        unsafe {
            libc::close(sv[0]);
            libc::close(sv[1]);
        }
    }
}
