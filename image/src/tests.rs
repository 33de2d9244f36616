//! Tests of the container, manifest and generation code. Bad input must produce the right
//! error kind (and name the file), never a panic.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::container::*;
use crate::error::{ErrorKind, ImageError};
use crate::generation::*;
use crate::manifest::*;
use crate::model::*;

// ---------------------------------------------------------------------------------------
// Helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "ckpt-image-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sample_meta() -> ProcessMeta {
    ProcessMeta {
        meta_version: META_VERSION,
        vpid: 42,
        real_pid: 31337,
        vppid: 1,
        pgid: 0,
        sid: 0,
        program: "a.out".into(),
        exe: "/usr/bin/a.out".into(),
        argv: vec!["a.out".into(), "--x".into()],
        host: "node1".into(),
        uid: 1000,
        gid: 1000,
        created_unix: 1_700_000_000,
        generation: 3,
        requirements: Requirements {
            kernel_release: "6.1.0".into(),
            vdso_hash: 0xdead_beef,
            xsave_features: 0x2e7,
            page_size: 4096,
        },
        regions: vec![
            Region {
                start: 0x1000,
                end: 0x3000,
                prot: Prot {
                    read: true,
                    write: true,
                    exec: false,
                },
                shared: false,
                kind: RegionKind::Anon,
                stored_bytes: 0x2000,
            },
            Region {
                start: 0x40_0000,
                end: 0x40_1000,
                prot: Prot {
                    read: true,
                    write: false,
                    exec: true,
                },
                shared: false,
                kind: RegionKind::File {
                    path: "/usr/bin/a.out".into(),
                    offset: 0,
                    dev: 2049,
                    ino: 77,
                    size: 4096,
                    mtime_ns: 5,
                },
                stored_bytes: 0,
            },
        ],
        threads: vec![ThreadMeta {
            vtid: 42,
            name: "a.out".into(),
            runtime: false,
        }],
        files: vec![FdMeta {
            fd: 3,
            flags: 2,
            cloexec: true,
            kind: FdKind::Regular {
                path: "/tmp/x".into(),
                offset: 12,
                dev: 1,
                ino: 2,
                content: Some((5, 7)),
            },
        }],
        attrs: ProcAttrs {
            cwd: "/home/u".into(),
            umask: 0o22,
            rlimits: vec![(7, 1024, 4096)],
            mm: MmFields::default(),
            auxv: vec![(6, 4096)],
        },
        terminal: None,
        entry: Entry {
            rip: 0x40_1234,
            ..Entry::default()
        },
        zombies: vec![],
        sysv: vec![],
        sem_adj: vec![],
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

/// Page runs used by the sample images: (addr, bytes).
fn sample_pages(big: bool) -> Vec<(u64, Vec<u8>)> {
    let mut v = vec![
        (0x1000, pattern(4096, 1)),
        (0x2000, pattern(4096, 2)),
        (0x7fff_f000_0000, pattern(3 * 4096, 3)),
    ];
    if big {
        v.push((0x7f00_0000_0000, pattern(3 * 1024 * 1024 + 8192, 4)));
    }
    v
}

struct Written {
    meta: ProcessMeta,
    pages: Vec<(u64, Vec<u8>)>,
    runs: Vec<PageRun>,
    len: u64,
}

fn write_sample(path: &Path, big: bool) -> Written {
    let meta = sample_meta();
    let pages = sample_pages(big);
    let mut w = ImageWriter::create(path).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&meta).unwrap())
        .unwrap();
    w.begin_pages().unwrap();
    assert_eq!(w.position() % PAGE_ALIGN, 0);
    let mut runs = Vec::new();
    for (addr, bytes) in &pages {
        runs.push(w.write_pages(*addr, bytes).unwrap());
    }
    w.end_pages().unwrap();
    w.add_page_map(&runs).unwrap();
    let len = w.finish().unwrap();
    Written {
        meta,
        pages,
        runs,
        len,
    }
}

/// Opens and fully reads an image (meta, runs, every run's bytes).
type ReadBack = (ProcessMeta, Vec<PageRun>, Vec<Vec<u8>>);

fn read_all(path: &Path) -> Result<ReadBack, ImageError> {
    let r = ImageReader::open(path)?;
    let meta = r.meta()?;
    let runs = r.page_runs()?;
    r.verify_pages()?;
    let mut data = Vec::new();
    for run in &runs {
        let mut buf = vec![0u8; run.len as usize];
        r.read_run(run, &mut buf)?;
        data.push(buf);
    }
    Ok((meta, runs, data))
}

fn kind_of<T: std::fmt::Debug>(r: Result<T, ImageError>, path: &Path) -> ErrorKind {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    e.kind()
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn meta_json() -> Vec<u8> {
    serde_json::to_vec(&sample_meta()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Container: round trip

#[test]
fn round_trip() {
    let d = TempDir::new("rt");
    let p = d.path().join("proc-42.img");
    let w = write_sample(&p, true);
    assert_eq!(fs::metadata(&p).unwrap().len(), w.len);
    assert_eq!(mode_of(&p), 0o600);

    let r = ImageReader::open(&p).unwrap();
    assert_eq!(r.path(), p.as_path());
    assert_eq!(r.format_version(), (FORMAT_VERSION, FORMAT_MINOR));
    assert!(r.created_unix() > 1_600_000_000);
    assert_eq!(r.meta().unwrap(), w.meta);
    assert_eq!(r.page_runs().unwrap(), w.runs);
    r.verify_pages().unwrap();

    let kinds: Vec<SectionKind> = r.sections().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![
            SectionKind::Meta,
            SectionKind::Pages,
            SectionKind::PageMap,
            SectionKind::PageHash
        ]
    );
    // One hash per page, in PAGEMAP order; PAGEHASH is optional (a 1.0 reader skips it).
    let hashes = r.page_hashes().unwrap().unwrap();
    let want: Vec<u64> = w
        .pages
        .iter()
        .flat_map(|(_, b)| b.chunks(4096).map(crate::incremental::page_hash))
        .collect();
    assert_eq!(hashes, want);
    assert_eq!(r.sections()[3].flags, SECTION_FLAG_OPTIONAL);
    assert!(r.parents().unwrap().is_empty());
    let pages = r.pages_section().unwrap();
    assert_eq!(pages.payload_offset % PAGE_ALIGN, 0);
    let total: u64 = w.pages.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(pages.len, total);

    for (run, (addr, bytes)) in w.runs.iter().zip(&w.pages) {
        assert_eq!(run.addr, *addr);
        assert_eq!(run.len, bytes.len() as u64);
        assert_eq!(run.offset % PAGE_ALIGN, 0);
        assert_eq!(run.crc32c, crc32c::crc32c(bytes));
        let mut buf = vec![0u8; run.len as usize];
        r.read_run(run, &mut buf).unwrap();
        assert_eq!(&buf, bytes);
        // The bytes are where the run says, in the raw file.
        let mut raw = vec![0u8; run.len as usize];
        r.file().read_exact_at(&mut raw, run.offset).unwrap();
        assert_eq!(&raw, bytes);
    }
}

#[test]
fn image_without_pages() {
    let d = TempDir::new("nopages");
    let p = d.path().join("a.img");
    let mut w = ImageWriter::create(&p).unwrap();
    w.add_section(SectionKind::Meta, &meta_json()).unwrap();
    w.add_page_map(&[]).unwrap();
    w.finish().unwrap();
    let r = ImageReader::open(&p).unwrap();
    assert!(r.pages_section().is_none());
    assert!(r.page_runs().unwrap().is_empty());
    r.verify_pages().unwrap();
    assert_eq!(r.meta().unwrap(), sample_meta());
}

#[test]
fn writer_usage_errors() {
    let d = TempDir::new("usage");
    let p = d.path().join("a.img");
    let mut w = ImageWriter::create(&p).unwrap();
    assert_eq!(
        kind_of(w.write_pages(0x1000, &[0u8; 4096]), &p),
        ErrorKind::Usage
    );
    assert_eq!(kind_of(w.end_pages(), &p), ErrorKind::Usage);
    assert_eq!(
        kind_of(w.add_section(SectionKind::Pages, b"x"), &p),
        ErrorKind::Usage
    );
    assert_eq!(
        kind_of(w.add_section(SectionKind::Other(99), b"x"), &p),
        ErrorKind::Usage
    );
    w.begin_pages().unwrap();
    assert_eq!(kind_of(w.begin_pages(), &p), ErrorKind::Usage);
    assert_eq!(
        kind_of(w.write_pages(0x1001, &[0u8; 4096]), &p),
        ErrorKind::Usage
    );
    assert_eq!(
        kind_of(w.write_pages(0x1000, &[0u8; 100]), &p),
        ErrorKind::Usage
    );
    assert_eq!(kind_of(w.write_pages(0x1000, &[]), &p), ErrorKind::Usage);
    assert_eq!(
        kind_of(w.add_section(SectionKind::Meta, b"{}"), &p),
        ErrorKind::Usage
    );
    let run = w.write_pages(0x1000, &[7u8; 4096]).unwrap();
    w.end_pages().unwrap();
    let mut bad = run;
    bad.offset += 4096;
    assert_eq!(kind_of(w.add_page_map(&[bad]), &p), ErrorKind::Usage);
    // finish without META
    let w2 = ImageWriter::create(&d.path().join("b.img")).unwrap();
    assert_eq!(
        kind_of(w2.finish(), &d.path().join("b.img")),
        ErrorKind::Usage
    );
    // create refuses an existing file
    assert_eq!(kind_of(ImageWriter::create(&p), &p), ErrorKind::Exists);
}

#[test]
fn atomic_write_helper() {
    let d = TempDir::new("atomic");
    let p = d.path().join("proc-1.img");
    let tmp = d.path().join("proc-1.img.tmp");
    // A stale temporary file from a crashed attempt is replaced.
    fs::write(&tmp, b"junk").unwrap();
    let n = write_image_atomically(&p, |w| {
        w.add_section(SectionKind::Meta, &meta_json())?;
        w.begin_pages()?;
        let run = w.write_pages(0x5000, &[1u8; 8192])?;
        w.end_pages()?;
        w.add_page_map(&[run])
    })
    .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), n);
    assert!(!tmp.exists());
    assert_eq!(mode_of(&p), 0o600);
    read_all(&p).unwrap();
    // Exists: refused.
    let e = write_image_atomically(&p, |_| Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists);
    // A failing fill leaves neither file behind.
    let q = d.path().join("proc-2.img");
    let e = write_image_atomically(&q, |w| {
        w.add_section(SectionKind::Meta, &meta_json())?;
        w.end_pages()
    })
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(!q.exists());
    assert!(!d.path().join("proc-2.img.tmp").exists());
}

// ---------------------------------------------------------------------------------------
// Container: bad input

#[test]
fn empty_and_foreign_files() {
    let d = TempDir::new("foreign");
    let p = d.path().join("x.img");
    fs::write(&p, b"").unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Empty);
    fs::write(
        &p,
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0rest of an elf file....",
    )
    .unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::NotAnImage);
    fs::write(&p, b"hi").unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::NotAnImage);
    fs::write(&p, vec![0u8; 10000]).unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::NotAnImage);
    fs::write(&p, b"CKPT").unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Truncated);
    assert_eq!(
        kind_of(ImageReader::open(d.path()), d.path()),
        ErrorKind::NotAnImage
    );
    let missing = d.path().join("missing.img");
    assert_eq!(
        kind_of(ImageReader::open(&missing), &missing),
        ErrorKind::Io
    );
}

#[test]
fn truncated_at_every_cut() {
    let d = TempDir::new("trunc");
    let src = d.path().join("full.img");
    let w = write_sample(&src, false);
    let bytes = fs::read(&src).unwrap();
    let len = w.len as usize;
    let mut cuts: Vec<usize> = (0..400).collect();
    cuts.extend((400..len).step_by(61));
    cuts.extend(len.saturating_sub(300)..len);
    let p = d.path().join("cut.img");
    for cut in cuts {
        fs::write(&p, &bytes[..cut]).unwrap();
        let k = kind_of(ImageReader::open(&p), &p);
        let want = if cut == 0 {
            ErrorKind::Empty
        } else {
            ErrorKind::Truncated
        };
        assert_eq!(k, want, "cut at {cut} of {len}");
    }
    // Appended garbage after the trailer: the trailer is not at the end any more.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 100]);
    fs::write(&p, &longer).unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Truncated);
    // The message says how long the file is.
    fs::write(&p, &bytes[..80]).unwrap();
    let msg = ImageReader::open(&p).unwrap_err().to_string();
    assert!(
        msg.contains("trailer missing (file is 80 bytes, expected at least 112)"),
        "{msg}"
    );
}

/// Byte ranges of an image's structures, from its own reader (so the test follows the
/// writer's layout instead of hard-coding it).
struct Layout {
    sections: Vec<SectionInfo>,
    toc: (u64, u64),
    len: u64,
}

fn layout(p: &Path) -> Layout {
    let r = ImageReader::open(p).unwrap();
    let len = r.file_len();
    let mut t = [0u8; 48];
    r.file().read_exact_at(&mut t, len - 48).unwrap();
    let toc_off = u64::from_le_bytes(t[8..16].try_into().unwrap());
    let toc_len = u64::from_le_bytes(t[16..24].try_into().unwrap());
    Layout {
        sections: r.sections().to_vec(),
        toc: (toc_off, toc_len),
        len,
    }
}

/// Flips `bit` of byte `off`, checks the reader reports `want` from the step that must
/// catch it, and flips it back.
fn expect_flip(p: &Path, off: u64, bit: u8, want: ErrorKind, step: &str) {
    flip_bit(p, off, bit);
    let got = match step {
        "open" => kind_of(ImageReader::open(p), p),
        "meta" => kind_of(ImageReader::open(p).unwrap().meta(), p),
        "runs" => kind_of(ImageReader::open(p).unwrap().page_runs(), p),
        "pages" => {
            let r = ImageReader::open(p).unwrap();
            r.meta().unwrap();
            r.page_runs().unwrap();
            kind_of(r.verify_pages(), p)
        }
        _ => unreachable!(),
    };
    assert_eq!(got, want, "bit {bit} of byte {off} ({step})");
    flip_bit(p, off, bit);
}

#[test]
fn single_bit_flips() {
    let d = TempDir::new("flip");
    let p = d.path().join("proc-42.img");
    let w = write_sample(&p, false);
    let l = layout(&p);
    // File header.
    for off in 0..64u64 {
        for bit in 0..8 {
            let want = match off {
                0..=7 => ErrorKind::NotAnImage,
                8 if bit == 0 => ErrorKind::Checksum, // 1 -> 0: not "newer", caught by the CRC
                8..=11 => ErrorKind::FutureVersion,
                _ => ErrorKind::Checksum,
            };
            expect_flip(&p, off, bit, want, "open");
        }
    }
    // Trailer.
    for off in l.len - 48..l.len {
        for bit in 0..8 {
            let want = if off < l.len - 40 {
                ErrorKind::Truncated
            } else {
                ErrorKind::Checksum
            };
            expect_flip(&p, off, bit, want, "open");
        }
    }
    // TOC.
    for off in l.toc.0..l.toc.0 + l.toc.1 {
        for bit in 0..8 {
            expect_flip(&p, off, bit, ErrorKind::Checksum, "open");
        }
    }
    // Section headers.
    for s in &l.sections {
        for off in s.offset..s.payload_offset {
            for bit in 0..8 {
                let want = if off < s.offset + 4 {
                    ErrorKind::Corrupt // bad section magic
                } else {
                    ErrorKind::Checksum
                };
                expect_flip(&p, off, bit, want, "open");
            }
        }
    }
    let sec = |k: SectionKind| l.sections.iter().find(|s| s.kind == k).unwrap().clone();
    // META payload (every byte, one bit each).
    let meta = sec(SectionKind::Meta);
    for off in meta.payload_offset..meta.payload_offset + meta.len {
        expect_flip(&p, off, (off % 8) as u8, ErrorKind::Checksum, "meta");
    }
    // PAGEMAP payload.
    let pm = sec(SectionKind::PageMap);
    for off in pm.payload_offset..pm.payload_offset + pm.len {
        expect_flip(&p, off, (off % 8) as u8, ErrorKind::Checksum, "runs");
    }
    // Page data (sampled), and the error names the run's address.
    for run in &w.runs {
        for off in (run.offset..run.offset + run.len).step_by(509) {
            expect_flip(&p, off, (off % 8) as u8, ErrorKind::Checksum, "pages");
        }
        flip_bit(&p, run.offset + run.len - 1, 7);
        let msg = ImageReader::open(&p)
            .unwrap()
            .verify_pages()
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&format!("{:#x}", run.addr)), "{msg}");
        flip_bit(&p, run.offset + run.len - 1, 7);
    }
    // Everything restored: the image is intact again.
    let (m, runs, data) = read_all(&p).unwrap();
    assert_eq!(m, w.meta);
    assert_eq!(runs, w.runs);
    assert_eq!(
        data,
        w.pages.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
    );
}

fn rewrite_header(p: &Path, f: impl FnOnce(&mut [u8; 64])) {
    let file = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut h = [0u8; 64];
    file.read_exact_at(&mut h, 0).unwrap();
    f(&mut h);
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, 0).unwrap();
}

#[test]
fn future_versions() {
    let d = TempDir::new("future");
    let p = d.path().join("proc-42.img");
    write_sample(&p, false);
    // A newer major format, with a valid CRC, and with the CRC not matching.
    rewrite_header(&p, |h| h[8..12].copy_from_slice(&2u32.to_le_bytes()));
    let e = ImageReader::open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FutureVersion);
    assert!(e.to_string().contains("newer ckpt"), "{e}");
    patch(&p, 60, &[0, 0, 0, 0]);
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::FutureVersion);
    // A newer minor alone is fine.
    rewrite_header(&p, |h| {
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&7u32.to_le_bytes());
    });
    assert_eq!(ImageReader::open(&p).unwrap().format_version(), (1, 7));
    // Unknown header flags are refused.
    rewrite_header(&p, |h| h[20] = 1);
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Corrupt);

    // A version 1 META (before terminals) is still read; `terminal` defaults.
    let q1 = d.path().join("meta1.img");
    let mut v = serde_json::to_value(sample_meta()).unwrap();
    v["meta_version"] = 1.into();
    v.as_object_mut().unwrap().remove("terminal");
    let mut w = ImageWriter::create(&q1).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&v).unwrap())
        .unwrap();
    w.finish().unwrap();
    let m = ImageReader::open(&q1).unwrap().meta().unwrap();
    assert_eq!((m.meta_version, m.terminal), (1, None));

    // A newer meta_version.
    let q = d.path().join("meta2.img");
    let mut v = serde_json::to_value(sample_meta()).unwrap();
    v["meta_version"] = (META_VERSION + 1).into();
    v["something_new"] = "x".into();
    let mut w = ImageWriter::create(&q).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&v).unwrap())
        .unwrap();
    w.finish().unwrap();
    let e = ImageReader::open(&q).unwrap().meta().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FutureVersion);
    assert!(e.to_string().contains("newer ckpt"), "{e}");
}

#[test]
fn meta_version_1_is_still_read() {
    // Version 1 had no `zombies`: such images read with none.
    let d = TempDir::new("meta1");
    let q = d.path().join("meta1.img");
    let mut v = serde_json::to_value(sample_meta()).unwrap();
    v["meta_version"] = 1.into();
    v.as_object_mut().unwrap().remove("zombies");
    let mut w = ImageWriter::create(&q).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&v).unwrap())
        .unwrap();
    w.finish().unwrap();
    let m = ImageReader::open(&q).unwrap().meta().unwrap();
    assert_eq!(m.meta_version, 1);
    assert!(m.zombies.is_empty());
}

#[test]
fn zombies_round_trip() {
    let d = TempDir::new("zombies");
    let q = d.path().join("z.img");
    let mut m = sample_meta();
    m.zombies = vec![Zombie {
        vpid: 77,
        pgid: 42,
        sid: 1,
        comm: "child".into(),
        killed: true,
        code: 15,
        core_dumped: false,
    }];
    let mut w = ImageWriter::create(&q).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&m).unwrap())
        .unwrap();
    w.finish().unwrap();
    assert_eq!(ImageReader::open(&q).unwrap().meta().unwrap(), m);
}

#[test]
fn bad_meta_payloads() {
    let d = TempDir::new("badmeta");
    for (i, payload) in [
        &b"not json"[..],
        b"{}",
        b"{\"meta_version\":0}",
        b"{\"meta_version\":1}",
        b"[1,2,3]",
    ]
    .iter()
    .enumerate()
    {
        let p = d.path().join(format!("{i}.img"));
        let mut w = ImageWriter::create(&p).unwrap();
        w.add_section(SectionKind::Meta, payload).unwrap();
        w.finish().unwrap();
        let r = ImageReader::open(&p).unwrap();
        assert_eq!(kind_of(r.meta(), &p), ErrorKind::Corrupt, "{payload:?}");
    }
}

/// Writes an image whose sections are given raw (simulating other writers).
fn write_raw(p: &Path, minor: u32, extra: &[(u32, u32, u32, Vec<u8>)]) {
    let mut w = ImageWriter::create_with(p, minor, 1).unwrap();
    w.add_section(SectionKind::Meta, &meta_json()).unwrap();
    for (kind, version, flags, payload) in extra {
        w.add_raw_section(*kind, *version, *flags, payload).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn unknown_and_newer_sections() {
    let d = TempDir::new("sections");
    let p = d.path().join("a.img");
    let opt = SECTION_FLAG_OPTIONAL;
    // Optional unknown kind in a newer minor: skipped.
    write_raw(
        &p,
        FORMAT_MINOR + 1,
        &[(0x1_0001, 1, opt, b"future".to_vec())],
    );
    let r = ImageReader::open(&p).unwrap();
    let s = r.sections().last().unwrap();
    assert!(s.skipped);
    assert_eq!(s.kind, SectionKind::Other(0x1_0001));
    assert_eq!(r.meta().unwrap(), sample_meta());
    fs::remove_file(&p).unwrap();
    // Optional newer version of a known kind in a newer minor: skipped, not used.
    write_raw(&p, FORMAT_MINOR + 1, &[(3, 3, opt, vec![1; 64])]);
    let r = ImageReader::open(&p).unwrap();
    assert!(r.sections().last().unwrap().skipped);
    assert!(r.page_runs().unwrap().is_empty());
    fs::remove_file(&p).unwrap();
    // Not optional: refused.
    write_raw(
        &p,
        FORMAT_MINOR + 1,
        &[(0x1_0001, 1, 0, b"future".to_vec())],
    );
    let e = ImageReader::open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedSection);
    assert!(e.to_string().contains("newer ckpt"), "{e}");
    fs::remove_file(&p).unwrap();
    // Optional, but the image claims our own minor: refused.
    write_raw(&p, FORMAT_MINOR, &[(0x1_0001, 1, opt, b"x".to_vec())]);
    assert_eq!(
        kind_of(ImageReader::open(&p), &p),
        ErrorKind::UnsupportedSection
    );
    fs::remove_file(&p).unwrap();
    // Newer version of a known kind, not optional.
    write_raw(&p, FORMAT_MINOR + 1, &[(3, 3, 0, vec![])]);
    assert_eq!(
        kind_of(ImageReader::open(&p), &p),
        ErrorKind::UnsupportedSection
    );
    fs::remove_file(&p).unwrap();
    // Unknown flag bits.
    write_raw(&p, FORMAT_MINOR, &[(3, 1, 0x80, vec![])]);
    assert_eq!(
        kind_of(ImageReader::open(&p), &p),
        ErrorKind::UnsupportedSection
    );
    fs::remove_file(&p).unwrap();
    // Section version 0.
    write_raw(&p, FORMAT_MINOR, &[(3, 0, 0, vec![])]);
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Corrupt);
    fs::remove_file(&p).unwrap();
    // Two META sections.
    write_raw(&p, FORMAT_MINOR, &[(1, 1, 0, meta_json())]);
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Corrupt);
    fs::remove_file(&p).unwrap();
    // No META section.
    let mut w = ImageWriter::create(&p).unwrap();
    w.add_raw_section(3, 1, 0, &[]).unwrap();
    w.has_meta_for_test();
    w.finish().unwrap();
    assert_eq!(kind_of(ImageReader::open(&p), &p), ErrorKind::Corrupt);
}

fn encode_runs(runs: &[PageRun]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in runs {
        v.extend_from_slice(&r.addr.to_le_bytes());
        v.extend_from_slice(&r.len.to_le_bytes());
        v.extend_from_slice(&r.offset.to_le_bytes());
        v.extend_from_slice(&r.crc32c.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
    }
    v
}

#[test]
fn invalid_page_maps() {
    let d = TempDir::new("pagemap");
    let mut n = 0;
    let mut check = |mutate: &dyn Fn(&mut Vec<PageRun>), raw_tail: Option<Vec<u8>>| {
        n += 1;
        let p = d.path().join(format!("{n}.img"));
        let mut w = ImageWriter::create(&p).unwrap();
        w.add_section(SectionKind::Meta, &meta_json()).unwrap();
        w.begin_pages().unwrap();
        let mut runs = vec![
            w.write_pages(0x10_000, &[1u8; 8192]).unwrap(),
            w.write_pages(0x20_000, &[2u8; 4096]).unwrap(),
        ];
        w.end_pages().unwrap();
        mutate(&mut runs);
        let mut payload = encode_runs(&runs);
        if let Some(t) = &raw_tail {
            payload.extend_from_slice(t);
        }
        w.add_raw_section(3, 1, 0, &payload).unwrap();
        w.finish().unwrap();
        let r = ImageReader::open(&p).unwrap();
        let e = r.page_runs().unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()));
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert_eq!(r.verify_pages().unwrap_err().kind(), ErrorKind::Corrupt);
        e.to_string()
    };
    let msg = check(&|r| r[1].offset += 4096, None); // past the end of PAGES
    assert!(
        msg.contains("outside the PAGES payload") && msg.contains("0x20000"),
        "{msg}"
    );
    check(&|r| r[0].offset -= 4096, None); // before PAGES
    check(&|r| r[1].offset = u64::MAX - 4095, None); // offset + len overflows
    check(&|r| r[1].offset = r[0].offset + 4096, None); // overlap in the file
    check(&|r| r[1].addr = 0x11_000, None); // overlap in memory
    check(&|r| r[1].addr = 0x20_001, None); // unaligned address
    check(&|r| r[1].len = 100, None); // unaligned length
    check(&|r| r[1].len = 0, None); // empty
    check(&|r| r[1].addr = u64::MAX - 4095, None); // wraps the address space
    check(&|_| {}, Some(vec![0u8; 5])); // not a whole number of records
    check(
        &|_| {},
        Some(
            encode_runs(&[PageRun {
                addr: 0x30_000,
                len: 4096,
                offset: 0,
                crc32c: 0,
                generation: 0,
            }])[..28]
                .iter()
                .copied()
                .chain([1, 0, 0, 0])
                .collect(),
        ),
    );
}

#[test]
fn page_map_without_pages() {
    let d = TempDir::new("nopagesmap");
    let p = d.path().join("a.img");
    let runs = [PageRun {
        addr: 0x1000,
        len: 4096,
        offset: 4096,
        crc32c: 0,
        generation: 0,
    }];
    write_raw(&p, FORMAT_MINOR, &[(3, 1, 0, encode_runs(&runs))]);
    let r = ImageReader::open(&p).unwrap();
    assert_eq!(kind_of(r.page_runs(), &p), ErrorKind::Corrupt);
}

#[test]
fn random_mutations_never_panic_nor_lie() {
    let d = TempDir::new("fuzz");
    let src = d.path().join("src.img");
    let w = write_sample(&src, false);
    let orig = fs::read(&src).unwrap();
    let want_data: Vec<Vec<u8>> = w.pages.iter().map(|(_, b)| b.clone()).collect();
    let p = d.path().join("m.img");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failures = 0;
    for _ in 0..600 {
        let mut b = orig.clone();
        match rng.below(4) {
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
            2 => {
                // Overwrite a random 8-byte field in the metadata-heavy ends of the file.
                let i = if rng.below(2) == 0 {
                    rng.below(200) as usize
                } else {
                    b.len() - 1 - rng.below(400) as usize
                };
                let v = rng.next().to_le_bytes();
                let end = (i + 8).min(b.len());
                b[i..end].copy_from_slice(&v[..end - i]);
            }
            _ => {
                let cut = rng.below(b.len() as u64) as usize;
                b.truncate(cut);
            }
        }
        fs::write(&p, &b).unwrap();
        match read_all(&p) {
            Ok((m, runs, data)) => {
                // Only unused bytes (padding) may change without notice.
                assert_eq!(m, w.meta);
                assert_eq!(runs, w.runs);
                assert_eq!(data, want_data);
            }
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains(&p.display().to_string()));
            }
        }
    }
    assert!(failures > 400, "only {failures} mutations detected");
}

// ---------------------------------------------------------------------------------------
// Manifest and generations

fn write_gen(dir: &CkptDir, n: u64, vpids: &[i32]) -> Manifest {
    let path = dir.begin(n).unwrap();
    let mut procs = Vec::new();
    for &vpid in vpids {
        let file = CkptDir::image_file_name(vpid);
        let bytes = write_image_atomically(&path.join(&file), |w| {
            w.add_section(SectionKind::Meta, &meta_json())
        })
        .unwrap();
        procs.push(ManifestProcess {
            vpid,
            real_pid: vpid + 1000,
            program: "a.out".into(),
            host: "node1".into(),
            file,
            bytes,
            rank: None,
            step: None,
        });
    }
    let m = Manifest::new(
        n,
        1_700_000_000 + n,
        1.5,
        procs,
        Some(JobInfo {
            scheduler: Some("slurm".into()),
            job_id: Some("1234".into()),
            ..JobInfo::default()
        }),
    );
    dir.commit(n, &m).unwrap();
    m
}

#[test]
fn manifest_json_shape() {
    let m = Manifest::new(
        7,
        100,
        0.25,
        vec![ManifestProcess {
            vpid: 1,
            real_pid: 2,
            program: "p".into(),
            host: "h".into(),
            file: "proc-1.img".into(),
            bytes: 10,
            rank: None,
            step: None,
        }],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    assert_eq!(v["format"], "ckpt-manifest");
    assert_eq!(v["version"], 1);
    assert_eq!(v["generation"], 7);
    assert_eq!(v["total_bytes"], 10);
    assert_eq!(v["processes"][0]["file"], "proc-1.img");
    assert!(v.get("job").is_none());
    let back = Manifest::parse(m.to_json().as_bytes(), Path::new("/x/MANIFEST")).unwrap();
    assert_eq!(back, m);
    let mut v2 = v.clone();
    v2["version"] = 2.into();
    let e = Manifest::parse(v2.to_string().as_bytes(), Path::new("/x/MANIFEST")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FutureVersion);
    assert!(e.to_string().starts_with("/x/MANIFEST: "), "{e}");
    let mut v3 = v.clone();
    v3["format"] = "other".into();
    let e = Manifest::parse(v3.to_string().as_bytes(), Path::new("/x/MANIFEST")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidManifest);
    // Unknown fields (a newer writer's additions within version 1) are ignored.
    let mut v4 = v.clone();
    v4["extra"] = "x".into();
    Manifest::parse(v4.to_string().as_bytes(), Path::new("/x/MANIFEST")).unwrap();
}

#[test]
fn generations_commit_and_newest() {
    let t = TempDir::new("gens");
    let root = t.path().join("a/b/ckpt");
    assert_eq!(CkptDir::open(&root).unwrap_err().kind(), ErrorKind::Io);
    let dir = CkptDir::create(&root).unwrap();
    assert_eq!(mode_of(&root), 0o700);
    assert_eq!(mode_of(&t.path().join("a")), 0o700);
    assert_eq!(dir.root(), root.as_path());
    assert!(dir.generations().unwrap().is_empty());
    assert!(dir.newest_complete().unwrap().is_none());
    assert_eq!(dir.next_number().unwrap(), 1);

    let m1 = write_gen(&dir, 1, &[1, 2]);
    let g1 = dir.generation_path(1);
    assert_eq!(mode_of(&g1), 0o700);
    assert_eq!(mode_of(&g1.join("MANIFEST")), 0o600);
    assert_eq!(mode_of(&g1.join("proc-1.img")), 0o600);
    assert!(!g1.join("MANIFEST.tmp").exists());
    let newest = dir.newest_complete().unwrap().unwrap();
    assert_eq!(newest.number, 1);
    assert_eq!(newest.manifest.as_ref(), Some(&m1));
    assert_eq!(dir.next_number().unwrap(), 2);

    // An incomplete generation: ignored by newest_complete, counted by next_number.
    let p2 = dir.begin(2).unwrap();
    assert_eq!(p2, dir.generation_path(2));
    assert_eq!(dir.begin(2).unwrap_err().kind(), ErrorKind::Exists);
    assert_eq!(dir.newest_complete().unwrap().unwrap().number, 1);
    assert_eq!(dir.next_number().unwrap(), 3);
    let gens = dir.generations().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[1].state, GenerationState::NoManifest);
    assert!(gens[1].problem().unwrap().contains("no MANIFEST"));

    // Committing again is refused; committing a manifest whose images are missing too.
    assert_eq!(dir.commit(1, &m1).unwrap_err().kind(), ErrorKind::Exists);
    let mut m2 = m1.clone();
    m2.generation = 2;
    assert_eq!(
        dir.commit(2, &m2).unwrap_err().kind(),
        ErrorKind::InvalidManifest
    );
    assert!(!p2.join("MANIFEST").exists());

    // Abandon removes it; abandon refuses a complete generation.
    dir.abandon(2).unwrap();
    assert!(!p2.exists());
    assert_eq!(dir.abandon(1).unwrap_err().kind(), ErrorKind::Usage);
    assert_eq!(dir.next_number().unwrap(), 2);

    // Names that are not canonical generation directories are ignored.
    fs::create_dir(root.join("gen-7")).unwrap();
    fs::create_dir(root.join("gen-00000x")).unwrap();
    fs::write(root.join("notes.txt"), b"hi").unwrap();
    assert_eq!(dir.generations().unwrap().len(), 1);
    // A plain file with a generation name still reserves its number.
    fs::write(root.join("gen-000009"), b"").unwrap();
    assert_eq!(dir.next_number().unwrap(), 10);
    assert_eq!(dir.generations().unwrap().len(), 1);
    assert_eq!(dir.begin(0).unwrap_err().kind(), ErrorKind::Usage);
}

#[test]
fn corrupt_manifests_are_skipped() {
    let t = TempDir::new("badman");
    let dir = CkptDir::create(t.path()).unwrap();
    write_gen(&dir, 1, &[1]);
    let m2 = write_gen(&dir, 2, &[1]);
    let man2 = dir.generation_path(2).join("MANIFEST");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{ not json".to_vec(), "not valid JSON"),
        (Vec::new(), "not valid JSON"),
        (
            {
                let mut m = m2.clone();
                m.generation = 5;
                m.to_json().into_bytes()
            },
            "generation 5",
        ),
        (
            {
                let mut m = m2.clone();
                m.processes[0].bytes += 1;
                m.total_bytes += 1;
                m.to_json().into_bytes()
            },
            "the manifest says",
        ),
        (
            {
                let mut m = m2.clone();
                m.total_bytes += 1;
                m.to_json().into_bytes()
            },
            "total_bytes",
        ),
        (
            {
                let mut m = m2.clone();
                m.processes[0].file = "../gen-000001/proc-1.img".into();
                m.to_json().into_bytes()
            },
            "not a plain image file name",
        ),
        (
            {
                let mut m = m2.clone();
                m.processes.push(m.processes[0].clone());
                m.to_json().into_bytes()
            },
            "listed twice",
        ),
        (
            {
                let mut m = m2.clone();
                m.processes.clear();
                m.total_bytes = 0;
                m.to_json().into_bytes()
            },
            "no process",
        ),
        (
            {
                let mut v = serde_json::to_value(&m2).unwrap();
                v["version"] = 9.into();
                v.to_string().into_bytes()
            },
            "newer ckpt",
        ),
    ];
    for (bytes, why) in cases {
        fs::write(&man2, &bytes).unwrap();
        let gens = dir.generations().unwrap();
        let g2 = &gens[1];
        assert!(!g2.is_complete());
        assert!(g2.manifest.is_none());
        let problem = g2.problem().unwrap();
        assert!(problem.contains(why), "{problem} (expected {why:?})");
        assert!(problem.contains(&man2.display().to_string()), "{problem}");
        assert_eq!(dir.newest_complete().unwrap().unwrap().number, 1);
    }
    // Missing image file.
    fs::write(&man2, m2.to_json()).unwrap();
    assert_eq!(dir.newest_complete().unwrap().unwrap().number, 2);
    fs::remove_file(dir.generation_path(2).join("proc-1.img")).unwrap();
    assert_eq!(dir.newest_complete().unwrap().unwrap().number, 1);
}

#[test]
fn prune_keeps_exactly_k() {
    let t = TempDir::new("prune");
    let dir = CkptDir::create(t.path()).unwrap();
    assert_eq!(dir.prune(0).unwrap_err().kind(), ErrorKind::Usage);
    // Nothing complete: nothing removed, even incomplete ones.
    dir.begin(1).unwrap();
    assert!(dir.prune(1).unwrap().is_empty());
    assert!(dir.generation_path(1).exists());
    for n in 2..=6 {
        write_gen(&dir, n, &[1, 2]);
    }
    dir.begin(7).unwrap(); // in progress, newer than the newest complete
                           // gen 4 has a corrupt manifest: incomplete, older than the newest complete.
    fs::write(dir.generation_path(4).join("MANIFEST"), b"garbage").unwrap();

    let removed = dir.prune(2).unwrap();
    assert_eq!(removed, vec![1, 2, 3, 4]);
    let left: Vec<(u64, bool)> = dir
        .generations()
        .unwrap()
        .iter()
        .map(|g| (g.number, g.is_complete()))
        .collect();
    assert_eq!(left, vec![(5, true), (6, true), (7, false)]);
    // Idempotent; keep 1 removes one more; the newest complete is never removed.
    assert!(dir.prune(2).unwrap().is_empty());
    assert_eq!(dir.prune(1).unwrap(), vec![5]);
    assert_eq!(dir.prune(1).unwrap(), Vec::<u64>::new());
    assert_eq!(dir.newest_complete().unwrap().unwrap().number, 6);
    assert!(dir.generation_path(7).exists());
    // keep larger than what exists: nothing removed.
    write_gen(&dir, 8, &[1]);
    assert_eq!(dir.prune(10).unwrap(), vec![7]); // 7 is now older than the newest complete
    let nums: Vec<u64> = dir
        .generations()
        .unwrap()
        .iter()
        .map(|g| g.number)
        .collect();
    assert_eq!(nums, vec![6, 8]);
}

#[test]
fn generation_names() {
    assert_eq!(generation_dir_name(1), "gen-000001");
    assert_eq!(generation_dir_name(1234567), "gen-1234567");
    assert_eq!(parse_generation_dir_name("gen-000001"), Some(1));
    assert_eq!(parse_generation_dir_name("gen-1234567"), Some(1234567));
    for bad in [
        "gen-1",
        "gen-0000001",
        "gen-000000",
        "gen-",
        "gen--00001",
        "gen-00001a",
        "x-000001",
        "gen-+00001",
    ] {
        assert_eq!(parse_generation_dir_name(bad), None, "{bad}");
    }
    assert_eq!(CkptDir::image_file_name(42), "proc-42.img");
    assert_eq!(CkptDir::image_file_name(-1), "proc--1.img");
}

/// Pins the byte layout described in docs/image-format.md.
#[test]
fn layout_matches_doc() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    let d = TempDir::new("layout");
    let p = d.path().join("a.img");
    let w = write_sample(&p, false);
    let b = fs::read(&p).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // File header.
    assert_eq!(&b[0..8], b"CKPTIMG\0");
    assert_eq!(u32_at(8), 1);
    assert_eq!(u32_at(12), 1); // format 1.1
    assert_eq!(u32_at(16), 64);
    assert_eq!(u32_at(20), 0);
    assert!(b[32..60].iter().all(|&x| x == 0));
    assert_eq!(u32_at(60), crc32c::crc32c(&b[0..60]));
    // First section (META) right after the header.
    let meta = meta_json();
    assert_eq!(&b[64..68], b"SECT");
    assert_eq!(u32_at(68), 1);
    assert_eq!(u32_at(72), 1);
    assert_eq!(u32_at(76), 0);
    assert_eq!(u64_at(80), meta.len() as u64);
    assert_eq!(u32_at(88), crc32c::crc32c(&meta));
    assert_eq!(u32_at(92), crc32c::crc32c(&b[64..92]));
    assert_eq!(&b[96..96 + meta.len()], &meta[..]);
    // Trailer.
    let t = b.len() - 48;
    assert_eq!(&b[t..t + 8], b"CKPTEND\0");
    let (toc_off, toc_len) = (u64_at(t + 8) as usize, u64_at(t + 16) as usize);
    assert_eq!(toc_off + toc_len, t);
    assert_eq!(toc_len, 4 * 40);
    assert_eq!(
        u32_at(t + 24),
        crc32c::crc32c(&b[toc_off..toc_off + toc_len])
    );
    assert_eq!(u32_at(t + 28), 4);
    assert_eq!(u64_at(t + 32), b.len() as u64);
    assert_eq!(u32_at(t + 44), crc32c::crc32c(&b[t..t + 44]));
    // TOC: META, PAGES, PAGEMAP, PAGEHASH.
    let e = |i: usize| toc_off + i * 40;
    assert_eq!((u32_at(e(0)), u64_at(e(0) + 16)), (1, 64));
    assert_eq!(u32_at(e(1)), 2);
    let pages_hdr = u64_at(e(1) + 16) as usize;
    assert_eq!((pages_hdr + 32) % 4096, 0);
    assert_eq!(u32_at(pages_hdr + 24), 0); // PAGES payload crc is 0
    assert!(b[96 + meta.len()..pages_hdr].iter().all(|&x| x == 0)); // zero padding
    assert_eq!(u32_at(e(2)), 3);
    let pm = u64_at(e(2) + 16) as usize + 32;
    for (i, r) in w.runs.iter().enumerate() {
        let o = pm + i * 32;
        assert_eq!(
            (
                u64_at(o),
                u64_at(o + 8),
                u64_at(o + 16),
                u32_at(o + 24),
                u32_at(o + 28)
            ),
            (r.addr, r.len, r.offset, r.crc32c, 0)
        );
    }
    // PAGEHASH: kind 5, version 1, flag OPTIONAL, one u64 per page.
    assert_eq!(
        (u32_at(e(3)), u32_at(e(3) + 4), u32_at(e(3) + 8)),
        (5, 1, 1)
    );
    let pages: u64 = w.runs.iter().map(|r| r.len / 4096).sum();
    assert_eq!(u64_at(e(3) + 24), pages * 8);
}

// ---------------------------------------------------------------------------------------
// The pipelined page writer (PageSink)

/// Writes runs through a `PageSink` (small buffers, so runs cross buffer boundaries and
/// several writes are in flight), then a META after the pages, and reads everything back.
fn sink_round_trip(want: PageIo) -> PageIo {
    let d = TempDir::new("sink");
    let path = d.path().join("img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.begin_pages().unwrap();
    let mut expect: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut runs = Vec::new();
    let got_io;
    {
        let mut sink = w.page_sink(3, 5 * 4096, want).unwrap();
        got_io = sink.io();
        let mut rng = Rng(7);
        let mut addr = 0x10_0000u64;
        for i in 0..40u64 {
            let pages = 1 + rng.below(9) as usize;
            let data = pattern(pages * 4096, 100 + i);
            // One run per call here; the bytes may land in several buffers.
            let start = sink.offset();
            let mut put = 0;
            while put < data.len() {
                let space = sink.space().unwrap();
                let n = space.len().min(data.len() - put);
                space[..n].copy_from_slice(&data[put..put + n]);
                sink.commit(n).unwrap();
                put += n;
            }
            runs.push(PageRun {
                addr,
                len: data.len() as u64,
                offset: start,
                crc32c: crc32c::crc32c(&data),
                generation: 0,
            });
            expect.push((addr, data));
            addr += (pages as u64 + 1) * 4096;
        }
        sink.finish().unwrap();
    }
    w.end_pages().unwrap();
    w.add_page_map(&runs).unwrap();
    w.add_section(
        SectionKind::Meta,
        &serde_json::to_vec(&sample_meta()).unwrap(),
    )
    .unwrap();
    let len = w.finish().unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "{want:?}: file length"
    );
    let (_, back_runs, data) = read_all(&path).unwrap();
    assert_eq!(back_runs, runs);
    for ((addr, want_bytes), got) in expect.iter().zip(&data) {
        assert!(want_bytes == got, "run at {addr:#x} differs ({got_io:?})");
    }
    got_io
}

#[test]
fn page_sink_round_trip_every_way() {
    let a = sink_round_trip(PageIo::DirectAsync);
    let b = sink_round_trip(PageIo::Direct);
    let c = sink_round_trip(PageIo::Buffered);
    assert_eq!(c, PageIo::Buffered);
    // On a file system that refuses O_DIRECT (tmpfs) the sink falls back to buffered.
    println!("temp dir file system: async -> {a:?}, direct -> {b:?}");
}

#[test]
fn page_sink_dropped_unfinished_poisons_the_writer() {
    let d = TempDir::new("sink-drop");
    let path = d.path().join("img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.begin_pages().unwrap();
    {
        let mut sink = w.page_sink(2, 4096, PageIo::DirectAsync).unwrap();
        let space = sink.space().unwrap();
        space[..4096].fill(1);
        sink.commit(4096).unwrap();
    }
    assert_eq!(w.end_pages().unwrap_err().kind(), ErrorKind::Usage);
}

/// Enough data for the sink to switch to asynchronous I/O (after 64 MiB), with several
/// writes in flight; every byte must read back.
#[test]
fn page_sink_async_large() {
    let d = TempDir::new("sink-async");
    let path = d.path().join("img");
    let mut w = ImageWriter::create(&path).unwrap();
    w.begin_pages().unwrap();
    let run_len = 1usize << 20;
    let nruns = 80u64;
    let mut runs = Vec::new();
    let io;
    {
        let mut sink = w.page_sink(3, 1 << 20, PageIo::DirectAsync).unwrap();
        for i in 0..nruns {
            let data = pattern(run_len, 1000 + i);
            let start = sink.offset();
            let mut put = 0;
            while put < data.len() {
                let space = sink.space().unwrap();
                let n = space.len().min(data.len() - put);
                space[..n].copy_from_slice(&data[put..put + n]);
                sink.commit(n).unwrap();
                put += n;
            }
            runs.push(PageRun {
                addr: 0x4000_0000 + i * 2 * run_len as u64,
                len: run_len as u64,
                offset: start,
                crc32c: crc32c::crc32c(&data),
                generation: 0,
            });
        }
        io = sink.io();
        sink.finish().unwrap();
    }
    w.end_pages().unwrap();
    w.add_page_map(&runs).unwrap();
    w.add_section(
        SectionKind::Meta,
        &serde_json::to_vec(&sample_meta()).unwrap(),
    )
    .unwrap();
    let len = w.finish().unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
    let r = ImageReader::open(&path).unwrap();
    assert_eq!(r.page_runs().unwrap(), runs);
    r.verify_pages().unwrap();
    println!("80 MiB through the sink: {io:?}");
}

/// An incremental image: runs of a parent are listed by generation, found through the
/// parent's path, verified from the parent; a replaced parent is refused; retention keeps a
/// referenced generation.
#[test]
fn incremental_image_and_retention() {
    let d = TempDir::new("incr");
    let root = d.path().join("ck");
    let cd = CkptDir::create(&root).unwrap();
    let name = CkptDir::image_file_name(7);
    // Generation 1: a full image.
    let g1 = cd.begin(1).unwrap();
    let full = write_sample(&g1.join(&name), false);
    let r1 = ImageReader::open(&g1.join(&name)).unwrap();
    let parent = ParentRef {
        generation: 1,
        file: name.clone(),
        file_len: r1.file_len(),
        trailer_crc: r1.trailer_crc(),
    };
    drop(r1);
    // Generation 2: its own first run, the others taken from generation 1.
    let g2 = cd.begin(2).unwrap();
    let p2 = g2.join(&name);
    let mut w = ImageWriter::create(&p2).unwrap();
    w.add_section(SectionKind::Meta, &serde_json::to_vec(&full.meta).unwrap())
        .unwrap();
    w.begin_pages().unwrap();
    let new_bytes = pattern(4096, 99);
    let mut runs = vec![w.write_pages(full.runs[0].addr, &new_bytes).unwrap()];
    for r in &full.runs[1..] {
        let mut x = *r;
        x.generation = 1;
        runs.push(x);
    }
    w.end_pages().unwrap();
    w.set_parents(vec![parent.clone()]);
    w.add_page_map(&runs).unwrap();
    w.finish().unwrap();
    let r2 = ImageReader::open(&p2).unwrap();
    let back = r2.page_runs().unwrap();
    assert_eq!(back, runs);
    assert_eq!(r2.parents().unwrap(), vec![parent]);
    assert_eq!(r2.parent_path(&r2.parents().unwrap()[0]), g1.join(&name));
    r2.verify_pages().unwrap();
    let mut buf = vec![0u8; back[1].len as usize];
    r2.read_run(&back[1], &mut buf).unwrap();
    assert_eq!(buf, full.pages[1].1);
    // PAGEMAP version 2 (a 1.0 reader refuses it), PARENTS before it.
    let kinds: Vec<(SectionKind, u32)> =
        r2.sections().iter().map(|s| (s.kind, s.version)).collect();
    assert!(
        kinds.contains(&(SectionKind::PageMap, 2)) && kinds.contains(&(SectionKind::Parents, 1))
    );
    // Retention: with keep 1, generation 1 stays while generation 2 references it.
    let commit = |n: u64, dir: &Path| {
        let bytes = fs::metadata(dir.join(&name)).unwrap().len();
        let m = Manifest::new(
            n,
            100,
            0.1,
            vec![ManifestProcess {
                vpid: 7,
                real_pid: 7,
                program: "p".into(),
                host: "h".into(),
                file: name.clone(),
                bytes,
                rank: None,
                step: None,
            }],
            None,
        );
        cd.commit(n, &m).unwrap();
    };
    commit(1, &g1);
    commit(2, &g2);
    assert_eq!(cd.referenced_by(2).unwrap(), vec![1]);
    assert!(cd.prune(1).unwrap().is_empty());
    assert!(g1.join(&name).exists());
    // A replaced parent is refused, naming it.
    drop(r2);
    write_sample(&d.path().join("other.img"), true);
    fs::rename(d.path().join("other.img"), g1.join(&name)).unwrap();
    let r2 = ImageReader::open(&p2).unwrap();
    let e = r2.open_parents(&r2.page_runs().unwrap()).unwrap_err();
    assert!(e.to_string().contains("replaced"), "{e}");
    assert!(r2.verify_pages().is_err());
}
