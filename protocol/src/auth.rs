//! Authentication of every connection to a coordinator: a per-job secret and a
//! challenge-response over it (HMAC-SHA256), so the secret never travels.
//!
//! The secret is 32 random bytes in `DIR/coordinator.secret` (mode 0600, owned by the job's
//! user), created by the coordinator when it starts and the file is absent, or written
//! there beforehand by a launcher (e.g. a batch-system plugin). Anyone who can read it can
//! control the job; nobody else can.
//!
//! The exchange (protocol version 2):
//!
//! ```text
//! client -> Hello     { protocol_version, role, nonce: Nc }          Nc: 32 random bytes, hex
//! server -> Challenge { protocol_version, nonce: Ns, proof: Ps }     Ps = HMAC(secret, "ckpt-coordinator-v2" 0 Nc Ns)
//! client -> Auth      { proof: Pc }                                  Pc = HMAC(secret, "ckpt-client-v2" 0 Nc Ns)
//! server -> Welcome   (or Refused, then close)
//! ```
//!
//! Both sides prove knowledge of the secret over fresh nonces of both parties: a recorded
//! exchange cannot be replayed, and a client never takes an impostor for its coordinator.
//! This is authentication, not encryption: on a network the traffic after the handshake is
//! in clear and could be hijacked by an attacker on the path (see docs/protocol.md).

use crate::{Message, Role, PROTOCOL_VERSION};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io;
use std::path::Path;

/// Bytes of the per-job secret.
pub const SECRET_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// File name of the secret inside the checkpoint directory.
pub const SECRET_FILE: &str = "coordinator.secret";

const SERVER_LABEL: &[u8] = b"ckpt-coordinator-v2\0";
const CLIENT_LABEL: &[u8] = b"ckpt-client-v2\0";

/// The per-job secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the job secret {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error(
        "the job secret {path} is accessible by other users (mode {mode:04o}); \
         it must be readable by its owner only: chmod 600 {path}"
    )]
    Permissions { path: String, mode: u32 },
    #[error("the job secret {path} belongs to uid {owner}, not to this user (uid {me})")]
    Owner { path: String, owner: u32, me: u32 },
    #[error(
        "the job secret {path} is malformed ({len} bytes; expected {SECRET_LEN} raw bytes \
         or {} hex digits)", SECRET_LEN * 2
    )]
    Malformed { path: String, len: usize },
}

impl SecretError {
    /// The secret file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SecretError::Io { err, .. } if err.kind() == io::ErrorKind::NotFound)
    }
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

/// A fresh random nonce.
pub fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    random_bytes(&mut n)?;
    Ok(n)
}

/// Reads and checks the secret at `path`: a regular file owned by the effective user, not
/// accessible by group or others, holding 32 raw bytes or 64 hex digits (a final newline
/// allowed).
pub fn read_secret(path: &Path) -> Result<Secret, SecretError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let p = || path.display().to_string();
    let io_err = |err| SecretError::Io { path: p(), err };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let md = f.metadata().map_err(io_err)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(SecretError::Owner {
            path: p(),
            owner: md.uid(),
            me,
        });
    }
    if md.mode() & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: p(),
            mode: md.mode() & 0o7777,
        });
    }
    let mut buf = [0u8; 2 * SECRET_LEN + 2];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..]).map_err(io_err)?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            break;
        }
    }
    parse_secret(&buf[..len]).ok_or(SecretError::Malformed { path: p(), len })
}

/// 32 raw bytes, or 64 hex digits with an optional final newline.
pub fn parse_secret(bytes: &[u8]) -> Option<Secret> {
    if bytes.len() == SECRET_LEN {
        let mut s = [0u8; SECRET_LEN];
        s.copy_from_slice(bytes);
        return Some(Secret(s));
    }
    let t = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut s = [0u8; SECRET_LEN];
    if t.len() == 2 * SECRET_LEN && hex_decode(t, &mut s) {
        return Some(Secret(s));
    }
    None
}

/// Returns the secret at `path`, creating it (32 random bytes, mode 0600, exclusively) when
/// it does not exist. The boolean tells whether it was created.
pub fn load_or_create_secret(path: &Path) -> Result<(Secret, bool), SecretError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match read_secret(path) {
        Ok(s) => return Ok((s, false)),
        Err(e) if !e.is_not_found() => return Err(e),
        Err(_) => {}
    }
    let mut s = [0u8; SECRET_LEN];
    let p = || path.display().to_string();
    random_bytes(&mut s).map_err(|err| SecretError::Io { path: p(), err })?;
    let tmp = path.with_extension(format!("secret.tmp{}", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&s)?;
        f.sync_all()?;
        // Exclusive: a secret another starter put there first wins.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok((Secret(s), true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((read_secret(path)?, false)),
        Err(err) => Err(SecretError::Io { path: p(), err }),
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(
    secret: &Secret,
    label: &[u8],
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(&secret.0).expect("HMAC takes any key length");
    m.update(label);
    m.update(client);
    m.update(server);
    m.finalize().into_bytes().into()
}

/// The coordinator's proof.
pub fn server_proof(s: &Secret, client: &[u8; NONCE_LEN], server: &[u8; NONCE_LEN]) -> [u8; 32] {
    mac(s, SERVER_LABEL, client, server)
}

/// The client's proof.
pub fn client_proof(s: &Secret, client: &[u8; NONCE_LEN], server: &[u8; NONCE_LEN]) -> [u8; 32] {
    mac(s, CLIENT_LABEL, client, server)
}

/// Compares in time independent of where the first difference is.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Decodes `text` (exactly `2 * out.len()` hex digits) into `out`.
pub fn hex_decode(text: &[u8], out: &mut [u8]) -> bool {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != out.len() * 2 {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match (digit(text[2 * i]), digit(text[2 * i + 1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

fn decode_nonce(text: &str) -> Option<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    hex_decode(text.as_bytes(), &mut n).then_some(n)
}

/// The text of the version-mismatch refusal: names both versions.
pub fn version_mismatch(client: u32) -> String {
    format!(
        "protocol version mismatch: the client speaks version {client}, this coordinator \
         (ckpt-coordinatord {}) speaks version {PROTOCOL_VERSION}; use ckpt tools of the same \
         release",
        env!("CARGO_PKG_VERSION")
    )
}

/// Refusal text of a failed proof.
pub const AUTH_FAILED: &str =
    "authentication failed: the client does not know this job's secret (coordinator.secret)";

/// What the server does after one handshake message.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this and wait for the next message.
    Send(Message),
    /// Authenticated: the connection has this role from now on.
    Accept(Role),
    /// Send this refusal and close. The string is for the log.
    Reject(Message, String),
}

#[derive(Debug)]
enum HsState {
    AwaitHello,
    AwaitAuth { role: Role, client: [u8; NONCE_LEN] },
    Done,
}

/// The coordinator's side of the handshake, without I/O: feed it each message the client
/// sends; it says what to answer. Anything out of order is rejected; after `Accept` or
/// `Reject` every further message is rejected.
#[derive(Debug)]
pub struct ServerHandshake {
    secret: Secret,
    server_nonce: [u8; NONCE_LEN],
    state: HsState,
}

impl ServerHandshake {
    pub fn new(secret: Secret, server_nonce: [u8; NONCE_LEN]) -> ServerHandshake {
        ServerHandshake {
            secret,
            server_nonce,
            state: HsState::AwaitHello,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, HsState::Done)
    }

    fn reject(&mut self, reason: String) -> Step {
        self.state = HsState::Done;
        Step::Reject(
            Message::Refused {
                reason: reason.clone(),
            },
            reason,
        )
    }

    pub fn on_message(&mut self, msg: Message) -> Step {
        match (std::mem::replace(&mut self.state, HsState::Done), msg) {
            (
                HsState::AwaitHello,
                Message::Hello {
                    protocol_version,
                    role,
                    nonce,
                },
            ) => {
                if protocol_version != PROTOCOL_VERSION {
                    return self.reject(version_mismatch(protocol_version));
                }
                let Some(client) = nonce.as_deref().and_then(decode_nonce) else {
                    return self.reject(format!(
                        "the Hello carries no valid nonce ({NONCE_LEN} bytes in hex)"
                    ));
                };
                let proof = server_proof(&self.secret, &client, &self.server_nonce);
                self.state = HsState::AwaitAuth { role, client };
                Step::Send(Message::Challenge {
                    protocol_version: PROTOCOL_VERSION,
                    nonce: hex(&self.server_nonce),
                    proof: hex(&proof),
                })
            }
            (HsState::AwaitAuth { role, client }, Message::Auth { proof }) => {
                let want = client_proof(&self.secret, &client, &self.server_nonce);
                let mut got = [0u8; 32];
                if hex_decode(proof.as_bytes(), &mut got) && ct_eq(&got, &want) {
                    Step::Accept(role)
                } else {
                    self.reject(AUTH_FAILED.into())
                }
            }
            (HsState::AwaitHello, other) => self.reject(format!(
                "the first message must be Hello, got {}",
                other.kind()
            )),
            (HsState::AwaitAuth { .. }, other) => self.reject(format!(
                "expected Auth after the challenge, got {}",
                other.kind()
            )),
            (HsState::Done, other) => {
                self.reject(format!("handshake already over, got {}", other.kind()))
            }
        }
    }
}

/// Why a client handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Frame(#[from] crate::FrameError),
    #[error("the coordinator refused the connection: {0}")]
    Refused(String),
    #[error(
        "the coordinator speaks protocol version {0}, this client version {PROTOCOL_VERSION}; \
         use ckpt tools of the same release"
    )]
    Version(u32),
    #[error(
        "the coordinator could not prove it knows the job secret: it is not this job's \
         coordinator (or the secret changed)"
    )]
    BadServerProof,
    #[error("unexpected answer during the handshake: {0}")]
    Unexpected(String),
    #[error("cannot get random bytes: {0}")]
    Random(io::Error),
}

/// The client side of the handshake over a blocking stream; returns the coordinator's
/// version. For a process the `Welcome` is the coordinator's acceptance into the job.
pub fn client_handshake<S: io::Read + io::Write>(
    s: &mut S,
    role: Role,
    secret: &Secret,
) -> Result<String, HandshakeError> {
    let client = nonce().map_err(HandshakeError::Random)?;
    crate::write_msg(
        s,
        &Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role,
            nonce: Some(hex(&client)),
        },
    )?;
    let server = match crate::read_msg(s)? {
        Message::Challenge {
            protocol_version,
            nonce,
            proof,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(HandshakeError::Version(protocol_version));
            }
            let server = decode_nonce(&nonce)
                .ok_or_else(|| HandshakeError::Unexpected("a malformed challenge".into()))?;
            let mut p = [0u8; 32];
            if !hex_decode(proof.as_bytes(), &mut p)
                || !ct_eq(&p, &server_proof(secret, &client, &server))
            {
                return Err(HandshakeError::BadServerProof);
            }
            server
        }
        Message::Refused { reason } => return Err(HandshakeError::Refused(reason)),
        other => return Err(HandshakeError::Unexpected(other.kind().into())),
    };
    crate::write_msg(
        s,
        &Message::Auth {
            proof: hex(&client_proof(secret, &client, &server)),
        },
    )?;
    match crate::read_msg(s)? {
        Message::Welcome {
            coordinator_version,
            ..
        } => Ok(coordinator_version),
        Message::Refused { reason } => Err(HandshakeError::Refused(reason)),
        other => Err(HandshakeError::Unexpected(other.kind().into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret([b; SECRET_LEN])
    }

    /// Runs a client against a server handshake in memory.
    fn run(
        client_secret: &Secret,
        server_secret: &Secret,
    ) -> (Result<String, HandshakeError>, Option<Role>) {
        // The client writes to `to_server`; the server's answers are computed as the client
        // reads (a tiny in-memory duplex).
        struct Duplex {
            hs: ServerHandshake,
            inbuf: Vec<u8>,
            out: Vec<u8>,
            accepted: Option<Role>,
        }
        impl io::Write for Duplex {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.inbuf.extend_from_slice(b);
                while let Ok(Some((m, n))) = crate::decode_frame(&self.inbuf, crate::MAX_FRAME) {
                    self.inbuf.drain(..n);
                    match self.hs.on_message(m) {
                        Step::Send(m) => self.out.extend(crate::encode(&m)),
                        Step::Accept(r) => {
                            self.accepted = Some(r);
                            self.out.extend(crate::encode(&Message::Welcome {
                                protocol_version: PROTOCOL_VERSION,
                                coordinator_version: "t".into(),
                            }))
                        }
                        Step::Reject(m, _) => self.out.extend(crate::encode(&m)),
                    }
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl io::Read for Duplex {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.out.len());
                b[..n].copy_from_slice(&self.out[..n]);
                self.out.drain(..n);
                Ok(n)
            }
        }
        let mut d = Duplex {
            hs: ServerHandshake::new(server_secret.clone(), nonce().unwrap()),
            inbuf: vec![],
            out: vec![],
            accepted: None,
        };
        let r = client_handshake(&mut d, Role::Control, client_secret);
        (r, d.accepted)
    }

    #[test]
    fn same_secret_is_accepted() {
        let (r, role) = run(&secret(7), &secret(7));
        assert_eq!(r.unwrap(), "t");
        assert_eq!(role, Some(Role::Control));
    }

    #[test]
    fn wrong_secret_is_detected_by_the_client_first() {
        let (r, role) = run(&secret(7), &secret(8));
        assert!(matches!(r, Err(HandshakeError::BadServerProof)), "{r:?}");
        assert_eq!(role, None);
    }

    #[test]
    fn wrong_client_proof_is_refused() {
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        let step = hs.on_message(Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Control,
            nonce: Some(hex(&[3; NONCE_LEN])),
        });
        assert!(matches!(step, Step::Send(Message::Challenge { .. })));
        // A proof made with another secret.
        let bad = client_proof(&secret(9), &[3; NONCE_LEN], &[2; NONCE_LEN]);
        match hs.on_message(Message::Auth { proof: hex(&bad) }) {
            Step::Reject(_, why) => assert!(why.contains("authentication failed")),
            other => panic!("{other:?}"),
        }
        assert!(hs.is_done());
        // The right proof after a rejection changes nothing.
        let good = client_proof(&secret(1), &[3; NONCE_LEN], &[2; NONCE_LEN]);
        assert!(matches!(
            hs.on_message(Message::Auth { proof: hex(&good) }),
            Step::Reject(..)
        ));
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        match hs.on_message(Message::Hello {
            protocol_version: 1,
            role: Role::Control,
            nonce: None,
        }) {
            Step::Reject(Message::Refused { reason }, _) => {
                assert!(reason.contains("version 1"), "{reason}");
                assert!(
                    reason.contains(&format!("version {PROTOCOL_VERSION}")),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_version_1_hello_still_parses() {
        // What a 0.1 client sends: no nonce. It must reach the version check.
        let body = br#"{"type":"hello","protocol_version":1,"role":{"role":"control"}}"#;
        let m = crate::decode_body(body).unwrap();
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        assert!(matches!(hs.on_message(m), Step::Reject(..)));
    }

    #[test]
    fn out_of_order_messages_are_rejected() {
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        assert!(matches!(
            hs.on_message(Message::Auth { proof: "00".into() }),
            Step::Reject(..)
        ));
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        assert!(matches!(
            hs.on_message(Message::GetStatus),
            Step::Reject(..)
        ));
        let mut hs = ServerHandshake::new(secret(1), [2; NONCE_LEN]);
        assert!(matches!(
            hs.on_message(Message::Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::Control,
                nonce: Some("xyz".into()),
            }),
            Step::Reject(..)
        ));
    }

    #[test]
    fn secret_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ckpt-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(SECRET_FILE);
        let (a, created) = load_or_create_secret(&p).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), SECRET_LEN as u64);
        let (b, created) = load_or_create_secret(&p).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_ne!(a.0, [0; SECRET_LEN]);
        // Hex form, as a launcher may write it.
        std::fs::write(&p, format!("{}\n", hex(&a.0))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap(), a);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            read_secret(&p),
            Err(SecretError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
