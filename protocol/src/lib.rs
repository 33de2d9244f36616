//! The coordinator wire protocol.
//!
//! Every message travels in one frame: a 4-byte little-endian payload length followed by
//! that many bytes of JSON (one [`Message`]). Frames larger than [`MAX_FRAME`] are refused
//! before anything is allocated. The first frame on every connection is a
//! [`Message::Hello`] from the client carrying [`PROTOCOL_VERSION`]; the coordinator answers
//! [`Message::Welcome`] or [`Message::Refused`] and closes.
//!
//! Roles: a *process* (the runtime inside a checkpointed program) stays connected for its
//! whole life and follows the barrier sequence; a *control* client (`ckpt checkpoint`,
//! `ckpt status`) sends one request and reads replies.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// Bumped on every incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame accepted (payload bytes).
pub const MAX_FRAME: u32 = 4 << 20;

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
    pub ckpt_dir: String,
    pub socket: String,
    pub processes: Vec<ProcessStatus>,
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Seconds until the next interval checkpoint, when an interval is set.
    pub next_checkpoint_in: Option<f64>,
    pub interval_seconds: Option<f64>,
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
    Hello {
        protocol_version: u32,
        role: Role,
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
    /// the image into (only meaningful for [`Phase::Snapshot`]).
    Barrier {
        generation: u64,
        phase: Phase,
        dir: String,
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

    // ---- coordinator -> control
    CheckpointDone(CheckpointSummary),
    CheckpointFailed {
        error: String,
    },
    Status(Status),
    Ok,
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
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(decode_body(&body)?)
}

/// Parses a frame payload.
pub fn decode_body(body: &[u8]) -> Result<Message, serde_json::Error> {
    serde_json::from_slice(body)
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
