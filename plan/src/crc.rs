//! CRC-32C (Castagnoli) without std, for the restorer: the same function as the `crc32c`
//! crate (initial value 0, reflected, final inversion; `crc32c(b"123456789") ==
//! 0xe3069283`). With SSE 4.2 it runs three independent `crc32` instruction streams over
//! three consecutive blocks and joins them with precomputed shift tables (the instruction
//! has a latency of 3 cycles and a throughput of 1), else a byte-wise table.

const POLY: u32 = 0x82f6_3b78; // reflected Castagnoli polynomial

/// Bytes per lane of the three-way loop (one 3 × LANE chunk per iteration).
pub const LANE: usize = 4096;

/// Tables for one process: the byte-wise table (software path) and the tables that shift
/// a raw CRC state over `LANE` zero bytes (hardware path). 5 KiB; build once.
pub struct Crc32c {
    hw: bool,
    byte: [u32; 256],
    shift: [[u32; 256]; 4],
}

impl Crc32c {
    /// An all-zero value, so that a `static` can hold one; call [`Crc32c::init`] before use.
    pub const fn empty() -> Self {
        Crc32c {
            hw: false,
            byte: [0; 256],
            shift: [[0; 256]; 4],
        }
    }

    /// Fills the tables (about 40 µs) and detects SSE 4.2.
    pub fn init(&mut self) {
        for i in 0..256u32 {
            let mut c = i;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
            self.byte[i as usize] = c;
        }
        self.hw = has_sse42();
        // Column k: the raw state with only bit k set, carried over LANE zero bytes.
        let mut col = [0u32; 32];
        for (k, c) in col.iter_mut().enumerate() {
            let mut s = 1u32 << k;
            for _ in 0..LANE {
                s = self.byte[(s & 0xff) as usize] ^ (s >> 8);
            }
            *c = s;
        }
        for (b, t) in self.shift.iter_mut().enumerate() {
            for (v, e) in t.iter_mut().enumerate() {
                let mut x = 0u32;
                for bit in 0..8 {
                    if v & (1 << bit) != 0 {
                        x ^= col[b * 8 + bit];
                    }
                }
                *e = x;
            }
        }
    }

    /// Whether the SSE 4.2 path is used.
    pub fn hardware(&self) -> bool {
        self.hw
    }

    fn shift(&self, s: u32) -> u32 {
        self.shift[0][(s & 0xff) as usize]
            ^ self.shift[1][((s >> 8) & 0xff) as usize]
            ^ self.shift[2][((s >> 16) & 0xff) as usize]
            ^ self.shift[3][(s >> 24) as usize]
    }

    /// CRC-32C of `crc`'s data followed by `data` (like `crc32c::crc32c_append`).
    pub fn append(&self, crc: u32, data: &[u8]) -> u32 {
        let s = !crc;
        let s = if self.hw {
            // SAFETY: SSE 4.2 is present (checked by init).
            unsafe { self.raw_hw(s, data) }
        } else {
            self.raw_sw(s, data)
        };
        !s
    }

    fn raw_sw(&self, mut s: u32, data: &[u8]) -> u32 {
        for &b in data {
            s = self.byte[((s ^ b as u32) & 0xff) as usize] ^ (s >> 8);
        }
        s
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2")]
    unsafe fn raw_hw(&self, s: u32, data: &[u8]) -> u32 {
        use core::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
        let mut s = s as u64;
        let mut p = data;
        while !p.is_empty() && (p.as_ptr() as usize) & 7 != 0 {
            s = _mm_crc32_u8(s as u32, p[0]) as u64;
            p = &p[1..];
        }
        let word = |q: &[u8], i: usize| -> u64 {
            // SAFETY: callers keep i * 8 + 8 <= q.len(); q is 8-aligned (unaligned read is
            // fine on x86 anyway).
            unsafe { core::ptr::read_unaligned(q.as_ptr().add(i * 8) as *const u64) }
        };
        while p.len() >= 3 * LANE {
            let (a, rest) = p.split_at(LANE);
            let (b, rest) = rest.split_at(LANE);
            let (c, rest) = rest.split_at(LANE);
            let (mut s1, mut s2) = (0u64, 0u64);
            for i in 0..LANE / 8 {
                s = _mm_crc32_u64(s, word(a, i));
                s1 = _mm_crc32_u64(s1, word(b, i));
                s2 = _mm_crc32_u64(s2, word(c, i));
            }
            let j = self.shift(s as u32) ^ s1 as u32;
            s = (self.shift(j) ^ s2 as u32) as u64;
            p = rest;
        }
        let n = p.len() / 8;
        for i in 0..n {
            s = _mm_crc32_u64(s, word(p, i));
        }
        for &b in &p[n * 8..] {
            s = _mm_crc32_u8(s as u32, b) as u64;
        }
        s as u32
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn raw_hw(&self, s: u32, data: &[u8]) -> u32 {
        self.raw_sw(s, data)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_sse42() -> bool {
    // SAFETY: cpuid leaf 1 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let r = unsafe { core::arch::x86_64::__cpuid(1) };
    r.ecx & (1 << 20) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn has_sse42() -> bool {
    false
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    #[test]
    fn matches_the_crc32c_crate() {
        let mut t = Box::new(Crc32c::empty());
        t.init();
        let mut sw = Box::new(Crc32c::empty());
        sw.init();
        sw.hw = false;
        assert_eq!(t.append(0, b"123456789"), 0xe306_9283);
        assert_eq!(sw.append(0, b"123456789"), 0xe306_9283);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..5 * 3 * LANE + 4099)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for (start, len) in [
            (0, 0),
            (0, 1),
            (3, 4096),
            (1, 3 * LANE),
            (5, 3 * LANE + 7),
            (0, data.len()),
            (7, data.len() - 7),
        ] {
            let d = &data[start..start + len];
            let want = crc32c::crc32c(d);
            assert_eq!(t.append(0, d), want, "hw {start}+{len}");
            assert_eq!(sw.append(0, d), want, "sw {start}+{len}");
            // Appending in pieces gives the same value.
            let mid = len / 3;
            assert_eq!(t.append(t.append(0, &d[..mid]), &d[mid..]), want);
        }
    }
}
