//! Incremental checkpoints by content: every image stores one 64-bit hash (xxh3) per page
//! it describes (the optional PAGEHASH section). The next checkpoint of the same process
//! hashes each page it reads from the snapshot; a page whose address and hash are those of
//! a page of the previous image is not written again: its run points at the image that
//! holds the bytes (PAGEMAP version 2, PARENTS). References are flattened (they always name
//! the image with the bytes, never a chain), so restoring an incremental image reads every
//! run once, like a full one, only from several files. The CRC-32C of every run is computed
//! from the snapshot's bytes as usual, so the restorer's check also catches a hash collision
//! or a damaged parent.
//!
//! No kernel help is needed (no soft-dirty bits, no userfaultfd): the cost is reading and
//! hashing all resident memory, which a full checkpoint reads anyway; what is saved is the
//! writing. See docs/image-format.md, "Incremental images".

use std::path::Path;

use crate::container::{ImageReader, ParentRef, PAGE_ALIGN};
use crate::generation::{parse_generation_dir_name, CkptDir};
use crate::model::PageRun;

/// A page is referenced only while the image holding it is at most this many generations
/// older than the one being written; older pages are written again. This bounds how many
/// old generations a checkpoint can keep alive (see `CkptDir::prune`).
pub const MAX_CHAIN: u64 = 8;

/// The content hash stored per page.
pub fn page_hash(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

struct BaseRun {
    addr: u64,
    len: u64,
    /// Index into `Base::cands`.
    cand: usize,
    offset: u64,
    hash_at: usize,
}

/// The previous image of a process, as the next checkpoint compares against it.
pub struct Base {
    runs: Vec<BaseRun>,
    hashes: Vec<u64>,
    cands: Vec<ParentRef>,
    used: Vec<bool>,
    cursor: usize,
    /// Generation of the base image.
    pub generation: u64,
}

/// A page of the base with the same address: its hash and where its bytes are.
#[derive(Debug, Clone, Copy)]
pub struct BasePage {
    pub hash: u64,
    pub cand: usize,
    pub offset: u64,
}

impl Base {
    /// The newest complete generation's image of the same process as the image being
    /// written at `path` (`<dir>/gen-N/proc-V.img[.tmp]`), if it has page hashes. `None`
    /// (a full checkpoint) if there is none or it cannot be used; the reason is returned
    /// for the log.
    pub fn for_image(path: &Path) -> Result<Base, String> {
        let gen_dir = path.parent().ok_or("no generation directory")?;
        let root = gen_dir.parent().ok_or("no checkpoint directory")?;
        let this = gen_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_generation_dir_name)
            .ok_or("not in a generation directory")?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad image name")?;
        let name = name.strip_suffix(".tmp").unwrap_or(name).to_string();
        let cd = CkptDir::open(root).map_err(|e| e.to_string())?;
        let prev = cd
            .generations()
            .map_err(|e| e.to_string())?
            .into_iter()
            .rfind(|g| g.is_complete() && g.number < this)
            .ok_or("no earlier complete generation")?;
        let base_path = prev.path.join(&name);
        if !base_path.exists() {
            return Err(format!(
                "{} has no image of this process",
                prev.path.display()
            ));
        }
        let r = ImageReader::open(&base_path).map_err(|e| e.to_string())?;
        let hashes = r
            .page_hashes()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} has no page hashes", base_path.display()))?;
        let mut runs_in = r.page_runs().map_err(|e| e.to_string())?;
        let pages: u64 = runs_in.iter().map(|x| x.len / PAGE_ALIGN).sum();
        if pages != hashes.len() as u64 {
            return Err(format!(
                "{}: {} page hashes for {pages} pages",
                base_path.display(),
                hashes.len()
            ));
        }
        // Candidates: the base itself, then its parents (generation order kept).
        let mut cands = vec![ParentRef {
            generation: prev.number,
            file: name.clone(),
            file_len: r.file_len(),
            trailer_crc: r.trailer_crc(),
        }];
        cands.extend(r.parents().map_err(|e| e.to_string())?);
        // Hash positions follow PAGEMAP order; index them before sorting by address.
        let mut at = 0usize;
        let mut runs = Vec::with_capacity(runs_in.len());
        for x in runs_in.drain(..) {
            let cand = if x.generation == 0 {
                0
            } else {
                cands
                    .iter()
                    .position(|c| c.generation == x.generation)
                    .ok_or("a run of an unlisted parent")?
            };
            let n = (x.len / PAGE_ALIGN) as usize;
            // Too old to keep alive: rewrite these pages.
            if this.saturating_sub(cands[cand].generation) <= MAX_CHAIN {
                runs.push(BaseRun {
                    addr: x.addr,
                    len: x.len,
                    cand,
                    offset: x.offset,
                    hash_at: at,
                });
            }
            at += n;
        }
        runs.sort_by_key(|x| x.addr);
        let used = vec![false; cands.len()];
        Ok(Base {
            runs,
            hashes,
            cands,
            used,
            cursor: 0,
            generation: prev.number,
        })
    }

    /// The base's page at `addr`, if any. Fastest when called with increasing addresses.
    pub fn lookup(&mut self, addr: u64) -> Option<BasePage> {
        if self.cursor > 0 && {
            let r = &self.runs[self.cursor - 1];
            r.addr + r.len > addr
        } {
            // Called with a lower address than before: search again.
            self.cursor = self.runs.partition_point(|r| r.addr + r.len <= addr);
        }
        while self.cursor < self.runs.len()
            && self.runs[self.cursor].addr + self.runs[self.cursor].len <= addr
        {
            self.cursor += 1;
        }
        let r = self.runs.get(self.cursor)?;
        if r.addr > addr {
            return None;
        }
        let i = ((addr - r.addr) / PAGE_ALIGN) as usize;
        Some(BasePage {
            hash: self.hashes[r.hash_at + i],
            cand: r.cand,
            offset: r.offset + i as u64 * PAGE_ALIGN,
        })
    }

    /// The generation holding the bytes of candidate `cand` (marks it used).
    pub fn use_cand(&mut self, cand: usize) -> u64 {
        self.used[cand] = true;
        self.cands[cand].generation
    }

    /// The parents the new image lists: every candidate a run referenced.
    pub fn parents(&self) -> Vec<ParentRef> {
        self.cands
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| **u)
            .map(|(c, _)| c.clone())
            .collect()
    }
}

/// Whether two runs can be one: contiguous in memory and in the same file.
pub fn continues(run: &PageRun, addr: u64, generation: u64, offset: u64) -> bool {
    run.generation == generation && run.addr + run.len == addr && run.offset + run.len == offset
}
