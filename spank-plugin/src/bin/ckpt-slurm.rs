//! `ckpt-slurm`: the Slurm side of ckpt that runs as the job's user.
//!
//! * `ckpt-slurm agent ...` — started by the SPANK plugin in the job's batch step (a child of
//!   slurmstepd, inside the job's process tracking). It runs the job's `ckpt-coordinatord` in
//!   the foreground (so it never escapes the job) and watches the job through slurmctld every
//!   `--poll`: when the job is being preempted (PreemptTime set: the grace period has begun) or
//!   its time limit is `--walltime-margin` away, it checkpoints the job and, if the job is a
//!   requeueable batch job, requeues it, so the job continues from that checkpoint in its next
//!   run. SIGTERM stops the coordinator and the agent.
//! * `ckpt-slurm requeue JOBID` — checkpoint a running job, then `scontrol requeue` it.
//!
//! How a job is requeued after its checkpoint depends on slurmctld (see [`requeue_way`]): in a
//! preemption's grace period on Slurm 24.05 and later the batch step is ended instead and
//! Slurm's own preemption requeue is the only one; otherwise `scontrol requeue`.
//!
//! Log lines go to stdout (the plugin points it at DIR/ckpt-slurm.log), each prefixed with the
//! Unix time.

#[path = "../config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../duration.rs"]
mod duration;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duration::parse_duration;

/// The agent's few system calls.
mod sys {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    pub fn install_stop_handlers() {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic (async-signal-safe).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// For pre_exec: the coordinator gets SIGTERM if the agent dies (even by SIGKILL).
    pub fn die_with_parent() -> std::io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers only; async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn kill(pid: u32, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

fn ts() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

macro_rules! log {
    ($($a:tt)*) => {{
        println!("[{}] ckpt-slurm: {}", ts(), format!($($a)*));
    }};
}

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  ckpt-slurm requeue JOBID [--ckpt-dir DIR] [--bin-dir DIR]   checkpoint the job, then requeue it\n  \
         ckpt-slurm agent --ckpt-dir DIR --bin-dir DIR --job-id J [--keep K] [--interval D] [--poll D] [--walltime-margin D] [--listen tcp:ADDR:PORT]\n                                                     (started by the SPANK plugin)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("agent") => agent(&args[1..]),
        Some("requeue") => requeue_cmd(&args[1..]),
        Some("-h") | Some("--help") => {
            usage();
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
        })
}

// ---------------------------------------------------------------------------------------
// What slurmctld says about the job
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct JobView {
    state: String,
    preempting: bool,
    requeueable: bool,
    batch: bool,
    user: String,
    name: String,
    /// The partition the job runs in.
    partition: String,
    /// Seconds until the time limit; None when unlimited.
    remaining: Option<u64>,
}

/// `[D-]HH:MM:SS`, `MM:SS`, `MM` (Slurm's time format) in seconds.
fn slurm_secs(s: &str) -> Option<u64> {
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let secs = match parts.as_slice() {
        [h, m, s] => h * 3600 + m * 60 + s,
        [m, s] => m * 60 + s,
        [m] => m * 60,
        _ => return None,
    };
    Some(days * 86400 + secs)
}

fn parse_job(text: &str) -> JobView {
    let mut v = JobView::default();
    let mut limit = None;
    let mut run = None;
    for tok in text.split_whitespace() {
        let Some((k, val)) = tok.split_once('=') else {
            continue;
        };
        match k {
            "JobState" => v.state = val.to_string(),
            "PreemptTime" => v.preempting = val != "None" && val != "Unknown" && !val.is_empty(),
            "Requeue" => v.requeueable = val == "1",
            "BatchFlag" => v.batch = val == "1",
            "UserId" => v.user = val.split('(').next().unwrap_or("").to_string(),
            "JobName" => v.name = val.to_string(),
            "Partition" => v.partition = val.to_string(),
            "TimeLimit" => limit = slurm_secs(val),
            "RunTime" => run = slurm_secs(val),
            _ => {}
        }
    }
    if let (Some(l), Some(r)) = (limit, run) {
        v.remaining = Some(l.saturating_sub(r));
    }
    v
}

fn show_job(job: &str) -> Result<(JobView, String), String> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", job])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scontrol: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scontrol show job {job}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((parse_job(&text), text))
}

// ---------------------------------------------------------------------------------------
// checkpoint + requeue
// ---------------------------------------------------------------------------------------

/// Runs `ckpt checkpoint --ckpt-dir DIR --json`; Ok(summary) or Err(message).
fn checkpoint(bin_dir: &Path, dir: &Path) -> Result<String, String> {
    let out = Command::new(bin_dir.join("ckpt"))
        .arg("checkpoint")
        .arg("--ckpt-dir")
        .arg(dir)
        .arg("--json")
        .stdin(Stdio::null())
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("running {}: {e}", bin_dir.join("ckpt").display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn scontrol_requeue(job: &str) -> Result<(), String> {
    let out = Command::new("scontrol")
        .args(["requeue", job])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scontrol: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scontrol requeue {job}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Ends the job's batch step now (every process of it, the agent included): `scancel --batch
/// --full --signal=KILL JOB`.
fn end_batch_step(job: &str) -> Result<(), String> {
    let out = Command::new("scancel")
        .args(["--batch", "--full", "--signal=KILL", job])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scancel: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scancel --batch --full --signal=KILL {job}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `KEY = VALUE` lines of `scontrol show config` / `KEY=VALUE` words of `scontrol show ... -o`.
fn scontrol_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn scontrol_word(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn scontrol_text(args: &[&str]) -> Result<String, String> {
    let out = Command::new("scontrol")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scontrol: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scontrol {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `24.11.5` -> (24, 11).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut it = version.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// How a checkpointed job is put back in the queue.
#[derive(Debug, PartialEq, Eq)]
enum RequeueWay {
    /// `scontrol requeue JOB`.
    Scontrol,
    /// End the batch step; slurmctld requeues the preempted job itself (the string says why).
    EndBatchStep(String),
}

/// Slurm 24.05 and later (slurmctld) mark a job that gets the grace-period signal of a
/// preemption, and requeue it (as PREEMPTED) when its batch script ends within the grace
/// period, if the preemption mode is REQUEUE. `scontrol requeue` does not clear that mark: a
/// job requeued by it in the grace period is requeued once more when its next run ends (and
/// restored a second time). So there the job's batch step is ended instead, and the
/// preemption's own requeue is the only one. Slurm before 24.05 does not requeue a job whose
/// batch script ends in the grace period: `scontrol requeue` it is. The preemption mode is the
/// partition's, else the cluster's (a QOS's PreemptMode is not looked at).
fn requeue_way(view: &JobView) -> Result<RequeueWay, String> {
    if !view.preempting {
        return Ok(RequeueWay::Scontrol);
    }
    let conf = scontrol_text(&["show", "config"])?;
    let version =
        scontrol_value(&conf, "SLURM_VERSION").ok_or("no SLURM_VERSION in scontrol show config")?;
    let Some(mm) = major_minor(&version) else {
        return Err(format!("cannot read Slurm version {version:?}"));
    };
    if mm < (24, 5) {
        return Ok(RequeueWay::Scontrol);
    }
    let part_mode = if view.partition.is_empty() {
        None
    } else {
        scontrol_text(&["show", "partition", "-o", &view.partition])
            .ok()
            .and_then(|t| scontrol_word(&t, "PreemptMode"))
    };
    let mode = part_mode
        .or_else(|| scontrol_value(&conf, "PreemptMode"))
        .unwrap_or_default();
    Ok(preempt_requeue_way(&version, &mode))
}

/// The decision of [`requeue_way`] for slurmctld `version` >= 24.05 and preemption `mode`.
fn preempt_requeue_way(version: &str, mode: &str) -> RequeueWay {
    if mode.split(',').any(|m| m.eq_ignore_ascii_case("REQUEUE")) {
        RequeueWay::EndBatchStep(format!(
            "Slurm {version} requeues a job preempted in REQUEUE mode itself when its batch script ends in the grace period"
        ))
    } else {
        RequeueWay::Scontrol
    }
}

/// Puts the checkpointed job back in the queue (see [`requeue_way`]); Ok(what was done).
fn requeue_after_checkpoint(job: &str, view: &JobView) -> Result<String, String> {
    let way = requeue_way(view).unwrap_or_else(|e| {
        log!(
            "job {job}: cannot tell how slurmctld requeues a preempted job ({e}): scontrol requeue"
        );
        RequeueWay::Scontrol
    });
    match way {
        RequeueWay::Scontrol => scontrol_requeue(job).map(|()| "requeued".to_string()),
        RequeueWay::EndBatchStep(why) => {
            // logged first: the agent is a process of the batch step and ends with it
            log!("job {job}: ending the batch step (scancel --batch --full --signal=KILL): {why}");
            end_batch_step(job).map(|()| "batch step ended; Slurm requeues the job".to_string())
        }
    }
}

fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let i = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = json[i..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

/// Checkpoint, then requeue when the job allows it. Logs what happened.
fn checkpoint_and_requeue(
    bin_dir: &Path,
    dir: &Path,
    job: &str,
    why: &str,
    view: &JobView,
) -> bool {
    log!("job {job}: {why}: checkpointing {}", dir.display());
    let t0 = Instant::now();
    match checkpoint(bin_dir, dir) {
        Ok(summary) => {
            log!(
                "job {job}: {why}: checkpoint generation {} committed in {:.3} s (program stopped {} s, {} bytes)",
                json_field(&summary, "generation").unwrap_or("?"),
                t0.elapsed().as_secs_f64(),
                json_field(&summary, "stopped_seconds").unwrap_or("?"),
                json_field(&summary, "bytes").unwrap_or("?")
            );
        }
        Err(e) => {
            log!(
                "job {job}: {why}: checkpoint FAILED after {:.3} s: {e}",
                t0.elapsed().as_secs_f64()
            );
            log!("job {job}: {why}: not requeueing; the next run restores the previous complete checkpoint, if any");
            return false;
        }
    }
    if !(view.requeueable && view.batch) {
        log!("job {job}: {why}: the job is not a requeueable batch job: not requeueing (restore it with srun --restart-from={})", dir.display());
        return true;
    }
    match requeue_after_checkpoint(job, view) {
        Ok(done) => {
            log!("job {job}: {why}: {done}");
            true
        }
        Err(e) => {
            log!("job {job}: {why}: requeue FAILED: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// agent
// ---------------------------------------------------------------------------------------

fn agent(args: &[String]) -> ExitCode {
    let (Some(dir), Some(bin_dir), Some(job)) = (
        opt(args, "--ckpt-dir").map(PathBuf::from),
        opt(args, "--bin-dir").map(PathBuf::from),
        opt(args, "--job-id"),
    ) else {
        return usage();
    };
    let keep = opt(args, "--keep").unwrap_or_else(|| "3".into());
    let interval = opt(args, "--interval");
    let listen = opt(args, "--listen");
    let poll = opt(args, "--poll")
        .and_then(|p| parse_duration(&p).ok())
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_secs(1));
    let margin = opt(args, "--walltime-margin")
        .and_then(|p| parse_duration(&p).ok())
        .unwrap_or(Duration::from_secs(300));
    sys::install_stop_handlers();

    let mut cmd = Command::new(bin_dir.join("ckpt-coordinatord"));
    cmd.arg("--ckpt-dir").arg(&dir).arg("--keep").arg(&keep);
    if let Some(i) = &interval {
        cmd.arg("--interval").arg(i);
    }
    if let Some(l) = &listen {
        cmd.arg("--listen").arg(l);
    }
    // A preempted job's tasks get SIGTERM when the grace period begins, often before this
    // agent's next poll sees the preemption: they ask for a checkpoint, and the job must
    // then stay stopped (not end, which would end the job unrequeued) until this agent has
    // seen the preemption and requeued it.
    let hold = poll + Duration::from_secs(5);
    cmd.arg("--term-hold")
        .arg(format!("{}ms", hold.as_millis()));
    cmd.stdin(Stdio::null()).env_remove("LD_PRELOAD");
    // SAFETY: die_with_parent only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(sys::die_with_parent);
    }
    let mut coord: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log!(
                "job {job}: cannot start {}: {e}",
                bin_dir.join("ckpt-coordinatord").display()
            );
            return ExitCode::FAILURE;
        }
    };
    log!(
        "job {job}: agent pid {}, coordinator pid {} for {} (keep {keep}, interval {}, poll {:?}, walltime margin {:?})",
        std::process::id(),
        coord.id(),
        dir.display(),
        interval.as_deref().unwrap_or("none"),
        poll,
        margin
    );
    let mut next_poll = Instant::now() + Duration::from_secs(1);
    let mut acted = false;
    let mut poll_error_logged = false;
    while !sys::STOP.load(Ordering::SeqCst) {
        if let Ok(Some(st)) = coord.try_wait() {
            log!("job {job}: the coordinator exited ({st})");
            return if st.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        if !acted && Instant::now() >= next_poll {
            next_poll = Instant::now() + poll;
            match show_job(&job) {
                Ok((view, _)) => {
                    poll_error_logged = false;
                    if view.preempting {
                        log!(
                            "job {job}: preemption started (PreemptTime set, state {})",
                            view.state
                        );
                        checkpoint_and_requeue(&bin_dir, &dir, &job, "preemption", &view);
                        acted = true;
                    } else if !margin.is_zero()
                        && view.remaining.is_some_and(|r| r <= margin.as_secs())
                        && view.state == "RUNNING"
                    {
                        log!(
                            "job {job}: {} s left before the time limit (margin {} s)",
                            view.remaining.unwrap_or(0),
                            margin.as_secs()
                        );
                        checkpoint_and_requeue(&bin_dir, &dir, &job, "time limit", &view);
                        acted = true;
                    }
                }
                Err(e) => {
                    if !poll_error_logged {
                        log!("job {job}: cannot watch the job: {e} (retrying every {poll:?})");
                        poll_error_logged = true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    log!("job {job}: stopping (signal); stopping the coordinator");
    sys::kill(coord.id(), libc::SIGTERM);
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = coord.try_wait() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(3) {
            let _ = coord.kill();
            let _ = coord.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// requeue
// ---------------------------------------------------------------------------------------

/// The plugin's arguments from the cluster's plugstack.conf (the line naming spank_ckpt).
fn plugstack_args() -> Result<Vec<String>, String> {
    let out = Command::new("scontrol")
        .args(["show", "config"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running scontrol: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "PlugStackConfig").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "/etc/slurm/plugstack.conf".into());
    let mut files = vec![PathBuf::from(&path)];
    let mut i = 0;
    while i < files.len() {
        let f = files[i].clone();
        i += 1;
        let Ok(conf) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in conf.lines() {
            let words: Vec<&str> = line
                .split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            match words.as_slice() {
                ["include", pat, ..] => {
                    if let Some((d, glob)) = pat.rsplit_once('/') {
                        if let Ok(rd) = std::fs::read_dir(d) {
                            let (pre, suf) = glob.split_once('*').unwrap_or((glob, ""));
                            for e in rd.flatten() {
                                let n = e.file_name().to_string_lossy().into_owned();
                                if n.starts_with(pre) && n.ends_with(suf) {
                                    files.push(e.path());
                                }
                            }
                        }
                    }
                }
                [_, so, rest @ ..] if so.contains("spank_ckpt") => {
                    return Ok(rest.iter().map(|s| s.to_string()).collect());
                }
                _ => {}
            }
        }
    }
    Err(format!("no spank_ckpt line in {path} (give --ckpt-dir)"))
}

fn requeue_cmd(args: &[String]) -> ExitCode {
    let Some(job) = args
        .iter()
        .find(|a| !a.starts_with('-') && a.bytes().all(|b| b.is_ascii_digit()))
        .cloned()
    else {
        return usage();
    };
    let fail = |m: String| {
        eprintln!("ckpt-slurm: error: {m}");
        ExitCode::FAILURE
    };
    let view = match show_job(&job) {
        Ok((v, _)) => v,
        Err(e) => return fail(e),
    };
    if view.state != "RUNNING" {
        return fail(format!("job {job} is {}, not RUNNING", view.state));
    }
    let cfg = match plugstack_args().and_then(|a| config::Config::parse(&a)) {
        Ok(c) => c,
        Err(e) if opt(args, "--ckpt-dir").is_some() => {
            let _ = e;
            config::Config::default()
        }
        Err(e) => return fail(e),
    };
    let bin_dir = PathBuf::from(opt(args, "--bin-dir").unwrap_or(cfg.bin_dir.clone()));
    let dir = match opt(args, "--ckpt-dir") {
        Some(d) => PathBuf::from(d),
        None => {
            let (uid, home) = user_uid_home(&view.user);
            let names = config::JobNames {
                user: &view.user,
                uid,
                job_id: job.parse().unwrap_or(0),
                job_name: &view.name,
                home: &home,
            };
            match config::expand(&cfg.ckpt_dir, &names) {
                Ok(d) => PathBuf::from(d),
                Err(e) => return fail(e),
            }
        }
    };
    let t0 = Instant::now();
    match checkpoint(&bin_dir, &dir) {
        Ok(summary) => println!(
            "job {job}: checkpoint generation {} committed in {:.2} s ({})",
            json_field(&summary, "generation").unwrap_or("?"),
            t0.elapsed().as_secs_f64(),
            dir.display()
        ),
        Err(e) => {
            return fail(format!(
                "checkpoint of job {job} failed, job not requeued: {e}"
            ))
        }
    }
    match requeue_after_checkpoint(&job, &view) {
        Ok(done) => {
            println!("job {job}: {done}; it restores from this checkpoint when it runs again");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn user_uid_home(user: &str) -> (u32, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 6 && f[0] == user {
            return (f[2].parse().unwrap_or(0), f[5].to_string());
        }
    }
    let out = Command::new("getent").args(["passwd", user]).output().ok();
    let line = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let f: Vec<&str> = line.trim().split(':').collect();
    if f.len() >= 6 {
        return (f[2].parse().unwrap_or(0), f[5].to_string());
    }
    (0, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn slurm_times() {
        assert_eq!(slurm_secs("00:01:05"), Some(65));
        assert_eq!(slurm_secs("1-00:00:10"), Some(86410));
        assert_eq!(slurm_secs("05:00"), Some(300));
        assert_eq!(slurm_secs("UNLIMITED"), None);
    }
    #[test]
    fn job_view() {
        let v = parse_job("JobId=7 JobName=low UserId=ckpttest(1001) JobState=RUNNING Reason=None Requeue=1 Restarts=0 BatchFlag=1 RunTime=00:00:50 TimeLimit=00:02:00 PreemptTime=None");
        assert_eq!(
            (v.preempting, v.requeueable, v.batch, v.remaining),
            (false, true, true, Some(70))
        );
        assert_eq!((v.user.as_str(), v.name.as_str()), ("ckpttest", "low"));
        let v = parse_job(
            "JobState=RUNNING PreemptTime=2026-11-25T12:00:00 TimeLimit=UNLIMITED RunTime=00:00:05",
        );
        assert!(v.preempting);
        assert_eq!(v.remaining, None);
    }
    #[test]
    fn requeue_ways() {
        let v = parse_job("JobId=7 Partition=low JobState=RUNNING PreemptTime=None");
        assert_eq!(v.partition, "low");
        // not being preempted: scontrol requeue, whatever the version
        assert_eq!(requeue_way(&v), Ok(RequeueWay::Scontrol));
        assert!(matches!(
            preempt_requeue_way("24.11.5", "REQUEUE"),
            RequeueWay::EndBatchStep(_)
        ));
        assert!(matches!(
            preempt_requeue_way("25.05.0", "GANG,REQUEUE"),
            RequeueWay::EndBatchStep(_)
        ));
        assert_eq!(
            preempt_requeue_way("24.11.5", "CANCEL"),
            RequeueWay::Scontrol
        );
        assert_eq!(preempt_requeue_way("24.11.5", "OFF"), RequeueWay::Scontrol);
        assert_eq!(major_minor("22.05.8"), Some((22, 5)));
        assert!(major_minor("22.05.8").unwrap() < (24, 5));
        assert_eq!(major_minor("24.05.0"), Some((24, 5)));
        let conf = "Configuration data as of 2026-11-25T12:00:00\nPreemptMode             = REQUEUE\nSLURM_VERSION           = 24.11.5\n";
        assert_eq!(
            scontrol_value(conf, "SLURM_VERSION").as_deref(),
            Some("24.11.5")
        );
        assert_eq!(
            scontrol_value(conf, "PreemptMode").as_deref(),
            Some("REQUEUE")
        );
        let part = "PartitionName=low AllowGroups=ALL PriorityTier=1 PreemptMode=REQUEUE GraceTime=30 State=UP";
        assert_eq!(
            scontrol_word(part, "PreemptMode").as_deref(),
            Some("REQUEUE")
        );
        assert_eq!(scontrol_word(part, "Mode"), None);
    }
    #[test]
    fn json() {
        let j = r#"{"generation":4,"path":"/x/gen-000004","bytes":123,"seconds":0.5,"stopped_seconds":0.01}"#;
        assert_eq!(json_field(j, "generation"), Some("4"));
        assert_eq!(json_field(j, "stopped_seconds"), Some("0.01"));
    }
}
