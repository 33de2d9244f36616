//! The runtime's own memory allocator. The checkpoint thread runs while user threads are
//! parked, possibly inside glibc's malloc holding its lock, so every Rust allocation of
//! the runtime comes from here: size classes carved from mmap'd chunks, one spin lock
//! (only runtime threads ever take it), large blocks mapped directly.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

const CLASSES: usize = 13; // 16 B .. 64 KiB
const CHUNK: usize = 1 << 20;
const MAX_SMALL: usize = 16 << (CLASSES - 1);

struct State {
    free: [usize; CLASSES],
    bump: usize,
    bump_end: usize,
}

pub struct RuntimeAlloc {
    lock: AtomicBool,
    state: std::cell::UnsafeCell<State>,
}

// SAFETY: all access to `state` happens under `lock`.
unsafe impl Sync for RuntimeAlloc {}

impl RuntimeAlloc {
    pub const fn new() -> Self {
        RuntimeAlloc {
            lock: AtomicBool::new(false),
            state: std::cell::UnsafeCell::new(State {
                free: [0; CLASSES],
                bump: 0,
                bump_end: 0,
            }),
        }
    }
    pub fn lock(&self) {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
    }
    pub fn unlock(&self) {
        self.lock.store(false, Ordering::Release);
    }
}

fn class_of(size: usize) -> usize {
    let s = size.max(16).next_power_of_two();
    s.trailing_zeros() as usize - 4
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping; no existing memory is affected.
    let p = unsafe {
        crate::sys::syscall6(
            libc::SYS_mmap,
            0,
            len as u64,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        )
    };
    if p < 0 {
        std::ptr::null_mut()
    } else {
        p as *mut u8
    }
}

// SAFETY: implements the GlobalAlloc contract: blocks are unique, aligned to
// max(size class, requested align) and valid until dealloc.
unsafe impl GlobalAlloc for RuntimeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size().max(layout.align());
        if layout.align() > 4096 {
            return std::ptr::null_mut();
        }
        if size > MAX_SMALL {
            return map((size + 4095) & !4095);
        }
        let c = class_of(size);
        let csize = 16usize << c;
        self.lock();
        // SAFETY: under the lock.
        let st = unsafe { &mut *self.state.get() };
        let p = if st.free[c] != 0 {
            let p = st.free[c];
            // SAFETY: a free block stores the next pointer in its first word.
            st.free[c] = unsafe { *(p as *const usize) };
            p as *mut u8
        } else {
            // Size classes are powers of two, so aligning the bump pointer to the class
            // size gives the alignment.
            let mut b = (st.bump + csize - 1) & !(csize - 1);
            if b + csize > st.bump_end {
                let chunk = map(CHUNK);
                if chunk.is_null() {
                    self.unlock();
                    return std::ptr::null_mut();
                }
                st.bump = chunk as usize;
                st.bump_end = chunk as usize + CHUNK;
                b = st.bump;
            }
            st.bump = b + csize;
            b as *mut u8
        };
        self.unlock();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = layout.size().max(layout.align());
        if size > MAX_SMALL {
            // SAFETY: the block was mapped by `map` with this rounded length.
            unsafe {
                crate::sys::syscall3(
                    libc::SYS_munmap,
                    ptr as u64,
                    ((size + 4095) & !4095) as u64,
                    0,
                )
            };
            return;
        }
        let c = class_of(size);
        self.lock();
        // SAFETY: under the lock; the freed block is at least 16 bytes.
        unsafe {
            let st = &mut *self.state.get();
            *(ptr as *mut usize) = st.free[c];
            st.free[c] = ptr as usize;
        }
        self.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_many_sizes() {
        let a = RuntimeAlloc::new();
        let mut blocks = Vec::new();
        for i in 1..2000usize {
            let size = (i * 37) % 100_000 + 1;
            let align = 1 << (i % 7);
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: valid layout; block freed below with the same layout.
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            // SAFETY: p is valid for size bytes.
            unsafe { std::ptr::write_bytes(p, (i & 0xff) as u8, size) };
            blocks.push((p, l, (i & 0xff) as u8));
        }
        for (p, l, v) in blocks {
            // SAFETY: reading back what we wrote; blocks must not overlap.
            let s = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(s.iter().all(|&b| b == v));
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
    }
}
