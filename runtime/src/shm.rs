//! Shared memory with nothing durable behind it (MAP_SHARED anonymous memory inherited
//! across fork, deleted /dev/shm files, memfd and SysV segments mapped shared).
//!
//! The program may write such memory while its image is being written from the frozen
//! snapshot (the snapshot shares it), so the pages are copied while the threads are
//! stopped — by one process of the job per object (`tree::shm_saver`) — into buffers that
//! are not inherited by the snapshot (MADV_DONTFORK), and written from there.

use crate::memory::{parse_maps, Classified};
use ckpt_image::{ImageError, ImageWriter, PageRun, RegionKind};

const PAGE: usize = 4096;

/// A copy of one shared mapping's bytes at the snapshot.
pub struct Copy {
    pub start: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is owned by the checkpoint thread alone.
unsafe impl Send for Copy {}

impl Copy {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe our own live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        // SAFETY: unmapping our own buffer.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Copies every shared-memory mapping this process saves. Threads are parked.
pub fn copy_all() -> Result<Vec<Copy>, String> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    let mem = std::fs::File::open("/proc/self/mem")
        .map_err(|e| format!("opening /proc/self/mem: {e}"))?;
    let mut out = Vec::new();
    for e in parse_maps(&maps) {
        let Ok(Some(c)) = crate::memory::classify(&e) else {
            continue;
        };
        let RegionKind::SharedMem { ino, .. } = c.region.kind else {
            continue;
        };
        if !crate::tree::shm_saver(ino) {
            continue;
        }
        let len = (e.end - e.start) as usize;
        // SAFETY: a fresh anonymous private mapping for the copy.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "no memory to copy shared memory {:#x}-{:#x}",
                e.start, e.end
            ));
        }
        // SAFETY: keep the copy out of the snapshot (and so out of the image).
        unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) };
        let copy = Copy {
            start: e.start,
            ptr: ptr as *mut u8,
            len,
        };
        // SAFETY: the buffer is ours and len bytes long.
        let buf = unsafe { std::slice::from_raw_parts_mut(copy.ptr, len) };
        // /proc/self/mem reads regardless of the mapping's protection.
        mem.read_exact_at(buf, e.start)
            .map_err(|err| format!("copying shared memory {:#x}-{:#x}: {err}", e.start, e.end))?;
        out.push(copy);
    }
    Ok(out)
}

/// Writes the saved shared mappings' non-zero pages and marks their regions `saved`.
pub fn write(
    w: &mut ImageWriter,
    regions: &mut [Classified],
    copies: &[Copy],
) -> Result<Vec<PageRun>, ImageError> {
    let mut runs = Vec::new();
    for c in regions.iter_mut() {
        let RegionKind::SharedMem { saved, .. } = &mut c.region.kind else {
            continue;
        };
        let Some(copy) = copies.iter().find(|k| k.start == c.region.start) else {
            continue;
        };
        *saved = true;
        let b = copy.bytes();
        let zero = |p: usize| b[p * PAGE..(p + 1) * PAGE].iter().all(|&x| x == 0);
        let n = b.len() / PAGE;
        let mut i = 0;
        while i < n {
            if zero(i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < n && !zero(j) {
                j += 1;
            }
            runs.push(w.write_pages(copy.start + (i * PAGE) as u64, &b[i * PAGE..j * PAGE])?);
            c.region.stored_bytes += ((j - i) * PAGE) as u64;
            i = j;
        }
    }
    Ok(runs)
}
