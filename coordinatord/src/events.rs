//! The coordinator's event journal: one JSON object per line in `DIR/events.jsonl`.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Something worth a line in the journal.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    CoordinatorStarted {
        pid: i32,
        version: String,
        socket: String,
    },
    CoordinatorStopped {
        reason: String,
    },
    ProcessJoined {
        vpid: i32,
        real_pid: i32,
        host: String,
        program: String,
        restored_from: Option<u64>,
    },
    ProcessLeft {
        vpid: i32,
        real_pid: i32,
        program: String,
        reason: String,
    },
    CheckpointStarted {
        generation: u64,
        trigger: String,
        processes: usize,
    },
    CheckpointCommitted {
        generation: u64,
        bytes: u64,
        seconds: f64,
        stopped_seconds: f64,
        processes: usize,
    },
    CheckpointFailed {
        generation: Option<u64>,
        error: String,
        seconds: f64,
    },
}

/// Appends events to a file; failures to write are logged, never fatal.
pub struct Journal {
    file: Option<File>,
}

impl Journal {
    pub fn open(path: &Path) -> Journal {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path);
        match file {
            Ok(f) => Journal { file: Some(f) },
            Err(e) => {
                tracing::warn!("cannot open event journal {}: {e}", path.display());
                Journal { file: None }
            }
        }
    }

    /// A journal that writes nowhere (tests).
    pub fn none() -> Journal {
        Journal { file: None }
    }

    pub fn record(&mut self, ev: &Event) {
        let Some(f) = self.file.as_mut() else { return };
        if let Ok(line) = event_line(ev) {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::warn!("cannot append to the event journal: {e}");
            }
        }
    }
}

/// The JSON line for `ev`, with a `time` field (Unix seconds) added.
pub fn event_line(ev: &Event) -> serde_json::Result<String> {
    let mut v = serde_json::to_value(ev)?;
    if let Some(obj) = v.as_object_mut() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        obj.insert("time".into(), serde_json::json!(now));
    }
    let mut s = serde_json::to_string(&v)?;
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let l = event_line(&Event::CheckpointCommitted {
            generation: 4,
            bytes: 10,
            seconds: 1.5,
            stopped_seconds: 0.1,
            processes: 2,
        })
        .unwrap();
        assert!(l.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["event"], "checkpoint_committed");
        assert_eq!(v["generation"], 4);
        assert!(v["time"].as_f64().unwrap() > 0.0);
    }
}
