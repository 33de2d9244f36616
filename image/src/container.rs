//! The process image container, format v1: a file header, sections, a table of contents
//! (TOC) and a trailer. Byte layout, versioning and validation rules: docs/image-format.md.
//!
//! [`ImageWriter`] streams (it never buffers page data and allocates only through the
//! global allocator, so the runtime can use it in a forked child); [`ImageReader`]
//! validates every structure before handing out anything.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ImageError, IoCtx};
use crate::model::{PageRun, ProcessMeta, META_MIN_VERSION, META_VERSION};

/// First 8 bytes of every image.
pub const FILE_MAGIC: [u8; 8] = *b"CKPTIMG\0";
/// First 8 bytes of the trailer (the last 48 bytes of the file).
pub const TRAILER_MAGIC: [u8; 8] = *b"CKPTEND\0";
/// First 4 bytes of every section header (`b"SECT"` little-endian).
pub const SECTION_MAGIC: u32 = u32::from_le_bytes(*b"SECT");
/// Major format version: a reader refuses any other major.
pub const FORMAT_VERSION: u32 = 1;
/// Minor format version: bumped for compatible additions (new *optional* sections).
/// 1: the optional PAGEHASH section; incremental images (PARENTS, PAGEMAP version 2,
/// which a 1.0 reader refuses as a newer non-optional section version).
pub const FORMAT_MINOR: u32 = 1;

pub const FILE_HEADER_SIZE: u64 = 64;
pub const SECTION_HEADER_SIZE: u64 = 32;
pub const TOC_ENTRY_SIZE: u64 = 40;
pub const TRAILER_SIZE: u64 = 48;
pub const PAGE_MAP_RECORD_SIZE: u64 = 32;
/// Alignment of the PAGES payload, of every page run's file offset, address and length.
pub const PAGE_ALIGN: u64 = 4096;

/// Section flag: a reader that does not understand this section (unknown kind or newer
/// section version) in an image of a newer minor format may skip it.
pub const SECTION_FLAG_OPTIONAL: u32 = 1;
const KNOWN_SECTION_FLAGS: u32 = SECTION_FLAG_OPTIONAL;

/// Sanity caps on sections the reader loads into memory.
const MAX_META_LEN: u64 = 256 << 20;
const MAX_PAGE_MAP_LEN: u64 = 2 << 30;
const MAX_SECTIONS: u64 = 4096;

/// Page bytes are checksummed and written in chunks of this size (cache friendly).
const WRITE_CHUNK: usize = 1 << 20;
/// Buffer size for reading back page runs.
const READ_CHUNK: usize = 8 << 20;

/// Section kinds. Codes 1..=0xffff are reserved for ckpt's own kinds; 0x1_0000 and up
/// for extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// JSON of [`ProcessMeta`].
    Meta,
    /// Raw page bytes, payload 4096-aligned in the file.
    Pages,
    /// Binary array of 32-byte [`PageRun`] records.
    PageMap,
    /// JSON list of the images an incremental image takes page data from.
    Parents,
    /// One 64-bit content hash per page of the PAGEMAP's runs (optional).
    PageHash,
    /// A kind this build does not know.
    Other(u32),
}

impl SectionKind {
    pub fn code(self) -> u32 {
        match self {
            SectionKind::Meta => 1,
            SectionKind::Pages => 2,
            SectionKind::PageMap => 3,
            SectionKind::Parents => 4,
            SectionKind::PageHash => 5,
            SectionKind::Other(c) => c,
        }
    }

    pub fn from_code(code: u32) -> Self {
        match code {
            1 => SectionKind::Meta,
            2 => SectionKind::Pages,
            3 => SectionKind::PageMap,
            4 => SectionKind::Parents,
            5 => SectionKind::PageHash,
            c => SectionKind::Other(c),
        }
    }

    /// The newest version of this section this build reads and writes (None: unknown kind).
    pub fn supported_version(self) -> Option<u32> {
        match SectionKind::from_code(self.code()) {
            SectionKind::Meta | SectionKind::Pages => Some(1),
            // 2: records may take their bytes from a parent image (field 28).
            SectionKind::PageMap => Some(2),
            SectionKind::Parents | SectionKind::PageHash => Some(1),
            SectionKind::Other(_) => None,
        }
    }
}

impl std::fmt::Display for SectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match SectionKind::from_code(self.code()) {
            SectionKind::Meta => f.write_str("META"),
            SectionKind::Pages => f.write_str("PAGES"),
            SectionKind::PageMap => f.write_str("PAGEMAP"),
            SectionKind::Parents => f.write_str("PARENTS"),
            SectionKind::PageHash => f.write_str("PAGEHASH"),
            SectionKind::Other(c) => write!(f, "kind {c:#x}"),
        }
    }
}

/// One section as listed by the TOC (and confirmed by its section header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    pub kind: SectionKind,
    pub version: u32,
    pub flags: u32,
    /// File offset of the section header.
    pub offset: u64,
    /// File offset of the payload (`offset + 32`).
    pub payload_offset: u64,
    /// Payload length in bytes.
    pub len: u64,
    /// CRC-32C of the payload (0 for PAGES: covered by the per-run CRCs instead).
    pub crc32c: u32,
    /// An optional section this reader does not understand and ignores.
    pub skipped: bool,
}

// ---------------------------------------------------------------------------------------
// Encoding helpers (fixed-size little-endian fields).

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn encode_file_header(minor: u32, created_unix: u64) -> [u8; FILE_HEADER_SIZE as usize] {
    let mut h = [0u8; FILE_HEADER_SIZE as usize];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    put_u32(&mut h, 8, FORMAT_VERSION);
    put_u32(&mut h, 12, minor);
    put_u32(&mut h, 16, FILE_HEADER_SIZE as u32);
    put_u32(&mut h, 20, 0); // flags
    put_u64(&mut h, 24, created_unix);
    let crc = crc32c::crc32c(&h[0..60]);
    put_u32(&mut h, 60, crc);
    h
}

struct RawSectionHeader {
    kind: u32,
    version: u32,
    flags: u32,
    len: u64,
    crc: u32,
}

fn encode_section_header(s: &RawSectionHeader) -> [u8; SECTION_HEADER_SIZE as usize] {
    let mut h = [0u8; SECTION_HEADER_SIZE as usize];
    put_u32(&mut h, 0, SECTION_MAGIC);
    put_u32(&mut h, 4, s.kind);
    put_u32(&mut h, 8, s.version);
    put_u32(&mut h, 12, s.flags);
    put_u64(&mut h, 16, s.len);
    put_u32(&mut h, 24, s.crc);
    let crc = crc32c::crc32c(&h[0..28]);
    put_u32(&mut h, 28, crc);
    h
}

#[derive(Debug, Clone, Copy)]
struct TocEntry {
    kind: u32,
    version: u32,
    flags: u32,
    offset: u64,
    len: u64,
    crc: u32,
}

fn encode_toc_entry(e: &TocEntry, out: &mut [u8]) {
    put_u32(out, 0, e.kind);
    put_u32(out, 4, e.version);
    put_u32(out, 8, e.flags);
    put_u32(out, 12, 0);
    put_u64(out, 16, e.offset);
    put_u64(out, 24, e.len);
    put_u32(out, 32, e.crc);
    put_u32(out, 36, 0);
}

/// `source`: 0 = this image, k = the k-th entry of PARENTS (PAGEMAP version 2 only).
fn encode_page_run(r: &PageRun, source: u32, out: &mut [u8]) {
    put_u64(out, 0, r.addr);
    put_u64(out, 8, r.len);
    put_u64(out, 16, r.offset);
    put_u32(out, 24, r.crc32c);
    put_u32(out, 28, source);
}

/// One image an incremental image takes page data from: the image of the same process
/// (same file name) in an earlier generation of the same checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentRef {
    pub generation: u64,
    /// File name inside that generation's directory.
    pub file: String,
    /// The parent's size and trailer CRC when it was referenced: a replaced file is refused.
    pub file_len: u64,
    pub trailer_crc: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ParentsPayload {
    parents: Vec<ParentRef>,
}

fn plain_file_name(f: &str) -> bool {
    !f.is_empty() && !f.contains('/') && f != "." && f != ".." && f != "MANIFEST"
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

static ZEROS: [u8; PAGE_ALIGN as usize] = [0u8; PAGE_ALIGN as usize];

// ---------------------------------------------------------------------------------------
// Writer

enum PagesState {
    NotStarted,
    Open {
        header_offset: u64,
        payload_offset: u64,
    },
    Done {
        payload_offset: u64,
        len: u64,
    },
}

/// Streams one process image into a new file. Sequence: `create`, `add_section(Meta)`,
/// `begin_pages`, `write_pages`*, `end_pages`, `add_page_map`, `finish` (sections may come
/// in any order, but a PAGEMAP must come after the PAGES it describes). The file is
/// unreadable until `finish` wrote the trailer. After any error the writer refuses further
/// calls; the caller removes the file.
pub struct ImageWriter {
    file: File,
    path: PathBuf,
    pos: u64,
    toc: Vec<TocEntry>,
    pages: PagesState,
    has_meta: bool,
    has_page_map: bool,
    poisoned: bool,
    /// Written with the PAGEMAP (see `set_parents`, `set_page_hashes`).
    parents: Vec<ParentRef>,
    /// (page address, content hash) of the pages written or referenced so far.
    page_hashes: Vec<(u64, u64)>,
}

impl std::fmt::Debug for ImageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("sections", &self.toc.len())
            .finish_non_exhaustive()
    }
}

impl ImageWriter {
    /// Creates `path` (mode 0600, fails if it exists) and writes the file header.
    pub fn create(path: &Path) -> Result<Self, ImageError> {
        Self::create_with(path, FORMAT_MINOR, now_unix())
    }

    pub(crate) fn create_with(path: &Path, minor: u32, created: u64) -> Result<Self, ImageError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    ImageError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    ImageError::io(path, "create image", e)
                }
            })?;
        let mut w = ImageWriter {
            file,
            path: path.to_path_buf(),
            pos: 0,
            toc: Vec::new(),
            pages: PagesState::NotStarted,
            has_meta: false,
            has_page_map: false,
            poisoned: false,
            parents: Vec::new(),
            page_hashes: Vec::new(),
        };
        w.write(&encode_file_header(minor, created))?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far (the offset the next byte goes to).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn usage(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Usage {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn check_usable(&self) -> Result<(), ImageError> {
        if self.poisoned {
            return Err(self.usage("image writer used after an earlier error"));
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if let Err(e) = self.file.write_all(bytes) {
            self.poisoned = true;
            return Err(ImageError::io(&self.path, "write image", e));
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends a whole section (META, PAGEMAP or an extension kind; PAGES is streamed with
    /// `begin_pages`).
    pub fn add_section(&mut self, kind: SectionKind, payload: &[u8]) -> Result<(), ImageError> {
        let kind = SectionKind::from_code(kind.code());
        match kind {
            SectionKind::Pages => {
                return Err(self.usage("PAGES must be written with begin_pages/write_pages"))
            }
            SectionKind::Meta if self.has_meta => return Err(self.usage("a second META section")),
            SectionKind::PageMap if self.has_page_map => {
                return Err(self.usage("a second PAGEMAP section"))
            }
            SectionKind::Parents | SectionKind::PageHash => {
                return Err(self.usage(format!(
                    "{kind} is written by add_page_map (set_parents, set_page_hashes)"
                )))
            }
            SectionKind::Other(c) => {
                return Err(self.usage(format!(
                    "section kind {c:#x} is not known to this version of ckpt"
                )))
            }
            _ => {}
        }
        // PAGEMAP version 2 only for incremental images (add_page_map): a full image stays
        // readable by a format 1.0 reader.
        let version = match kind {
            SectionKind::PageMap => 1,
            _ => kind.supported_version().unwrap_or(1),
        };
        self.add_raw_section(kind.code(), version, 0, payload)?;
        match kind {
            SectionKind::Meta => self.has_meta = true,
            SectionKind::PageMap => self.has_page_map = true,
            _ => {}
        }
        Ok(())
    }

    /// Writes a section exactly as given (extensions; tests simulating other writers).
    pub(crate) fn add_raw_section(
        &mut self,
        kind: u32,
        version: u32,
        flags: u32,
        payload: &[u8],
    ) -> Result<(), ImageError> {
        self.check_usable()?;
        if let PagesState::Open { .. } = self.pages {
            return Err(self.usage("add_section while a PAGES section is open"));
        }
        let entry = TocEntry {
            kind,
            version,
            flags,
            offset: self.pos,
            len: payload.len() as u64,
            crc: crc32c::crc32c(payload),
        };
        self.write(&encode_section_header(&RawSectionHeader {
            kind,
            version,
            flags,
            len: entry.len,
            crc: entry.crc,
        }))?;
        self.write(payload)?;
        self.toc.push(entry);
        Ok(())
    }

    /// Lets a test write an image without META.
    #[cfg(test)]
    pub(crate) fn has_meta_for_test(&mut self) {
        self.has_meta = true;
    }

    /// Pads with zeros so the PAGES payload starts at a 4096-aligned offset and reserves
    /// its section header (patched by `end_pages`).
    pub fn begin_pages(&mut self) -> Result<(), ImageError> {
        self.check_usable()?;
        if !matches!(self.pages, PagesState::NotStarted) {
            return Err(self.usage("begin_pages called twice (one PAGES section per image)"));
        }
        let header_offset =
            align_up(self.pos + SECTION_HEADER_SIZE, PAGE_ALIGN) - SECTION_HEADER_SIZE;
        let pad = (header_offset - self.pos) as usize;
        self.write(&ZEROS[..pad])?;
        // Placeholder: an all-zero header (bad magic) until end_pages.
        self.write(&[0u8; SECTION_HEADER_SIZE as usize])?;
        self.pages = PagesState::Open {
            header_offset,
            payload_offset: self.pos,
        };
        Ok(())
    }

    /// Appends one run of pages: `addr` and `bytes.len()` must be multiples of 4096 (and
    /// non-zero length). `bytes` is written straight from the slice (it may be live process
    /// memory; it must stay readable and unchanged during the call). Returns the run with
    /// its file offset and CRC-32C, to be listed in the PAGEMAP.
    pub fn write_pages(&mut self, addr: u64, bytes: &[u8]) -> Result<PageRun, ImageError> {
        self.check_usable()?;
        if !matches!(self.pages, PagesState::Open { .. }) {
            return Err(self.usage("write_pages outside begin_pages/end_pages"));
        }
        let len = bytes.len() as u64;
        if len == 0 || len % PAGE_ALIGN != 0 || addr % PAGE_ALIGN != 0 {
            return Err(self.usage(format!(
                "write_pages: address {addr:#x} and length {len:#x} must be non-zero multiples of {PAGE_ALIGN}"
            )));
        }
        if addr.checked_add(len).is_none() {
            return Err(self.usage(format!(
                "write_pages: run at {addr:#x} of {len:#x} bytes wraps the address space"
            )));
        }
        let offset = self.pos;
        for (i, page) in bytes.chunks(PAGE_ALIGN as usize).enumerate() {
            self.page_hashes.push((
                addr + i as u64 * PAGE_ALIGN,
                crate::incremental::page_hash(page),
            ));
        }
        let mut crc = 0u32;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            crc = crc32c::crc32c_append(crc, chunk);
            self.write(chunk)?;
        }
        Ok(PageRun {
            addr,
            len,
            offset,
            crc32c: crc,
            generation: 0,
        })
    }

    /// Closes the PAGES section: patches its header (length; payload CRC is 0 by
    /// definition, the per-run CRCs in PAGEMAP cover the data).
    pub fn end_pages(&mut self) -> Result<(), ImageError> {
        self.check_usable()?;
        let PagesState::Open {
            header_offset,
            payload_offset,
        } = self.pages
        else {
            return Err(self.usage("end_pages without begin_pages"));
        };
        let len = self.pos - payload_offset;
        let kind = SectionKind::Pages.code();
        let version = SectionKind::Pages.supported_version().unwrap_or(1);
        let header = encode_section_header(&RawSectionHeader {
            kind,
            version,
            flags: 0,
            len,
            crc: 0,
        });
        if let Err(e) = self.file.write_all_at(&header, header_offset) {
            self.poisoned = true;
            return Err(ImageError::io(&self.path, "write image (PAGES header)", e));
        }
        self.toc.push(TocEntry {
            kind,
            version,
            flags: 0,
            offset: header_offset,
            len,
            crc: 0,
        });
        self.pages = PagesState::Done {
            payload_offset,
            len,
        };
        Ok(())
    }

    /// The images that runs with a non-zero `generation` take their bytes from (written
    /// as the PARENTS section by `add_page_map`).
    pub fn set_parents(&mut self, parents: Vec<ParentRef>) {
        self.parents = parents;
    }

    /// Content hashes (`incremental::page_hash`) of pages by address, for pages the caller
    /// put in the image itself (a `PageSink`) or referenced; `write_pages` records its own.
    /// `add_page_map` writes them in PAGEMAP order as the optional PAGEHASH section if every
    /// page of every run has one (else none: the next checkpoint is then a full one).
    pub fn add_page_hashes(&mut self, hashes: &[(u64, u64)]) {
        self.page_hashes.extend_from_slice(hashes);
    }

    /// Writes the PAGEMAP section (after `end_pages`), preceded by PARENTS if a run takes
    /// its bytes from another image and followed by PAGEHASH if hashes were set. A run of
    /// this image must lie inside the PAGES payload; a run of generation N needs N in
    /// `set_parents`.
    pub fn add_page_map(&mut self, runs: &[PageRun]) -> Result<(), ImageError> {
        self.check_usable()?;
        let (p_off, p_len) = match self.pages {
            PagesState::Done {
                payload_offset,
                len,
            } => (payload_offset, len),
            PagesState::NotStarted if runs.iter().all(|r| r.generation != 0) => (0, 0),
            _ => return Err(self.usage("add_page_map before end_pages")),
        };
        if self.has_page_map {
            return Err(self.usage("a second PAGEMAP section"));
        }
        let incremental = runs.iter().any(|r| r.generation != 0);
        let mut buf = vec![0u8; runs.len() * PAGE_MAP_RECORD_SIZE as usize];
        for (i, r) in runs.iter().enumerate() {
            let source = if r.generation == 0 {
                let inside = r.offset >= p_off
                    && r.offset
                        .checked_add(r.len)
                        .is_some_and(|e| e <= p_off + p_len);
                if !inside {
                    return Err(self.usage(format!(
                        "page run #{i} (address {:#x}, file offset {}, {} bytes) is not inside the PAGES payload",
                        r.addr, r.offset, r.len
                    )));
                }
                0
            } else {
                match self.parents.iter().position(|p| p.generation == r.generation) {
                    Some(k) => k as u32 + 1,
                    None => {
                        return Err(self.usage(format!(
                            "page run #{i} (address {:#x}) takes its bytes from generation {}, which is not among the parents",
                            r.addr, r.generation
                        )))
                    }
                }
            };
            let at = i * PAGE_MAP_RECORD_SIZE as usize;
            encode_page_run(r, source, &mut buf[at..at + PAGE_MAP_RECORD_SIZE as usize]);
        }
        // PAGEHASH in PAGEMAP order, if every page has a hash.
        let mut known = std::mem::take(&mut self.page_hashes);
        known.sort_unstable_by_key(|&(a, _)| a);
        let mut hashes: Option<Vec<u64>> = if known.is_empty() {
            None
        } else {
            Some(Vec::with_capacity(known.len()))
        };
        'runs: for r in runs {
            let Some(out) = hashes.as_mut() else { break };
            let mut a = r.addr;
            while a < r.addr + r.len {
                match known.binary_search_by_key(&a, |&(x, _)| x) {
                    Ok(i) => out.push(known[i].1),
                    Err(_) => {
                        hashes = None;
                        break 'runs;
                    }
                }
                a += PAGE_ALIGN;
            }
        }
        drop(known);
        if incremental {
            let parents = std::mem::take(&mut self.parents);
            for p in &parents {
                if !plain_file_name(&p.file) || p.generation == 0 {
                    return Err(self.usage(format!("bad parent {p:?}")));
                }
            }
            let json = serde_json::to_vec(&ParentsPayload { parents })
                .map_err(|e| self.usage(format!("encoding PARENTS: {e}")))?;
            self.add_raw_section(SectionKind::Parents.code(), 1, 0, &json)?;
        }
        let version = if incremental { 2 } else { 1 };
        self.add_raw_section(SectionKind::PageMap.code(), version, 0, &buf)?;
        self.has_page_map = true;
        if let Some(h) = hashes {
            let mut b = Vec::with_capacity(h.len() * 8);
            for v in h {
                b.extend_from_slice(&v.to_le_bytes());
            }
            self.add_raw_section(SectionKind::PageHash.code(), 1, SECTION_FLAG_OPTIONAL, &b)?;
        }
        Ok(())
    }

    /// Writes the TOC and trailer and fsyncs the file. Returns the file size. The caller
    /// renames the file into place (see [`write_image_atomically`]).
    pub fn finish(mut self) -> Result<u64, ImageError> {
        self.check_usable()?;
        if let PagesState::Open { .. } = self.pages {
            return Err(self.usage("finish while a PAGES section is open (call end_pages)"));
        }
        if !self.has_meta {
            return Err(self.usage("finish without a META section"));
        }
        let toc_offset = self.pos;
        let mut toc = vec![0u8; self.toc.len() * TOC_ENTRY_SIZE as usize];
        for (i, e) in self.toc.iter().enumerate() {
            let at = i * TOC_ENTRY_SIZE as usize;
            encode_toc_entry(e, &mut toc[at..at + TOC_ENTRY_SIZE as usize]);
        }
        self.write(&toc)?;
        let file_len = self.pos + TRAILER_SIZE;
        let mut t = [0u8; TRAILER_SIZE as usize];
        t[0..8].copy_from_slice(&TRAILER_MAGIC);
        put_u64(&mut t, 8, toc_offset);
        put_u64(&mut t, 16, toc.len() as u64);
        put_u32(&mut t, 24, crc32c::crc32c(&toc));
        put_u32(&mut t, 28, self.toc.len() as u32);
        put_u64(&mut t, 32, file_len);
        let crc = crc32c::crc32c(&t[0..44]);
        put_u32(&mut t, 44, crc);
        self.write(&t)?;
        self.file.sync_all().ctx(&self.path, "fsync image")?;
        Ok(file_len)
    }
}

// ---------------------------------------------------------------------------------------
// Pipelined page writer

/// A page-aligned buffer of its own mapping (O_DIRECT needs aligned memory).
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a new private anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AlignedBuf {
            ptr: p as *mut u8,
            len,
        })
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is ours, `len` bytes, alive until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping (no I/O uses it any more: see PageSink::drop).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Linux native AIO control block (`struct iocb`, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const IOCB_CMD_PWRITE: u16 = 1;

struct Slot {
    buf: AlignedBuf,
    iocb: Box<Iocb>,
    in_flight: bool,
}

/// How page bytes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageIo {
    /// O_DIRECT, several writes in flight (Linux AIO).
    DirectAsync,
    /// O_DIRECT, one write at a time (AIO unavailable).
    Direct,
    /// Through the page cache, writeback started early with `sync_file_range` (the file
    /// system refused O_DIRECT, e.g. tmpfs).
    Buffered,
}

impl PageIo {
    /// `CKPT_IMAGE_IO` = `direct` (no AIO) or `buffered` forces a way (measurements,
    /// tests); otherwise the best one.
    pub fn preferred() -> PageIo {
        match std::env::var("CKPT_IMAGE_IO").as_deref() {
            Ok("direct") => PageIo::Direct,
            Ok("buffered") => PageIo::Buffered,
            _ => PageIo::DirectAsync,
        }
    }
}

/// Asynchronous I/O starts once this much page data is written: io_destroy waits for an RCU
/// grace period (about 35 ms on the 2-vCPU test VM), more than overlapping saves on smaller
/// images (writes of 4 MiB take about 2.5 ms).
const AIO_AFTER: u64 = 64 << 20;

/// Extra file length reserved ahead of the O_DIRECT writes, so that they never extend the
/// file (extending direct writes are synchronous on ext4 and XFS even with AIO).
const RESERVE_AHEAD: u64 = 256 << 20;

/// Streams page bytes into the open PAGES section from page-aligned buffers. The caller
/// fills `space()` (reading process memory straight into it), keeps what it wants at the
/// front and `commit`s it; full buffers are written while the caller fills the next one.
/// Every page lands at `offset()` + its position in `space()` (the file is written
/// sequentially). `finish` must be called; dropping an unfinished sink waits for the writes
/// in flight and poisons the writer.
pub struct PageSink<'a> {
    w: &'a mut ImageWriter,
    direct: Option<File>,
    io: PageIo,
    want_async: bool,
    aio_ctx: u64,
    slots: Vec<Slot>,
    cur: usize,
    fill: usize,
    /// File offset of the current buffer's first byte.
    base: u64,
    /// File offset of the first page byte.
    start: u64,
    /// The file's length as extended ahead of the direct writes.
    reserved: u64,
    /// Buffered mode: bytes up to here have had writeback started.
    flushed: u64,
    finished: bool,
}

impl ImageWriter {
    /// A pipelined writer for the open PAGES section: `nbuf` buffers of `buf_len` bytes (a
    /// multiple of 4096), written the `want` way if the file system allows it, else the
    /// next best ([`PageSink::io`] tells which).
    pub fn page_sink(
        &mut self,
        nbuf: usize,
        buf_len: usize,
        want: PageIo,
    ) -> Result<PageSink<'_>, ImageError> {
        self.check_usable()?;
        if !matches!(self.pages, PagesState::Open { .. }) {
            return Err(self.usage("page_sink outside begin_pages/end_pages"));
        }
        if nbuf == 0
            || buf_len == 0
            || buf_len as u64 % PAGE_ALIGN != 0
            || self.pos % PAGE_ALIGN != 0
        {
            return Err(self.usage(format!(
                "page_sink: {nbuf} buffers of {buf_len} bytes at offset {}",
                self.pos
            )));
        }
        let mut slots = Vec::with_capacity(nbuf);
        for _ in 0..nbuf {
            slots.push(Slot {
                buf: AlignedBuf::new(buf_len)
                    .map_err(|e| ImageError::io(&self.path, "map a page buffer", e))?,
                iocb: Box::default(),
                in_flight: false,
            });
        }
        let direct = if want == PageIo::Buffered {
            None
        } else {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&self.path)
                .ok()
        };
        // The AIO context is set up once AIO_AFTER bytes are written (io_destroy is slow).
        let io = match &direct {
            None => PageIo::Buffered,
            Some(_) => PageIo::Direct,
        };
        let want_async = want == PageIo::DirectAsync;
        let base = self.pos;
        Ok(PageSink {
            w: self,
            direct,
            io,
            want_async,
            aio_ctx: 0,
            slots,
            cur: 0,
            fill: 0,
            base,
            start: base,
            reserved: base,
            flushed: base,
            finished: false,
        })
    }
}

impl PageSink<'_> {
    /// How the bytes are written (asynchronous I/O starts after `AIO_AFTER` bytes).
    pub fn io(&self) -> PageIo {
        if self.want_async && self.io == PageIo::Direct {
            PageIo::DirectAsync
        } else {
            self.io
        }
    }

    /// File offset of `space()[0]`.
    pub fn offset(&self) -> u64 {
        self.base + self.fill as u64
    }

    fn err(&mut self, op: &'static str, e: io::Error) -> ImageError {
        self.w.poisoned = true;
        ImageError::io(&self.w.path, op, e)
    }

    /// The free part of the current buffer (at least one page).
    pub fn space(&mut self) -> Result<&mut [u8], ImageError> {
        if self.fill == self.slots[self.cur].buf.len {
            self.submit(false)?;
        }
        let fill = self.fill;
        Ok(&mut self.slots[self.cur].buf.bytes()[fill..])
    }

    /// The first `n` bytes of `space()` (a multiple of 4096) are page data.
    pub fn commit(&mut self, n: usize) -> Result<(), ImageError> {
        let cap = self.slots[self.cur].buf.len;
        if n as u64 % PAGE_ALIGN != 0 || self.fill + n > cap {
            return Err(self.w.usage(format!(
                "PageSink::commit({n}) with {} free",
                cap - self.fill
            )));
        }
        self.fill += n;
        self.w.pos += n as u64;
        if self.fill == cap {
            self.submit(false)?;
        }
        Ok(())
    }

    /// Waits for one completion (AIO); marks its slot free.
    fn reap(&mut self, min: usize) -> Result<(), ImageError> {
        let mut ev = [IoEvent::default(); 16];
        let n = loop {
            // SAFETY: io_getevents into a local array of 16 events.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.aio_ctx,
                    min as libc::c_long,
                    ev.len() as libc::c_long,
                    ev.as_mut_ptr(),
                    std::ptr::null_mut::<libc::timespec>(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(self.err("wait for image writes", e));
            }
        };
        for e in &ev[..n] {
            let i = e.data as usize;
            let want = self.slots[i].iocb.nbytes as i64;
            self.slots[i].in_flight = false;
            if e.res == -(libc::EINVAL as i64) {
                // The file system opened O_DIRECT but refuses the writes: this buffer (still
                // intact) and all later ones go through the page cache.
                let at = self.slots[i].iocb.offset as u64;
                let res = self
                    .w
                    .file
                    .write_all_at(&self.slots[i].buf.bytes()[..want as usize], at);
                if let Err(e) = res {
                    return Err(self.err("write image", e));
                }
                self.io = PageIo::Buffered;
                continue;
            }
            if e.res != want {
                let err = if e.res < 0 {
                    io::Error::from_raw_os_error(-e.res as i32)
                } else {
                    io::Error::other(format!("short write: {} of {want} bytes", e.res))
                };
                return Err(self.err("write image (O_DIRECT)", err));
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.in_flight).count()
    }

    /// Writes the current buffer's `fill` bytes and moves on to the next free buffer
    /// (`last`: called by `finish`, nothing follows).
    fn submit(&mut self, last: bool) -> Result<(), ImageError> {
        if self.want_async
            && !last
            && self.io == PageIo::Direct
            && self.aio_ctx == 0
            && self.base - self.start >= AIO_AFTER
        {
            self.want_async = false;
            let mut ctx = 0u64;
            // SAFETY: io_setup(nr, &ctx) on a zeroed context word.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_setup,
                    self.slots.len() as libc::c_long,
                    &mut ctx,
                )
            };
            if r == 0 {
                self.aio_ctx = ctx;
                self.io = PageIo::DirectAsync;
            }
        }
        let len = self.fill;
        if len > 0 {
            let at = self.base;
            let end = at + len as u64;
            if self.io != PageIo::Buffered && end > self.reserved {
                let to = end + RESERVE_AHEAD;
                let d = self.direct.as_ref().expect("direct fd");
                if let Err(e) = d.set_len(to) {
                    return Err(self.err("extend image", e));
                }
                self.reserved = to;
            }
            match self.io {
                PageIo::DirectAsync => {
                    let fd = self.direct.as_ref().expect("direct fd").as_raw_fd();
                    let cur = self.cur;
                    let s = &mut self.slots[cur];
                    *s.iocb = Iocb {
                        data: cur as u64,
                        opcode: IOCB_CMD_PWRITE,
                        fildes: fd as u32,
                        buf: s.buf.ptr as u64,
                        nbytes: len as u64,
                        offset: at as i64,
                        ..Default::default()
                    };
                    let mut list = [&mut *s.iocb as *mut Iocb];
                    // SAFETY: io_submit of one iocb whose buffer stays mapped and untouched
                    // until its completion is reaped.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_io_submit,
                            self.aio_ctx,
                            1 as libc::c_long,
                            list.as_mut_ptr(),
                        )
                    };
                    if r != 1 {
                        let e = io::Error::last_os_error();
                        return Err(self.err("submit image write", e));
                    }
                    s.in_flight = true;
                }
                PageIo::Direct => {
                    let cur = self.cur;
                    let d = self.direct.as_ref().expect("direct fd");
                    let res = d.write_all_at(&self.slots[cur].buf.bytes()[..len], at);
                    if let Err(e) = res {
                        if e.raw_os_error() == Some(libc::EINVAL)
                            && at == self.flushed_direct_start()
                        {
                            // The file system took O_DIRECT at open but refuses the writes.
                            self.io = PageIo::Buffered;
                            self.direct = None;
                            return self.submit(last);
                        }
                        return Err(self.err("write image (O_DIRECT)", e));
                    }
                }
                PageIo::Buffered => {
                    let cur = self.cur;
                    let res = self
                        .w
                        .file
                        .write_all_at(&self.slots[cur].buf.bytes()[..len], at);
                    if let Err(e) = res {
                        return Err(self.err("write image", e));
                    }
                    // Start writeback now, so that it overlaps with the next buffers
                    // instead of all waiting for the final fsync.
                    // SAFETY: sync_file_range on our own file descriptor.
                    unsafe {
                        libc::sync_file_range(
                            self.w.file.as_raw_fd(),
                            self.flushed as i64,
                            (end - self.flushed) as i64,
                            libc::SYNC_FILE_RANGE_WRITE,
                        )
                    };
                    self.flushed = end;
                }
            }
            self.base = end;
            self.fill = 0;
        }
        // Next buffer: wait until it is free.
        self.cur = (self.cur + 1) % self.slots.len();
        while self.slots[self.cur].in_flight {
            self.reap(1)?;
        }
        Ok(())
    }

    /// Where the direct writes started (a refusal of the very first one falls back).
    fn flushed_direct_start(&self) -> u64 {
        self.flushed
    }

    /// Writes what is buffered, waits for every write, and sets the file up for the
    /// sections that follow (buffered writes from the end of the page data).
    pub fn finish(mut self) -> Result<(), ImageError> {
        self.submit(true)?;
        while self.in_flight() > 0 {
            self.reap(1)?;
        }
        let pos = self.w.pos;
        if self.reserved > pos {
            if let Err(e) = self.w.file.set_len(pos) {
                return Err(self.err("trim image", e));
            }
        }
        use std::io::Seek;
        if let Err(e) = self.w.file.seek(io::SeekFrom::Start(pos)) {
            return Err(self.err("seek image", e));
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for PageSink<'_> {
    fn drop(&mut self) {
        if self.aio_ctx != 0 {
            // Cancels or waits for every write still in flight, before the buffers (dropped
            // after this) are unmapped.
            // SAFETY: destroying our own AIO context.
            unsafe { libc::syscall(libc::SYS_io_destroy, self.aio_ctx) };
        }
        if !self.finished {
            self.w.poisoned = true;
        }
    }
}

fn tmp_path_for(final_path: &Path) -> PathBuf {
    let mut s: OsString = final_path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// fsyncs a directory (so that a rename or create in it is durable).
pub fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(dir, "fsync directory")
}

/// Writes an image durably under `final_path`: creates `<final_path>.tmp` (a stale one
/// left by a crashed attempt is removed first), lets `fill` add the sections, finishes
/// (fsync), renames to `final_path` (refused if it exists) and fsyncs the directory. On
/// any error the temporary file is removed. Returns the image size.
pub fn write_image_atomically<F>(final_path: &Path, fill: F) -> Result<u64, ImageError>
where
    F: FnOnce(&mut ImageWriter) -> Result<(), ImageError>,
{
    let tmp = tmp_path_for(final_path);
    if final_path.symlink_metadata().is_ok() {
        return Err(ImageError::Exists {
            path: final_path.to_path_buf(),
        });
    }
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io(&tmp, "remove stale temporary image", e)),
    }
    let result = (|| {
        let mut w = ImageWriter::create(&tmp)?;
        fill(&mut w)?;
        let n = w.finish()?;
        std::fs::rename(&tmp, final_path).ctx(final_path, "rename temporary image into place")?;
        Ok(n)
    })();
    match result {
        Ok(n) => {
            sync_dir(final_path.parent().unwrap_or(Path::new(".")))?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reader

/// A validated, open process image. `open` checks the file header, trailer, TOC and every
/// section header; section payloads are checked when they are used (`meta`, `page_runs`,
/// `verify_pages`, `read_run`).
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    file_len: u64,
    minor: u32,
    created_unix: u64,
    trailer_crc: u32,
    sections: Vec<SectionInfo>,
}

impl ImageReader {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        // Checked before open(2): opening a FIFO would block.
        let md = std::fs::metadata(path).ctx(path, "open image")?;
        if !md.is_file() {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                detail: "not a regular file".into(),
            });
        }
        let file = File::open(path).ctx(path, "open image")?;
        let file_len = file.metadata().ctx(path, "stat image")?.len();
        let mut r = ImageReader {
            file,
            path: path.to_path_buf(),
            file_len,
            minor: 0,
            created_unix: 0,
            trailer_crc: 0,
            sections: Vec::new(),
        };
        r.validate()?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    /// (major, minor) format version of the file.
    pub fn format_version(&self) -> (u32, u32) {
        (FORMAT_VERSION, self.minor)
    }
    pub fn created_unix(&self) -> u64 {
        self.created_unix
    }
    /// The trailer's CRC: with the file length, what identifies this exact image (it
    /// covers the TOC, hence every section's CRC).
    pub fn trailer_crc(&self) -> u32 {
        self.trailer_crc
    }
    /// Every section in file order, including skipped optional ones.
    pub fn sections(&self) -> &[SectionInfo] {
        &self.sections
    }

    /// The PAGES section, if any.
    pub fn pages_section(&self) -> Option<&SectionInfo> {
        self.section(SectionKind::Pages)
    }

    fn section(&self, kind: SectionKind) -> Option<&SectionInfo> {
        self.sections.iter().find(|s| s.kind == kind && !s.skipped)
    }

    fn err_truncated(&self, detail: String) -> ImageError {
        ImageError::Truncated {
            path: self.path.clone(),
            detail,
        }
    }
    fn err_corrupt(&self, detail: String) -> ImageError {
        ImageError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
    fn err_crc(&self, what: String, stored: u32, computed: u32) -> ImageError {
        ImageError::Checksum {
            path: self.path.clone(),
            what,
            stored,
            computed,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<(), ImageError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.err_truncated(format!(
                "{what}: file ends before offset {} (the file shrank while open?)",
                offset + buf.len() as u64
            ))),
            Err(e) => Err(ImageError::io(&self.path, "read image", e)),
        }
    }

    fn validate(&mut self) -> Result<(), ImageError> {
        let len = self.file_len;
        if len == 0 {
            return Err(ImageError::Empty {
                path: self.path.clone(),
            });
        }
        // File header.
        let mut h = [0u8; FILE_HEADER_SIZE as usize];
        let n = len.min(FILE_HEADER_SIZE) as usize;
        self.read_at(&mut h[..n], 0, "file header")?;
        let m = n.min(FILE_MAGIC.len());
        if h[..m] != FILE_MAGIC[..m] {
            return Err(ImageError::NotAnImage {
                path: self.path.clone(),
                detail: format!(
                    "bad magic {:02x?} (expected {:02x?} \"CKPTIMG\\0\")",
                    &h[..m],
                    &FILE_MAGIC[..m]
                ),
            });
        }
        if len < FILE_HEADER_SIZE {
            return Err(self.err_truncated(format!(
                "file header incomplete (file is {len} bytes, expected at least {})",
                FILE_HEADER_SIZE + TRAILER_SIZE
            )));
        }
        // The major version is checked before the header CRC: a newer major may lay out
        // the rest of the header differently.
        let major = get_u32(&h, 8);
        if major > FORMAT_VERSION {
            return Err(ImageError::FutureVersion {
                path: self.path.clone(),
                what: "image format".into(),
                found: major,
                supported: FORMAT_VERSION,
            });
        }
        let stored = get_u32(&h, 60);
        let computed = crc32c::crc32c(&h[0..60]);
        if stored != computed {
            return Err(self.err_crc("file header".into(), stored, computed));
        }
        if major != FORMAT_VERSION {
            return Err(self.err_corrupt(format!("invalid format version {major}")));
        }
        let header_size = get_u32(&h, 16);
        if u64::from(header_size) != FILE_HEADER_SIZE {
            return Err(self.err_corrupt(format!(
                "file header size {header_size}, format v1 requires {FILE_HEADER_SIZE}"
            )));
        }
        let flags = get_u32(&h, 20);
        if flags != 0 {
            return Err(self.err_corrupt(format!(
                "unknown file header flags {flags:#x} (written by a newer ckpt?)"
            )));
        }
        self.minor = get_u32(&h, 12);
        self.created_unix = get_u64(&h, 24);

        // Trailer.
        let min_len = FILE_HEADER_SIZE + TRAILER_SIZE;
        if len < min_len {
            return Err(self.err_truncated(format!(
                "trailer missing (file is {len} bytes, expected at least {min_len})"
            )));
        }
        let mut t = [0u8; TRAILER_SIZE as usize];
        self.read_at(&mut t, len - TRAILER_SIZE, "trailer")?;
        if t[0..8] != TRAILER_MAGIC {
            return Err(self.err_truncated(format!(
                "trailer missing: no CKPTEND at the end of the file (file is {len} bytes); the writer did not finish or the file was cut"
            )));
        }
        let stored = get_u32(&t, 44);
        let computed = crc32c::crc32c(&t[0..44]);
        if stored != computed {
            return Err(self.err_crc("trailer".into(), stored, computed));
        }
        self.trailer_crc = stored;
        let recorded_len = get_u64(&t, 32);
        if recorded_len > len {
            return Err(self.err_truncated(format!(
                "file is {len} bytes, its trailer says {recorded_len}"
            )));
        }
        if recorded_len < len {
            return Err(self.err_corrupt(format!(
                "file is {len} bytes, its trailer says {recorded_len}"
            )));
        }
        let toc_offset = get_u64(&t, 8);
        let toc_len = get_u64(&t, 16);
        let toc_crc = get_u32(&t, 24);
        let count = u64::from(get_u32(&t, 28));
        let toc_end = len - TRAILER_SIZE;
        if toc_offset < FILE_HEADER_SIZE
            || toc_offset.checked_add(toc_len) != Some(toc_end)
            || toc_len % TOC_ENTRY_SIZE != 0
            || toc_len / TOC_ENTRY_SIZE != count
        {
            return Err(self.err_corrupt(format!(
                "trailer describes an impossible table of contents (offset {toc_offset}, {toc_len} bytes, {count} entries; it must end at {toc_end})"
            )));
        }
        if count > MAX_SECTIONS {
            return Err(
                self.err_corrupt(format!("{count} sections (at most {MAX_SECTIONS} allowed)"))
            );
        }

        // TOC.
        let mut toc = vec![0u8; toc_len as usize];
        self.read_at(&mut toc, toc_offset, "table of contents")?;
        let computed = crc32c::crc32c(&toc);
        if toc_crc != computed {
            return Err(self.err_crc("table of contents".into(), toc_crc, computed));
        }

        // Sections.
        let mut prev_end = FILE_HEADER_SIZE;
        let mut sections = Vec::with_capacity(count as usize);
        for (i, e) in toc.chunks_exact(TOC_ENTRY_SIZE as usize).enumerate() {
            let entry = TocEntry {
                kind: get_u32(e, 0),
                version: get_u32(e, 4),
                flags: get_u32(e, 8),
                offset: get_u64(e, 16),
                len: get_u64(e, 24),
                crc: get_u32(e, 32),
            };
            let kind = SectionKind::from_code(entry.kind);
            let what = format!("section #{i} ({kind}) at offset {}", entry.offset);
            if get_u32(e, 12) != 0 || get_u32(e, 36) != 0 {
                return Err(self.err_corrupt(format!("{what}: reserved TOC fields are not zero")));
            }
            let end = entry
                .offset
                .checked_add(SECTION_HEADER_SIZE)
                .and_then(|p| p.checked_add(entry.len));
            match end {
                Some(end) if entry.offset >= prev_end && end <= toc_offset => prev_end = end,
                _ => {
                    return Err(self.err_corrupt(format!(
                        "{what}, {} bytes: outside the space between the file header and the TOC [{prev_end}, {toc_offset}) or overlapping the previous section",
                        entry.len
                    )))
                }
            }
            let mut sh = [0u8; SECTION_HEADER_SIZE as usize];
            self.read_at(&mut sh, entry.offset, &what)?;
            if get_u32(&sh, 0) != SECTION_MAGIC {
                return Err(self.err_corrupt(format!("{what}: bad section header magic")));
            }
            let stored = get_u32(&sh, 28);
            let computed = crc32c::crc32c(&sh[0..28]);
            if stored != computed {
                return Err(self.err_crc(format!("header of {what}"), stored, computed));
            }
            if get_u32(&sh, 4) != entry.kind
                || get_u32(&sh, 8) != entry.version
                || get_u32(&sh, 12) != entry.flags
                || get_u64(&sh, 16) != entry.len
                || get_u32(&sh, 24) != entry.crc
            {
                return Err(self.err_corrupt(format!(
                    "{what}: section header disagrees with the table of contents"
                )));
            }
            let optional = entry.flags & SECTION_FLAG_OPTIONAL != 0;
            let newer_minor = self.minor > FORMAT_MINOR;
            let mut skipped = false;
            let understood = match kind.supported_version() {
                None => Err(format!("{what}: unknown section kind {:#x}", entry.kind)),
                Some(v) if entry.version > v => Err(format!(
                    "{what}: section version {} (this ckpt reads up to {v})",
                    entry.version
                )),
                Some(_) if entry.version == 0 => {
                    return Err(self.err_corrupt(format!("{what}: section version 0")))
                }
                Some(_) if entry.flags & !KNOWN_SECTION_FLAGS != 0 => {
                    Err(format!("{what}: unknown section flags {:#x}", entry.flags))
                }
                Some(_) => Ok(()),
            };
            if let Err(detail) = understood {
                if optional && newer_minor {
                    skipped = true;
                } else {
                    let why = if newer_minor {
                        format!(
                            "{detail}; the image is format 1.{} (written by a newer ckpt) and the section is not optional",
                            self.minor
                        )
                    } else {
                        format!("{detail} in a format 1.{} image", self.minor)
                    };
                    return Err(ImageError::UnsupportedSection {
                        path: self.path.clone(),
                        detail: why,
                    });
                }
            }
            let info = SectionInfo {
                kind,
                version: entry.version,
                flags: entry.flags,
                offset: entry.offset,
                payload_offset: entry.offset + SECTION_HEADER_SIZE,
                len: entry.len,
                crc32c: entry.crc,
                skipped,
            };
            if !skipped {
                if sections
                    .iter()
                    .any(|s: &SectionInfo| s.kind == kind && !s.skipped)
                {
                    return Err(self.err_corrupt(format!("{what}: a second {kind} section")));
                }
                if kind == SectionKind::Pages {
                    if info.payload_offset % PAGE_ALIGN != 0 {
                        return Err(self.err_corrupt(format!(
                            "{what}: PAGES payload at offset {} is not {PAGE_ALIGN}-aligned",
                            info.payload_offset
                        )));
                    }
                    if info.crc32c != 0 {
                        return Err(self.err_corrupt(format!(
                            "{what}: PAGES payload checksum field must be 0"
                        )));
                    }
                }
            }
            sections.push(info);
        }
        if !sections
            .iter()
            .any(|s| s.kind == SectionKind::Meta && !s.skipped)
        {
            return Err(self.err_corrupt("no META section".into()));
        }
        self.sections = sections;
        Ok(())
    }

    /// Reads a whole (small) section payload and checks its CRC.
    fn read_payload(&self, s: &SectionInfo, max: u64) -> Result<Vec<u8>, ImageError> {
        if s.len > max {
            return Err(self.err_corrupt(format!(
                "{} section is {} bytes (at most {max} allowed)",
                s.kind, s.len
            )));
        }
        let mut buf = vec![0u8; s.len as usize];
        self.read_at(&mut buf, s.payload_offset, &format!("{} section", s.kind))?;
        let computed = crc32c::crc32c(&buf);
        if computed != s.crc32c {
            return Err(self.err_crc(
                format!("{} section at offset {}", s.kind, s.offset),
                s.crc32c,
                computed,
            ));
        }
        Ok(buf)
    }

    /// The process metadata (CRC-checked; `meta_version` must be [`META_VERSION`]).
    pub fn meta(&self) -> Result<ProcessMeta, ImageError> {
        let s = self
            .section(SectionKind::Meta)
            .ok_or_else(|| self.err_corrupt("no META section".into()))?;
        let buf = self.read_payload(s, MAX_META_LEN)?;
        let v: serde_json::Value = serde_json::from_slice(&buf)
            .map_err(|e| self.err_corrupt(format!("META section is not valid JSON: {e}")))?;
        let version = v
            .get("meta_version")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| self.err_corrupt("META section has no numeric meta_version".into()))?;
        if version > u64::from(META_VERSION) {
            return Err(ImageError::FutureVersion {
                path: self.path.clone(),
                what: "process metadata (meta_version)".into(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: META_VERSION,
            });
        }
        if version < u64::from(META_MIN_VERSION) {
            return Err(self.err_corrupt(format!(
                "META section has meta_version {version}, this ckpt reads {META_MIN_VERSION} to {META_VERSION}"
            )));
        }
        serde_json::from_value(v)
            .map_err(|e| self.err_corrupt(format!("META section does not describe a process: {e}")))
    }

    /// The parent images of an incremental image (empty for a full one), validated: plain
    /// file names, distinct non-zero generations.
    pub fn parents(&self) -> Result<Vec<ParentRef>, ImageError> {
        let Some(s) = self.section(SectionKind::Parents) else {
            return Ok(Vec::new());
        };
        let buf = self.read_payload(s, MAX_META_LEN)?;
        let p: ParentsPayload = serde_json::from_slice(&buf)
            .map_err(|e| self.err_corrupt(format!("PARENTS section is not valid: {e}")))?;
        for (i, r) in p.parents.iter().enumerate() {
            if r.generation == 0 || !plain_file_name(&r.file) {
                return Err(self.err_corrupt(format!("PARENTS entry #{i} is invalid: {r:?}")));
            }
            if p.parents[..i].iter().any(|o| o.generation == r.generation) {
                return Err(
                    self.err_corrupt(format!("PARENTS lists generation {} twice", r.generation))
                );
            }
        }
        Ok(p.parents)
    }

    /// Where the image of parent `p` is: `<checkpoint dir>/gen-N/<file>`, the checkpoint
    /// directory being the parent of this image's generation directory.
    pub fn parent_path(&self, p: &ParentRef) -> PathBuf {
        let root = self
            .path
            .parent()
            .and_then(|g| g.parent())
            .unwrap_or(Path::new("."));
        root.join(crate::generation::generation_dir_name(p.generation))
            .join(&p.file)
    }

    /// The PAGEHASH section: one content hash per page of the runs, in PAGEMAP order (None
    /// if the image has none).
    pub fn page_hashes(&self) -> Result<Option<Vec<u64>>, ImageError> {
        let Some(s) = self.section(SectionKind::PageHash) else {
            return Ok(None);
        };
        let buf = self.read_payload(s, MAX_PAGE_MAP_LEN)?;
        if buf.len() % 8 != 0 {
            return Err(self.err_corrupt(format!(
                "PAGEHASH is {} bytes, not a multiple of 8",
                buf.len()
            )));
        }
        Ok(Some(buf.chunks_exact(8).map(|c| get_u64(c, 0)).collect()))
    }

    /// The page runs of the PAGEMAP (empty if there is none), validated: each run is
    /// non-empty, its address, length and file offset are 4096-aligned, a run of this
    /// image lies inside the PAGES payload, a run of a parent names a listed parent, and
    /// no two runs overlap in the address space nor (in one file) in the file.
    pub fn page_runs(&self) -> Result<Vec<PageRun>, ImageError> {
        let Some(s) = self.section(SectionKind::PageMap) else {
            return Ok(Vec::new());
        };
        let version = s.version;
        let buf = self.read_payload(s, MAX_PAGE_MAP_LEN)?;
        if buf.len() as u64 % PAGE_MAP_RECORD_SIZE != 0 {
            return Err(self.err_corrupt(format!(
                "PAGEMAP is {} bytes, not a multiple of {PAGE_MAP_RECORD_SIZE}",
                buf.len()
            )));
        }
        let parents = if version >= 2 {
            self.parents()?
        } else {
            Vec::new()
        };
        let (p_off, p_end) = match self.pages_section() {
            Some(p) => (p.payload_offset, p.payload_offset + p.len),
            None => (0, 0),
        };
        let mut runs = Vec::with_capacity(buf.len() / PAGE_MAP_RECORD_SIZE as usize);
        for (i, rec) in buf.chunks_exact(PAGE_MAP_RECORD_SIZE as usize).enumerate() {
            let source = get_u32(rec, 28);
            let mut r = PageRun {
                addr: get_u64(rec, 0),
                len: get_u64(rec, 8),
                offset: get_u64(rec, 16),
                crc32c: get_u32(rec, 24),
                generation: 0,
            };
            let what = format!(
                "page run #{i} (address {:#x}, {} bytes, file offset {})",
                r.addr, r.len, r.offset
            );
            if source != 0 {
                if version < 2 {
                    return Err(self.err_corrupt(format!("{what}: reserved field is not zero")));
                }
                match parents.get(source as usize - 1) {
                    Some(p) => r.generation = p.generation,
                    None => {
                        return Err(self.err_corrupt(format!(
                            "{what}: source {source} but PARENTS lists {}",
                            parents.len()
                        )))
                    }
                }
            }
            if r.len == 0
                || r.addr % PAGE_ALIGN != 0
                || r.len % PAGE_ALIGN != 0
                || r.offset % PAGE_ALIGN != 0
            {
                return Err(self.err_corrupt(format!("{what}: empty or not {PAGE_ALIGN}-aligned")));
            }
            if r.addr.checked_add(r.len).is_none() || r.offset.checked_add(r.len).is_none() {
                return Err(self.err_corrupt(format!("{what}: wraps")));
            }
            let inside =
                r.offset >= p_off && r.offset.checked_add(r.len).is_some_and(|e| e <= p_end);
            if r.generation == 0 && !inside {
                return Err(self.err_corrupt(format!(
                    "{what}: lies outside the PAGES payload [{p_off}, {p_end})"
                )));
            }
            runs.push(r);
        }
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by_key(|&i| (runs[i].generation, runs[i].offset));
        for w in order.windows(2) {
            let (a, b) = (&runs[w[0]], &runs[w[1]]);
            if a.generation == b.generation && a.offset + a.len > b.offset {
                return Err(self.err_corrupt(format!(
                    "page runs #{} (address {:#x}) and #{} (address {:#x}) overlap in the file",
                    w[0], a.addr, w[1], b.addr
                )));
            }
        }
        order.sort_by_key(|&i| runs[i].addr);
        for w in order.windows(2) {
            let (a, b) = (&runs[w[0]], &runs[w[1]]);
            if a.addr + a.len > b.addr {
                return Err(self.err_corrupt(format!(
                    "page runs #{} (address {:#x}) and #{} (address {:#x}) overlap in memory",
                    w[0], a.addr, w[1], b.addr
                )));
            }
        }
        Ok(runs)
    }

    /// Opens every parent image of this (incremental) image and checks that it is the very
    /// file that was referenced (size and trailer CRC) and that each run taken from it lies
    /// inside its PAGES payload. Returns (generation, reader) per parent.
    pub fn open_parents(&self, runs: &[PageRun]) -> Result<Vec<(u64, ImageReader)>, ImageError> {
        let mut out = Vec::new();
        for p in self.parents()? {
            let path = self.parent_path(&p);
            let missing = |detail: String| {
                ImageError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "this incremental image takes page data from {} (generation {}), which {detail}",
                    path.display(),
                    p.generation
                ),
            }
            };
            let r = match ImageReader::open(&path) {
                Ok(r) => r,
                Err(e) => return Err(missing(format!("cannot be used: {e}"))),
            };
            if r.file_len != p.file_len || r.trailer_crc != p.trailer_crc {
                return Err(missing(format!(
                    "is not the file that was referenced (size {} / trailer CRC {:08x}, expected {} / {:08x}): it was replaced",
                    r.file_len, r.trailer_crc, p.file_len, p.trailer_crc
                )));
            }
            let (lo, hi) = match r.pages_section() {
                Some(s) => (s.payload_offset, s.payload_offset + s.len),
                None => (0, 0),
            };
            for run in runs.iter().filter(|x| x.generation == p.generation) {
                if run.offset < lo || run.offset + run.len > hi {
                    return Err(missing(format!(
                        "has no page data at file offset {} ({} bytes, for address {:#x})",
                        run.offset, run.len, run.addr
                    )));
                }
            }
            out.push((p.generation, r));
        }
        Ok(out)
    }

    /// Reads one run into `out` (`out.len() == run.len`) and checks its CRC (a run of a
    /// parent image is read from that image).
    pub fn read_run(&self, run: &PageRun, out: &mut [u8]) -> Result<(), ImageError> {
        if out.len() as u64 != run.len {
            return Err(ImageError::Usage {
                path: self.path.clone(),
                detail: format!(
                    "read_run: buffer of {} bytes for a run of {}",
                    out.len(),
                    run.len
                ),
            });
        }
        if run.generation != 0 {
            let parents = self.open_parents(std::slice::from_ref(run))?;
            let Some((_, p)) = parents.iter().find(|(g, _)| *g == run.generation) else {
                return Err(self.err_corrupt(format!(
                    "page run at address {:#x}: generation {} is not a parent",
                    run.addr, run.generation
                )));
            };
            let mut own = *run;
            own.generation = 0;
            return p.read_run(&own, out);
        }
        let what = format!("page run at address {:#x}", run.addr);
        self.read_at(out, run.offset, &what)?;
        let computed = crc32c::crc32c(out);
        if computed != run.crc32c {
            return Err(self.err_crc(
                format!("{what} (file offset {}, {} bytes)", run.offset, run.len),
                run.crc32c,
                computed,
            ));
        }
        Ok(())
    }

    /// Reads every page run (in file order, large reads; runs of parent images from those)
    /// and checks its CRC.
    pub fn verify_pages(&self) -> Result<(), ImageError> {
        let mut runs = self.page_runs()?;
        let parents = self.open_parents(&runs)?;
        runs.sort_by_key(|r| (r.generation, r.offset));
        let biggest = runs.iter().map(|r| r.len).max().unwrap_or(0);
        let mut buf = vec![0u8; biggest.min(READ_CHUNK as u64) as usize];
        for r in &runs {
            let src = if r.generation == 0 {
                self
            } else {
                match parents.iter().find(|(g, _)| *g == r.generation) {
                    Some((_, p)) => p,
                    None => {
                        return Err(self.err_corrupt(format!(
                            "page run at address {:#x}: generation {} is not a parent",
                            r.addr, r.generation
                        )))
                    }
                }
            };
            let what = format!("page run at address {:#x}", r.addr);
            let mut crc = 0u32;
            let mut done = 0u64;
            while done < r.len {
                let n = (r.len - done).min(buf.len() as u64) as usize;
                src.read_at(&mut buf[..n], r.offset + done, &what)?;
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                done += n as u64;
            }
            if crc != r.crc32c {
                return Err(src.err_crc(
                    format!("{what} (file offset {}, {} bytes)", r.offset, r.len),
                    r.crc32c,
                    crc,
                ));
            }
        }
        Ok(())
    }
}
