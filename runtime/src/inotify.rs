//! inotify: the watches (wd, inode, mask) come from /proc/self/fdinfo; they are re-added by
//! path after a restart, in wd order, so that every wd keeps its number.
//!
//! Finding the path of a watched inode. The kernel only knows the inode, so the runtime
//! records the path of every successful `inotify_add_watch` made through libc (interposed
//! below: a fixed table, no allocation, safe in any thread). At checkpoint time a watch's
//! path is, in order: a recorded path that still names the same inode (device + inode);
//! else the path `open_by_handle_at` finds from the fdinfo file handle (needs
//! CAP_DAC_READ_SEARCH). Policy when neither works (a watch added with a raw system call
//! on a path since renamed, unprivileged): the checkpoint is refused, naming the fd, the wd
//! and the inode. At restart a path that no longer exists refuses the restart (`ckpt
//! restart` checks before anything is replaced); one that names another inode is re-added
//! anyway (the path is what the program asked for) with a warning.
//!
//! Events queued and not yet read at the checkpoint are not in the image (the kernel
//! offers no way to put them back); the checkpoint logs a warning with their size.

use ckpt_image::{FdKind, InotifyWatch};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const SLOTS: usize = 256;
const PATH_MAX: usize = 480;

#[repr(C)]
struct Rec {
    /// 0 free, 1 being written, 2 valid.
    state: AtomicU32,
    ifd: i32,
    wd: i32,
    len: u32,
    path: [u8; PATH_MAX],
}

struct Table(std::cell::UnsafeCell<[Rec; SLOTS]>);
// SAFETY: a record is written only by the thread that claimed it (state 0/2 -> 1) and read
// only when its state is 2.
unsafe impl Sync for Table {}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Rec = Rec {
    state: AtomicU32::new(0),
    ifd: -1,
    wd: 0,
    len: 0,
    path: [0; PATH_MAX],
};
static TABLE: Table = Table(std::cell::UnsafeCell::new([EMPTY; SLOTS]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn table() -> &'static mut [Rec; SLOTS] {
    // SAFETY: see `Table`.
    unsafe { &mut *TABLE.0.get() }
}

fn record(ifd: i32, wd: i32, path: *const libc::c_char) {
    // SAFETY: the caller's NUL-terminated path (it just worked for the kernel).
    let p = unsafe { std::ffi::CStr::from_ptr(path) }.to_bytes();
    let mut buf = [0u8; PATH_MAX];
    let mut len = 0;
    if p.first() != Some(&b'/') {
        // SAFETY: getcwd(2) into a stack buffer (returns the length incl. NUL).
        let n = unsafe {
            crate::sys::syscall3(
                libc::SYS_getcwd,
                buf.as_mut_ptr() as u64,
                PATH_MAX as u64,
                0,
            )
        };
        if n <= 0 {
            return;
        }
        len = n as usize - 1;
        if len < PATH_MAX && len > 0 && buf[len - 1] != b'/' {
            buf[len] = b'/';
            len += 1;
        }
    }
    if len + p.len() > PATH_MAX {
        return;
    }
    buf[len..len + p.len()].copy_from_slice(p);
    len += p.len();
    // Replace an older record of the same (fd, wd), else take the next slot round-robin.
    let t = table();
    let idx = t
        .iter()
        .position(|r| r.state.load(Ordering::Acquire) == 2 && r.ifd == ifd && r.wd == wd)
        .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS);
    let r = &mut t[idx];
    let s = r.state.load(Ordering::Acquire);
    if s == 1
        || r.state
            .compare_exchange(s, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    r.ifd = ifd;
    r.wd = wd;
    r.len = len as u32;
    r.path[..len].copy_from_slice(&buf[..len]);
    r.state.store(2, Ordering::Release);
}

/// Interposed `inotify_add_watch(3)`: the system call, plus a note of the path.
#[no_mangle]
pub extern "C" fn inotify_add_watch(fd: i32, path: *const libc::c_char, mask: u32) -> i32 {
    // SAFETY: forwarding the caller's arguments to the system call.
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_inotify_add_watch,
            fd as u64,
            path as u64,
            mask as u64,
        )
    };
    if r < 0 {
        // SAFETY: errno is thread-local.
        unsafe { *libc::__errno_location() = -r as i32 };
        return -1;
    }
    if !path.is_null() {
        record(fd, r as i32, path);
    }
    r as i32
}

fn stat_path(p: &str) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(p).ok()?;
    // SAFETY: stat into a zeroed buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

fn recorded_path(ifd: i32, dev: u64, ino: u64) -> Option<String> {
    let mut fallback = None;
    for r in table().iter() {
        if r.state.load(Ordering::Acquire) != 2 {
            continue;
        }
        let p = String::from_utf8_lossy(&r.path[..r.len as usize]).into_owned();
        if stat_path(&p) == Some((dev, ino)) {
            if r.ifd == ifd {
                return Some(p);
            }
            fallback = Some(p);
        }
    }
    fallback
}

fn handle_path(mount_fd: i32, htype: i32, handle: &[u8]) -> Option<String> {
    #[repr(C)]
    struct H {
        bytes: u32,
        htype: i32,
        h: [u8; 128],
    }
    if handle.len() > 128 {
        return None;
    }
    let mut h = H {
        bytes: handle.len() as u32,
        htype,
        h: [0; 128],
    };
    h.h[..handle.len()].copy_from_slice(handle);
    // SAFETY: open_by_handle_at with a local handle; fails with EPERM unprivileged.
    let fd = unsafe {
        crate::sys::syscall3(
            libc::SYS_open_by_handle_at,
            mount_fd as u64,
            &mut h as *mut H as u64,
            (libc::O_PATH | libc::O_CLOEXEC) as u64,
        )
    };
    if fd < 0 {
        return None;
    }
    let p = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd as i32) };
    p.filter(|p| p.starts_with('/') && !p.ends_with(" (deleted)"))
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

pub fn describe(fd: i32, fdinfo: &str) -> Result<FdKind, String> {
    let mut watches = Vec::new();
    for l in fdinfo.lines() {
        let Some(rest) = l.strip_prefix("inotify ") else {
            continue;
        };
        let mut kv = std::collections::BTreeMap::new();
        for w in rest.split_whitespace() {
            if let Some((k, v)) = w.split_once(':') {
                kv.insert(k, v);
            }
        }
        let num = |k: &str, radix: u32| kv.get(k).and_then(|v| u64::from_str_radix(v, radix).ok());
        let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (
            num("wd", 10),
            num("ino", 16),
            num("sdev", 16),
            num("mask", 16),
        ) else {
            return Err(format!("fd {fd} (inotify): cannot parse fdinfo line {l:?}"));
        };
        if num("ignored_mask", 16).unwrap_or(0) != 0 {
            return Err(format!("fd {fd} (inotify): wd {wd} has an ignored mask (fanotify-style marks are not supported)"));
        }
        // The kernel's dev_t (major << 20 | minor) in user-space encoding.
        let dev = libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32);
        let path = recorded_path(fd, dev, ino)
            .or_else(|| {
                let htype = kv.get("fhandle-type").and_then(|v| i32::from_str_radix(v, 16).ok())?;
                let h = hex_bytes(kv.get("f_handle")?);
                // Any fd on the same file system serves as the mount fd: try the cwd's.
                let root = std::fs::File::open("/").ok()?;
                use std::os::fd::AsRawFd;
                handle_path(root.as_raw_fd(), htype, &h)
                    .filter(|p| stat_path(p) == Some((dev, ino)))
            })
            .ok_or_else(|| {
                format!(
                    "fd {fd} (inotify): the path of watch {wd} (inode {ino} on device {}:{}) is unknown (added with a raw system call, or renamed since); it cannot be re-added after a restart",
                    sdev >> 20,
                    sdev & 0xfffff
                )
            })?;
        watches.push(InotifyWatch {
            wd: wd as i32,
            mask: mask as u32,
            ino,
            dev,
            path,
        });
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } == 0 && queued > 0 {
        crate::warn!("fd {fd} (inotify): {queued} bytes of unread events are not saved (a restored program will not see them)");
    }
    watches.sort_by_key(|w| w.wd);
    Ok(FdKind::Inotify { watches })
}

fn add(fd: i32, path: &str, mask: u32) -> Result<i32, String> {
    let c = std::ffi::CString::new(path).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: the system call with a NUL-terminated path.
    let r = unsafe {
        crate::sys::syscall3(
            libc::SYS_inotify_add_watch,
            fd as u64,
            c.as_ptr() as u64,
            mask as u64,
        )
    };
    if r < 0 {
        return Err(format!(
            "inotify_add_watch({path}): {}",
            std::io::Error::from_raw_os_error(-r as i32)
        ));
    }
    Ok(r as i32)
}

/// A new inotify instance with the watches at their wds. Gaps between wds are filled with
/// placeholder watches (on memfds) removed at the end; the IN_IGNORED events their removal
/// queues are read away before the real masks are set.
pub fn create(fd: i32, watches: &[InotifyWatch], flags: i32) -> Result<i32, String> {
    // SAFETY: inotify_init1 with flags.
    let n = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if n < 0 {
        return Err(format!(
            "fd {fd}: inotify_init1: {}",
            std::io::Error::last_os_error()
        ));
    }
    let r = (|| {
        let mut fillers: Vec<(i32, i32)> = Vec::new(); // (memfd, wd)
        let quiet = libc::IN_DELETE_SELF;
        // A fresh instance hands out 1, 2, 3, ... (cyclically: a removed wd is not reused
        // until the numbers wrap). Fill each gap with a placeholder first.
        let mut next = 1;
        for w in watches {
            while next < w.wd {
                // SAFETY: memfd_create with a literal name.
                let m =
                    unsafe { libc::memfd_create(c"ckpt-inotify-gap".as_ptr(), libc::MFD_CLOEXEC) };
                if m < 0 {
                    return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
                }
                let fw = add(n, &format!("/proc/self/fd/{m}"), quiet)?;
                fillers.push((m, fw));
                next = fw + 1;
            }
            if stat_path(&w.path).is_some_and(|s| s != (w.dev, w.ino)) {
                crate::warn!(
                    "fd {fd} (inotify): {} is not the inode watched at checkpoint time; watching it anyway",
                    w.path
                );
            }
            let got = add(n, &w.path, quiet).map_err(|e| format!("fd {fd} (inotify): {e}"))?;
            if got != w.wd {
                return Err(format!(
                    "fd {fd} (inotify): {} got wd {got}, expected {}",
                    w.path, w.wd
                ));
            }
            next = got + 1;
        }
        for (m, wd) in &fillers {
            // SAFETY: removing our placeholder watch and closing its memfd.
            unsafe {
                libc::inotify_rm_watch(n, *wd);
                libc::close(*m);
            }
        }
        // Read away what the placeholders (and the quiet masks) queued.
        let mut buf = [0u8; 4096];
        // SAFETY: reading from our own non-blocking inotify fd.
        while unsafe { libc::read(n, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) } > 0 {}
        for w in watches {
            let got = add(n, &w.path, w.mask & !(libc::IN_MASK_ADD | 0x1000_0000))?;
            if got != w.wd {
                return Err(format!(
                    "fd {fd} (inotify): {} moved to wd {got} (expected {})",
                    w.path, w.wd
                ));
            }
        }
        if flags & libc::O_NONBLOCK == 0 {
            // SAFETY: F_SETFL on our fd.
            unsafe {
                libc::fcntl(
                    n,
                    libc::F_SETFL,
                    flags & !libc::O_NONBLOCK & !libc::O_ACCMODE,
                )
            };
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(n),
        Err(e) => {
            // SAFETY: closing our own fd.
            unsafe { libc::close(n) };
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_round_trip_keeps_wds_and_masks() {
        let dir = std::env::temp_dir().join(format!("ckpt-inotify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for s in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.join(s)).unwrap();
        }
        // SAFETY: test fd.
        let fd = unsafe { libc::inotify_init1(0) };
        let p = |s: &str| std::ffi::CString::new(dir.join(s).to_str().unwrap()).unwrap();
        let wa = inotify_add_watch(fd, p("a").as_ptr(), libc::IN_CREATE);
        let wb = inotify_add_watch(fd, p("b").as_ptr(), libc::IN_DELETE);
        let wc = inotify_add_watch(fd, p("c").as_ptr(), libc::IN_CREATE | libc::IN_ONLYDIR);
        assert_eq!((wa, wb, wc), (1, 2, 3));
        // SAFETY: removing a watch leaves a gap at wd 2.
        unsafe { libc::inotify_rm_watch(fd, wb) };
        let mut buf = [0u8; 256];
        // SAFETY: read away IN_IGNORED.
        unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, 256) };
        let k = describe(fd, &crate::files::fdinfo(fd)).unwrap();
        let FdKind::Inotify { watches } = &k else {
            panic!()
        };
        assert_eq!(watches.len(), 2);
        assert_eq!(watches[1].path, dir.join("c").to_str().unwrap());
        let n = create(fd, watches, 0).unwrap();
        assert_eq!(describe(n, &crate::files::fdinfo(n)).unwrap(), k);
        std::fs::create_dir(dir.join("c").join("new")).unwrap();
        // SAFETY: blocking read of the event the restored watch reports.
        let r = unsafe { libc::read(n, buf.as_mut_ptr() as *mut _, 256) };
        assert!(r >= 16);
        let wd = i32::from_ne_bytes(buf[..4].try_into().unwrap());
        assert_eq!(wd, 3);
        // SAFETY: closing test fds.
        unsafe {
            libc::close(fd);
            libc::close(n);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
