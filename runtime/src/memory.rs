//! Memory: the walk of /proc/self/maps, what each region needs saved, and streaming the
//! pages into the image.
//!
//! Pages that are not resident (and not swapped) hold nothing: never read. Anonymous pages
//! that are all zero are not stored (they come back as fresh zero pages). Pages of a
//! private file mapping that still are the file's own pages (pagemap bit 61) are not
//! stored either: the restorer maps the file again. Only copied-on-write pages of such a
//! mapping (relocated GOTs, .data) are stored.

use ckpt_image::{ImageError, ImageWriter, PageRun, Prot, Region, RegionKind};

#[derive(Debug, Clone)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub shared: bool,
    pub offset: u64,
    /// Device as printed in maps (overlay file systems report another one in stat).
    #[allow(dead_code)]
    pub dev: u64,
    pub ino: u64,
    pub name: String,
}

pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(dev), Some(ino)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let name = it.next().unwrap_or("").trim_start().to_string();
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 4 {
            continue;
        }
        let (maj, min) = dev.split_once(':').unwrap_or(("0", "0"));
        let dev = (u64::from_str_radix(maj, 16).unwrap_or(0) << 8)
            | u64::from_str_radix(min, 16).unwrap_or(0);
        out.push(MapsEntry {
            start: u64::from_str_radix(a, 16).unwrap_or(0),
            end: u64::from_str_radix(b, 16).unwrap_or(0),
            prot: Prot {
                read: p[0] == b'r',
                write: p[1] == b'w',
                exec: p[2] == b'x',
            },
            shared: p[3] == b's',
            offset: u64::from_str_radix(off, 16).unwrap_or(0),
            dev,
            ino: ino.parse().unwrap_or(0),
            name,
        });
    }
    out
}

/// How the pages of a region are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Record the address only (vdso group).
    None,
    /// Resident or swapped pages that are not all zero.
    Anon,
    /// Copied-on-write pages of a private file mapping.
    FileCow,
    /// Every page (the file is gone or changed: its bytes must come from the image).
    All,
    /// Shared memory: copied while the program is stopped (see `shm`), never read from the
    /// running snapshot (the program may change it meanwhile).
    Shared,
}

pub struct Classified {
    pub region: Region,
    pub policy: Policy,
}

/// Classifies one mapping; `Err` names what is not supported.
pub fn classify(e: &MapsEntry) -> Result<Option<Classified>, String> {
    let mk = |kind: RegionKind, policy: Policy| {
        Ok(Some(Classified {
            region: Region {
                start: e.start,
                end: e.end,
                prot: e.prot,
                shared: e.shared,
                kind,
                stored_bytes: 0,
            },
            policy,
        }))
    };
    match e.name.as_str() {
        "[vsyscall]" => return Ok(None),
        "[vdso]" => return mk(RegionKind::Vdso, Policy::None),
        "[vvar]" => return mk(RegionKind::Vvar, Policy::None),
        "[vvar_vclock]" => return mk(RegionKind::VvarVclock, Policy::None),
        _ => {}
    }
    if e.shared {
        // A shared mapping of a regular file holds nothing but the file's own pages: it is
        // mapped again from the file. Shared anonymous memory, memfd and SysV segments
        // must be shared with other processes and come with process-tree support.
        if e.name.starts_with('/') && !e.name.ends_with(" (deleted)") {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            if let Ok(md) = std::fs::metadata(&e.name) {
                // SAFETY: getuid has no preconditions.
                let ours = md.uid() == unsafe { libc::getuid() };
                if md.ino() == e.ino && md.is_file() && (e.prot.write || ours) && on_tmpfs(&e.name)
                {
                    // A file on tmpfs (/dev/shm, POSIX shm_open, a tmpfs /tmp) that the job
                    // writes (or owns) is memory: it may be gone when the job is restarted.
                    // (A system file mapped read-only, e.g. nscd's cache, stays a file.) Its pages are saved like
                    // shared memory and the file is written back on restore.
                    return mk(
                        RegionKind::SharedMem {
                            ino: e.ino,
                            pgoff: e.offset / PAGE,
                            name: e.name.clone(),
                            saved: false,
                            file: Some(ckpt_image::TmpfsFile {
                                size: md.size(),
                                mode: md.permissions().mode() & 0o7777,
                            }),
                        },
                        Policy::Shared,
                    );
                }
                if md.ino() == e.ino && md.is_file() {
                    return mk(
                        RegionKind::File {
                            path: e.name.clone(),
                            offset: e.offset,
                            dev: md.dev(),
                            ino: md.ino(),
                            size: md.size(),
                            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                        },
                        Policy::None,
                    );
                }
            }
        }
        // Shared memory with nothing durable behind it: its pages are saved by one process
        // of the job (see `tree::shm_saver`) while the threads are stopped.
        let anon_like = e.name.is_empty()
            || e.name.ends_with(" (deleted)")
            || e.name.starts_with("/SYSV")
            || e.name.starts_with("/memfd:");
        if anon_like {
            return mk(
                RegionKind::SharedMem {
                    ino: e.ino,
                    pgoff: e.offset / PAGE,
                    name: e.name.clone(),
                    saved: false,
                    file: None,
                },
                Policy::Shared,
            );
        }
        return Err(format!(
            "shared memory mapping {:#x}-{:#x} ({}) is not supported yet",
            e.start,
            e.end,
            if e.name.is_empty() {
                "anonymous"
            } else {
                &e.name
            }
        ));
    }
    match e.name.as_str() {
        "" => mk(RegionKind::Anon, Policy::Anon),
        "[heap]" => mk(RegionKind::Heap, Policy::Anon),
        "[stack]" => mk(RegionKind::Stack, Policy::Anon),
        n if n.starts_with('[') => mk(RegionKind::Anon, Policy::Anon),
        n if n.starts_with('/') && !n.ends_with(" (deleted)") => {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(n) {
                Ok(md) if md.ino() == e.ino && md.is_file() => mk(
                    RegionKind::File {
                        path: n.to_string(),
                        offset: e.offset,
                        dev: md.dev(),
                        ino: md.ino(),
                        size: md.size(),
                        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    },
                    Policy::FileCow,
                ),
                // The file was replaced or is not a regular file: keep its bytes.
                _ => mk(RegionKind::Anon, Policy::All),
            }
        }
        // Deleted files, memfd and other anonymous inodes mapped privately.
        _ => mk(RegionKind::Anon, Policy::All),
    }
}

/// Whether `path` is on a tmpfs file system.
pub fn on_tmpfs(path: &str) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs into a zeroed buffer with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == TMPFS_MAGIC
}

const PAGE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

fn is_zero(p: &[u8]) -> bool {
    let (pre, mid, post) = {
        // SAFETY: reinterpreting bytes as u64 words is valid for any bit pattern.
        unsafe { p.align_to::<u64>() }
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// Pages per pagemap look-up.
const BATCH: usize = 1024;
/// Bytes read from the snapshot per system call: small enough that the zero scan and the
/// CRC that follow find the bytes still in the cache.
const READ_SPAN: usize = 256 << 10;
/// Page-data buffers of the writer: while the kernel writes one, the next is filled.
const SINK_BUFFERS: usize = 4;
const SINK_BUFFER: usize = 4 << 20;
/// Longest page run: the restorer reads runs in parallel and checks one CRC per run.
const RUN_MAX: u64 = 4 << 20;

/// Writes the selected pages of every region of the frozen snapshot process whose memory
/// is `mem` (/proc/<pid>/mem) and page map `pagemap`; returns the runs and fills
/// `stored_bytes`. The snapshot process never runs again, so what is read is exactly the
/// memory at the instant of the snapshot, and each run's checksum covers the bytes written.
///
/// One pass over the data: the bytes are read from the snapshot straight into the
/// writer's page-aligned buffer; each page is checked for zeros and, if kept, moved down
/// over the dropped ones and added to its run's CRC-32C while it is in the cache; full
/// buffers are written with O_DIRECT and asynchronous I/O while the next one is filled
/// (see `ImageWriter::page_sink`). No thread is started: this also runs while the
/// program's threads stay parked (`checkpoint --kill`).
pub fn write_regions(
    w: &mut ImageWriter,
    regions: &mut [Classified],
    mem: &std::fs::File,
    pagemap: Option<&std::fs::File>,
) -> Result<Vec<PageRun>, ImageError> {
    use ckpt_image::incremental::{continues, page_hash, Base};
    use std::os::unix::fs::FileExt;
    // Incremental: pages whose content the previous image of this process already holds
    // at the same address are referenced, not written (CKPT_INCREMENTAL=0: always full).
    let mut prev = if std::env::var("CKPT_INCREMENTAL").as_deref() == Ok("0") {
        None
    } else {
        match Base::for_image(w.path()) {
            Ok(b) => Some(b),
            Err(why) => {
                crate::debug!("full checkpoint: {why}");
                None
            }
        }
    };
    let mut hashes: Vec<(u64, u64)> = Vec::new();
    let mut referenced = 0u64;
    let mut sink = w.page_sink(SINK_BUFFERS, SINK_BUFFER, ckpt_image::PageIo::preferred())?;
    let mut runs: Vec<PageRun> = Vec::new();
    let mut pm: Vec<u64> = vec![0; BATCH];
    let mut cand = vec![false; BATCH];
    let page = PAGE as usize;
    for c in regions.iter_mut() {
        if c.policy == Policy::None || c.policy == Policy::Shared {
            continue;
        }
        // The run being built (runs never cross a region's end).
        let mut open: Option<PageRun> = None;
        let r = &mut c.region;
        let npages = ((r.end - r.start) / PAGE) as usize;
        let mut done = 0usize;
        while done < npages {
            let n = (npages - done).min(BATCH);
            let base = r.start + done as u64 * PAGE;
            let have_pm = match pagemap {
                Some(f) if c.policy != Policy::All => {
                    // SAFETY: viewing the u64 buffer as bytes for reading into it.
                    let bytes = unsafe {
                        std::slice::from_raw_parts_mut(pm.as_mut_ptr() as *mut u8, n * 8)
                    };
                    f.read_exact_at(bytes, (base / PAGE) * 8).is_ok()
                }
                _ => false,
            };
            for (i, slot) in cand.iter_mut().enumerate().take(n) {
                *slot = if have_pm {
                    let e = pm[i];
                    let resident = e & (PM_PRESENT | PM_SWAPPED) != 0;
                    match c.policy {
                        Policy::FileCow => resident && e & PM_FILE == 0,
                        _ => resident,
                    }
                } else {
                    true
                };
            }
            let mut i = 0;
            while i < n {
                if !cand[i] {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < n && cand[j] && (j - i) * page < READ_SPAN {
                    j += 1;
                }
                // Read pages i..j (as many as fit in the buffer) into the sink's space.
                let file_at = sink.offset();
                let space = sink.space()?;
                let take = (j - i).min(space.len() / page);
                let len = take * page;
                let addr = base + i as u64 * PAGE;
                mem.read_exact_at(&mut space[..len], addr)
                    .map_err(|e| ImageError::Io {
                        path: std::path::PathBuf::from("/proc/<snapshot>/mem"),
                        op: "read memory at the snapshot",
                        source: std::io::Error::new(e.kind(), format!("{addr:#x}+{len:#x}: {e}")),
                    })?;
                let mut kept = 0usize;
                for p in 0..take {
                    let src = p * page;
                    let page_addr = addr + src as u64;
                    if c.policy == Policy::Anon && is_zero(&space[src..src + page]) {
                        if let Some(run) = open.take() {
                            runs.push(run);
                        }
                        continue;
                    }
                    let h = page_hash(&space[src..src + page]);
                    hashes.push((page_addr, h));
                    // Unchanged since the previous image: point at the bytes there.
                    if let Some(bp) = prev.as_mut().and_then(|b| b.lookup(page_addr)) {
                        if bp.hash == h {
                            let generation = prev.as_mut().map_or(0, |b| b.use_cand(bp.cand));
                            let bytes = &space[src..src + page];
                            match &mut open {
                                Some(run)
                                    if continues(run, page_addr, generation, bp.offset)
                                        && run.len < RUN_MAX =>
                                {
                                    run.crc32c = crc32c::crc32c_append(run.crc32c, bytes);
                                    run.len += PAGE;
                                }
                                _ => {
                                    if let Some(run) = open.take() {
                                        runs.push(run);
                                    }
                                    open = Some(PageRun {
                                        addr: page_addr,
                                        len: PAGE,
                                        offset: bp.offset,
                                        crc32c: crc32c::crc32c(bytes),
                                        generation,
                                    });
                                }
                            }
                            referenced += PAGE;
                            continue;
                        }
                    }
                    let dst = kept * page;
                    if dst != src {
                        space.copy_within(src..src + page, dst);
                    }
                    let bytes = &space[dst..dst + page];
                    let page_off = file_at + dst as u64;
                    match &mut open {
                        Some(run)
                            if continues(run, page_addr, 0, page_off) && run.len < RUN_MAX =>
                        {
                            run.crc32c = crc32c::crc32c_append(run.crc32c, bytes);
                            run.len += PAGE;
                        }
                        _ => {
                            if let Some(run) = open.take() {
                                runs.push(run);
                            }
                            open = Some(PageRun {
                                addr: page_addr,
                                len: PAGE,
                                offset: page_off,
                                crc32c: crc32c::crc32c(bytes),
                                generation: 0,
                            });
                        }
                    }
                    kept += 1;
                }
                sink.commit(kept * page)?;
                r.stored_bytes += (kept * page) as u64;
                i += take;
            }
            done += n;
        }
        if let Some(run) = open.take() {
            runs.push(run);
        }
    }
    sink.finish()?;
    if let Some(b) = &prev {
        let parents = b.parents();
        crate::debug!(
            "incremental against generation {}: {referenced} bytes referenced in {} parent image(s)",
            b.generation,
            parents.len()
        );
        w.set_parents(parents);
    }
    w.add_page_hashes(&hashes);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tmpfs file mapped shared is saved like shared memory, with what is needed to write
    /// it back (size, mode); a file elsewhere stays a file mapping.
    #[test]
    fn tmpfs_file_mapped_shared_is_saved() {
        use std::os::unix::fs::PermissionsExt;
        let path = format!("/dev/shm/ckpt-unit-{}", std::process::id());
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: mapping our test file shared.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let e = parse_maps(&maps)
            .into_iter()
            .find(|e| e.start == p as u64)
            .unwrap();
        let c = classify(&e).unwrap().unwrap();
        match &c.region.kind {
            RegionKind::SharedMem {
                name,
                pgoff: 0,
                file: Some(t),
                ..
            } => {
                assert_eq!(name, &path);
                assert_eq!((t.size, t.mode), (5000, 0o640));
            }
            k => panic!("{k:?}"),
        }
        // SAFETY: unmapping our mapping.
        unsafe { libc::munmap(p, 8192) };
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn parses_maps_lines() {
        let t = "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
                 7f1e2b000000-7f1e2b022000 r-xp 00002000 fd:01 1234   /usr/lib/x.so\n\
                 7ffd1c9fe000-7ffd1ca00000 r-xp 00000000 00:00 0                          [vdso]\n\
                 7f00000000-7f00001000 rw-s 00000000 00:01 99 /dev/zero (deleted)\n";
        let m = parse_maps(t);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].name, "[heap]");
        assert!(m[0].prot.write && !m[0].prot.exec);
        assert_eq!(m[1].offset, 0x2000);
        assert_eq!(m[1].ino, 1234);
        assert_eq!(m[1].dev, 0xfd01);
        assert_eq!(m[1].name, "/usr/lib/x.so");
        assert!(matches!(
            classify(&m[2]).unwrap().unwrap().region.kind,
            RegionKind::Vdso
        ));
        assert!(matches!(
            classify(&m[3]).unwrap().unwrap().region.kind,
            RegionKind::SharedMem { ino: 99, .. }
        ));
        // A shared read-only mapping of an existing file is re-mapped, nothing stored.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&exe).unwrap().ino();
        let shared = MapsEntry {
            start: 0x1000,
            end: 0x2000,
            prot: Prot {
                read: true,
                write: false,
                exec: false,
            },
            shared: true,
            offset: 0,
            dev: 0,
            ino,
            name: exe.to_string_lossy().into_owned(),
        };
        let c = classify(&shared).unwrap().unwrap();
        assert_eq!(c.policy, Policy::None);
        assert!(c.region.shared && matches!(c.region.kind, RegionKind::File { .. }));
        assert!(matches!(
            classify(&m[0]).unwrap().unwrap().region.kind,
            RegionKind::Heap
        ));
    }

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 8192];
        assert!(is_zero(&v[1..4097]));
        v[4000] = 1;
        assert!(!is_zero(&v[1..4097]));
    }
}
