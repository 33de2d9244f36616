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
            use std::os::unix::fs::MetadataExt;
            if let Ok(md) = std::fs::metadata(&e.name) {
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
        return Err(format!(
            "shared memory mapping {:#x}-{:#x} ({}) is not supported yet (MAP_SHARED memory comes with process-tree support)",
            e.start,
            e.end,
            if e.name.is_empty() { "anonymous" } else { &e.name }
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

/// Writes the selected pages of every region of the frozen snapshot process whose memory
/// is `mem` (/proc/<pid>/mem) and page map `pagemap`; returns the runs and fills
/// `stored_bytes`. The snapshot process never runs again, so what is read is exactly the
/// memory at the instant of the snapshot, and each run's checksum covers the bytes written.
pub fn write_regions(
    w: &mut ImageWriter,
    regions: &mut [Classified],
    mem: &std::fs::File,
    pagemap: Option<&std::fs::File>,
) -> Result<Vec<PageRun>, ImageError> {
    use std::os::unix::fs::FileExt;
    const BATCH: usize = 1024; // pages: 4 MiB
    let mut runs = Vec::new();
    let mut pm: Vec<u64> = vec![0; BATCH];
    let mut buf: Vec<u8> = vec![0; BATCH * PAGE as usize];
    let mut cand = [false; BATCH];
    for c in regions.iter_mut() {
        if c.policy == Policy::None {
            continue;
        }
        let r = &mut c.region;
        let npages = ((r.end - r.start) / PAGE) as usize;
        let mut page = 0usize;
        while page < npages {
            let n = (npages - page).min(BATCH);
            let base = r.start + page as u64 * PAGE;
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
            // Read each stretch of candidate pages, then store its non-zero (anonymous) or
            // all (file copy-on-write) pages as runs.
            let mut i = 0;
            while i < n {
                if !cand[i] {
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j < n && cand[j] {
                    j += 1;
                }
                let off = i * PAGE as usize;
                let len = (j - i) * PAGE as usize;
                let addr = base + off as u64;
                mem.read_exact_at(&mut buf[off..off + len], addr)
                    .map_err(|e| ImageError::Io {
                        path: std::path::PathBuf::from("/proc/<snapshot>/mem"),
                        op: "read memory at the snapshot",
                        source: std::io::Error::new(e.kind(), format!("{addr:#x}+{len:#x}: {e}")),
                    })?;
                let mut k = i;
                while k < j {
                    let keep = |p: usize| {
                        c.policy != Policy::Anon
                            || !is_zero(&buf[p * PAGE as usize..(p + 1) * PAGE as usize])
                    };
                    if !keep(k) {
                        k += 1;
                        continue;
                    }
                    let mut m = k;
                    while m < j && keep(m) {
                        m += 1;
                    }
                    let bytes = &buf[k * PAGE as usize..m * PAGE as usize];
                    runs.push(w.write_pages(base + k as u64 * PAGE, bytes)?);
                    r.stored_bytes += bytes.len() as u64;
                    k = m;
                }
                i = j;
            }
            page += n;
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(classify(&m[3]).is_err());
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
