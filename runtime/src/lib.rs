//! `libckpt.so`: the runtime preloaded into every checkpointed process.
//!
//! At start-up (an ELF constructor) it installs the checkpoint signal's handler and starts
//! the checkpoint thread, which connects to the job's coordinator and follows its barrier
//! sequence (see `agent`). Everything it does while user threads are parked uses its own
//! allocator (`alloc`) and raw system calls (`sys`).
//!
//! Environment: `CKPT_SOCKET` (coordinator socket; without it the runtime stays inert),
//! `CKPT_DIR`, `CKPT_LOG` (error, warn, info, debug), `CKPT_SIGNAL` (default 62).

mod agent;
mod alloc;
mod attrs;
mod ctx;
mod epoll;
mod eventfd;
mod files;
mod inotify;
mod locks;
mod log;
mod memfd;
mod memory;
mod pipes;
mod process;
mod shm;
mod signalfd;
mod signals;
mod sockdiag;
mod sockets;
mod sys;
mod sysv;
mod threads;
mod timerfd;
mod timers;
mod tree;
mod vids;
mod zombies;

// The interposed libc functions (`getpid`, `fork`, `kill`, `waitpid`, `sigaction`, ...) are
// `#[no_mangle]` items of `vids`; they are exported by being defined.

use std::ffi::CStr;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicI32, Ordering};

#[global_allocator]
pub(crate) static ALLOC: alloc::RuntimeAlloc = alloc::RuntimeAlloc::new();

/// Start-up configuration read from the exec-time environment.
pub struct Config {
    pub socket: String,
    pub ckpt_dir: String,
    pub argv: Vec<String>,
    /// The task's rank in its job step (from the launcher's environment), if any.
    pub rank: Option<i32>,
}

pub static mut CONFIG: Option<Config> = None;
static CKPT_TID: AtomicI32 = AtomicI32::new(0);
/// CKPT_HOLD_SIGTERM was set: see `agent::hold_sigterm`.
pub static HOLD_TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn config() -> &'static Config {
    // SAFETY: written once by the constructor before the checkpoint thread starts; only read
    // afterwards (the restart path updates it from the checkpoint thread alone).
    unsafe {
        (*std::ptr::addr_of!(CONFIG))
            .as_ref()
            .expect("runtime configured")
    }
}

pub fn is_runtime_thread(tid: i32) -> bool {
    tid == CKPT_TID.load(Ordering::Relaxed)
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn(i32, *const *const c_char, *const *const c_char) = ctor;

extern "C" fn ctor(argc: i32, argv: *const *const c_char, envp: *const *const c_char) {
    // Read the environment from envp, not getenv: a shell may have replaced getenv.
    let mut socket = None;
    let mut dir = String::new();
    let mut sig = 62;
    let mut rank = None;
    let mut restart = false;
    let mut ckpt_bin = None;
    let mut i = 0;
    while !envp.is_null() {
        // SAFETY: envp is the NUL-terminated array the loader passes to constructors.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: each entry is a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy();
        if let Some(v) = s.strip_prefix("CKPT_SOCKET=") {
            socket = Some(v.to_string());
        } else if let Some(v) = s.strip_prefix("CKPT_DIR=") {
            dir = v.to_string();
        } else if let Some(v) = s.strip_prefix("CKPT_LOG=") {
            log::set_level(v);
        } else if let Some(v) = s.strip_prefix("CKPT_SIGNAL=") {
            sig = v.parse().unwrap_or(62);
        } else if let Some(v) = s.strip_prefix("CKPT_RESTART=") {
            restart = !v.is_empty() && v != "0";
        } else if let Some(v) = s.strip_prefix("CKPT_HOLD_SIGTERM=") {
            HOLD_TERM.store(!v.is_empty() && v != "0", Ordering::Relaxed);
        } else if let Some(v) = s.strip_prefix("CKPT_BIN=") {
            ckpt_bin = Some(v.to_string());
        } else if let Some(r) = [
            "SLURM_PROCID=",
            "PMIX_RANK=",
            "PMI_RANK=",
            "OMPI_COMM_WORLD_RANK=",
        ]
        .iter()
        .find_map(|k| s.strip_prefix(k))
        {
            rank = rank.or(r.parse().ok());
        }
        i += 1;
    }
    let Some(socket) = socket else { return };
    // Our own tools never run under checkpoint control.
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "ckpt" || name == "ckpt-coordinatord" || name == "ckpt-restore" {
            return;
        }
    }
    let mut args = Vec::new();
    for k in 0..argc.max(0) as usize {
        // SAFETY: argv has argc NUL-terminated entries.
        let p = unsafe { *argv.add(k) };
        if p.is_null() {
            break;
        }
        // SAFETY: as above.
        args.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
    }
    if restart {
        // A task started to be restored (e.g. by the Slurm plugin on a requeued job): become
        // the restored process before `main` runs, keeping this pid.
        restart_in_place(ckpt_bin.as_deref(), &dir, rank);
    }
    // SAFETY: single-threaded at constructor time.
    unsafe {
        CONFIG = Some(Config {
            socket,
            ckpt_dir: dir,
            argv: args,
            rank,
        })
    };
    if !(1..=64).contains(&sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
        sig = 62;
    }
    vids::CKPT_SIG.store(sig, Ordering::Relaxed);
    agent::start();
}

/// Execs `ckpt restart DIR [--rank R]` in place of the program (never returns).
fn restart_in_place(bin: Option<&str>, dir: &str, rank: Option<i32>) -> ! {
    use std::os::unix::process::CommandExt;
    let bin = bin.unwrap_or("ckpt");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("restart").arg(dir);
    if let Some(r) = rank {
        cmd.arg("--rank").arg(r.to_string());
    }
    cmd.env_remove("CKPT_RESTART").env_remove("LD_PRELOAD");
    let e = cmd.exec();
    log::emit(
        1,
        &format!("cannot restore from {dir}: executing {bin}: {e}"),
    );
    sys::exit_group(127)
}
