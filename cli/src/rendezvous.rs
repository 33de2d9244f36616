//! Re-establishing a TCP connection between two processes that are restored separately
//! (two tasks of a job step, possibly on other hosts than at the checkpoint), through the
//! coordinator's rendezvous.
//!
//! Each end knows the connection as it was (its local and remote address at the checkpoint)
//! and the bytes that waited in its own receive queue. The end with the smaller local
//! address listens on a new port and publishes `HOST:PORT` under the connection's key; the
//! other end looks the key up and connects. Over the new connection each end first sends
//! a greeting (the key) and the bytes that waited for it; each sends the other's bytes back,
//! so that they wait in its receive queue again, ahead of anything the restored program
//! will send. The new socket then takes the old one's place in the restored process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ckpt_protocol::Message;

use crate::coord::{Client, Endpoint};

/// How long one end waits for the other to be restored.
const WAIT: Duration = Duration::from_secs(120);
/// Greetings and waiting bytes larger than this are refused (a receive queue is at most a
/// few MiB).
const MAX_BYTES: u32 = 256 << 20;

/// One end of a connection whose other end is restored by another `ckpt restart`.
pub struct RemoteEnd<'a> {
    /// Raw sockaddr bytes at the checkpoint.
    pub local: &'a [u8],
    pub remote: &'a [u8],
    /// Bytes that waited in this end's receive queue.
    pub rx: &'a [u8],
}

/// `ip:port` of a raw `sockaddr_in`/`sockaddr_in6`.
pub fn sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]) as i32;
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((a, port)))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::from((a, port)))
        }
        _ => None,
    }
}

/// The connection's name, the same at both ends.
pub fn key(generation: u64, local: SocketAddr, remote: SocketAddr) -> String {
    let (a, b) = if local <= remote {
        (local, remote)
    } else {
        (remote, local)
    };
    format!("gen{generation}/tcp/{a}-{b}")
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Re-creates one connection; returns the new connected socket.
pub fn reconnect(
    dir: &Path,
    coordinator: &str,
    generation: u64,
    end: &RemoteEnd,
) -> anyhow::Result<TcpStream> {
    let (Some(local), Some(remote)) = (sockaddr(end.local), sockaddr(end.remote)) else {
        bail!("a TCP connection with an address that is neither IPv4 nor IPv6");
    };
    let key = key(generation, local, remote);
    let mut client = Client::connect_to(&Endpoint::parse(coordinator), dir)
        .map_err(|e| match e {
            crate::coord::ConnectError::NoCoordinator(e) => anyhow::anyhow!("{e}"),
            crate::coord::ConnectError::Other(e) => e,
        })
        .with_context(|| format!("rendezvous {key}: reaching the coordinator"))?;
    let stream = if local < remote {
        // Listen where the peer can reach us: loopback stays loopback; otherwise every
        // address, published under this host's name.
        let (bind, host): (SocketAddr, String) = match local.ip() {
            ip if ip.is_loopback() => (SocketAddr::new(ip, 0), ip.to_string()),
            ip if ip.is_ipv6() => ("[::]:0".parse()?, this_host()),
            _ => ("0.0.0.0:0".parse()?, this_host()),
        };
        let l = TcpListener::bind(bind).with_context(|| format!("rendezvous {key}: listening"))?;
        let port = l.local_addr()?.port();
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        match client.request(&Message::RendezvousPublish {
            key: key.clone(),
            addr: addr.clone(),
        })? {
            Message::Ok => {}
            other => bail!(
                "rendezvous {key}: the coordinator answered {}",
                other.kind()
            ),
        }
        l.set_nonblocking(true)?;
        let t0 = Instant::now();
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut s = s;
                    // A connection that does not greet with our key is someone else's.
                    match read_frame(&mut s) {
                        Ok(g) if g == key.as_bytes() => break s,
                        _ => continue,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > WAIT {
                        bail!(
                            "rendezvous {key}: the other end did not connect to {addr} within {} s (was every process of the job restarted?)",
                            WAIT.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context(format!("rendezvous {key}: accept")),
            }
        }
    } else {
        let addr = match client.request(&Message::RendezvousLookup {
            key: key.clone(),
            timeout_ms: WAIT.as_millis() as u64,
        })? {
            Message::RendezvousFound { addr, .. } => addr,
            Message::Refused { reason } => bail!("{reason}"),
            other => bail!(
                "rendezvous {key}: the coordinator answered {}",
                other.kind()
            ),
        };
        let mut last = None;
        let mut s = None;
        for a in addr
            .to_socket_addrs()
            .with_context(|| format!("rendezvous {key}: resolving {addr}"))?
        {
            match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                Ok(c) => {
                    s = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut s) = s else {
            bail!(
                "rendezvous {key}: cannot connect to {addr}: {}",
                last.map(|e| e.to_string()).unwrap_or_default()
            );
        };
        write_frame(&mut s, key.as_bytes())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s
    };
    exchange(stream, end.rx).with_context(|| format!("rendezvous {key}"))
}

/// Each end sends the bytes that waited for it; each sends the other's back raw.
fn exchange(mut s: TcpStream, mine: &[u8]) -> anyhow::Result<TcpStream> {
    let mut w = s.try_clone()?;
    let mine = mine.to_vec();
    // Written from a thread: both ends write before they read.
    let writer = std::thread::spawn(move || write_frame(&mut w, &mine));
    let theirs = read_frame(&mut s).context("reading the other end's waiting bytes")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("sending the waiting bytes")?;
    s.write_all(&theirs).context("refilling the other end")?;
    s.set_read_timeout(None)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn write_frame(s: &mut TcpStream, b: &[u8]) -> std::io::Result<()> {
    s.write_all(&(b.len() as u32).to_le_bytes())?;
    s.write_all(b)
}

fn read_frame(s: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut n = [0u8; 4];
    s.read_exact(&mut n)?;
    let n = u32::from_le_bytes(n);
    if n > MAX_BYTES {
        bail!("a frame of {n} bytes");
    }
    let mut b = vec![0u8; n as usize];
    s.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_and_key() {
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&4242u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let a = sockaddr(&v4).unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:4242");
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(key(3, a, b), key(3, b, a), "both ends name it alike");
        assert_ne!(key(3, a, b), key(4, a, b));
        assert!(sockaddr(&[1, 0]).is_none());
    }
}
