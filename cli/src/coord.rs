//! Finding things (checkpoint directory, runtime library, coordinator binary, coordinator
//! socket), talking to a coordinator, and starting one. Used by `launch`, `checkpoint`,
//! `status` and by `restart`.

use anyhow::{bail, Context};
use ckpt_protocol::{read_msg, write_msg, Message, Role, Status, PROTOCOL_VERSION};
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

/// A connection to a coordinator as a control client.
pub struct Client {
    stream: UnixStream,
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
    pub fn connect(socket: &Path) -> Result<Client, ConnectError> {
        let mut stream = UnixStream::connect(socket).map_err(ConnectError::NoCoordinator)?;
        let handshake = (|| -> anyhow::Result<String> {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write_msg(
                &mut stream,
                &Message::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    role: Role::Control,
                },
            )?;
            match read_msg(&mut stream)? {
                Message::Welcome {
                    coordinator_version,
                    ..
                } => Ok(coordinator_version),
                Message::Refused { reason } => {
                    bail!("the coordinator refused the connection: {reason}")
                }
                other => bail!("unexpected answer to Hello: {other:?}"),
            }
        })();
        match handshake {
            Ok(coordinator_version) => {
                let _ = stream.set_read_timeout(None);
                Ok(Client {
                    stream,
                    coordinator_version,
                })
            }
            Err(e) => Err(ConnectError::Other(e.context(format!(
                "talking to the coordinator at {}",
                socket.display()
            )))),
        }
    }

    /// Sends one request and waits (without a time limit) for its reply.
    pub fn request(&mut self, msg: &Message) -> anyhow::Result<Message> {
        write_msg(&mut self.stream, msg).context("sending the request to the coordinator")?;
        read_msg(&mut self.stream).context("reading the coordinator's answer (did it exit?)")
    }

    pub fn status(&mut self) -> anyhow::Result<Status> {
        match self.request(&Message::GetStatus)? {
            Message::Status(s) => Ok(s),
            other => bail!("unexpected answer to GetStatus: {other:?}"),
        }
    }
}

/// Connects to the coordinator of `dir`, with the standard message when there is none.
pub fn connect_for(dir: &Path) -> anyhow::Result<Client> {
    let socket = socket_for(dir);
    match Client::connect(&socket) {
        Ok(c) => Ok(c),
        Err(ConnectError::NoCoordinator(e)) => bail!(
            "no job is running with checkpoint directory {} (no coordinator at {}: {}); start one with `ckpt launch`",
            dir.display(),
            socket.display(),
            io_reason(&e)
        ),
        Err(ConnectError::Other(e)) => Err(e),
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
    Client::connect(&socket_for(dir)).ok()?.status().ok()
}

/// Asks the coordinator of `dir` to exit and waits (up to 5 s) until it has.
pub fn stop_idle_coordinator(dir: &Path) -> anyhow::Result<()> {
    let socket = socket_for(dir);
    if let Ok(mut c) = Client::connect(&socket) {
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

/// Makes sure a coordinator serves `dir` and returns its socket. A coordinator already
/// running for `dir` is reused as it is (its interval and keep stay); otherwise
/// `ckpt-coordinatord --daemon --exit-when-idle 5` is started, and this returns once it
/// listens.
pub fn ensure_coordinator(
    dir: &Path,
    interval: Option<Duration>,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    create_ckpt_dir(dir)?;
    if probe(dir).is_some() {
        return Ok(socket_for(dir));
    }
    let bin = find_coordinatord()?;
    let socket = new_socket_path(dir);
    let mut cmd = Command::new(&bin);
    cmd.arg("--ckpt-dir")
        .arg(dir)
        .arg("--daemon")
        .arg("--exit-when-idle")
        .arg(LAUNCH_IDLE_SECS.to_string())
        .arg("--keep")
        .arg(keep.max(1).to_string());
    if socket != dir.join(SOCKET_NAME) {
        cmd.arg("--socket").arg(&socket);
    }
    if let Some(i) = interval {
        cmd.arg("--interval").arg(format!("{}ms", i.as_millis()));
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
