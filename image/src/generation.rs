//! A checkpoint directory and its generations `gen-000001/`, `gen-000002/`, ...
//! A generation is complete only when its valid `MANIFEST` exists.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::container::sync_dir;
use crate::error::{ImageError, IoCtx};
use crate::manifest::{Manifest, MANIFEST_FILE};

/// The state of one generation directory.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationState {
    /// A valid MANIFEST: restartable.
    Complete,
    /// No MANIFEST: a checkpoint in progress, or one that was aborted or crashed.
    NoManifest,
    /// A MANIFEST that cannot be used; the reason (full error text) is kept for warnings.
    BadManifest(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationInfo {
    pub number: u64,
    pub path: PathBuf,
    pub state: GenerationState,
    /// Present iff `state == Complete`.
    pub manifest: Option<Manifest>,
}

impl GenerationInfo {
    pub fn is_complete(&self) -> bool {
        self.state == GenerationState::Complete
    }

    /// Why the generation is not complete (None if it is).
    pub fn problem(&self) -> Option<String> {
        match &self.state {
            GenerationState::Complete => None,
            GenerationState::NoManifest => Some(format!(
                "{}: no {MANIFEST_FILE} (checkpoint incomplete or in progress)",
                self.path.display()
            )),
            GenerationState::BadManifest(why) => Some(why.clone()),
        }
    }
}

/// A checkpoint directory.
#[derive(Debug, Clone)]
pub struct CkptDir {
    root: PathBuf,
}

/// `gen-000042` for 42.
pub fn generation_dir_name(n: u64) -> String {
    format!("gen-{n:06}")
}

/// The generation number of a directory name in canonical form (`gen-` + at least six
/// digits, no superfluous leading zeros), else None.
pub fn parse_generation_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (n >= 1 && generation_dir_name(n) == name).then_some(n)
}

fn mkdir_0700(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)
}

impl CkptDir {
    /// Opens an existing checkpoint directory.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let md = std::fs::metadata(root).ctx(root, "open checkpoint directory")?;
        if !md.is_dir() {
            return Err(ImageError::io(
                root,
                "open checkpoint directory",
                io::Error::other("not a directory"),
            ));
        }
        Ok(CkptDir {
            root: root.to_path_buf(),
        })
    }

    /// Creates the directory (and missing parents, mode 0700) if needed, then opens it.
    pub fn create(root: &Path) -> Result<Self, ImageError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .ctx(root, "create checkpoint directory")?;
        Self::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of generation `n` (whether or not it exists).
    pub fn generation_path(&self, n: u64) -> PathBuf {
        self.root.join(generation_dir_name(n))
    }

    pub fn image_file_name(vpid: i32) -> String {
        format!("proc-{vpid}.img")
    }

    /// Numbers of every entry named like a generation (directory or not), unsorted.
    fn generation_numbers(&self) -> Result<Vec<(u64, bool)>, ImageError> {
        let rd = std::fs::read_dir(&self.root).ctx(&self.root, "list checkpoint directory")?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.ctx(&self.root, "list checkpoint directory")?;
            let name = ent.file_name();
            let Some(n) = name.to_str().and_then(parse_generation_dir_name) else {
                continue;
            };
            let is_dir = ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
            out.push((n, is_dir));
        }
        Ok(out)
    }

    fn inspect(&self, n: u64) -> GenerationInfo {
        let path = self.generation_path(n);
        let mpath = path.join(MANIFEST_FILE);
        let (state, manifest) = match std::fs::symlink_metadata(&mpath) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (GenerationState::NoManifest, None),
            _ => match Manifest::load(&mpath).and_then(|m| m.validate(&path, n, &mpath).map(|_| m))
            {
                Ok(m) => (GenerationState::Complete, Some(m)),
                Err(e) => (GenerationState::BadManifest(e.to_string()), None),
            },
        };
        GenerationInfo {
            number: n,
            path,
            state,
            manifest,
        }
    }

    /// Every generation directory, oldest first, complete or not.
    pub fn generations(&self) -> Result<Vec<GenerationInfo>, ImageError> {
        let mut nums: Vec<u64> = self
            .generation_numbers()?
            .into_iter()
            .filter(|&(_, is_dir)| is_dir)
            .map(|(n, _)| n)
            .collect();
        nums.sort_unstable();
        Ok(nums.into_iter().map(|n| self.inspect(n)).collect())
    }

    /// The newest complete generation (the one to restart from).
    pub fn newest_complete(&self) -> Result<Option<GenerationInfo>, ImageError> {
        Ok(self
            .generations()?
            .into_iter()
            .rev()
            .find(|g| g.is_complete()))
    }

    /// One more than the largest generation number in use (complete or not); 1 if none.
    pub fn next_number(&self) -> Result<u64, ImageError> {
        let max = self
            .generation_numbers()?
            .into_iter()
            .map(|(n, _)| n)
            .max()
            .unwrap_or(0);
        max.checked_add(1).ok_or_else(|| ImageError::Usage {
            path: self.root.clone(),
            detail: "generation numbers exhausted".into(),
        })
    }

    /// Creates the (empty, mode 0700) directory of generation `n`; fails if it exists.
    pub fn begin(&self, n: u64) -> Result<PathBuf, ImageError> {
        if n == 0 {
            return Err(ImageError::Usage {
                path: self.root.clone(),
                detail: "generation numbers start at 1".into(),
            });
        }
        let path = self.generation_path(n);
        mkdir_0700(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ImageError::Exists { path: path.clone() }
            } else {
                ImageError::io(&path, "create generation directory", e)
            }
        })?;
        sync_dir(&self.root)?;
        Ok(path)
    }

    /// Makes generation `n` complete: validates `m` against the directory (images present
    /// with the recorded sizes), writes `MANIFEST.tmp` (0600), fsyncs it, renames it to
    /// `MANIFEST` and fsyncs the generation directory.
    pub fn commit(&self, n: u64, m: &Manifest) -> Result<(), ImageError> {
        let dir = self.generation_path(n);
        let final_path = dir.join(MANIFEST_FILE);
        m.validate(&dir, n, &final_path)?;
        if final_path.symlink_metadata().is_ok() {
            return Err(ImageError::Exists { path: final_path });
        }
        // Images were renamed into place by their writers; make those entries durable too.
        sync_dir(&dir)?;
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .ctx(&tmp, "create manifest")?;
        f.write_all(m.to_json().as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .ctx(&tmp, "write manifest")?;
        f.sync_all().ctx(&tmp, "fsync manifest")?;
        drop(f);
        std::fs::rename(&tmp, &final_path).ctx(&final_path, "rename manifest into place")?;
        sync_dir(&dir)
    }

    /// Removes generation `n`, which must not be complete (no MANIFEST).
    pub fn abandon(&self, n: u64) -> Result<(), ImageError> {
        let dir = self.generation_path(n);
        let mpath = dir.join(MANIFEST_FILE);
        if mpath.symlink_metadata().is_ok() {
            return Err(ImageError::Usage {
                path: dir,
                detail: "refusing to abandon a generation that has a MANIFEST".into(),
            });
        }
        std::fs::remove_dir_all(&dir).ctx(&dir, "remove generation directory")?;
        sync_dir(&self.root)
    }

    /// Retention: keeps the newest `keep` (>= 1) complete generations, removes older
    /// complete ones and every incomplete one older than the newest complete generation.
    /// Incomplete generations newer than it (checkpoints in progress) are left alone, and
    /// nothing is removed when there is no complete generation. Returns the removed numbers.
    /// The generations whose images the images of generation `n` take page data from.
    pub fn referenced_by(&self, n: u64) -> Result<Vec<u64>, ImageError> {
        let dir = self.generation_path(n);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).ctx(&dir, "list generation directory")? {
            let e = e.ctx(&dir, "list generation directory")?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.ends_with(".img") {
                continue;
            }
            let r = crate::container::ImageReader::open(&e.path())?;
            for p in r.parents()? {
                if !out.contains(&p.generation) {
                    out.push(p.generation);
                }
            }
        }
        Ok(out)
    }

    pub fn prune(&self, keep: usize) -> Result<Vec<u64>, ImageError> {
        if keep == 0 {
            return Err(ImageError::Usage {
                path: self.root.clone(),
                detail: "prune: keep must be at least 1".into(),
            });
        }
        let gens = self.generations()?;
        let complete: Vec<u64> = gens
            .iter()
            .filter(|g| g.is_complete())
            .map(|g| g.number)
            .collect();
        let Some(&newest) = complete.last() else {
            return Ok(Vec::new());
        };
        let mut kept: Vec<u64> = complete.iter().rev().take(keep).copied().collect();
        // Incremental images take page data from older generations: those are kept as long
        // as a kept generation references them (a generation whose images cannot be read
        // keeps every older complete one: nothing it may need is removed).
        let mut i = 0;
        while i < kept.len() {
            let g = kept[i];
            i += 1;
            let refs = self
                .referenced_by(g)
                .unwrap_or_else(|_| complete.iter().copied().filter(|&c| c < g).collect());
            for r in refs {
                if complete.contains(&r) && !kept.contains(&r) {
                    kept.push(r);
                }
            }
        }
        let mut removed = Vec::new();
        for g in &gens {
            let remove = if g.is_complete() {
                !kept.contains(&g.number)
            } else {
                g.number < newest
            };
            if !remove || g.number == newest {
                continue;
            }
            // MANIFEST first, so a crash mid-way leaves an incomplete generation, never a
            // complete one with missing images.
            let mpath = g.path.join(MANIFEST_FILE);
            match std::fs::remove_file(&mpath) {
                Ok(()) => sync_dir(&g.path)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(&mpath, "remove manifest", e)),
            }
            std::fs::remove_dir_all(&g.path).ctx(&g.path, "remove generation directory")?;
            removed.push(g.number);
        }
        if !removed.is_empty() {
            sync_dir(&self.root)?;
        }
        Ok(removed)
    }
}
