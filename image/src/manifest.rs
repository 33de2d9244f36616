//! The `MANIFEST` of a generation directory (JSON). A generation exists only when its
//! manifest does; see docs/image-format.md.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ImageError, IoCtx};

/// Value of the `format` field.
pub const MANIFEST_FORMAT: &str = "ckpt-manifest";
/// Version of the manifest schema.
pub const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest inside a generation directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Refuse manifests larger than this (a sanity cap, not a format limit).
const MAX_MANIFEST_LEN: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// Must equal the N of the `gen-N` directory holding it.
    pub generation: u64,
    pub created_unix: u64,
    /// Wall time from the checkpoint trigger to the commit.
    pub duration_seconds: f64,
    /// Sum of `processes[].bytes`.
    pub total_bytes: u64,
    pub processes: Vec<ManifestProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProcess {
    pub vpid: i32,
    pub real_pid: i32,
    pub program: String,
    pub host: String,
    /// Image file name inside the generation directory (`proc-<vpid>.img`).
    pub file: String,
    /// Size of the image file.
    pub bytes: u64,
    /// The task's rank in its job step, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<i32>,
    /// The job step ("batch", "0", ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// Optional description of the batch job the processes belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// "slurm", "pbs", or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<String>,
}

impl Manifest {
    /// A manifest for generation `generation`; `total_bytes` is computed.
    pub fn new(
        generation: u64,
        created_unix: u64,
        duration_seconds: f64,
        processes: Vec<ManifestProcess>,
        job: Option<JobInfo>,
    ) -> Self {
        let total_bytes = processes.iter().map(|p| p.bytes).sum();
        Manifest {
            format: MANIFEST_FORMAT.to_string(),
            version: MANIFEST_VERSION,
            generation,
            created_unix,
            duration_seconds,
            total_bytes,
            processes,
            job,
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses manifest JSON (format and version checked; nothing else). `path` is only for
    /// error messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, ImageError> {
        let invalid = |detail: String| ImageError::InvalidManifest {
            path: path.to_path_buf(),
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(MANIFEST_FORMAT) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "format is {other:?}, expected {MANIFEST_FORMAT:?}"
                )))
            }
            None => return Err(invalid("no \"format\" field".into())),
        }
        let version = v
            .get("version")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| invalid("no numeric \"version\" field".into()))?;
        if version > u64::from(MANIFEST_VERSION) {
            return Err(ImageError::FutureVersion {
                path: path.to_path_buf(),
                what: "manifest".into(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: MANIFEST_VERSION,
            });
        }
        if version != u64::from(MANIFEST_VERSION) {
            return Err(invalid(format!("version {version} is not valid")));
        }
        serde_json::from_value(v).map_err(|e| invalid(e.to_string()))
    }

    /// Reads and parses `path` (no check against the directory; see [`Manifest::validate`]).
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let len = std::fs::metadata(path).ctx(path, "stat manifest")?.len();
        if len > MAX_MANIFEST_LEN {
            return Err(ImageError::InvalidManifest {
                path: path.to_path_buf(),
                detail: format!("{len} bytes (at most {MAX_MANIFEST_LEN} allowed)"),
            });
        }
        let bytes = std::fs::read(path).ctx(path, "read manifest")?;
        Self::parse(&bytes, path)
    }

    /// Checks the manifest against its generation directory: generation number, at least
    /// one process, unique vpids, plain file names, `total_bytes`, and that every image
    /// file exists with the recorded size. `manifest_path` is for error messages.
    pub fn validate(
        &self,
        gen_dir: &Path,
        generation: u64,
        manifest_path: &Path,
    ) -> Result<(), ImageError> {
        let invalid = |detail: String| ImageError::InvalidManifest {
            path: manifest_path.to_path_buf(),
            detail,
        };
        if self.format != MANIFEST_FORMAT || self.version != MANIFEST_VERSION {
            return Err(invalid(format!(
                "format {:?} version {}, expected {MANIFEST_FORMAT:?} version {MANIFEST_VERSION}",
                self.format, self.version
            )));
        }
        if self.generation != generation {
            return Err(invalid(format!(
                "says generation {} but lives in the directory of generation {generation}",
                self.generation
            )));
        }
        if self.processes.is_empty() {
            return Err(invalid("lists no process".into()));
        }
        let mut vpids = BTreeSet::new();
        let mut files = BTreeSet::new();
        let mut total: u64 = 0;
        for p in &self.processes {
            if !vpids.insert(p.vpid) {
                return Err(invalid(format!("vpid {} is listed twice", p.vpid)));
            }
            if p.file.is_empty()
                || p.file.contains('/')
                || p.file == "."
                || p.file == ".."
                || p.file == MANIFEST_FILE
                || p.file.contains('\0')
            {
                return Err(invalid(format!(
                    "vpid {}: {:?} is not a plain image file name",
                    p.vpid, p.file
                )));
            }
            if !files.insert(p.file.as_str()) {
                return Err(invalid(format!("file {:?} is listed twice", p.file)));
            }
            total = total
                .checked_add(p.bytes)
                .ok_or_else(|| invalid("total of process bytes overflows".into()))?;
            let file = gen_dir.join(&p.file);
            match std::fs::symlink_metadata(&file) {
                Ok(md) if md.is_file() => {
                    if md.len() != p.bytes {
                        return Err(invalid(format!(
                            "vpid {}: {} is {} bytes, the manifest says {}",
                            p.vpid,
                            file.display(),
                            md.len(),
                            p.bytes
                        )));
                    }
                }
                Ok(_) => {
                    return Err(invalid(format!(
                        "vpid {}: {} is not a regular file",
                        p.vpid,
                        file.display()
                    )))
                }
                Err(e) => {
                    return Err(invalid(format!(
                        "vpid {}: image {}: {e}",
                        p.vpid,
                        file.display()
                    )))
                }
            }
        }
        if total != self.total_bytes {
            return Err(invalid(format!(
                "total_bytes is {}, the processes add up to {total}",
                self.total_bytes
            )));
        }
        Ok(())
    }
}
