//! The `ckpt` command: launch a program under checkpoint control, checkpoint it, restart
//! it, and look at the job and its checkpoint directory.

pub mod coord;
pub mod fmt;
pub mod inspect;
pub mod list;
pub mod rendezvous;
pub mod restart;
pub mod sysv;

use anyhow::{bail, Context};
use ckpt_protocol::{Message, Status};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const ABOUT: &str = "Transparent checkpoint/restart of unmodified Linux programs";

const LONG_ABOUT: &str = "Transparent checkpoint/restart of unmodified Linux programs.

Start a program with `ckpt launch`, save its state with `ckpt checkpoint` (or every \
--interval), and continue it later from the newest checkpoint with `ckpt restart`. All \
state lives in a checkpoint directory: one per job.";

const ENV_HELP: &str = "Environment:
  CKPT_DIR       checkpoint directory when --ckpt-dir is not given
  XDG_STATE_HOME default checkpoint directory is $XDG_STATE_HOME/ckpt/default
                 (else $HOME/.local/state/ckpt/default)
  CKPT_LIB       runtime library when libckpt.so is not next to the ckpt executable
  CKPT_LIBEXEC   directory of ckpt-coordinatord when it is not next to ckpt
  CKPT_LOG       log level of the runtime and the coordinator (error, warn, info, debug)

Exit status: 0 on success, 1 on any error (the message starts with `ckpt: error:`);
`launch` and `restart` become the program, so its exit status is the program's
(126/127 when the program cannot be executed / is not found).";

#[derive(Debug, Parser)]
#[command(name = "ckpt", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Args)]
pub struct DirArg {
    /// Checkpoint directory of the job [default: $CKPT_DIR, else the directory shown below].
    #[arg(long, short = 'd', value_name = "DIR")]
    pub ckpt_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a program under checkpoint control (this command becomes the program).
    #[command(long_about = "Run a program under checkpoint control.

Creates the checkpoint directory (mode 0700), starts the job's coordinator \
(ckpt-coordinatord, in the background; it exits 5 s after the last process of the job), then \
executes PROGRAM in place of this command with the runtime preloaded (LD_PRELOAD=libckpt.so, \
CKPT_DIR, CKPT_SOCKET set). Standard input/output/error and the exit status are the \
program's. Refuses when a job already uses the checkpoint directory.

Example: ckpt launch --ckpt-dir ~/ckpt/sim --interval 30m -- ./simulate --steps 1000")]
    Launch {
        #[command(flatten)]
        dir: DirArg,
        /// Checkpoint automatically every DURATION (90, 30s, 5m, 1h, 1h30m) [default: only on request].
        #[arg(long, value_name = "DURATION", value_parser = coord::parse_duration)]
        interval: Option<Duration>,
        /// Complete generations to keep; older ones are removed after each checkpoint.
        #[arg(long, value_name = "K", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        keep: u32,
        /// The coordinator also listens on TCP (a job with processes on several hosts):
        /// tcp:ADDR:PORT, port 0 = any; the address is written to DIR/coordinator.addr.
        #[arg(long, value_name = "tcp:ADDR:PORT")]
        listen: Option<String>,
        /// Checkpoint once at TIME: Unix seconds (1795638431, @1795638431) or +DURATION from
        /// now (+3h50m), e.g. shortly before a batch system's time limit.
        #[arg(long, value_name = "TIME", value_parser = coord::parse_at)]
        checkpoint_at: Option<u64>,
        /// A file descriptor that cannot be checkpointed (a connection to a process outside
        /// the job, an unsupported kind) is left out with a warning in the log, and is
        /// /dev/null after a restart, instead of refusing the checkpoint
        /// (CKPT_SKIP_UNSUPPORTED=1 in the program's environment).
        #[arg(long)]
        skip_unsupported: bool,
        /// The program and its arguments (put `--` before them).
        #[arg(
            value_name = "PROGRAM",
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        program: Vec<OsString>,
    },
    /// Checkpoint the running job now; returns when the images are durable.
    #[command(long_about = "Checkpoint the running job now.

Asks the job's coordinator for a checkpoint and waits until every process's image is on disk \
and the generation is committed; prints its number, path, size and time. If a checkpoint is \
already running (e.g. an interval one), waits for that one and reports its result. Fails \
(exit status 1) when the checkpoint fails (the job keeps running) or no job uses the directory.

Example: ckpt checkpoint --ckpt-dir ~/ckpt/sim --kill")]
    Checkpoint {
        #[command(flatten)]
        dir: DirArg,
        /// Terminate every process of the job once the checkpoint is committed.
        #[arg(long)]
        kill: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restart the job from its newest complete checkpoint (this command becomes the program).
    #[command(long_about = "Restart the job from a checkpoint.

Restores the newest complete generation of DIR (or --generation N) in this process: the \
restored program takes the place of this command, with this terminal as its standard \
input/output/error, and its exit status becomes this command's.

Example: ckpt restart ~/ckpt/sim")]
    Restart {
        /// Checkpoint directory [default: $CKPT_DIR, else the directory shown below].
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Restore this generation instead of the newest complete one.
        #[arg(long, short = 'g', value_name = "N")]
        generation: Option<u64>,
        /// In a generation of several processes, restore the one of this rank (a task of
        /// a job step: SLURM_PROCID), with the processes it started.
        #[arg(long, value_name = "R", conflicts_with = "vpid")]
        rank: Option<i32>,
        /// In a generation of several processes, restore the one with this (virtual) pid.
        #[arg(long, value_name = "PID")]
        vpid: Option<i32>,
        /// Only the processes of this job step (Slurm: "batch", "0", "1", ...; recorded from
        /// CKPT_STEP, which the Slurm plugin sets).
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
    },
    /// Show the running job: its coordinator, processes and checkpoints.
    #[command(
        long_about = "Show the running job: coordinator version and pid, socket, every \
process (vpid, real pid, host, program, state, runtime features), the last checkpoint and the \
next scheduled one. Fails (exit status 1) when no job uses the directory."
    )]
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print the coordinator's status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the generations in a checkpoint directory (no running job needed).
    List {
        #[command(flatten)]
        dir: DirArg,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a checkpoint holds: processes, threads, memory regions, files.
    #[command(
        long_about = "Show what a checkpoint holds: per process its vpid, program, \
argv, threads, memory regions (address range, protection, mapping, size, stored bytes) with \
totals, and open files (fd, kind, path, offset, flags).

TARGET is a checkpoint directory (its newest complete generation, or --generation N), a \
generation directory (gen-NNNNNN), or a single image file (.img). Fails (exit status 1) on a \
damaged image."
    )]
    Inspect {
        /// Checkpoint directory, generation directory or image file [default: the checkpoint directory].
        #[arg(value_name = "TARGET")]
        target: Option<PathBuf>,
        /// Generation to inspect [default: the newest complete one].
        #[arg(long, short = 'g', value_name = "N")]
        generation: Option<u64>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the job's coordinator (with --kill, the job too).
    Shutdown {
        #[command(flatten)]
        dir: DirArg,
        /// Terminate every process of the job as well.
        #[arg(long)]
        kill: bool,
    },
}

/// The help text footer: environment, exit status and the resolved default directory.
fn footer() -> String {
    format!(
        "{ENV_HELP}\n\nDefault checkpoint directory here: {}",
        coord::resolve_ckpt_dir(None).display()
    )
}

/// `ckpt`'s main.
pub fn main() -> ExitCode {
    // Rust starts with SIGPIPE ignored; a program we exec must get the default back (and
    // `ckpt inspect | head` should end quietly, not panic).
    // SAFETY: resetting one signal disposition at start-up, single-threaded.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let footer = footer();
    let short = format!(
        "Default checkpoint directory here: {} (--help: environment, exit status)",
        coord::resolve_ckpt_dir(None).display()
    );
    let mut cmd = Cli::command()
        .after_help(short.clone())
        .after_long_help(footer.clone());
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for n in names {
        let (f, s2) = (footer.clone(), short.clone());
        cmd = cmd.mut_subcommand(n, move |s| s.after_help(s2).after_long_help(f));
    }
    let matches = cmd.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ckpt: error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// Exit statuses that follow the shell's conventions for a program that cannot run.
#[derive(Debug)]
struct ExecFailed(u8);

impl std::fmt::Display for ExecFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 == 127 {
            "not found"
        } else {
            "cannot execute"
        })
    }
}

impl std::error::Error for ExecFailed {}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<ExecFailed>().map(|x| x.0).unwrap_or(1)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Launch {
            dir,
            interval,
            keep,
            listen,
            checkpoint_at,
            skip_unsupported,
            program,
        } => launch(
            &coord::resolve_ckpt_dir(dir.ckpt_dir),
            &coord::CoordOptions {
                interval,
                keep: keep as usize,
                listen,
                checkpoint_at,
            },
            &program,
            skip_unsupported,
        ),
        Cmd::Checkpoint { dir, kill, json } => {
            checkpoint(&coord::resolve_ckpt_dir(dir.ckpt_dir), kill, json)
        }
        Cmd::Restart {
            dir,
            generation,
            rank,
            vpid,
            step,
        } => {
            let dir = coord::resolve_ckpt_dir(dir);
            let which = match (rank, vpid) {
                (Some(r), _) => restart::Which::Rank(r),
                (_, Some(v)) => restart::Which::Vpid(v),
                _ => restart::Which::Only,
            };
            restart::run(&dir, generation, which, step.as_deref())
        }
        Cmd::Status { dir, json } => status(&coord::resolve_ckpt_dir(dir.ckpt_dir), json),
        Cmd::List { dir, json } => list::run(&coord::resolve_ckpt_dir(dir.ckpt_dir), json),
        Cmd::Inspect {
            target,
            generation,
            json,
        } => inspect::run(&inspect::default_target(target), generation, json),
        Cmd::Shutdown { dir, kill } => shutdown(&coord::resolve_ckpt_dir(dir.ckpt_dir), kill),
    }
}

/// The environment of a program launched under ckpt.
pub fn runtime_env(lib: &Path, dir: &Path, socket: &Path) -> Vec<(OsString, OsString)> {
    let mut preload = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    vec![
        ("LD_PRELOAD".into(), preload),
        ("CKPT_DIR".into(), dir.as_os_str().to_owned()),
        ("CKPT_SOCKET".into(), socket.as_os_str().to_owned()),
    ]
}

fn launch(
    dir: &Path,
    opts: &coord::CoordOptions,
    program: &[OsString],
    skip_unsupported: bool,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = program.split_first() else {
        bail!("no program given: ckpt launch [OPTIONS] -- PROGRAM [ARGS...]");
    };
    coord::create_ckpt_dir(dir)?;
    if let Some(st) = coord::probe(dir) {
        if !st.processes.is_empty() || st.busy {
            bail!(
                "a job is already running with checkpoint directory {} (coordinator pid {}, {} process{}); \
                 use another --ckpt-dir, or stop that job first (`ckpt shutdown --kill --ckpt-dir {}`)",
                dir.display(),
                st.coordinator_pid,
                st.processes.len(),
                if st.processes.len() == 1 { "" } else { "es" },
                dir.display()
            );
        }
        // An idle coordinator left by an earlier job (it would exit on its own soon): replace
        // it, so that this launch's --interval and --keep apply.
        coord::stop_idle_coordinator(dir)?;
    }
    let lib = coord::find_runtime_lib()?;
    let socket = coord::ensure_coordinator_with(dir, opts)?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).envs(runtime_env(&lib, dir, &socket));
    if skip_unsupported {
        cmd.env("CKPT_SKIP_UNSUPPORTED", "1");
    }
    let err = cmd.exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    Err(anyhow::Error::new(err)
        .context(ExecFailed(code))
        .context(format!("cannot run {}", Path::new(prog).display())))
}

fn checkpoint(dir: &Path, kill: bool, json: bool) -> anyhow::Result<()> {
    // A job launched a moment ago may not have joined its coordinator yet: give its
    // processes a few seconds before concluding there is nothing to checkpoint.
    // A coordinator that was killed is replaced here; the processes rejoin within a second.
    let (_, recovered) = coord::connect_or_recover(dir, Duration::from_secs(5))?;
    if recovered {
        eprintln!("ckpt: a new coordinator serves {}", dir.display());
    }
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(5) {
        match coord::connect_for(dir)?.status() {
            Ok(st) if st.processes.is_empty() => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            _ => break,
        }
    }
    let mut c = coord::connect_for(dir)?;
    match c.request(&Message::Checkpoint { kill })? {
        Message::CheckpointDone(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "checkpoint generation {} committed: {}\n  size {}, took {} (program stopped {}){}",
                    s.generation,
                    s.path,
                    fmt::size(s.bytes),
                    fmt::secs(s.seconds),
                    fmt::secs(s.stopped_seconds),
                    if kill { "; job terminated" } else { "" }
                );
            }
            Ok(())
        }
        Message::CheckpointFailed { error } => bail!("{error} (the job keeps running)"),
        Message::Refused { reason } => bail!("the coordinator refused the request: {reason}"),
        other => bail!(
            "unexpected answer to the checkpoint request: {}",
            other.kind()
        ),
    }
}

fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let (mut c, _) = coord::connect_or_recover(dir, Duration::from_secs(3))?;
    let st = c.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print_status(&st);
    }
    Ok(())
}

fn print_status(st: &Status) {
    println!("checkpoint directory: {}", st.ckpt_dir);
    if let Some(j) = &st.job_id {
        println!("job: {j}");
    }
    println!(
        "coordinator: pid {}, version {} (protocol {}), listening on {}",
        st.coordinator_pid,
        st.coordinator_version,
        st.protocol_version,
        if st.addresses.is_empty() {
            st.socket.clone()
        } else {
            st.addresses.join(", ")
        }
    );
    println!(
        "processes: {}{}",
        st.processes.len(),
        if st.busy {
            " (checkpoint in progress)"
        } else {
            ""
        }
    );
    if !st.processes.is_empty() {
        println!(
            "  {:>7}  {:>8}  {:<16}  {:<16}  {:<28}  FEATURES",
            "VPID", "PID", "HOST", "PROGRAM", "STATE"
        );
        for p in &st.processes {
            let mut features = p.info.features.join(",");
            if let Some(g) = p.info.restored_from {
                features = format!("restored-from={g} {features}");
            }
            println!(
                "  {:>7}  {:>8}  {:<16}  {:<16}  {:<28}  {}",
                p.info.vpid, p.info.real_pid, p.info.host, p.info.program, p.state, features
            );
        }
    }
    match &st.last_checkpoint {
        Some(s) => println!(
            "last checkpoint: generation {} at {}, {}, took {} ({})",
            s.generation,
            fmt::unix_time(s.committed_unix),
            fmt::size(s.bytes),
            fmt::secs(s.seconds),
            s.path
        ),
        None => println!("last checkpoint: none by this coordinator"),
    }
    match (st.interval_seconds, st.next_checkpoint_in) {
        (Some(i), Some(n)) => println!(
            "next checkpoint: in {} (every {})",
            fmt::secs(n),
            fmt::secs(i)
        ),
        (Some(i), None) => println!(
            "next checkpoint: every {}, after the one in progress",
            fmt::secs(i)
        ),
        (None, Some(n)) => println!("next checkpoint: in {}", fmt::secs(n)),
        _ => println!("next checkpoint: on request only (no --interval)"),
    }
    if let Some(at) = st.deadline_unix {
        println!("deadline checkpoint: at {}", fmt::unix_time(at));
    }
}

fn shutdown(dir: &Path, kill: bool) -> anyhow::Result<()> {
    let mut c = coord::connect_for(dir)?;
    match c
        .request(&Message::Shutdown { kill })
        .context("asking the coordinator to stop")?
    {
        Message::Ok => {
            println!(
                "coordinator for {} stopped{}",
                dir.display(),
                if kill { "; job terminated" } else { "" }
            );
            Ok(())
        }
        Message::Refused { reason } => bail!("the coordinator refused the request: {reason}"),
        other => bail!(
            "unexpected answer to the shutdown request: {}",
            other.kind()
        ),
    }
}
