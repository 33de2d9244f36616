//! Harness for ckpt's end-to-end tests: finds the built binaries, compiles the zdtm-style
//! C programs in `tests/programs/` once, runs jobs under `ckpt launch` / `ckpt restart`
//! with their output collected line by line, and cleans up every process and temporary
//! directory it made, whether the test passes or fails.
//!
//! A test takes a [`Sandbox`] first (that also serialises the heavy tests of one test
//! binary: one corpus program at a time on a 2-core machine), then starts [`Job`]s in it.
//! Locals drop in reverse order, so jobs are killed before the sandbox sweeps for strays
//! and removes its directory.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Generous limits: the machine may be loaded (2 cores, other builds running).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(180);
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(180);
pub const DIE_TIMEOUT: Duration = Duration::from_secs(60);
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------

/// `target/<profile>/`: where cargo put `ckpt`, `ckpt-coordinatord` and `libckpt.so`.
/// Integration-test executables live in `target/<profile>/deps/`. `CKPT_BIN_DIR` overrides.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CKPT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Path of a built binary, with a clear panic if it is missing.
pub fn built(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace first (./tests/run.sh does `cargo build --release --workspace`)",
        p.display()
    );
    p
}

pub fn ckpt_bin() -> PathBuf {
    built("ckpt")
}

/// `tests/programs/` in the source tree.
pub fn programs_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

pub fn python3() -> PathBuf {
    let p = PathBuf::from("/usr/bin/python3");
    assert!(
        p.exists(),
        "/usr/bin/python3 is required (Debian package python3)"
    );
    p
}

pub fn cpu_has(flag: &str) -> bool {
    fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == flag))
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Temporary directories and cleanup at exit
// ---------------------------------------------------------------------------------------

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "ckpt-test-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Directories removed when the test binary exits (statics are never dropped).
static AT_EXIT_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_at_exit_dirs() {
    if let Ok(dirs) = AT_EXIT_DIRS.lock() {
        for d in dirs.iter() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

fn remove_at_exit(dir: PathBuf) {
    static REGISTER: OnceLock<()> = OnceLock::new();
    REGISTER.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function; it only touches a static Mutex.
        unsafe { libc::atexit(remove_at_exit_dirs) };
    });
    AT_EXIT_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir);
}

// ---------------------------------------------------------------------------------------
// The corpus programs
// ---------------------------------------------------------------------------------------

pub struct Programs {
    dir: PathBuf,
    pub avx2: bool,
}

impl Programs {
    /// Path of the compiled program `name` (`tests/programs/<name>.c`).
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        assert!(
            p.exists(),
            "no corpus program {name} (tests/programs/{name}.c)"
        );
        p
    }
}

/// Compiles every `tests/programs/*.c` once per test binary with
/// `cc -O2 -pthread -Wall -Werror` (plus `-mavx2` where the CPU has AVX2) into a temp dir
/// that is world-readable (the unprivileged test runs them as another user) and removed at
/// exit.
pub fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ckpt-test-programs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("mkdir programs dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod programs dir");
        remove_at_exit(dir.clone());
        let avx2 = cpu_has("avx2");
        let src = programs_src();
        let mut names: Vec<PathBuf> = fs::read_dir(&src)
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        names.sort();
        for c in names {
            let stem = c.file_stem().unwrap().to_string_lossy().into_owned();
            let out = dir.join(&stem);
            let mut cmd = Command::new("cc");
            cmd.args(["-O2", "-pthread", "-Wall", "-Wextra", "-Werror"]);
            if avx2 {
                cmd.arg("-mavx2");
            }
            cmd.arg("-o").arg(&out).arg(&c);
            let o = cmd.output().expect("run cc (Debian package gcc)");
            assert!(
                o.status.success(),
                "compiling {} failed:\n{}",
                c.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Programs { dir, avx2 }
    })
}

// ---------------------------------------------------------------------------------------
// Processes: kill by pid and process group, sweep strays
// ---------------------------------------------------------------------------------------

fn sigkill_tree(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a pid/pgid this harness started; no memory is involved.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the comm field may hold spaces and parens: parse after the last ')'
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn proc_mentions(pid: i32, needle: &[u8]) -> bool {
    let has = |data: Vec<u8>| data.windows(needle.len()).any(|w| w == needle);
    for f in ["cmdline", "environ"] {
        if let Ok(d) = fs::read(format!("/proc/{pid}/{f}")) {
            if has(d) {
                return true;
            }
        }
    }
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        if has(cwd.into_os_string().into_encoded_bytes()) {
            return true;
        }
    }
    false
}

/// Kills processes left behind by a test: orphans re-parented to this process (it is a
/// child subreaper) and any process whose command line, environment or cwd names `dir`
/// (e.g. a coordinator daemon started for that checkpoint directory). Returns their
/// descriptions.
pub fn kill_strays(dir: &Path) -> Vec<String> {
    let me = std::process::id() as i32;
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let mut killed = Vec::new();
    for _round in 0..3 {
        let mut found = false;
        let Ok(rd) = fs::read_dir("/proc") else { break };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let ours = proc_ppid(pid) == Some(me);
            if ours || proc_mentions(pid, &needle) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .trim()
                            .to_string()
                    })
                    .unwrap_or_default();
                // SAFETY: kill(2)/waitpid(2) on a pid found above; no memory is shared.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    if ours {
                        libc::waitpid(pid, std::ptr::null_mut(), 0);
                    }
                }
                if !cmd.is_empty() {
                    killed.push(format!("pid {pid}: {cmd}"));
                }
                found = true;
            }
        }
        if !found {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

fn become_subreaper() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

pub fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "still running (timed out)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!(
                "killed by signal {sig}{}",
                if s.core_dumped() {
                    " (core dumped)"
                } else {
                    ""
                }
            ),
            _ => format!("{s:?}"),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Output collection
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub stream: Stream,
    pub text: String,
}

impl Line {
    /// `N` of a `tick N` line on stdout.
    pub fn tick(&self) -> Option<u64> {
        self.value("tick ")
    }
    /// `N` of a stdout line `<prefix>N ...`.
    pub fn value(&self, prefix: &str) -> Option<u64> {
        if self.stream != Stream::Out {
            return None;
        }
        self.text
            .strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
    pub fn is_fail(&self) -> bool {
        self.text.starts_with("FAIL")
    }
}

#[derive(Default)]
struct Collected {
    lines: Vec<Line>,
    open_streams: usize,
}

type Shared = Arc<(Mutex<Collected>, Condvar)>;

fn spawn_reader(shared: Shared, stream: Stream, r: impl Read + Send + 'static) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    let (m, cv) = &*shared;
                    m.lock().unwrap().lines.push(Line {
                        at: Instant::now(),
                        stream,
                        text,
                    });
                    cv.notify_all();
                }
            }
        }
        let (m, cv) = &*shared;
        m.lock().unwrap().open_streams -= 1;
        cv.notify_all();
    })
}

// ---------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------

/// A process tree started by the harness (its own process group) with stdout and stderr
/// collected line by line, with the time each line arrived. Dropping it SIGKILLs the
/// process and its process group.
pub struct Job {
    pub name: String,
    pub started: Instant,
    child: Mutex<Child>,
    pid: i32,
    shared: Shared,
    readers: Vec<JoinHandle<()>>,
    status: Mutex<Option<ExitStatus>>,
}

impl Job {
    pub fn spawn(name: &str, cmd: Command) -> Job {
        Self::spawn_opts(name, cmd, false)
    }

    /// With `feed_stdin`, the job's stdin is a pipe that gets a byte every 50 ms until the
    /// job is gone (for programs blocked in read(0)); else stdin is /dev/null.
    pub fn spawn_opts(name: &str, mut cmd: Command, feed_stdin: bool) -> Job {
        become_subreaper();
        cmd.stdin(if feed_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
        // Descriptors this test process inherited (a job server's pipe, a CI runner's fds)
        // must not leak into the job: it would own a resource it never opened.
        // SAFETY: close_range(2) is async-signal-safe; CLOSE_RANGE_CLOEXEC only marks the
        // fds above stdio close-on-exec (std's own exec-error pipe already is).
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let pid = child.id() as i32;
        let shared: Shared = Arc::new((
            Mutex::new(Collected {
                lines: Vec::new(),
                open_streams: 2,
            }),
            Condvar::new(),
        ));
        let readers = vec![
            spawn_reader(shared.clone(), Stream::Out, child.stdout.take().unwrap()),
            spawn_reader(shared.clone(), Stream::Err, child.stderr.take().unwrap()),
        ];
        if let Some(mut w) = child.stdin.take() {
            // Ends at the first failed write (EPIPE once the job is gone; Rust ignores SIGPIPE).
            std::thread::spawn(move || {
                use std::io::Write;
                while w.write_all(b".").and_then(|_| w.flush()).is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Job {
            name: name.to_string(),
            started: Instant::now(),
            child: Mutex::new(child),
            pid,
            shared,
            readers,
            status: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn lines(&self) -> Vec<Line> {
        self.shared.0.lock().unwrap().lines.clone()
    }

    /// Waits until a line satisfying `pred` has arrived; Err on timeout or when the job's
    /// output ended without one.
    pub fn wait_for_line(
        &self,
        pred: impl Fn(&Line) -> bool,
        timeout: Duration,
    ) -> Result<Line, String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| pred(l)) {
                return Ok(l.clone());
            }
            if g.open_streams == 0 {
                drop(g);
                // the process is normally gone too; give its status a moment to show
                for _ in 0..50 {
                    if self.try_status().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                return Err(format!(
                    "{}: output ended ({})",
                    self.name,
                    self.exit_description()
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("{}: timed out after {:?}", self.name, timeout));
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for a `tick N` line with N >= n; returns that N.
    pub fn wait_tick(&self, n: u64, timeout: Duration) -> Result<u64, String> {
        self.wait_for_line(|l| l.tick().is_some_and(|t| t >= n), timeout)
            .map(|l| l.tick().unwrap())
            .map_err(|e| format!("waiting for tick {n}: {e}\n{}", self.transcript(40)))
    }

    pub fn ticks(&self) -> Vec<u64> {
        self.lines().iter().filter_map(Line::tick).collect()
    }

    pub fn max_tick(&self) -> Option<u64> {
        self.ticks().into_iter().max()
    }

    /// Highest tick among lines that arrived no later than `t`.
    pub fn max_tick_before(&self, t: Instant) -> Option<u64> {
        self.lines()
            .iter()
            .filter(|l| l.at <= t)
            .filter_map(Line::tick)
            .max()
    }

    pub fn first_fail(&self) -> Option<String> {
        self.lines()
            .into_iter()
            .find(|l| l.is_fail())
            .map(|l| l.text)
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.stream == Stream::Out)
            .map(|l| l.text)
            .collect()
    }

    pub fn stderr_text(&self) -> String {
        let mut s = String::new();
        for l in self.lines().iter().filter(|l| l.stream == Stream::Err) {
            s.push_str(&l.text);
            s.push('\n');
        }
        s
    }

    /// The last `n` lines, both streams, with arrival times relative to the job's start.
    pub fn transcript(&self, n: usize) -> String {
        let lines = self.lines();
        let skip = lines.len().saturating_sub(n);
        let mut s = format!(
            "--- {} (pid {}, {}), last {} of {} lines:\n",
            self.name,
            self.pid,
            self.exit_description(),
            lines.len() - skip,
            lines.len()
        );
        for l in &lines[skip..] {
            let _ = writeln!(
                s,
                "  [{} {:>7.3}s] {}",
                if l.stream == Stream::Out {
                    "out"
                } else {
                    "err"
                },
                l.at.duration_since(self.started).as_secs_f64(),
                l.text
            );
        }
        s
    }

    pub fn exit_description(&self) -> String {
        match self.try_status() {
            Some(s) => describe(Some(s)),
            None => "running".into(),
        }
    }

    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut st = self.status.lock().unwrap();
        if st.is_none() {
            if let Ok(Some(s)) = self.child.lock().unwrap().try_wait() {
                *st = Some(s);
            }
        }
        *st
    }

    /// Waits for the process to exit (then up to 5 s more for its output to drain: a
    /// descendant that kept the pipes open must not hang the test). Err on timeout; the
    /// job keeps running then (Drop kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.drain(Duration::from_secs(5));
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: still running after {:?}\n{}",
                    self.name,
                    timeout,
                    self.transcript(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap();
        while g.open_streams > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
        drop(g);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            sigkill_tree(self.pid);
            if let Ok(s) = self.child.lock().unwrap().wait() {
                *self.status.lock().unwrap() = Some(s);
            }
        } else {
            // The leader is reaped (its pid may be reused): only its process group, which
            // keeps the id reserved while any member lives.
            // SAFETY: kill(2) on a process group this harness created.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        }
        self.drain(Duration::from_secs(2));
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a short command run to completion (or killed at its timeout).
pub struct CmdOut {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOut {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn report(&self) -> String {
        format!(
            "$ {}\n  -> {} after {:.3}s\n  stdout: {}\n  stderr: {}",
            self.what,
            describe(self.status),
            self.elapsed.as_secs_f64(),
            indent(&self.stdout),
            indent(&self.stderr)
        )
    }
}

fn indent(s: &str) -> String {
    let t = s.trim_end();
    if t.is_empty() {
        "(empty)".into()
    } else if !t.contains('\n') {
        t.to_string()
    } else {
        format!("\n    {}", t.replace('\n', "\n    "))
    }
}

/// Runs `cmd` to completion with a timeout (then its process group is SIGKILLed).
pub fn run_cmd(what: &str, cmd: Command, timeout: Duration) -> CmdOut {
    let t0 = Instant::now();
    let mut job = Job::spawn(what, cmd);
    let status = job.wait_exit(timeout).ok();
    if status.is_none() {
        job.kill();
    }
    let lines = job.lines();
    let pick = |s: Stream| {
        lines
            .iter()
            .filter(|l| l.stream == s)
            .fold(String::new(), |mut acc, l| {
                acc.push_str(&l.text);
                acc.push('\n');
                acc
            })
    };
    CmdOut {
        what: what.to_string(),
        status,
        stdout: pick(Stream::Out),
        stderr: pick(Stream::Err),
        elapsed: t0.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------
// Sandbox: one test's directory, identity and serialisation
// ---------------------------------------------------------------------------------------

/// The user a sandbox runs its commands as (the unprivileged test).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn serial_lock() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// One test's world: a temp dir holding `ckpt/` (the checkpoint directory), `work/` (files
/// the programs create) and `home/`; the global test lock (held while it lives); optionally
/// another user to run everything as. Dropping it kills stray processes and removes the dir.
pub struct Sandbox {
    dir: TempDir,
    /// Launched and restarted jobs get a stdin pipe fed a byte every 50 ms.
    pub feed_stdin: bool,
    pub runas: Option<RunAs>,
    /// Directory holding ckpt, ckpt-coordinatord and libckpt.so (the build dir, or a copy).
    pub bin: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

impl Sandbox {
    /// Takes the global test lock first: everything a test starts (even helpers such as
    /// `id` or `useradd`) must happen while it holds a sandbox, because a sandbox's drop
    /// sweeps this process's stray children.
    pub fn new(tag: &str) -> Sandbox {
        let lock = serial_lock();
        let _ = ckpt_bin();
        let dir = TempDir::new(tag);
        for sub in ["ckpt", "work", "home"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir sandbox subdir");
        }
        Sandbox {
            dir,
            feed_stdin: false,
            runas: None,
            bin: bin_dir(),
            _lock: lock,
        }
    }

    /// From now on run every command as `u`, in a sandbox directory `u` owns.
    pub fn run_as(&mut self, u: RunAs) {
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_tree(self.dir.path(), u.uid, u.gid);
        self.runas = Some(u);
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn ckpt_dir(&self) -> PathBuf {
        self.path().join("ckpt")
    }
    pub fn work_dir(&self) -> PathBuf {
        self.path().join("work")
    }

    /// A Command for `program args`, run as the sandbox's user if it has one, with an
    /// environment that does not leak the caller's checkpoint settings.
    pub fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = match &self.runas {
            None => Command::new(program),
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(program);
                c.env("HOME", self.path().join("home"))
                    .env("USER", &u.name)
                    .env("LOGNAME", &u.name)
                    .env_remove("XDG_RUNTIME_DIR");
                c
            }
        };
        cmd.args(args)
            .current_dir(self.work_dir())
            .env_remove("CKPT_DIR")
            .env_remove("LD_PRELOAD");
        cmd
    }

    pub fn ckpt(&self, args: &[OsString]) -> Command {
        self.command(&self.bin.join("ckpt"), args)
    }

    /// `ckpt launch --ckpt-dir DIR -- PROGRAM ARGS...`
    pub fn launch(&self, name: &str, program: &Path, args: &[&str]) -> Job {
        let mut a: Vec<OsString> = vec![
            "launch".into(),
            "--ckpt-dir".into(),
            self.ckpt_dir().into(),
            "--".into(),
            program.into(),
        ];
        a.extend(args.iter().map(OsString::from));
        Job::spawn_opts(&format!("launch {name}"), self.ckpt(&a), self.feed_stdin)
    }

    /// `ckpt restart DIR` (default: the sandbox's checkpoint dir).
    pub fn restart(&self, name: &str) -> Job {
        self.restart_dir(name, &self.ckpt_dir())
    }

    pub fn restart_dir(&self, name: &str, dir: &Path) -> Job {
        Job::spawn_opts(
            &format!("restart {name}"),
            self.ckpt(&["restart".into(), dir.into()]),
            self.feed_stdin,
        )
    }

    /// `ckpt checkpoint --ckpt-dir DIR [--kill]`, to completion.
    pub fn checkpoint(&self, kill: bool) -> CmdOut {
        let mut a: Vec<OsString> = vec![
            "checkpoint".into(),
            "--ckpt-dir".into(),
            self.ckpt_dir().into(),
        ];
        if kill {
            a.push("--kill".into());
        }
        run_cmd(
            &format!(
                "ckpt checkpoint --ckpt-dir {}{}",
                self.ckpt_dir().display(),
                if kill { " --kill" } else { "" }
            ),
            self.ckpt(&a),
            CHECKPOINT_TIMEOUT,
        )
    }

    /// Any other ckpt subcommand, to completion (60 s).
    pub fn ckpt_cmd(&self, args: &[&str]) -> CmdOut {
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        run_cmd(
            &format!("ckpt {}", args.join(" ")),
            self.ckpt(&a),
            Duration::from_secs(60),
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let mut killed = kill_strays(self.dir.path());
        // A job's coordinator daemon outlives it by design (--exit-when-idle): not news.
        killed.retain(|k| !k.contains("ckpt-coordinatord"));
        if !killed.is_empty() {
            eprintln!(
                "[harness] killed {} stray process(es) of {}:",
                killed.len(),
                self.dir.path().display()
            );
            for k in killed {
                eprintln!("[harness]   {k}");
            }
        }
    }
}

pub fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
    if p.is_dir() && !p.is_symlink() {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                chown_tree(&e.path(), uid, gid);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checkpoint / kill / restart cycle of a corpus program
// ---------------------------------------------------------------------------------------

/// What one cycle saw (for the report of a passing test).
#[derive(Debug, Clone)]
pub struct CycleInfo {
    pub tick_before: u64,
    pub tick_at_return: u64,
    pub tick_last_before_kill: u64,
    pub first_after_restart: u64,
    pub checkpoint_secs: f64,
    pub restart_secs: f64,
    /// Everything the job killed by this cycle's checkpoint printed on stdout.
    pub killed_stdout: Vec<String>,
}

/// What a whole corpus run saw.
#[derive(Debug, Clone)]
pub struct CorpusRun {
    pub cycles: Vec<CycleInfo>,
    /// stdout of the run restored by the last restart (it ran to the end).
    pub final_stdout: Vec<String>,
}

impl CorpusRun {
    /// stdout of the restored runs (restart 1 and restart 2).
    pub fn restored_stdout(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .cycles
            .iter()
            .skip(1)
            .flat_map(|c| c.killed_stdout.clone())
            .collect();
        v.extend(self.final_stdout.iter().cloned());
        v
    }
}

fn fail_report(msg: &str, jobs: &[&Job], cmds: &[&CmdOut]) -> String {
    let mut s = format!("{msg}\n");
    for c in cmds {
        s.push_str(&c.report());
        s.push('\n');
    }
    for j in jobs {
        s.push_str(&j.transcript(40));
    }
    s
}

/// Files under the checkpoint dir whose mode lets anyone but the owner read them.
pub fn non_private_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            if md.is_dir() {
                walk(&path, out);
            } else if md.is_file() && md.permissions().mode() & 0o077 != 0 {
                out.push(format!(
                    "{} (mode {:o})",
                    path.display(),
                    md.permissions().mode() & 0o7777
                ));
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// Checkpoints `job` with --kill, checks it died, restarts, and checks that the restored
/// program continued from the checkpoint: its first tick is > 1, after the last tick seen
/// before the checkpoint was requested, and at most 2 past the last tick seen when the
/// checkpoint returned. Returns the restarted job.
pub fn checkpoint_kill_restart(
    sb: &Sandbox,
    name: &str,
    mut job: Job,
    cycle: u32,
) -> Result<(Job, CycleInfo), String> {
    if let Some(f) = job.first_fail() {
        return Err(fail_report(
            &format!("{name}: the program reported a failure before checkpoint {cycle}: {f}"),
            &[&job],
            &[],
        ));
    }
    let before = job.max_tick().unwrap_or(0);
    let ck = sb.checkpoint(true);
    let returned = Instant::now();
    if !ck.success() {
        return Err(fail_report(
            &format!("{name}: checkpoint {cycle} failed"),
            &[&job],
            &[&ck],
        ));
    }
    // Lines already in the pipe when the command returned may reach the reader thread a
    // little later (loaded machine): count what arrives within 500 ms. More slack only
    // loosens the upper bound.
    std::thread::sleep(Duration::from_millis(500));
    let at_return = job
        .max_tick_before(returned + Duration::from_millis(500))
        .unwrap_or(0);
    match job.wait_exit(DIE_TIMEOUT) {
        Err(_) => {
            return Err(fail_report(
                &format!("{name}: the job is still alive {DIE_TIMEOUT:?} after `checkpoint --kill` (cycle {cycle}) returned"),
                &[&job],
                &[&ck],
            ))
        }
        Ok(st) if st.success() || job.stdout_lines().iter().any(|l| l == "PASS") => {
            return Err(fail_report(
                &format!("{name}: the job finished on its own ({}) instead of being killed by checkpoint {cycle}: give it more ticks", describe(Some(st))),
                &[&job],
                &[&ck],
            ))
        }
        Ok(_) => {}
    }
    if let Some(f) = job.first_fail() {
        return Err(fail_report(
            &format!("{name}: the program reported a failure around checkpoint {cycle}: {f}"),
            &[&job],
            &[&ck],
        ));
    }
    let last_before_kill = job.max_tick().unwrap_or(0);
    let restart_started = Instant::now();
    let new = sb.restart(&format!("{name} #{cycle}"));
    let first = match new.wait_for_line(|l| l.tick().is_some() || l.is_fail(), RESTART_TIMEOUT) {
        Ok(l) if l.is_fail() => {
            return Err(fail_report(
                &format!(
                    "{name}: restart {cycle}: the restored program reports: {}",
                    l.text
                ),
                &[&job, &new],
                &[&ck],
            ))
        }
        Ok(l) => l.tick().unwrap(),
        Err(e) => {
            return Err(fail_report(
                &format!("{name}: restart {cycle}: no tick from the restored program: {e}"),
                &[&job, &new],
                &[&ck],
            ))
        }
    };
    let info = CycleInfo {
        tick_before: before,
        tick_at_return: at_return,
        tick_last_before_kill: last_before_kill,
        first_after_restart: first,
        checkpoint_secs: ck.elapsed.as_secs_f64(),
        restart_secs: restart_started.elapsed().as_secs_f64(),
        killed_stdout: job.stdout_lines(),
    };
    if first <= 1 || first <= before || first > at_return + 2 {
        return Err(fail_report(
            &format!(
                "{name}: restart {cycle} did not continue from the checkpoint: first tick after restart {first}; \
                 last tick before the checkpoint was requested {before}, at its return {at_return}, before the kill \
                 {last_before_kill} (expected {}..={})",
                before + 1,
                at_return + 2
            ),
            &[&job, &new],
            &[&ck],
        ));
    }
    Ok((new, info))
}

/// The whole corpus contract for one program: launch, a few ticks, checkpoint --kill,
/// restart, continue, a second cycle, then the program must run to PASS with exit 0 and
/// ticks without gaps, and nothing may print FAIL.
pub fn corpus_cycle(
    sb: &Sandbox,
    name: &str,
    program: &Path,
    args: &[&str],
) -> Result<CorpusRun, String> {
    let total: u64 = args
        .first()
        .and_then(|a| a.parse().ok())
        .expect("first argument is the tick count");
    let job = sb.launch(name, program, args);
    job.wait_tick(3, START_TIMEOUT)
        .map_err(|e| format!("{name}: the launched program did not start ticking: {e}"))?;
    let (job2, c1) = checkpoint_kill_restart(sb, name, job, 1)?;
    job2.wait_tick(c1.first_after_restart + 3, START_TIMEOUT)
        .map_err(|e| {
            format!("{name}: the program restored by restart 1 did not keep ticking: {e}")
        })?;
    check_consecutive(name, &job2)?;
    let (mut job3, c2) = checkpoint_kill_restart(sb, name, job2, 2)?;
    let st = job3.wait_exit(FINISH_TIMEOUT)?;
    if let Some(f) = job3.first_fail() {
        return Err(fail_report(
            &format!("{name}: after restart 2 the program reports: {f}"),
            &[&job3],
            &[],
        ));
    }
    check_consecutive(name, &job3)?;
    let last = job3.max_tick().unwrap_or(0);
    let passed = job3.stdout_lines().iter().any(|l| l == "PASS");
    if !st.success() || !passed || last != total {
        return Err(fail_report(
            &format!("{name}: the run restored by restart 2 ended with {} (PASS printed: {passed}, last tick {last} of {total})", describe(Some(st))),
            &[&job3],
            &[],
        ));
    }
    Ok(CorpusRun {
        cycles: vec![c1, c2],
        final_stdout: job3.stdout_lines(),
    })
}

/// The ticks one job printed must increase by exactly 1 each.
pub fn check_consecutive(name: &str, job: &Job) -> Result<(), String> {
    let t = job.ticks();
    for w in t.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(fail_report(
                &format!(
                    "{name}: ticks not consecutive in one run: {} then {}",
                    w[0], w[1]
                ),
                &[job],
                &[],
            ));
        }
    }
    Ok(())
}

/// Runs a corpus program directly (no ckpt) with optional extra environment; returns
/// (status, stdout lines).
pub fn run_standalone(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (CmdOut, Vec<String>) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_cmd(
        &format!("{} {}", program.display(), args.join(" ")),
        cmd,
        timeout,
    );
    let lines = out.stdout.lines().map(str::to_string).collect();
    (out, lines)
}

// ---------------------------------------------------------------------------------------
// Images on disk
// ---------------------------------------------------------------------------------------

/// Generation directories (those holding a MANIFEST) under `dir`, up to 3 levels deep,
/// oldest first by modification time.
pub fn generations(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    fn walk(p: &Path, depth: u32, found: &mut Vec<PathBuf>) {
        if p.join("MANIFEST").is_file() {
            found.push(p.to_path_buf());
        }
        if depth == 0 {
            return;
        }
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), depth - 1, found);
                }
            }
        }
    }
    walk(dir, 3, &mut found);
    found.sort_by_key(|p| {
        fs::metadata(p.join("MANIFEST"))
            .and_then(|m| m.modified())
            .ok()
    });
    found
}

/// `find DIR` with sizes, for messages.
pub fn tree(dir: &Path) -> String {
    let mut s = String::new();
    fn walk(p: &Path, base: &Path, s: &mut String) {
        let Ok(rd) = fs::read_dir(p) else { return };
        let mut v: Vec<_> = rd.flatten().collect();
        v.sort_by_key(|e| e.file_name());
        for e in v {
            let path = e.path();
            let md = fs::symlink_metadata(&path).ok();
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string();
            match md {
                Some(m) if m.is_dir() => {
                    let _ = writeln!(s, "  {rel}/");
                    walk(&path, base, s);
                }
                Some(m) => {
                    let _ = writeln!(
                        s,
                        "  {rel} ({} bytes, mode {:o})",
                        m.len(),
                        m.permissions().mode() & 0o7777
                    );
                }
                None => {}
            }
        }
    }
    walk(dir, dir, &mut s);
    if s.is_empty() {
        s.push_str("  (empty)\n");
    }
    s
}

/// Copies a directory tree (regular files, dirs, symlinks; other file types are skipped).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// One line per cycle, for the output of passing tests.
pub fn summarize(infos: &[CycleInfo]) -> String {
    let mut s = String::new();
    for (i, c) in infos.iter().enumerate() {
        let _ = writeln!(
            s,
            "cycle {}: ticks before/at-return/before-kill/after-restart {}/{}/{}/{}, checkpoint {:.2}s, restart to first tick {:.2}s",
            i + 1,
            c.tick_before,
            c.tick_at_return,
            c.tick_last_before_kill,
            c.first_after_restart,
            c.checkpoint_secs,
            c.restart_secs
        );
    }
    s
}

/// Replaces `{work}` in program arguments with the sandbox's work directory.
pub fn expand(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| a.replace("{work}", &sb.work_dir().to_string_lossy()))
        .collect()
}

/// A corpus program run without ckpt must pass on its own (ticks 1..=N, PASS, exit 0) and,
/// with CKPT_TEST_CORRUPT=3 (it damages its own state), must FAIL with exit status 1: proof
/// that the checks the checkpoint tests rely on can fail.
pub fn selfcheck(name: &str, args: &[&str]) {
    let sb = Sandbox::new(&format!("{name}-self"));
    let args = expand(&sb, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prog = programs().path(name);
    let ticks: u64 = args[0].parse().unwrap();
    let t = Duration::from_secs(120);

    let (out, lines) = run_standalone(&prog, &args, &[], t);
    let got: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    let want: Vec<u64> = (1..=ticks).collect();
    assert!(
        out.success() && lines.last().map(String::as_str) == Some("PASS") && got == want,
        "{name} does not pass on its own (expected ticks 1..={ticks} then PASS, exit 0):\n{}",
        out.report()
    );

    let (out, lines) = run_standalone(&prog, &args, &[("CKPT_TEST_CORRUPT", "3")], t);
    assert!(
        out.status.and_then(|s| s.code()) == Some(1) && lines.iter().any(|l| l.starts_with("FAIL ")) && !lines.iter().any(|l| l == "PASS"),
        "{name} with CKPT_TEST_CORRUPT=3 did not detect the damage (expected a FAIL line and exit 1):\n{}",
        out.report()
    );
}
