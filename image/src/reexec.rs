//! Processes that are re-executed at restart instead of restored (`srun` in a Slurm batch
//! script: its connections to the Slurm daemons cannot be restored, but the step it runs
//! can be launched again and its tasks restored from their own images).
//!
//! Such a process writes a small JSON description, `reexec-<vpid>.json`, in the generation
//! directory in place of an image: what to execute again (executable, argv, environment,
//! working directory) and where it sits in the process tree. See docs/image-format.md.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ImageError;

pub const REEXEC_FORMAT: &str = "ckpt-reexec";
pub const REEXEC_VERSION: u32 = 1;
/// Larger descriptions are refused (an environment is a few KiB; 4 MiB is far beyond).
pub const REEXEC_MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReexecSpec {
    pub format: String,
    pub version: u32,
    /// The pid the process had for the program (its parent waits for this pid).
    pub vpid: i32,
    pub vppid: i32,
    pub program: String,
    /// The executable (absolute path, from /proc/self/exe).
    pub exe: String,
    pub argv: Vec<String>,
    /// The environment the process was started with (`NAME=value` entries).
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub host: String,
    pub generation: u64,
}

/// `reexec-<vpid>.json`.
pub fn reexec_file_name(vpid: i32) -> String {
    format!("reexec-{vpid}.json")
}

/// Whether a manifest entry's file is a re-exec description rather than an image.
pub fn is_reexec_file(name: &str) -> bool {
    name.starts_with("reexec-") && name.ends_with(".json")
}

impl ReexecSpec {
    /// Writes `DIR/reexec-<vpid>.json` atomically (temporary name, fsync, rename); returns
    /// its size.
    pub fn write(&self, dir: &Path) -> Result<u64, ImageError> {
        let path = dir.join(reexec_file_name(self.vpid));
        let tmp = dir.join(format!(".{}.tmp", reexec_file_name(self.vpid)));
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| ImageError::Io {
                path: p,
                op,
                source,
            }
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| ImageError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&text).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        crate::sync_dir(dir)?;
        Ok(text.len() as u64)
    }

    /// Reads and validates a description.
    pub fn load(path: &Path) -> Result<ReexecSpec, ImageError> {
        let corrupt = |detail: String| ImageError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let md = std::fs::metadata(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "stat",
            source,
        })?;
        if md.len() > REEXEC_MAX_BYTES {
            return Err(corrupt(format!(
                "{} bytes, more than a re-exec description may have ({REEXEC_MAX_BYTES})",
                md.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        let s: ReexecSpec =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("bad JSON: {e}")))?;
        if s.format != REEXEC_FORMAT {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                detail: format!("format {:?}, expected {REEXEC_FORMAT:?}", s.format),
            });
        }
        if s.version > REEXEC_VERSION {
            return Err(ImageError::FutureVersion {
                path: path.to_path_buf(),
                what: "re-exec description".into(),
                found: s.version,
                supported: REEXEC_VERSION,
            });
        }
        if s.argv.is_empty() || !s.exe.starts_with('/') || s.vpid <= 0 {
            return Err(corrupt(
                "no argv, a relative executable path or a bad vpid".into(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ReexecSpec {
        ReexecSpec {
            format: REEXEC_FORMAT.into(),
            version: REEXEC_VERSION,
            vpid: 4242,
            vppid: 4000,
            program: "srun".into(),
            exe: "/usr/bin/srun".into(),
            argv: vec!["srun".into(), "-n2".into(), "./prog".into()],
            env: vec!["A=1".into(), "B=two words".into()],
            cwd: "/tmp".into(),
            uid: 1000,
            host: "node1".into(),
            generation: 3,
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let d = std::env::temp_dir().join(format!("ckpt-reexec-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _c = Cleanup(d.clone());
        let d = d.as_path();
        let s = spec();
        let n = s.write(d).unwrap();
        let p = d.join(reexec_file_name(4242));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), n);
        assert!(is_reexec_file("reexec-4242.json"));
        assert!(!is_reexec_file("proc-4242.img"));
        assert_eq!(ReexecSpec::load(&p).unwrap(), s);

        let mut bad = s.clone();
        bad.version = REEXEC_VERSION + 1;
        bad.write(d).unwrap();
        let e = ReexecSpec::load(&p).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::FutureVersion, "{e}");

        let mut bad = s.clone();
        bad.format = "other".into();
        bad.write(d).unwrap();
        assert_eq!(
            ReexecSpec::load(&p).unwrap_err().kind(),
            crate::ErrorKind::NotAnImage
        );

        std::fs::write(&p, b"{ not json").unwrap();
        let e = ReexecSpec::load(&p).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains("reexec-4242.json"), "{e}");
    }
}
