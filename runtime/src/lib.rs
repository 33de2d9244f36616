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
mod tty;
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
    /// The job step (`CKPT_STEP`, set by the Slurm plugin: "batch", "0", ...), if any.
    pub step: Option<String>,
    /// This process is a launcher that is re-executed at restart instead of restored
    /// (`srun`: its connections to the Slurm daemons cannot be restored; its tasks are).
    pub reexec: bool,
}

/// Programs re-executed at restart instead of restored, unless `CKPT_REEXEC` lists others
/// (names separated by `:`; empty = none).
const DEFAULT_REEXEC: &str = "srun";

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
    let mut step = None;
    let mut restore_step = None;
    let mut restore_gen = None;
    let mut reexec_list = DEFAULT_REEXEC.to_string();
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
        } else if let Some(v) = s.strip_prefix("CKPT_STEP=") {
            step = Some(v.to_string()).filter(|v| !v.is_empty());
        } else if let Some(v) = s.strip_prefix("CKPT_RESTORE_STEP=") {
            restore_step = Some(v.to_string()).filter(|v| !v.is_empty());
        } else if let Some(v) = s.strip_prefix("CKPT_RESTORE_GEN=") {
            restore_gen = v.parse::<u64>().ok();
        } else if let Some(v) = s.strip_prefix("CKPT_VPID=") {
            // VPID:VPPID of a launcher re-executed by a restart
            if let Some((a, b)) = v.split_once(':') {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    agent::REEXEC_VPID.store(a, Ordering::Relaxed);
                    agent::REEXEC_VPPID.store(b, Ordering::Relaxed);
                }
            }
        } else if let Some(v) = s.strip_prefix("CKPT_SKIP_UNSUPPORTED=") {
            files::SKIP_UNSUPPORTED.store(!v.is_empty() && v != "0", Ordering::Relaxed);
        } else if let Some(v) = s.strip_prefix("CKPT_REEXEC=") {
            reexec_list = v.to_string();
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
    let mut exe_name = String::new();
    if let Ok(exe) = std::fs::read_link("/proc/self/exe") {
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "ckpt" || name == "ckpt-coordinatord" || name == "ckpt-restore" {
            return;
        }
        exe_name = name;
    }
    let reexec = !exe_name.is_empty() && reexec_list.split(':').any(|n| n == exe_name);
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
    if (restart || restore_step.is_some()) && !reexec {
        // A task started to be restored (e.g. by the Slurm plugin on a requeued job, or a
        // task of a step that a re-executed srun launched again): become the restored
        // process before `main` runs, keeping this pid.
        restart_in_place(
            ckpt_bin.as_deref(),
            &dir,
            rank,
            restore_step.as_deref(),
            restore_gen,
        );
    }
    // SAFETY: single-threaded at constructor time.
    unsafe {
        CONFIG = Some(Config {
            socket,
            ckpt_dir: dir,
            argv: args,
            rank,
            step,
            reexec,
        })
    };
    if !(1..=64).contains(&sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
        sig = 62;
    }
    vids::CKPT_SIG.store(sig, Ordering::Relaxed);
    agent::start();
}

/// Execs `ckpt restart DIR [--rank R] [--step S] [--generation G]` in place of the program
/// (never returns).
fn restart_in_place(
    bin: Option<&str>,
    dir: &str,
    rank: Option<i32>,
    step: Option<&str>,
    generation: Option<u64>,
) -> ! {
    use std::os::unix::process::CommandExt;
    let bin = bin.unwrap_or("ckpt");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("restart").arg(dir);
    if let Some(r) = rank {
        cmd.arg("--rank").arg(r.to_string());
    }
    if let Some(s) = step {
        cmd.arg("--step").arg(s);
    }
    if let Some(g) = generation {
        cmd.arg("--generation").arg(g.to_string());
    }
    cmd.env_remove("CKPT_RESTART")
        .env_remove("CKPT_RESTORE_STEP")
        .env_remove("CKPT_RESTORE_GEN")
        .env_remove("LD_PRELOAD");
    let e = cmd.exec();
    log::emit(
        1,
        &format!("cannot restore from {dir}: executing {bin}: {e}"),
    );
    sys::exit_group(127)
}
