//! Finding things (checkpoint directory, runtime library, coordinator binary, coordinator
//! socket), talking to a coordinator, and starting one. Used by `launch`, `checkpoint`,
//! `status` and by `restart`.

use anyhow::{bail, Context};
use ckpt_protocol::auth::{self, client_handshake};
use ckpt_protocol::{read_msg, write_msg, Message, Role, Status, ADDR_FILE};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest UNIX socket path (sun_path holds 108 bytes including the final NUL).
pub const SUN_PATH_MAX: usize = 107;
/// File name of the coordinator's socket inside the checkpoint directory.
pub const SOCKET_NAME: &str = "coordinator.sock";
/// Written by the coordinator when its socket is not `DIR/coordinator.sock`: holds the path.
pub const SOCKET_POINTER: &str = "coordinator.socket";
/// How long `ckpt launch` lets the coordinator live without processes.
pub const LAUNCH_IDLE_SECS: u64 = 5;

/// The checkpoint directory to use: `opt` if given, else `$CKPT_DIR`, else
/// `$XDG_STATE_HOME/ckpt/default`, else `$HOME/.local/state/ckpt/default`. Always absolute
/// (relative paths are resolved against the current directory).
pub fn resolve_ckpt_dir(opt: Option<PathBuf>) -> PathBuf {
    let dir = opt
        .or_else(|| nonempty_env("CKPT_DIR").map(PathBuf::from))
        .unwrap_or_else(default_ckpt_dir);
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The directory used when neither `--ckpt-dir` nor `$CKPT_DIR` is given.
pub fn default_ckpt_dir() -> PathBuf {
    if let Some(state) = nonempty_env("XDG_STATE_HOME") {
        return PathBuf::from(state).join("ckpt/default");
    }
    let home = nonempty_env("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/ckpt/default")
}

fn nonempty_env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Directory holding the running `ckpt` executable.
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The runtime library: next to the `ckpt` executable, else `$CKPT_LIB`, else
/// `/usr/lib/ckpt/libckpt.so`.
pub fn find_runtime_lib() -> anyhow::Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(d) = exe_dir() {
        tried.push(d.join("libckpt.so"));
    }
    if let Some(p) = nonempty_env("CKPT_LIB") {
        tried.push(PathBuf::from(p));
    }
    tried.push(PathBuf::from("/usr/lib/ckpt/libckpt.so"));
    for p in &tried {
        if p.is_file() {
            return Ok(std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        }
    }
    bail!(
        "cannot find the ckpt runtime library libckpt.so (looked at {}); install ckpt or set CKPT_LIB to its path",
        list(&tried)
    )
}

/// The coordinator binary: next to the `ckpt` executable, else in `$CKPT_LIBEXEC`, else
/// in `/usr/lib/ckpt/`.
pub fn find_coordinatord() -> anyhow::Result<PathBuf> {
    const NAME: &str = "ckpt-coordinatord";
    let mut tried = Vec::new();
    if let Some(d) = exe_dir() {
        tried.push(d.join(NAME));
    }
    if let Some(p) = nonempty_env("CKPT_LIBEXEC") {
        tried.push(PathBuf::from(p).join(NAME));
    }
    tried.push(PathBuf::from("/usr/lib/ckpt").join(NAME));
    for p in &tried {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    bail!(
        "cannot find the coordinator program {NAME} (looked at {}); install ckpt or set CKPT_LIBEXEC to the directory holding it",
        list(&tried)
    )
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a coordinator for `dir` listens: the path recorded in `DIR/coordinator.socket`
/// when present, else `DIR/coordinator.sock`.
pub fn socket_for(dir: &Path) -> PathBuf {
    if let Ok(text) = std::fs::read_to_string(dir.join(SOCKET_POINTER)) {
        let t = text.trim();
        if !t.is_empty() {
            return PathBuf::from(t);
        }
    }
    dir.join(SOCKET_NAME)
}

/// The socket a new coordinator for `dir` should use: `DIR/coordinator.sock`, or, when that
/// path is too long for a UNIX socket, `/tmp/ckpt-<uid>/<hash of DIR>.sock`.
pub fn new_socket_path(dir: &Path) -> PathBuf {
    let default = dir.join(SOCKET_NAME);
    if default.as_os_str().len() <= SUN_PATH_MAX {
        return default;
    }
    // FNV-1a: stable across releases and machines.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/ckpt-{uid}/{h:016x}.sock"))
}

/// Where a coordinator listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl Endpoint {
    /// `tcp:HOST:PORT`, `unix:PATH` or a plain path.
    pub fn parse(text: &str) -> Endpoint {
        let t = text.trim();
        if let Some(a) = t.strip_prefix("tcp:") {
            Endpoint::Tcp(a.to_string())
        } else {
            Endpoint::Unix(PathBuf::from(t.strip_prefix("unix:").unwrap_or(t)))
        }
    }
}

/// The addresses to try for the coordinator of `dir`, in order: `$CKPT_COORD` alone when
/// set; else the UNIX socket ([`socket_for`]) and then the TCP address in
/// `DIR/coordinator.addr` (a job on several hosts, seen from another host).
pub fn endpoints_for(dir: &Path) -> Vec<Endpoint> {
    if let Some(c) = nonempty_env("CKPT_COORD") {
        return vec![Endpoint::parse(&c)];
    }
    let mut v = vec![Endpoint::Unix(socket_for(dir))];
    if let Ok(a) = std::fs::read_to_string(dir.join(ADDR_FILE)) {
        if a.trim().starts_with("tcp:") {
            v.push(Endpoint::parse(&a));
        }
    }
    v
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream {
    fn connect(e: &Endpoint) -> std::io::Result<Stream> {
        match e {
            Endpoint::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
            Endpoint::Tcp(a) => {
                let mut last =
                    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{a}: no address"));
                for sa in a.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, Duration::from_secs(5)) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

/// A connection to a coordinator as a control client.
pub struct Client {
    stream: Stream,
    pub coordinator_version: String,
}

/// Why [`Client::connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Nothing listens there (no socket file, or a stale one).
    NoCoordinator(std::io::Error),
    /// Something listens but the handshake failed.
    Other(anyhow::Error),
}

impl Client {
    /// Connects to the coordinator at `socket` (a UNIX socket) and authenticates with the
    /// secret of the checkpoint directory the socket belongs to.
    pub fn connect(socket: &Path) -> Result<Client, ConnectError> {
        let dir = socket.parent().unwrap_or(Path::new("/"));
        Client::connect_to(&Endpoint::Unix(socket.to_path_buf()), dir)
    }

    /// Connects to `e` and proves the secret of `dir` (`DIR/coordinator.secret`).
    pub fn connect_to(e: &Endpoint, dir: &Path) -> Result<Client, ConnectError> {
        let mut stream = Stream::connect(e).map_err(ConnectError::NoCoordinator)?;
        let handshake = (|| -> anyhow::Result<String> {
            let secret = auth::read_secret(&dir.join(auth::SECRET_FILE))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(client_handshake(&mut stream, Role::Control, &secret)?)
        })();
        match handshake {
            Ok(coordinator_version) => {
                let _ = stream.set_read_timeout(None);
                Ok(Client {
                    stream,
                    coordinator_version,
                })
            }
            Err(err) => Err(ConnectError::Other(
                err.context(format!("talking to the coordinator at {e}")),
            )),
        }
    }

    /// Connects to the coordinator of `dir` (see [`endpoints_for`]).
    pub fn connect_dir(dir: &Path) -> Result<Client, ConnectError> {
        let mut first = None;
        for e in endpoints_for(dir) {
            match Client::connect_to(&e, dir) {
                Ok(c) => return Ok(c),
                Err(ConnectError::NoCoordinator(err)) => {
                    first.get_or_insert((e, err));
                }
                Err(other) => return Err(other),
            }
        }
        let (_, err) = first.expect("at least one endpoint");
        Err(ConnectError::NoCoordinator(err))
    }

    /// Sends one request and waits (without a time limit) for its reply.
    pub fn request(&mut self, msg: &Message) -> anyhow::Result<Message> {
        write_msg(&mut self.stream, msg).context("sending the request to the coordinator")?;
        read_msg(&mut self.stream).context("reading the coordinator's answer (did it exit?)")
    }

    pub fn status(&mut self) -> anyhow::Result<Status> {
        match self.request(&Message::GetStatus)? {
            Message::Status(s) => Ok(s),
            other => bail!("unexpected answer to GetStatus: {}", other.kind()),
        }
    }
}

/// Connects to the coordinator of `dir`, with the standard message when there is none.
pub fn connect_for(dir: &Path) -> anyhow::Result<Client> {
    match Client::connect_dir(dir) {
        Ok(c) => Ok(c),
        Err(ConnectError::NoCoordinator(e)) => bail!(
            "no job is running with checkpoint directory {} (no coordinator at {}: {}); start one with `ckpt launch`",
            dir.display(),
            endpoints_for(dir)
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            io_reason(&e)
        ),
        Err(ConnectError::Other(e)) => Err(e),
    }
}

/// A coordinator of `dir` was killed (its pid file is left behind and nobody holds its
/// lock) while its job may still run: the job's processes keep trying to reconnect.
pub fn coordinator_crashed(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(dir.join("coordinator.pid")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r == 0
}

/// [`connect_for`], but when the coordinator of `dir` crashed, starts a new one first (with
/// the options the old one recorded in `DIR/coordinator.json`) and gives the job's
/// processes up to `rejoin` to reconnect. Returns whether a coordinator was started.
pub fn connect_or_recover(dir: &Path, rejoin: Duration) -> anyhow::Result<(Client, bool)> {
    match Client::connect_dir(dir) {
        Ok(c) => return Ok((c, false)),
        Err(ConnectError::Other(e)) => return Err(e),
        Err(ConnectError::NoCoordinator(_)) if coordinator_crashed(dir) => {}
        Err(ConnectError::NoCoordinator(_)) => return Ok((connect_for(dir)?, false)),
    }
    eprintln!(
        "ckpt: the coordinator of {} is gone (killed?); starting a new one",
        dir.display()
    );
    start_coordinator(dir, &CoordOptions::recorded(dir))?;
    let t0 = std::time::Instant::now();
    loop {
        let mut c = connect_for(dir)?;
        let joined = c.status().map(|s| !s.processes.is_empty()).unwrap_or(false);
        if joined || t0.elapsed() >= rejoin {
            // Processes join one by one: give the others a moment.
            if joined {
                std::thread::sleep(Duration::from_millis(300));
            }
            return Ok((connect_for(dir)?, true));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such socket".into(),
        std::io::ErrorKind::ConnectionRefused => "stale socket, nothing listening".into(),
        _ => e.to_string(),
    }
}

/// The status of the coordinator of `dir`, if one is running there.
pub fn probe(dir: &Path) -> Option<Status> {
    Client::connect_dir(dir).ok()?.status().ok()
}

/// Asks the coordinator of `dir` to exit and waits (up to 5 s) until it has.
pub fn stop_idle_coordinator(dir: &Path) -> anyhow::Result<()> {
    let socket = socket_for(dir);
    if let Ok(mut c) = Client::connect_dir(dir) {
        let _ = c.request(&Message::Shutdown { kill: false });
    }
    let pid_file = dir.join("coordinator.pid");
    for _ in 0..100 {
        if UnixStream::connect(&socket).is_err() && !pid_file.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the idle coordinator of {} did not stop within 5 s (see {})",
        dir.display(),
        dir.join("coordinator.log").display()
    )
}

/// Creates `dir` (mode 0700, with parents) if it does not exist.
pub fn create_ckpt_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the checkpoint directory {}", dir.display()))
}

/// Options of a coordinator started by `ckpt`.
#[derive(Debug, Clone, Default)]
pub struct CoordOptions {
    pub interval: Option<Duration>,
    pub keep: usize,
    /// `tcp:ADDR:PORT` to listen on besides the UNIX socket.
    pub listen: Option<String>,
    /// One checkpoint at this Unix time (`--checkpoint-at`).
    pub checkpoint_at: Option<u64>,
}

impl CoordOptions {
    /// The options a previous coordinator of `dir` recorded (`DIR/coordinator.json`), or
    /// the defaults.
    pub fn recorded(dir: &Path) -> CoordOptions {
        let mut o = CoordOptions {
            keep: 3,
            ..CoordOptions::default()
        };
        let Ok(text) = std::fs::read_to_string(dir.join("coordinator.json")) else {
            return o;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return o;
        };
        if let Some(k) = v["keep"].as_u64() {
            o.keep = k.max(1) as usize;
        }
        o.interval = v["interval_ms"].as_u64().map(Duration::from_millis);
        o.listen = v["listen"].as_str().map(str::to_string);
        o.checkpoint_at = v["checkpoint_at"].as_u64();
        o
    }
}

/// Makes sure a coordinator serves `dir` and returns its socket. A coordinator already
/// running for `dir` is reused as it is (its interval and keep stay); otherwise
/// `ckpt-coordinatord --daemon --exit-when-idle 5` is started, and this returns once it
/// listens.
pub fn ensure_coordinator(
    dir: &Path,
    interval: Option<Duration>,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    ensure_coordinator_with(
        dir,
        &CoordOptions {
            interval,
            keep,
            listen: None,
            checkpoint_at: None,
        },
    )
}

/// The coordinator address a restored process is told to use: `$CKPT_SOCKET` when it is a
/// TCP address that answers (a process of a job on several hosts, away from the
/// coordinator's host: the Slurm plugin sets it), else the UNIX socket of the coordinator
/// that [`ensure_coordinator`] finds or starts.
pub fn restart_socket(dir: &Path) -> anyhow::Result<String> {
    if let Some(s) = nonempty_env("CKPT_SOCKET") {
        let e = Endpoint::parse(&s);
        if matches!(e, Endpoint::Tcp(_)) {
            if let Ok(mut c) = Client::connect_to(&e, dir) {
                if c.status().is_ok() {
                    return Ok(e.to_string());
                }
            }
        }
    }
    Ok(ensure_coordinator(dir, None, 3)?
        .to_string_lossy()
        .into_owned())
}

/// [`ensure_coordinator`] with every option.
pub fn ensure_coordinator_with(dir: &Path, opts: &CoordOptions) -> anyhow::Result<PathBuf> {
    create_ckpt_dir(dir)?;
    if probe(dir).is_some() {
        return Ok(socket_for(dir));
    }
    start_coordinator(dir, opts)
}

/// Starts `ckpt-coordinatord --daemon --exit-when-idle 5` for `dir`; returns its socket once
/// it listens.
fn start_coordinator(dir: &Path, opts: &CoordOptions) -> anyhow::Result<PathBuf> {
    let bin = find_coordinatord()?;
    let socket = new_socket_path(dir);
    let mut cmd = Command::new(&bin);
    cmd.arg("--ckpt-dir")
        .arg(dir)
        .arg("--daemon")
        .arg("--exit-when-idle")
        .arg(LAUNCH_IDLE_SECS.to_string())
        .arg("--keep")
        .arg(opts.keep.max(1).to_string());
    if socket != dir.join(SOCKET_NAME) {
        cmd.arg("--socket").arg(&socket);
    }
    if let Some(i) = opts.interval {
        cmd.arg("--interval").arg(format!("{}ms", i.as_millis()));
    }
    if let Some(l) = &opts.listen {
        cmd.arg("--listen").arg(l);
    }
    if let Some(at) = opts.checkpoint_at {
        cmd.arg("--checkpoint-at").arg(at.to_string());
    }
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting the coordinator {}", bin.display()))?;
    if !out.status.success() {
        // Another `ckpt` may have started one for the same directory just now.
        if probe(dir).is_some() {
            return Ok(socket_for(dir));
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim();
        let msg = msg
            .strip_prefix("ckpt-coordinatord: error: ")
            .unwrap_or(msg);
        bail!(
            "the coordinator for {} did not start ({}): {}",
            dir.display(),
            out.status,
            if msg.is_empty() { "no message" } else { msg }
        );
    }
    Ok(socket)
}

/// `--checkpoint-at`: Unix seconds, `@` Unix seconds, or `+DURATION` from now.
pub fn parse_at(text: &str) -> Result<u64, String> {
    ckpt_protocol::parse_at(text, parse_duration)
}

/// Parses a duration: plain seconds (`90`) or `<number><unit>` parts with units `ms`, `s`,
/// `m`, `h`, `d` (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: use seconds (90) or a number with a unit: 30s, 5m, 1h, 1h30m")
    };
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return if secs.is_finite() && (0.0..=1e9).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad())
        };
    }
    let mut total = 0f64;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        total += value
            * match &rest[..u] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(bad()),
            };
        rest = &rest[u..];
    }
    if total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn long_dirs_get_a_short_socket() {
        let short = Path::new("/home/u/ckpt");
        assert_eq!(new_socket_path(short), short.join(SOCKET_NAME));
        let long = PathBuf::from(format!("/scratch/{}", "d".repeat(120)));
        let s = new_socket_path(&long);
        assert!(s.as_os_str().len() <= SUN_PATH_MAX);
        assert!(s.starts_with("/tmp"));
        assert_eq!(s, new_socket_path(&long), "deterministic");
    }
}
