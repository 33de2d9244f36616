//! Command line, start-up (directory, pid-file lock, socket, daemonizing) and shutdown.

use crate::duration::parse_duration;
use crate::events::{Event, Journal};
use crate::machine::{Config, Machine};
use crate::server::{serve, Listeners};
use crate::store::GenerationStore;
use crate::sys;
use crate::SUN_PATH_MAX;
use anyhow::{bail, Context};
use ckpt_protocol::auth::{self, Secret};
use clap::Parser;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const ABOUT: &str = "The ckpt coordinator of one job: keeps track of the job's processes, runs \
the barrier sequence of every checkpoint, commits generations and answers `ckpt checkpoint` \
and `ckpt status`.";

const LONG_ABOUT: &str = "The ckpt coordinator of one job: keeps track of the job's processes, \
runs the barrier sequence of every checkpoint, commits generations and answers `ckpt checkpoint` \
and `ckpt status`.

Normally started by `ckpt launch` / `ckpt restart` (with --daemon --exit-when-idle 5); start it \
by hand only to control its options.

Files in DIR: coordinator.sock (the socket, mode 0600, unless --socket; then \
coordinator.socket holds its path), coordinator.secret (the job secret every client must \
prove; created, mode 0600, when absent), coordinator.addr (the TCP address, with --listen), \
coordinator.pid (pid, locked while running), coordinator.json (the options, for a coordinator \
restarted after a crash), coordinator.log (log when --daemon), events.jsonl (one JSON \
line per event), gen-N/ (generations).

Environment: CKPT_LOG or RUST_LOG sets the log filter (default: info), e.g. CKPT_LOG=debug.

Exit status: 0 after a requested shutdown, a signal or an idle exit; 1 when it cannot start \
(the message says why; with --daemon the parent prints it).";

#[derive(Debug, Parser)]
#[command(name = "ckpt-coordinatord", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    /// Checkpoint directory of the job (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub ckpt_dir: PathBuf,
    /// UNIX socket to listen on [default: DIR/coordinator.sock]. A socket path may be at
    /// most 107 bytes long.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Checkpoint the job every DURATION (90, 30s, 5m, 1h, 1h30m). Default: only on request.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Complete generations to keep; older ones are removed after each commit.
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// Exit once no process has been connected for DURATION (after at least one joined),
    /// or when none joined within 10 x DURATION of the start.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// Detach (fork, setsid, stdio to /dev/null and DIR/coordinator.log); the starting
    /// command returns once the socket is listening (exit status 0) or start-up failed (1).
    #[arg(long)]
    pub daemon: bool,
    /// How long every process may take to reach one barrier phase.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub phase_timeout: Duration,
    /// How long the processes may take to write their images after the resume.
    #[arg(long, value_name = "DURATION", default_value = "600s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Also listen on TCP (a job on several hosts): tcp:ADDR:PORT, e.g. tcp:0.0.0.0:0 (port
    /// 0 = any free port). The address chosen is written to DIR/coordinator.addr.
    #[arg(long, value_name = "tcp:ADDR:PORT", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Checkpoint the job once at TIME: Unix seconds (1795638431, @1795638431) or +DURATION
    /// from now (+3h50m), e.g. shortly before a batch system's time limit. A checkpoint in
    /// progress at that time is let finish first; the deadline one follows.
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub checkpoint_at: Option<u64>,
    /// After a checkpoint that the job's processes asked for because they got SIGTERM
    /// (CKPT_HOLD_SIGTERM, set by the Slurm plugin), keep the job stopped for DURATION
    /// before ending it: a batch system that is preempting the job requeues it meanwhile
    /// (the job must not end by itself first). Default: end it at once.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub term_hold: Option<Duration>,
}

/// `--checkpoint-at`: Unix seconds, `@` Unix seconds, or `+DURATION` from now.
pub fn parse_at(text: &str) -> Result<u64, String> {
    ckpt_protocol::parse_at(text, parse_duration)
}

/// `tcp:ADDR:PORT` (ADDR a host name or an IP address, IPv6 in brackets).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let bad =
        || format!("invalid listen address {text:?}: use tcp:ADDR:PORT, e.g. tcp:127.0.0.1:0");
    let rest = text.strip_prefix("tcp:").ok_or_else(bad)?;
    rest.to_socket_addrs()
        .map_err(|e| format!("{}: {e}", bad()))?
        .next()
        .ok_or_else(bad)
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ckpt-coordinatord: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Paths derived from the arguments.
struct Paths {
    dir: PathBuf,
    socket: PathBuf,
    pid_file: PathBuf,
    secret: PathBuf,
    addr_file: PathBuf,
    log_file: PathBuf,
    events: PathBuf,
}

fn paths(args: &Args) -> anyhow::Result<Paths> {
    let dir = std::path::absolute(&args.ckpt_dir)
        .with_context(|| format!("resolving {}", args.ckpt_dir.display()))?;
    let socket = match &args.socket {
        Some(s) => std::path::absolute(s).with_context(|| format!("resolving {}", s.display()))?,
        None => dir.join("coordinator.sock"),
    };
    let len = socket.as_os_str().len();
    if len > SUN_PATH_MAX {
        bail!(
            "the socket path {} is {len} bytes long, but a UNIX socket path may have at most \
             {SUN_PATH_MAX} bytes; choose a shorter one with --socket PATH",
            socket.display()
        );
    }
    Ok(Paths {
        pid_file: dir.join("coordinator.pid"),
        secret: dir.join(auth::SECRET_FILE),
        addr_file: dir.join(ckpt_protocol::ADDR_FILE),
        log_file: dir.join("coordinator.log"),
        events: dir.join("events.jsonl"),
        dir,
        socket,
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let p = paths(&args)?;
    create_private_dir(&p.dir)?;
    let mut ready_pipe = None;
    if args.daemon {
        let (mut r, w) = sys::pipe().context("creating the readiness pipe")?;
        match sys::fork().context("fork")? {
            sys::Forked::Parent { .. } => {
                drop(w);
                let mut text = String::new();
                let _ = r.read_to_string(&mut text);
                return match text.strip_prefix("ERR ") {
                    _ if text == "OK" => Ok(()),
                    Some(err) => bail!("{err}"),
                    None => bail!(
                        "the coordinator exited before it was ready; see {}",
                        p.log_file.display()
                    ),
                };
            }
            sys::Forked::Child => {
                drop(r);
                ready_pipe = Some(w);
                if let Err(e) = detach(&p) {
                    report_failure(ready_pipe.take(), &e);
                    std::process::exit(1);
                }
            }
        }
    }
    init_logging(args.daemon);
    match start(&args, &p) {
        Ok(st) => {
            if let Some(mut w) = ready_pipe.take() {
                let _ = w.write_all(b"OK");
            }
            let Started {
                listeners,
                lock,
                store,
                secret,
                tcp_addr,
            } = st;
            let reason = run_server(&args, &p, listeners, store, secret, tcp_addr.clone());
            tracing::info!("exiting: {reason}");
            // Only clean up what is still ours: if the directory was removed and another
            // coordinator now serves the same path, its socket must survive our exit.
            if still_ours(&p.socket) {
                let _ = std::fs::remove_file(&p.socket);
                let _ = std::fs::remove_file(p.dir.join("coordinator.socket"));
                let _ = std::fs::remove_file(&p.pid_file);
                if let Some(a) = tcp_addr {
                    if std::fs::read_to_string(&p.addr_file).is_ok_and(|t| t.trim() == a) {
                        let _ = std::fs::remove_file(&p.addr_file);
                    }
                }
            }
            drop(lock);
            Ok(())
        }
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            if ready_pipe.is_some() {
                report_failure(ready_pipe.take(), &e);
                std::process::exit(1);
            }
            Err(e)
        }
    }
}

/// Inode of the socket file this coordinator bound.
static BOUND_INO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn still_ours(socket: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = BOUND_INO.load(std::sync::atomic::Ordering::Relaxed);
    ino != 0
        && std::fs::metadata(socket)
            .map(|m| m.ino() == ino)
            .unwrap_or(false)
}

fn report_failure(pipe: Option<File>, e: &anyhow::Error) {
    if let Some(mut w) = pipe {
        let _ = w.write_all(format!("ERR {e:#}").as_bytes());
    }
}

/// The daemon's side of `--daemon`: new session, stdio away from the caller.
fn detach(p: &Paths) -> anyhow::Result<()> {
    sys::setsid().context("setsid")?;
    sys::set_umask(0o077);
    std::env::set_current_dir("/").context("chdir /")?;
    let null = File::open("/dev/null").context("opening /dev/null")?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&p.log_file)
        .with_context(|| format!("opening the log file {}", p.log_file.display()))?;
    sys::redirect(&null, 0).context("redirecting stdin")?;
    sys::redirect(&log, 1).context("redirecting stdout")?;
    sys::redirect(&log, 2).context("redirecting stderr")?;
    Ok(())
}

fn init_logging(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("CKPT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!daemon && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Creates `dir` (and parents) with mode 0700 when missing.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the checkpoint directory {}", dir.display()))
}

/// What [`start`] set up.
struct Started {
    listeners: Listeners,
    lock: File,
    store: Box<dyn GenerationStore>,
    secret: Secret,
    /// `tcp:HOST:PORT` as written to DIR/coordinator.addr.
    tcp_addr: Option<String>,
}

/// The address clients should use for a socket bound to `a`: an unspecified address
/// (0.0.0.0, ::) becomes this host's name.
fn advertised(a: SocketAddr) -> String {
    if a.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        if !host.is_empty() {
            return format!("tcp:{host}:{}", a.port());
        }
    }
    format!("tcp:{a}")
}

/// Writes `text` to `path` atomically (temporary file, rename), mode 0600.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", sys::getpid()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", path.display()))
}

/// Takes the pid-file lock, loads (or creates) the job secret and binds the sockets.
fn start(args: &Args, p: &Paths) -> anyhow::Result<Started> {
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p.pid_file)
        .with_context(|| format!("opening {}", p.pid_file.display()))?;
    if !sys::try_lock(&lock).with_context(|| format!("locking {}", p.pid_file.display()))? {
        let mut pid = String::new();
        let _ = lock.read_to_string(&mut pid);
        bail!(
            "another coordinator (pid {}) is already running for {}",
            pid.trim(),
            p.dir.display()
        );
    }
    if p.socket.exists() || std::fs::symlink_metadata(&p.socket).is_ok() {
        if UnixStream::connect(&p.socket).is_ok() {
            bail!(
                "another coordinator is already listening on {}",
                p.socket.display()
            );
        }
        std::fs::remove_file(&p.socket)
            .with_context(|| format!("removing the stale socket {}", p.socket.display()))?;
    }
    let (secret, created) = auth::load_or_create_secret(&p.secret)?;
    if created {
        tracing::info!("created the job secret {}", p.secret.display());
    }
    if let Some(parent) = p.socket.parent() {
        create_private_dir(parent)?;
    }
    let listener = UnixListener::bind(&p.socket)
        .with_context(|| format!("listening on {}", p.socket.display()))?;
    std::fs::set_permissions(&p.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", p.socket.display()))?;
    {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&p.socket).map(|m| m.ino()).unwrap_or(0);
        BOUND_INO.store(ino, std::sync::atomic::Ordering::Relaxed);
    }
    lock.set_len(0)?;
    lock.rewind()?;
    writeln!(lock, "{}", sys::getpid())
        .with_context(|| format!("writing {}", p.pid_file.display()))?;
    // Lets `ckpt` find a socket that is not at the default place.
    let pointer = p.dir.join("coordinator.socket");
    if p.socket != p.dir.join("coordinator.sock") {
        std::fs::write(&pointer, format!("{}\n", p.socket.display()))
            .with_context(|| format!("writing {}", pointer.display()))?;
    } else {
        let _ = std::fs::remove_file(&pointer);
    }
    let (tcp, tcp_addr) = match args.listen {
        Some(a) => {
            let l = TcpListener::bind(a).with_context(|| format!("listening on tcp:{a}"))?;
            let bound = l.local_addr()?;
            let text = advertised(bound);
            write_atomically(&p.addr_file, &format!("{text}\n"))?;
            (Some(l), Some(text))
        }
        None => {
            let _ = std::fs::remove_file(&p.addr_file);
            (None, None)
        }
    };
    // What a coordinator restarted after a crash (`ckpt` on the next command) reuses.
    let opts = serde_json::json!({
        "keep": args.keep,
        "interval_ms": args.interval.map(|d| d.as_millis() as u64),
        "listen": args.listen.map(|a| format!("tcp:{a}")),
        "checkpoint_at": args.checkpoint_at,
        "socket": p.socket,
    });
    if let Err(e) = write_atomically(&p.dir.join("coordinator.json"), &format!("{opts}\n")) {
        tracing::warn!("{e:#}");
    }
    let store = crate::store::open(&p.dir)?;
    Ok(Started {
        listeners: Listeners {
            unix: listener,
            tcp,
        },
        lock,
        store,
        secret,
        tcp_addr,
    })
}

fn run_server(
    args: &Args,
    p: &Paths,
    listeners: Listeners,
    store: Box<dyn GenerationStore>,
    secret: Secret,
    tcp_addr: Option<String>,
) -> String {
    if let Err(e) = sys::block_exit_signals() {
        tracing::warn!("cannot block signals: {e}");
    }
    let mut journal = Journal::open(&p.events);
    journal.record(&Event::CoordinatorStarted {
        pid: sys::getpid(),
        version: env!("CARGO_PKG_VERSION").into(),
        socket: p.socket.to_string_lossy().into_owned(),
    });
    let mut addresses = vec![format!("unix:{}", p.socket.display())];
    addresses.extend(tcp_addr);
    tracing::info!(
        "coordinator {} (pid {}) listening on {} for {}",
        env!("CARGO_PKG_VERSION"),
        sys::getpid(),
        addresses.join(", "),
        p.dir.display()
    );
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cfg = Config {
        keep: args.keep as usize,
        interval: args.interval,
        phase_timeout: args.phase_timeout,
        write_timeout: args.write_timeout,
        exit_when_idle: args.exit_when_idle,
        coordinator_pid: sys::getpid(),
        ckpt_dir: p.dir.to_string_lossy().into_owned(),
        socket: p.socket.to_string_lossy().into_owned(),
        addresses,
        job_id: var("SLURM_JOB_ID").or_else(|| var("PBS_JOBID")),
        deadline_unix: args.checkpoint_at,
        term_hold: args.term_hold,
    };
    if let Some(at) = args.checkpoint_at {
        tracing::info!("a checkpoint is scheduled at {at} (Unix seconds)");
    }
    let machine = Machine::new(cfg, Instant::now());
    serve(listeners, machine, store, journal, secret)
}
