//! The plugin's logic, one function per SPANK callback (see lib.rs for the exports).
//!
//! Callback map (Slurm 22.05, observed; research/slurm.md):
//! * sbatch/salloc (allocator) and srun (local): `init` registers the options; the option
//!   callbacks check their values at submission.
//! * slurmstepd (remote), every step including the batch step: `init` → `user_init`
//!   (euid = job user) → per task `task_init` (in the task's child, as the user, just before
//!   exec) → `task_exit` (slurmstepd, root) → `exit`.
//! * job epilog (root, every node of the job): `job_epilog`.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{check_opt_value, expand, Config, JobNames};
use crate::ffi::{self, Context, Spank, SpankOption};

const OPT_DMTCP_VAL: i32 = 1;
const OPT_RESTART_VAL: i32 = 2;

static OPT_DMTCP: OnceLock<SpankOption> = OnceLock::new();
static OPT_RESTART: OnceLock<SpankOption> = OnceLock::new();
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Files the plugin needs in bin_dir.
const RUNTIME_FILES: &[&str] = &["ckpt", "ckpt-coordinatord", "libckpt.so", "ckpt-slurm"];

struct State {
    cfg: Config,
    job: Option<StepCtx>,
}

/// What user_init decided for this step (lives in the slurmstepd process; the task children
/// forked afterwards inherit a copy).
#[derive(Clone)]
struct StepCtx {
    job_id: u32,
    step_id: u32,
    dir: PathBuf,
    /// What the tasks get as `CKPT_SOCKET`: the UNIX socket on the coordinator's node,
    /// `tcp:HOST:PORT` on the other nodes of a job on several nodes.
    address: String,
    restart_from: bool,
    batch: bool,
    agent_pid: Option<i32>,
    local_tasks: u32,
    exited: u32,
}

fn level(cfg: &Config) -> u8 {
    match cfg.log_level.as_str() {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        _ => 3,
    }
}

fn info(cfg: &Config, msg: &str) {
    if level(cfg) >= 2 {
        ffi::log_info(msg);
    }
}

fn debug(cfg: &Config, msg: &str) {
    if level(cfg) >= 3 {
        ffi::log_info(msg);
    } else {
        ffi::log_debug(msg);
    }
}

fn cfg() -> Config {
    STATE
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| s.cfg.clone()))
        .unwrap_or_default()
}

fn step_ctx() -> Option<StepCtx> {
    STATE
        .lock()
        .ok()
        .and_then(|s| s.as_ref().and_then(|s| s.job.clone()))
}

fn set_step_ctx(job: Option<StepCtx>) {
    if let Ok(mut s) = STATE.lock() {
        if let Some(s) = s.as_mut() {
            s.job = job;
        }
    }
}

/// The coordinator's UNIX socket in the checkpoint directory (for the processes on the node
/// where it runs). In a job on several nodes it also listens on TCP and writes
/// `tcp:HOST:PORT` to `DIR/coordinator.addr` ([`tcp_address`]).
pub fn coordinator_address(dir: &Path) -> PathBuf {
    dir.join("coordinator.sock")
}

/// How long a step on another node waits for the job's coordinator to listen on TCP.
const TCP_WAIT: Duration = Duration::from_secs(30);

/// This node's host name (the UTS name slurmd runs under).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The coordinator's TCP address from `DIR/coordinator.addr`, once it answers there:
/// `Ok(None)` when the coordinator runs on this very node (the UNIX socket is used then).
/// A file left by an earlier run of a requeued job is not trusted until a connection to it
/// succeeds.
fn tcp_address(dir: &Path, job_id: u32) -> Result<Option<String>, String> {
    let file = dir.join("coordinator.addr");
    let me = hostname();
    let t0 = Instant::now();
    let mut last = String::from("the file does not exist yet");
    while t0.elapsed() < TCP_WAIT {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let text = text.trim();
                if let Some(addr) = text.strip_prefix("tcp:") {
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                    if !me.is_empty() && host == me {
                        return Ok(None);
                    }
                    match tcp_answers(addr) {
                        Ok(()) => return Ok(Some(text.to_string())),
                        Err(e) => last = format!("{text}: {e}"),
                    }
                } else {
                    last = format!("unexpected content {text:?}");
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "job {job_id}: the job's coordinator did not answer on TCP within {} s ({}: {last}); \
         is ckpt's coordinator node reachable from {me}? see {}",
        TCP_WAIT.as_secs(),
        file.display(),
        dir.join("ckpt-slurm.log").display()
    ))
}

fn tcp_answers(addr: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let mut last = "no address".to_string();
    for a in addr.to_socket_addrs().map_err(|e| e.to_string())? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

fn coordinator_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

// ---------------------------------------------------------------------------------------
// init and options
// ---------------------------------------------------------------------------------------

pub fn init(sp: Spank, args: &[String]) -> Result<(), String> {
    let ctx = ffi::context();
    let cfg = Config::parse(args).map_err(|e| {
        format!("{e}. The ckpt plugin refuses to run jobs until plugstack.conf is fixed (see docs/admin.md)")
    })?;
    if let Ok(mut s) = STATE.lock() {
        *s = Some(State { cfg, job: None });
    }
    let dmtcp = OPT_DMTCP.get_or_init(|| {
        ffi::new_option(
            c"checkpoint-dmtcp",
            Some(c"INTERVAL"),
            c"Checkpoint/restart this job with ckpt: it is checkpointed when preempted, requeued or near its time limit and restored when it runs again; =INTERVAL (30m, 1h) adds periodic checkpoints, =off opts out",
            2,
            OPT_DMTCP_VAL,
        )
    });
    let restart = OPT_RESTART.get_or_init(|| {
        ffi::new_option(
            c"restart-from",
            Some(c"DIR"),
            c"Restore this step's tasks from the ckpt checkpoint directory DIR (task R from the image of rank R of its newest complete generation)",
            1,
            OPT_RESTART_VAL,
        )
    });
    ffi::set_option_callback(OPT_DMTCP_VAL, on_checkpoint_opt);
    ffi::set_option_callback(OPT_RESTART_VAL, on_restart_from_opt);
    if matches!(ctx, Context::Local | Context::Remote | Context::Allocator) {
        sp.register_option(dmtcp)?;
    }
    if matches!(ctx, Context::Local | Context::Remote) {
        sp.register_option(restart)?;
    }
    Ok(())
}

fn on_checkpoint_opt(value: Option<&str>, _remote: bool) -> Result<(), String> {
    check_opt_value(value)
        .map(|_| ())
        .map_err(|e| format!("ckpt: {e}"))
}

fn on_restart_from_opt(value: Option<&str>, remote: bool) -> Result<(), String> {
    if remote {
        return Ok(());
    }
    let v = value.unwrap_or("").trim();
    check_restart_dir(v)
        .map(|_| ())
        .map_err(|e| format!("ckpt: --restart-from={v}: {e}"))
}

/// The newest complete generation of a directory to restore from, or why there is none.
fn check_restart_dir(v: &str) -> Result<(u64, usize), String> {
    if v.is_empty() {
        return Err("give the checkpoint directory to restore from".into());
    }
    if !v.starts_with('/') {
        return Err("the checkpoint directory must be an absolute path".into());
    }
    newest_complete(Path::new(v))?
        .ok_or_else(|| "no complete checkpoint (generation with a MANIFEST) in this directory; `ckpt list -d DIR` shows what is there".into())
}

/// (generation number, processes) of the newest complete generation.
fn newest_complete(dir: &Path) -> Result<Option<(u64, usize)>, String> {
    let d = ckpt_image::CkptDir::open(dir).map_err(|e| e.to_string())?;
    let g = d.newest_complete().map_err(|e| e.to_string())?;
    Ok(g.map(|g| (g.number, g.manifest.map(|m| m.processes.len()).unwrap_or(0))))
}

/// The job's choice: None = not opted in, Some(interval) = opted in.
fn opted_in(sp: Spank, cfg: &Config) -> Result<Option<Option<String>>, String> {
    let given = OPT_DMTCP.get().and_then(|o| sp.getopt(o));
    match given {
        None => Ok(cfg.default_on.then(|| cfg.interval.clone())),
        Some(v) => match check_opt_value(Some(&v))? {
            None => Ok(Some(cfg.interval.clone())),
            Some(x) if x == "off" => Ok(None),
            Some(x) => Ok(Some(Some(x))),
        },
    }
}

// ---------------------------------------------------------------------------------------
// slurmstepd
// ---------------------------------------------------------------------------------------

pub fn user_init(sp: Spank, _args: &[String]) -> Result<(), String> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    let cfg = cfg();
    let restart_from = OPT_RESTART
        .get()
        .and_then(|o| sp.getopt(o))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(null)");
    let choice = opted_in(sp, &cfg)?;
    let job_id = sp.job_id().unwrap_or(0);
    let step_id = sp.step_id().unwrap_or(0);
    if choice.is_none() && restart_from.is_none() {
        debug(
            &cfg,
            &format!("ckpt: job {job_id}: not opted in; step untouched"),
        );
        return Ok(());
    }
    if step_id == ffi::SLURM_EXTERN_CONT {
        return Ok(());
    }
    let interval = choice.flatten();
    let (uid, gid) = (
        sp.job_uid().ok_or("cannot read the job's uid")?,
        sp.job_gid().ok_or("cannot read the job's gid")?,
    );
    let bin_dir = PathBuf::from(&cfg.bin_dir);
    for f in RUNTIME_FILES {
        if !bin_dir.join(f).exists() {
            return Err(format!(
                "job {job_id}: {} is missing: install ckpt on this node or fix bin_dir= in plugstack.conf",
                bin_dir.join(f).display()
            ));
        }
    }
    let (user, home, groups) = ffi::user_info(uid, gid)?;
    let job_name = sp.getenv("SLURM_JOB_NAME").unwrap_or_default();
    let dir = match &restart_from {
        Some(d) => {
            check_restart_dir(d).map_err(|e| format!("--restart-from={d}: {e}"))?;
            PathBuf::from(d)
        }
        None => {
            let names = JobNames {
                user: &user,
                uid,
                job_id,
                job_name: &job_name,
                home: &home,
            };
            PathBuf::from(expand(&cfg.ckpt_dir, &names)?)
        }
    };
    // We run with euid = the job's user here: the directory is the user's.
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            format!(
                "job {job_id}: creating the checkpoint directory {} as {user}: {e}",
                dir.display()
            )
        })?;
    let md = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if md.uid() != uid {
        return Err(format!(
            "job {job_id}: checkpoint directory {} belongs to uid {}, not to the job's user {user} ({uid})",
            dir.display(),
            md.uid()
        ));
    }
    let socket = coordinator_address(&dir);
    if socket.as_os_str().len() > 107 {
        return Err(format!(
            "job {job_id}: the coordinator socket path {} is longer than 107 bytes: use a shorter ckpt_dir",
            socket.display()
        ));
    }
    let batch = step_id == ffi::SLURM_BATCH_SCRIPT;
    let node_id = sp.node_id().unwrap_or(0);
    // A job on several nodes: its coordinator also listens on TCP, for the other nodes.
    let job_nodes = sp
        .getenv("SLURM_JOB_NUM_NODES")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1)
        .max(sp.step_nnodes().unwrap_or(1));
    let multi_node = job_nodes > 1;
    let owner = batch || (node_id == 0 && !coordinator_answers(&socket));
    let mut agent_pid = None;
    if owner {
        let pid = start_agent(
            &cfg,
            &bin_dir,
            &dir,
            &socket,
            job_id,
            interval.as_deref(),
            uid,
            gid,
            &groups,
            &home,
            &user,
            multi_node,
            sp,
        )?;
        agent_pid = Some(pid);
    }
    let address = match (owner, multi_node) {
        (false, true) => tcp_address(&dir, job_id)?,
        _ => None,
    }
    .unwrap_or_else(|| socket.to_string_lossy().into_owned());
    let step_name = if batch {
        "batch".to_string()
    } else {
        step_id.to_string()
    };
    info(
        &cfg,
        &format!(
            "ckpt: job {job_id} step {step_name}: checkpoint directory {}{}{}",
            dir.display(),
            if restart_from.is_some() {
                " (restoring the step from it)"
            } else {
                ""
            },
            match agent_pid {
                Some(p) if multi_node => format!(
                    ", coordinator started (agent pid {p}), also on TCP for the job's {job_nodes} nodes"
                ),
                Some(p) => format!(", coordinator started (agent pid {p})"),
                None => format!(", using the job's coordinator at {address}"),
            }
        ),
    );
    set_step_ctx(Some(StepCtx {
        job_id,
        step_id,
        dir,
        address,
        restart_from: restart_from.is_some(),
        batch,
        agent_pid,
        local_tasks: sp.local_task_count().unwrap_or(1).max(1),
        exited: 0,
    }));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_agent(
    cfg: &Config,
    bin_dir: &Path,
    dir: &Path,
    socket: &Path,
    job_id: u32,
    interval: Option<&str>,
    uid: u32,
    gid: u32,
    groups: &[u32],
    home: &str,
    user: &str,
    listen_tcp: bool,
    sp: Spank,
) -> Result<i32, String> {
    let log_path = dir.join("ckpt-slurm.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("job {job_id}: opening {}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin_dir.join("ckpt-slurm"));
    cmd.arg("agent")
        .arg("--ckpt-dir")
        .arg(dir)
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--job-id")
        .arg(job_id.to_string())
        .arg("--keep")
        .arg(cfg.keep.to_string())
        .arg("--poll")
        .arg(&cfg.poll_text)
        .arg("--walltime-margin")
        .arg(&cfg.walltime_margin_text);
    if let Some(i) = interval {
        cmd.arg("--interval").arg(i);
    }
    if listen_tcp {
        // Any port on every address of this node; the coordinator writes HOSTNAME:PORT to
        // DIR/coordinator.addr for the other nodes.
        cmd.arg("--listen").arg("tcp:0.0.0.0:0");
    }
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
        )
        .env("HOME", home)
        .env("USER", user)
        .env("LOGNAME", user)
        .env("SLURM_JOB_ID", job_id.to_string())
        .env("CKPT_LOG", &cfg.log_level)
        .env("CKPT_SLURM_AGENT", "1");
    if let Some(conf) = sp.getenv("SLURM_CONF") {
        cmd.env("SLURM_CONF", conf);
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    let groups = groups.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls of become_job_user on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || ffi::become_job_user(uid, gid, &groups));
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "job {job_id}: starting {}: {e}",
            bin_dir.join("ckpt-slurm").display()
        )
    })?;
    let pid = child.id() as i32;
    let t0 = Instant::now();
    loop {
        if coordinator_answers(socket) {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "job {job_id}: the coordinator for {} did not start ({status}); {}:\n{}",
                dir.display(),
                log_path.display(),
                tail(&log_path, 8)
            ));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            ffi::kill(pid, libc::SIGKILL);
            return Err(format!(
                "job {job_id}: the coordinator for {} did not listen on {} within 30 s; {}:\n{}",
                dir.display(),
                socket.display(),
                log_path.display(),
                tail(&log_path, 8)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// In the task's child process, as the job's user, just before exec.
pub fn task_init(sp: Spank, _args: &[String]) -> Result<(), String> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    let Some(job) = step_ctx() else { return Ok(()) };
    let cfg = cfg();
    let lib = Path::new(&cfg.bin_dir).join("libckpt.so");
    let lib = lib.to_string_lossy().into_owned();
    let existing = sp.getenv("LD_PRELOAD").unwrap_or_default();
    let mut preload = vec![lib.clone()];
    preload.extend(
        existing
            .split([':', ' '])
            .filter(|e| !e.is_empty() && *e != lib && !e.ends_with("/libckpt.so"))
            .map(str::to_string),
    );
    sp.setenv("LD_PRELOAD", &preload.join(":"))?;
    sp.setenv("CKPT_DIR", &job.dir.to_string_lossy())?;
    sp.setenv("CKPT_SOCKET", &job.address)?;
    sp.setenv(
        "CKPT_BIN",
        &Path::new(&cfg.bin_dir).join("ckpt").to_string_lossy(),
    )?;
    sp.setenv("CKPT_LOG", &cfg.log_level)?;
    // A SIGTERM (scontrol requeue, scancel, the end of GraceTime) first checkpoints the job.
    sp.setenv("CKPT_HOLD_SIGTERM", "1")?;
    // The step the processes belong to: a restart restores one step's processes.
    let step_name = if job.batch {
        "batch".to_string()
    } else {
        job.step_id.to_string()
    };
    sp.setenv("CKPT_STEP", &step_name)?;
    let rank = sp.task_global_id().unwrap_or(0);
    // A step launched by an srun that a restart re-executed: its tasks are restored from
    // the images of the step that srun had launched (the runtime does it, from
    // CKPT_RESTORE_STEP, which srun passes on in its environment).
    if let Some(old) = sp.getenv("CKPT_RESTORE_STEP").filter(|s| !s.is_empty()) {
        if !job.batch && !job.restart_from {
            say(&format!(
                "ckpt: job {} step {}: restoring task {rank} of step {old} from generation {} of {}",
                job.job_id,
                job.step_id,
                sp.getenv("CKPT_RESTORE_GEN").unwrap_or_else(|| "?".into()),
                job.dir.display()
            ));
            sp.unsetenv("CKPT_RESTART");
            return Ok(());
        }
        sp.unsetenv("CKPT_RESTORE_STEP");
        sp.unsetenv("CKPT_RESTORE_GEN");
    }
    let restore = if job.restart_from {
        match newest_complete(&job.dir)? {
            Some((g, _)) => {
                say(&format!(
                    "ckpt: job {} step {}: restoring task {rank} from generation {g} of {}",
                    job.job_id,
                    job.step_id,
                    job.dir.display()
                ));
                true
            }
            None => {
                return Err(format!(
                    "--restart-from={}: no complete checkpoint",
                    job.dir.display()
                ))
            }
        }
    } else if job.batch {
        let restarts: u32 = sp
            .getenv("SLURM_RESTART_COUNT")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if restarts == 0 {
            false
        } else {
            match newest_complete(&job.dir) {
                Ok(Some((g, _))) => {
                    say(&format!(
                        "ckpt: job {} restart {restarts}: restoring from generation {g} of {}",
                        job.job_id,
                        job.dir.display()
                    ));
                    true
                }
                Ok(None) => {
                    say(&format!(
                        "ckpt: job {} restart {restarts}: no complete checkpoint in {}: starting from the beginning",
                        job.job_id,
                        job.dir.display()
                    ));
                    false
                }
                Err(e) => {
                    say(&format!(
                        "ckpt: job {} restart {restarts}: cannot read {}: {e}: starting from the beginning",
                        job.job_id,
                        job.dir.display()
                    ));
                    false
                }
            }
        }
    } else {
        false
    };
    if restore {
        sp.setenv("CKPT_RESTART", "1")?;
        if job.batch {
            // the batch script's processes, not the tasks of its steps
            sp.setenv("CKPT_RESTORE_STEP", "batch")?;
        }
    } else {
        sp.unsetenv("CKPT_RESTART");
    }
    Ok(())
}

/// A line for the job's output (the task's stderr).
fn say(msg: &str) {
    eprintln!("{msg}");
}

/// In slurmstepd (root), once per task that ended. When every local task of the step has
/// ended, the step's agent (and with it the coordinator) is stopped: with
/// proctrack/linuxproc slurmstepd SIGKILLs everything left right after, before
/// slurm_spank_exit; with proctrack/cgroup the agent would otherwise outlive the job.
pub fn task_exit(_sp: Spank, _args: &[String]) -> Result<(), String> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    let Some(mut job) = step_ctx() else {
        return Ok(());
    };
    job.exited += 1;
    if job.exited >= job.local_tasks {
        if let Some(pid) = job.agent_pid.take() {
            stop_agent(&cfg(), pid, job.job_id);
        }
    }
    set_step_ctx(Some(job));
    Ok(())
}

pub fn exit(_sp: Spank, _args: &[String]) -> Result<(), String> {
    if ffi::context() != Context::Remote {
        return Ok(());
    }
    if let Some(mut job) = step_ctx() {
        if let Some(pid) = job.agent_pid.take() {
            stop_agent(&cfg(), pid, job.job_id);
        }
        set_step_ctx(Some(job));
    }
    Ok(())
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
            .unwrap_or(true),
    }
}

fn stop_agent(cfg: &Config, pid: i32, job_id: u32) {
    if gone(pid) {
        return;
    }
    ffi::kill(pid, libc::SIGTERM);
    let t0 = Instant::now();
    while !gone(pid) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone(pid) {
        ffi::kill(pid, libc::SIGKILL);
    }
    debug(cfg, &format!("ckpt: job {job_id}: agent {pid} stopped"));
}

// ---------------------------------------------------------------------------------------
// job epilog (root, every node): nothing of ckpt outlives its job
// ---------------------------------------------------------------------------------------

pub fn job_epilog(sp: Spank, _args: &[String]) -> Result<(), String> {
    if ffi::context() != Context::JobScript {
        return Ok(());
    }
    let Some(job_id) = sp.job_id() else {
        return Ok(());
    };
    let needle = format!("SLURM_JOB_ID={job_id}");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if !(comm == "ckpt-slurm" || comm.starts_with("ckpt-coordinat")) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let hit = env.split(|b| *b == 0).any(|e| e == needle.as_bytes());
        if hit && !gone(pid) {
            ffi::kill(pid, libc::SIGKILL);
            ffi::log_info(&format!(
                "ckpt: job {job_id} epilog: killed leftover {comm} (pid {pid})"
            ));
        }
    }
    Ok(())
}
