//! The coordinator wire protocol.
//!
//! Every message travels in one frame: a 4-byte little-endian payload length followed by
//! that many bytes of JSON (one [`Message`]). Frames larger than [`MAX_FRAME`] are refused
//! before anything is allocated (the coordinator allows only [`HANDSHAKE_MAX_FRAME`] before
//! a client is authenticated). The first frame on every connection is a [`Message::Hello`]
//! from the client carrying [`PROTOCOL_VERSION`] and a nonce; the coordinator answers a
//! [`Message::Challenge`], the client proves it knows the job's secret with
//! [`Message::Auth`], and the coordinator answers [`Message::Welcome`] or
//! [`Message::Refused`] and closes (see [`auth`]).
//!
//! Roles: a *process* (the runtime inside a checkpointed program) stays connected for its
//! whole life and follows the barrier sequence; a *control* client (`ckpt checkpoint`,
//! `ckpt status`) sends one request and reads replies.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub mod auth;

/// Bumped on every incompatible change of [`Message`]. Version 2: challenge-response
/// authentication (`Hello.nonce`, `Challenge`, `Auth`), `Status.job_id`/`addresses`.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest frame accepted (payload bytes).
pub const MAX_FRAME: u32 = 4 << 20;
/// Largest frame the coordinator accepts before the client is authenticated.
pub const HANDSHAKE_MAX_FRAME: u32 = 64 << 10;
/// File in the checkpoint directory naming the coordinator's TCP address
/// (`tcp:HOST:PORT`), when it listens on TCP.
pub const ADDR_FILE: &str = "coordinator.addr";

/// The phases of a checkpoint, in order. Every process reports reaching each phase
/// ([`Message::BarrierReached`]) and waits for the coordinator's [`Message::Barrier`] for
/// the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stop every user thread.
    Suspend,
    /// Read in-flight data out of pipes and sockets (nothing to do for a lone process).
    Drain,
    /// Capture the process state (a copy-on-write snapshot, written in the background).
    Snapshot,
    /// Put drained data back.
    Refill,
    /// Let user threads run again.
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    /// The runtime of one checkpointed process.
    Process(ProcessInfo),
    /// A one-shot command client.
    Control,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The pid the program sees (stable across restarts).
    pub vpid: i32,
    /// The pid the kernel gave this incarnation.
    pub real_pid: i32,
    pub host: String,
    /// Program name (comm or argv[0]).
    pub program: String,
    /// Set when this process was restored from that generation.
    pub restored_from: Option<u64>,
    /// Which optional kernel paths the runtime uses (e.g. "snapshot=fork", "pagemap=yes").
    pub features: Vec<String>,
    /// The task's rank in its job step (SLURM_PROCID, PMI rank, ...), when known: a restart
    /// matches a new task to its image by rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<i32>,
    /// The job step the process belongs to ("batch", "0", "1", ... under Slurm), when known:
    /// a restart restores one step's processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub info: ProcessInfo,
    /// "running", "checkpointing", ...
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub generation: u64,
    pub path: String,
    pub bytes: u64,
    /// Wall time from the request to the commit of the manifest.
    pub seconds: f64,
    /// Longest time any process had its threads stopped.
    pub stopped_seconds: f64,
    /// Unix time (seconds) of the commit.
    pub committed_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub coordinator_version: String,
    pub protocol_version: u32,
    pub coordinator_pid: i32,
    /// The batch job this coordinator serves (`SLURM_JOB_ID`, `PBS_JOBID`), when known.
    pub job_id: Option<String>,
    pub ckpt_dir: String,
    /// The UNIX socket.
    pub socket: String,
    /// Every address the coordinator listens on: `unix:/path`, `tcp:HOST:PORT`.
    pub addresses: Vec<String>,
    pub processes: Vec<ProcessStatus>,
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Seconds until the next scheduled checkpoint (interval or deadline), if any.
    pub next_checkpoint_in: Option<f64>,
    pub interval_seconds: Option<f64>,
    /// When the deadline checkpoint (`--checkpoint-at`) is due (Unix seconds), while it is
    /// pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix: Option<u64>,
    /// A checkpoint is in progress.
    pub busy: bool,
}

/// What a process reports when its image for a generation is durable on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageWritten {
    pub generation: u64,
    /// File name inside the generation directory.
    pub file: String,
    pub bytes: u64,
    /// How long the process's threads were stopped.
    pub stopped_seconds: f64,
    /// How long writing the image took.
    pub write_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Message {
    // ---- handshake
    /// client -> coordinator, first. `nonce`: 32 random bytes in hex (absent only in
    /// version 1 clients, which are refused for their version).
    Hello {
        protocol_version: u32,
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    /// coordinator -> client: its nonce and its proof of the secret (hex).
    Challenge {
        protocol_version: u32,
        nonce: String,
        proof: String,
    },
    /// client -> coordinator: the client's proof of the secret (hex).
    Auth {
        proof: String,
    },
    Welcome {
        protocol_version: u32,
        coordinator_version: String,
    },
    Refused {
        reason: String,
    },

    // ---- coordinator -> process
    /// Run `phase` of checkpoint `generation`; `dir` is the generation directory to write
    /// the image into (only meaningful for [`Phase::Snapshot`]). `hold` (with
    /// [`Phase::Resume`]): the job is terminated after this checkpoint, so the threads stay
    /// stopped — the program never runs past its snapshot (no repeated output, no process
    /// seeing another one die).
    Barrier {
        generation: u64,
        phase: Phase,
        dir: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hold: bool,
    },
    /// Abandon checkpoint `generation` (another process failed); resume if suspended.
    Abort {
        generation: u64,
        reason: String,
    },
    /// End the process (after `ckpt checkpoint --kill`).
    Terminate,

    // ---- process -> coordinator
    BarrierReached {
        generation: u64,
        phase: Phase,
    },
    Written(ImageWritten),
    /// The process asks for a checkpoint of the whole job now (it received SIGTERM and holds
    /// it, see `CKPT_HOLD_SIGTERM`); with `kill` the job ends after it.
    RequestCheckpoint {
        kill: bool,
    },
    Failed {
        generation: u64,
        error: String,
    },

    // ---- control -> coordinator
    Checkpoint {
        kill: bool,
    },
    GetStatus,
    /// Stop the coordinator (and, if `kill`, every process of the job).
    Shutdown {
        kill: bool,
    },
    /// Rendezvous (restart): a restarting process tells where the new end of a connection
    /// listens. `key` names the connection as it was at the checkpoint (both endpoints and
    /// the generation); `addr` is `HOST:PORT`. Replied with `Ok`.
    RendezvousPublish {
        key: String,
        addr: String,
    },
    /// Rendezvous: where does the other end of connection `key` listen? Replied with
    /// `RendezvousFound` once it is published, or `Refused` after `timeout_ms`.
    RendezvousLookup {
        key: String,
        timeout_ms: u64,
    },

    // ---- coordinator -> control
    CheckpointDone(CheckpointSummary),
    CheckpointFailed {
        error: String,
    },
    Status(Status),
    Ok,
    RendezvousFound {
        key: String,
        addr: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(u32),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Message {
    /// The message's type name (as on the wire), for logs and errors that must not echo
    /// a peer's payload.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Challenge { .. } => "challenge",
            Message::Auth { .. } => "auth",
            Message::Welcome { .. } => "welcome",
            Message::Refused { .. } => "refused",
            Message::Barrier { .. } => "barrier",
            Message::Abort { .. } => "abort",
            Message::Terminate => "terminate",
            Message::BarrierReached { .. } => "barrier_reached",
            Message::Written(_) => "written",
            Message::RequestCheckpoint { .. } => "request_checkpoint",
            Message::Failed { .. } => "failed",
            Message::Checkpoint { .. } => "checkpoint",
            Message::GetStatus => "get_status",
            Message::Shutdown { .. } => "shutdown",
            Message::CheckpointDone(_) => "checkpoint_done",
            Message::CheckpointFailed { .. } => "checkpoint_failed",
            Message::Status(_) => "status",
            Message::Ok => "ok",
            Message::RendezvousPublish { .. } => "rendezvous_publish",
            Message::RendezvousLookup { .. } => "rendezvous_lookup",
            Message::RendezvousFound { .. } => "rendezvous_found",
        }
    }
}

/// Encodes one message as a frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("messages always serialize");
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes one framed message.
pub fn write_msg<W: Write>(w: &mut W, msg: &Message) -> Result<(), FrameError> {
    w.write_all(&encode(msg))?;
    w.flush()?;
    Ok(())
}

/// Reads one framed message (blocking).
pub fn read_msg<R: Read>(r: &mut R) -> Result<Message, FrameError> {
    read_msg_limited(r, MAX_FRAME)
}

/// Reads one framed message of at most `limit` payload bytes (blocking).
pub fn read_msg_limited<R: Read>(r: &mut R, limit: u32) -> Result<Message, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > limit.min(MAX_FRAME) {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    match r.read_exact(&mut body) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    Ok(decode_body(&body)?)
}

/// Decodes the first frame of `buf` without blocking: `Ok(None)` when `buf` does not hold a
/// whole frame yet, else the message and the number of bytes it took. A length over `limit`
/// (or [`MAX_FRAME`]) is an error as soon as the 4 length bytes are there.
pub fn decode_frame(buf: &[u8], limit: u32) -> Result<Option<(Message, usize)>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len > limit.min(MAX_FRAME) {
        return Err(FrameError::TooLarge(len));
    }
    let end = 4 + len as usize;
    let Some(body) = buf.get(4..end) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, end)))
}

/// Parses a frame payload.
pub fn decode_body(body: &[u8]) -> Result<Message, serde_json::Error> {
    serde_json::from_slice(body)
}

/// The body of the `frame` fuzz target (fuzz/fuzz_targets/frame.rs): decodes every frame
/// of `data` incrementally and with the blocking reader; both must agree. Returns how many
/// messages decoded. Public so that the fuzz target and the corpus test share it.
#[doc(hidden)]
pub fn fuzz_frame(data: &[u8]) -> usize {
    let mut pos = 0;
    let mut n = 0;
    let mut reader = data;
    loop {
        let inc = decode_frame(&data[pos..], MAX_FRAME);
        let blocking = read_msg(&mut reader);
        match inc {
            Ok(Some((m, used))) => {
                let b = blocking.expect("the blocking reader fails on a frame the decoder took");
                assert_eq!(m, b);
                // What decodes re-encodes into a frame that decodes (floats may move by an
                // ulp through JSON, so no equality here).
                let again = encode(&m);
                assert!(decode_frame(&again, MAX_FRAME).unwrap().is_some());
                pos += used;
                n += 1;
            }
            Ok(None) => {
                assert!(blocking.is_err());
                return n;
            }
            Err(_) => {
                assert!(blocking.is_err());
                return n;
            }
        }
    }
}

/// The body of the `handshake` fuzz target: the frames of `data` are fed, in order, to a
/// server handshake; whatever they are, it never panics, accepts exactly when the client's
/// proof is right for its nonce, sends nothing but a Challenge, and ends after one Accept
/// or Reject.
#[doc(hidden)]
pub fn fuzz_handshake(data: &[u8]) {
    use auth::{ServerHandshake, Step};
    let secret = auth::Secret([0x5a; auth::SECRET_LEN]);
    let server_nonce = [0x33; auth::NONCE_LEN];
    let mut hs = ServerHandshake::new(secret.clone(), server_nonce);
    let mut pos = 0;
    let mut over = false;
    let mut client_nonce: Option<[u8; auth::NONCE_LEN]> = None;
    let mut challenged = false;
    while let Ok(Some((m, used))) = decode_frame(&data[pos..], HANDSHAKE_MAX_FRAME) {
        pos += used;
        if let Message::Hello { nonce: Some(n), .. } = &m {
            if !challenged {
                let mut b = [0u8; auth::NONCE_LEN];
                client_nonce = auth::hex_decode(n.as_bytes(), &mut b).then_some(b);
            }
        }
        let right_proof = match (&m, client_nonce) {
            (Message::Auth { proof }, Some(c)) if challenged => {
                // Hex digits of either case name the same bytes.
                let mut got = [0u8; 32];
                auth::hex_decode(proof.as_bytes(), &mut got)
                    && got == auth::client_proof(&secret, &c, &server_nonce)
            }
            _ => false,
        };
        let step = hs.on_message(m);
        if over {
            assert!(
                matches!(step, Step::Reject(..)),
                "a step after the end: {step:?}"
            );
        }
        match step {
            Step::Accept(_) => {
                assert!(right_proof, "accepted a client without the right proof");
                over = true;
            }
            Step::Reject(..) => {
                assert!(!right_proof || over, "refused the right proof");
                over = true;
            }
            Step::Send(Message::Challenge { .. }) => {
                assert!(!challenged && !over);
                challenged = true;
            }
            Step::Send(other) => panic!("unexpected server message {other:?}"),
        }
    }
}

/// A point in time given on a command line (`--checkpoint-at`): Unix seconds (`1795638431`,
/// `@1795638431`) or `+DURATION` from now, with `parse_duration` for the duration part.
pub fn parse_at(
    text: &str,
    parse_duration: impl Fn(&str) -> Result<std::time::Duration, String>,
) -> Result<u64, String> {
    let t = text.trim();
    if let Some(d) = t.strip_prefix('+') {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return parse_duration(d).map(|d| now + d.as_secs());
    }
    t.strip_prefix('@')
        .unwrap_or(t)
        .parse::<u64>()
        .map_err(|_| {
            format!(
                "invalid time {text:?}: use Unix seconds (1795638431 or @1795638431) or +DURATION (+3h50m)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message::Barrier {
            generation: 3,
            phase: Phase::Snapshot,
            dir: "/x/gen-3".into(),
            hold: false,
        };
        let bytes = encode(&m);
        let back = read_msg(&mut &bytes[..]).unwrap();
        assert_eq!(m, back);
    }

    #[test]
    fn oversized_frame_refused() {
        let mut bytes = (MAX_FRAME + 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(
            read_msg(&mut &bytes[..]),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn decode_frame_is_incremental() {
        let m = Message::Checkpoint { kill: true };
        let mut bytes = encode(&m);
        bytes.extend(encode(&Message::GetStatus));
        for cut in 0..encode(&m).len() {
            assert!(decode_frame(&bytes[..cut], MAX_FRAME).unwrap().is_none());
        }
        let (a, n) = decode_frame(&bytes, MAX_FRAME).unwrap().unwrap();
        assert_eq!(a, m);
        let (b, k) = decode_frame(&bytes[n..], MAX_FRAME).unwrap().unwrap();
        assert_eq!(b, Message::GetStatus);
        assert_eq!(n + k, bytes.len());
        let big = (HANDSHAKE_MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(
            decode_frame(&big, HANDSHAKE_MAX_FRAME),
            Err(FrameError::TooLarge(_))
        ));
    }

    /// Every file of the fuzz regression corpus (fuzz/corpus/*/ and fuzz/regressions/)
    /// goes through the frame decoder, the blocking reader and the handshake state machine
    /// without a panic; so CI exercises them without cargo-fuzz.
    #[test]
    fn fuzz_corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut files = Vec::new();
        for sub in ["corpus/frame", "corpus/handshake", "regressions"] {
            if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
                files.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        assert!(
            files.len() >= 10,
            "the fuzz corpus in {} is missing ({} files)",
            root.display(),
            files.len()
        );
        let mut decoded = 0;
        for f in &files {
            let data = std::fs::read(f).unwrap();
            decoded += fuzz_frame(&data);
            fuzz_handshake(&data);
        }
        assert!(decoded > 0, "no corpus file holds a valid frame");
    }

    #[test]
    fn garbage_refused() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            read_msg(&mut &bytes[..]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read_msg(&mut &[1u8, 0][..]),
            Err(FrameError::Closed)
        ));
    }
}
