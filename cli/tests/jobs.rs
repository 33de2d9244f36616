//! End-to-end tests with real programs: `tests/programs/counter.c` under `ckpt launch` with
//! the real runtime (libckpt.so, built next to `ckpt` on first use), through the harness of
//! ckpt-tests (output collected line by line, everything killed and swept at the end).
//! Faults (coordinator or process killed, full disk), authentication against strangers and
//! other users, TCP, the status schema and `ckpt list`.
//!
//! A separate test binary from e2e.rs: the harness makes this process a child subreaper
//! and sweeps its children after each test, which must not hit other tests' coordinators.

mod common;

use ckpt_protocol::auth::{self, client_handshake, Secret};
use ckpt_protocol::{read_msg, write_msg, Message, Phase, Role, Status, PROTOCOL_VERSION};
use common::*;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

//
// These run `tests/programs/counter.c` under `ckpt launch` with the real runtime
// (libckpt.so, built next to `ckpt` on first use) through the harness of ckpt-tests
// (output collected line by line, everything killed and swept at the end).

use ckpt_tests::{run_cmd, CmdOut, Job, Sandbox};
use std::ffi::OsString;

const T: Duration = Duration::from_secs(60);

/// Builds libckpt.so next to `ckpt` (it belongs to another package).
fn runtime_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = ckpt_bin().parent().unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "ckpt-runtime"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().unwrap() == "release" {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building ckpt-runtime failed"
        );
        assert!(dir.join("libckpt.so").is_file());
        let _ = coordinatord_bin();
    });
}

/// tests/programs/counter.c, compiled once.
fn counter() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/programs/counter.c");
        let out = ckpt_bin().parent().unwrap().join("e2e-counter");
        let o = Command::new("cc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .expect("run cc");
        assert!(o.status.success(), "cc: {}", text(&o.stderr));
        out
    })
    .clone()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `ckpt ARGS --ckpt-dir DIR` in the sandbox, to completion.
fn sb_ckpt(sb: &Sandbox, dir: &Path, args: &[&str]) -> CmdOut {
    let mut a = os(args);
    a.push("--ckpt-dir".into());
    a.push(dir.into());
    run_cmd(&format!("ckpt {}", args.join(" ")), sb.ckpt(&a), T)
}

/// `ckpt launch --ckpt-dir DIR EXTRA -- counter 100000`, once it ticks.
fn launch_counter(sb: &Sandbox, dir: &Path, extra: &[&str]) -> Job {
    runtime_built();
    let mut a = os(&["launch", "--ckpt-dir"]);
    a.push(dir.into());
    a.extend(os(extra));
    a.push("--".into());
    a.push(counter().into());
    a.push("100000".into());
    let job = Job::spawn("launch counter", sb.ckpt(&a));
    job.wait_tick(3, T).unwrap();
    job
}

/// The job goes on ticking: `by` more ticks arrive.
fn ticks_on(job: &Job, by: u64) {
    let t = job.max_tick().unwrap_or(0);
    job.wait_tick(t + by, T).unwrap();
    assert!(job.first_fail().is_none(), "{:?}", job.first_fail());
}

fn coordinator_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("coordinator.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// SIGKILL and wait until the process is gone (reaping it if it became our child).
fn kill9(pid: i32) {
    // SAFETY: kill/waitpid on a pid this test started (a coordinator or a job process).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("a killed process to vanish", T, || {
        // SAFETY: as above; WNOHANG never blocks.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
    });
}

fn listed(sb: &Sandbox, dir: &Path) -> Vec<serde_json::Value> {
    let out = sb_ckpt(sb, dir, &["list", "--json"]);
    assert!(out.success(), "{}", out.report());
    serde_json::from_str(&out.stdout).unwrap()
}

fn socket_of(dir: &Path) -> PathBuf {
    std::fs::read_to_string(dir.join("coordinator.socket"))
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|_| dir.join("coordinator.sock"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Unauthenticated, garbage, oversized and stalling connections are dropped while the real
/// job runs on and a checkpoint succeeds; none of them ever counts as a process.
#[test]
fn strangers_and_garbage_are_dropped_without_disturbing_the_job() {
    let sb = Sandbox::new("auth");
    let dir = sb.ckpt_dir();
    let job = launch_counter(&sb, &dir, &[]);
    let sock = socket_of(&dir);
    let closed_within = |mut s: UnixStream, limit: Duration| -> Duration {
        use std::io::Read;
        s.set_read_timeout(Some(limit)).unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return t0.elapsed(),
                Ok(_) => {} // a Refused frame, then the end
                Err(e) => panic!("not closed within {limit:?}: {e}"),
            }
        }
    };
    // A client that connects and says nothing, and one that stops mid-frame: both are
    // cut at the handshake timeout (5 s), meanwhile everything else goes on.
    let stallers: Vec<_> = [&b""[..], &b"\x40\x00\x00\x00{\"type\":"[..]]
        .into_iter()
        .map(|bytes| {
            let mut s = UnixStream::connect(&sock).unwrap();
            use std::io::Write;
            s.write_all(bytes).unwrap();
            std::thread::spawn(move || closed_within(s, Duration::from_secs(20)))
        })
        .collect();
    for bytes in [
        &b"\x03\x00\x00\x00abc"[..],               // not JSON
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], // a length of 542 MB
        &(100u32 << 20).to_le_bytes()[..],         // 100 MiB announced
        &b"\x10\x00\x00\x00\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0"[..],
    ] {
        let mut s = UnixStream::connect(&sock).unwrap();
        use std::io::Write;
        s.write_all(bytes).unwrap();
        let took = closed_within(s, Duration::from_secs(3));
        assert!(took < Duration::from_secs(2), "{bytes:?} took {took:?}");
    }
    // The right protocol with the wrong secret: the client sees that the coordinator
    // proves another secret, and a forged proof is refused.
    let mut s = UnixStream::connect(&sock).unwrap();
    let e = client_handshake(&mut s, Role::Control, &Secret([7; 32])).unwrap_err();
    assert!(e.to_string().contains("could not prove"), "{e}");
    let mut s = UnixStream::connect(&sock).unwrap();
    write_msg(
        &mut s,
        &Message::Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Control,
            nonce: Some("ab".repeat(32)),
        },
    )
    .unwrap();
    assert!(matches!(
        read_msg(&mut s).unwrap(),
        Message::Challenge { .. }
    ));
    write_msg(
        &mut s,
        &Message::Auth {
            proof: "00".repeat(32),
        },
    )
    .unwrap();
    match read_msg(&mut s).unwrap() {
        Message::Refused { reason } => {
            assert!(reason.contains("authentication failed"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // An old client: the version refusal names both versions.
    let mut s = UnixStream::connect(&sock).unwrap();
    write_msg(
        &mut s,
        &Message::Hello {
            protocol_version: 1,
            role: Role::Control,
            nonce: None,
        },
    )
    .unwrap();
    match read_msg(&mut s).unwrap() {
        Message::Refused { reason } => assert!(
            reason.contains("version 1") && reason.contains(&format!("version {PROTOCOL_VERSION}")),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    // With the stallers still connected: a checkpoint of the real job.
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--json"]);
    assert!(out.success(), "{}", out.report());
    let out = sb_ckpt(&sb, &dir, &["status", "--json"]);
    let st: Status = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(st.processes.len(), 1, "only the real process is a member");
    assert_eq!(st.processes[0].info.real_pid, job.pid());
    for t in stallers {
        let took = t.join().unwrap();
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(10),
            "a stalled handshake was cut after {took:?}"
        );
    }
    ticks_on(&job, 3);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(events.matches("\"process_joined\"").count(), 1, "{events}");
    // The secret never travels: it is nowhere in the coordinator's log or journal.
    let secret = auth::hex(&job_secret(&dir).0);
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
    assert!(!log.contains(&secret) && !events.contains(&secret));
}

/// Runs `argv` as the unprivileged user ckpttest (created when missing).
fn as_other_user(argv: &[&str], envs: &[(&str, &str)]) -> Output {
    let (uid, gid) = other_user();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .args(argv)
        .env_remove("CKPT_DIR")
        .env("HOME", "/tmp");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn other_user() -> (u32, u32) {
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, "ckpttest"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| text(&o.stdout).trim().parse::<u32>().unwrap())
    };
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "ckpttest"])
            .status()
            .unwrap();
        assert!(st.success(), "useradd ckpttest");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// Another user on the machine can neither control nor read the job: over the UNIX socket
/// (directory 0700, socket 0600, and the coordinator checks the peer's uid even when
/// those are loosened), over TCP (the secret is unreadable), nor on disk.
#[test]
fn another_user_cannot_checkpoint_kill_or_read_the_job() {
    if !is_root() {
        eprintln!("skipped: needs root to act as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new("otheruser");
    // Only ckpt's own permissions protect the job: the sandbox around it is open.
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = sb.ckpt_dir();
    std::fs::remove_dir(&dir).unwrap(); // `ckpt launch` creates it (0700)
    let job = launch_counter(&sb, &dir, &["--listen", "tcp:127.0.0.1:0"]);
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(out.success(), "{}", out.report());
    let addr = std::fs::read_to_string(dir.join("coordinator.addr")).unwrap();
    let addr = addr.trim();
    let ckpt = ckpt_bin();
    let ckpt = ckpt.to_str().unwrap();
    let d = dir.to_str().unwrap();
    for cmd in [
        vec!["status", "--json"],
        vec!["checkpoint"],
        vec!["checkpoint", "--kill"],
        vec!["shutdown", "--kill"],
        vec!["list"],
        vec!["inspect"],
    ] {
        for env in [vec![], vec![("CKPT_COORD", addr)]] {
            let mut argv = vec![ckpt];
            argv.extend(&cmd);
            argv.extend(["--ckpt-dir", d]);
            if cmd[0] == "inspect" {
                argv = vec![ckpt, "inspect", d];
            }
            let o = as_other_user(&argv, &env);
            let e = text(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{argv:?} {env:?}: {e}");
            assert!(
                e.contains("Permission denied") || e.contains("no job is running"),
                "{argv:?} {env:?}: {e}"
            );
            assert!(
                !text(&o.stdout).contains("\"processes\""),
                "{argv:?} leaked status"
            );
        }
    }
    for f in ["coordinator.secret", "gen-000001/MANIFEST", "events.jsonl"] {
        let o = as_other_user(&["cat", &format!("{d}/{f}")], &[]);
        assert!(!o.status.success(), "ckpttest could read {f}");
    }
    // Even with the directory and socket opened up, the coordinator refuses another uid.
    let sock = socket_of(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let py = format!(
        "import socket; s=socket.socket(socket.AF_UNIX); s.connect({:?}); s.settimeout(5); \
         print(s.recv(4096)[4:].decode())",
        sock.to_str().unwrap()
    );
    let o = as_other_user(&["/usr/bin/python3", "-c", &py], &[]);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        text(&o.stdout).contains("belongs to another user"),
        "{} {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // Over TCP, a client without the secret gets nowhere.
    let mut s = std::net::TcpStream::connect(addr.strip_prefix("tcp:").unwrap()).unwrap();
    assert!(client_handshake(&mut s, Role::Control, &Secret([1; 32])).is_err());
    // The job is untouched and still the owner's.
    ticks_on(&job, 3);
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--json"]);
    assert!(out.success(), "{}", out.report());
    assert_eq!(listed(&sb, &dir).len(), 2);
}

/// `--listen tcp:127.0.0.1:0`: the address lands in DIR/coordinator.addr; processes join
/// over TCP (CKPT_SOCKET=tcp:..., or through coordinator.addr when their UNIX socket is
/// unreachable, as on another host); commands use CKPT_COORD; the checkpoint has them all.
#[test]
fn tcp_listening_for_processes_and_commands() {
    let sb = Sandbox::new("tcp");
    let dir = sb.ckpt_dir();
    let job = launch_counter(&sb, &dir, &["--listen", "tcp:127.0.0.1:0"]);
    let addr = std::fs::read_to_string(dir.join("coordinator.addr")).unwrap();
    let addr = addr.trim().to_string();
    assert!(
        addr.starts_with("tcp:127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let lib = ckpt_bin().parent().unwrap().join("libckpt.so");
    let remote = |socket: &str| {
        let mut c = sb.command(&counter(), &os(&["100000"]));
        c.env("LD_PRELOAD", &lib)
            .env("CKPT_DIR", &dir)
            .env("CKPT_SOCKET", socket);
        let j = Job::spawn("counter over tcp", c);
        j.wait_tick(2, T).unwrap();
        j
    };
    let over_tcp = remote(&addr);
    let fallback = remote("/nonexistent/coordinator.sock");
    wait_until("3 processes", T, || {
        let out = sb_ckpt(&sb, &dir, &["status", "--json"]);
        serde_json::from_str::<Status>(&out.stdout).is_ok_and(|s| s.processes.len() == 3)
    });
    let mut c = sb.ckpt(&os(&["checkpoint", "--json", "--ckpt-dir"]));
    c.arg(&dir).env("CKPT_COORD", &addr);
    let out = run_cmd("ckpt checkpoint over tcp", c, T);
    assert!(out.success(), "{}", out.report());
    let mut c = sb.ckpt(&os(&["status", "--json", "--ckpt-dir"]));
    c.arg(&dir).env("CKPT_COORD", &addr);
    let st: Status = serde_json::from_str(&run_cmd("status", c, T).stdout).unwrap();
    assert!(st.addresses.contains(&addr), "{:?}", st.addresses);
    let gens = listed(&sb, &dir);
    assert_eq!(
        gens[0]["processes"].as_array().unwrap().len(),
        3,
        "{gens:?}"
    );
    for j in [&job, &over_tcp, &fallback] {
        ticks_on(j, 2);
    }
}

/// kill -9 of the coordinator between checkpoints: the job runs on, the generation on disk
/// stays restorable, and the next `ckpt checkpoint` starts a new coordinator that the job
/// rejoins; the result restarts.
#[test]
fn coordinator_killed_between_checkpoints_is_replaced() {
    let sb = Sandbox::new("coordkill");
    let dir = sb.ckpt_dir();
    let job = launch_counter(&sb, &dir, &["--keep", "5"]);
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(out.success(), "{}", out.report());
    let old = coordinator_pid(&dir);
    kill9(old);
    ticks_on(&job, 5);
    let gens = listed(&sb, &dir);
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["complete"], true);
    // The next command takes the job back.
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--json"]);
    assert!(out.success(), "{}", out.report());
    assert!(
        out.stderr.contains("starting a new one"),
        "{}",
        out.report()
    );
    let s: ckpt_protocol::CheckpointSummary = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s.generation, 2);
    assert_ne!(coordinator_pid(&dir), old);
    // The recorded options came back (--keep 5).
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(events.matches("coordinator_started").count(), 2);
    // And the new generation restores: end the job with a checkpoint, restart it.
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--kill"]);
    assert!(out.success(), "{}", out.report());
    let mut job = job;
    job.wait_exit(T).unwrap();
    let at = job.max_tick().unwrap();
    let restarted = Job::spawn(
        "restart",
        sb.ckpt(&[OsString::from("restart"), dir.clone().into()]),
    );
    let t = restarted.wait_tick(at + 3, T).unwrap();
    assert!(t > at);
    assert!(
        restarted.first_fail().is_none(),
        "{}",
        restarted.transcript(20)
    );
    let first = restarted.ticks()[0];
    assert!(
        first <= at + 2,
        "restarted at tick {first}, checkpointed at {at}"
    );
}

/// kill -9 of the coordinator in the middle of a checkpoint (the real process suspended,
/// a second participant holding the barrier): the job resumes by itself, the interrupted
/// generation is never complete, and a new coordinator commits the next one.
#[test]
fn coordinator_killed_during_a_checkpoint() {
    let sb = Sandbox::new("coordkill-mid");
    let dir = sb.ckpt_dir();
    let job = launch_counter(&sb, &dir, &[]);
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(out.success(), "{}", out.report());
    let fake = FakeProcess::join_job(&socket_of(&dir), &dir, 77, Behavior::StallAt(Phase::Drain));
    let mut a = os(&["checkpoint", "--ckpt-dir"]);
    a.push(dir.clone().into());
    let mut pending = Job::spawn("checkpoint", sb.ckpt(&a));
    fake.wait_for(|s| matches!(s, Seen::Barrier(2, Phase::Drain)));
    // The real process is stopped now (it reached the drain phase).
    let t = job.max_tick().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        job.max_tick().unwrap() <= t + 1,
        "the job ran during the checkpoint"
    );
    kill9(coordinator_pid(&dir));
    let st = pending.wait_exit(T).unwrap();
    assert!(!st.success());
    ticks_on(&job, 5); // resumed on its own
    let gens = listed(&sb, &dir);
    assert_eq!(gens.len(), 2, "{gens:?}");
    assert_eq!(
        (gens[0]["number"].as_u64(), gens[0]["complete"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        (gens[1]["number"].as_u64(), gens[1]["complete"].as_bool()),
        (Some(2), Some(false))
    );
    drop(fake);
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--json"]);
    assert!(out.success(), "{}", out.report());
    let s: ckpt_protocol::CheckpointSummary = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(s.generation, 3);
    // The half-done generation 2 was pruned once 3 committed.
    let nums: Vec<u64> = listed(&sb, &dir)
        .iter()
        .map(|g| g["number"].as_u64().unwrap())
        .collect();
    assert_eq!(nums, vec![1, 3]);
    ticks_on(&job, 2);
}

/// kill -9 of one process during a checkpoint: aborted, nothing half-written taken for a
/// generation, the other participant told to resume, the requester told why.
#[test]
fn process_killed_during_a_checkpoint_aborts_it() {
    let sb = Sandbox::new("prockill");
    let dir = sb.ckpt_dir();
    let mut job = launch_counter(&sb, &dir, &[]);
    let vpid = job.pid();
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(out.success(), "{}", out.report());
    let fake = FakeProcess::join_job(&socket_of(&dir), &dir, 77, Behavior::StallAt(Phase::Drain));
    let mut a = os(&["checkpoint", "--ckpt-dir"]);
    a.push(dir.clone().into());
    let mut pending = Job::spawn("checkpoint", sb.ckpt(&a));
    fake.wait_for(|s| matches!(s, Seen::Barrier(2, Phase::Drain)));
    wait_until("the half-written image", T, || {
        dir.join("gen-000002/proc-77.img.tmp").exists()
    });
    job.kill();
    let st = pending.wait_exit(T).unwrap();
    assert!(!st.success());
    let err = pending.stderr_text();
    assert!(
        err.contains("checkpoint of generation 2 failed")
            && err.contains(&format!("vpid {vpid}"))
            && err.contains("disconnected during the drain phase"),
        "{err}"
    );
    fake.wait_for(|s| *s == Seen::Abort(2));
    assert!(
        !dir.join("gen-000002").exists(),
        "the aborted generation is gone"
    );
    let gens = listed(&sb, &dir);
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0]["complete"], true);
    let out = inspect(&sb, &dir);
    assert!(out.success(), "generation 1 is intact: {}", out.report());
}

/// `ckpt inspect DIR`: opens and verifies the newest complete generation.
fn inspect(sb: &Sandbox, dir: &Path) -> CmdOut {
    run_cmd(
        "ckpt inspect",
        sb.ckpt(&[OsString::from("inspect"), dir.into()]),
        T,
    )
}

/// Mounts a small tmpfs; unmounted on drop, pass or fail.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A coordinator may still hold its log open there: detach lazily then.
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A full disk during a checkpoint: aborted with a clear message, the previous generation
/// intact, the job running; once there is room again, checkpoints work.
#[test]
fn full_disk_aborts_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let sb = Sandbox::new("fulldisk");
    let disk = Tmpfs::mount(&sb.path().join("disk"), "2m");
    let dir = disk.0.join("ckpt");
    let job = launch_counter(&sb, &dir, &[]);
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(out.success(), "{}", out.report());
    // Fill the disk.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(disk.0.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 4096];
        while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
    }
    let out = sb_ckpt(&sb, &dir, &["checkpoint"]);
    assert!(!out.success(), "{}", out.report());
    assert!(
        out.stderr.contains("No space left on device")
            && out.stderr.contains("the job keeps running"),
        "{}",
        out.report()
    );
    println!("full disk: {}", out.stderr.trim());
    let gens = listed(&sb, &dir);
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert_eq!(gens[0]["complete"], true);
    let out = inspect(&sb, &dir);
    assert!(out.success(), "generation 1 is intact: {}", out.report());
    ticks_on(&job, 3);
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let out = sb_ckpt(&sb, &dir, &["checkpoint", "--json"]);
    assert!(out.success(), "{}", out.report());
    drop(job);
}

/// A small JSON Schema validator (the keywords docs/status.schema.json uses).
fn schema_errors(
    schema: &serde_json::Value,
    v: &serde_json::Value,
    at: &str,
    errs: &mut Vec<String>,
) {
    use serde_json::Value;
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            other => panic!("schema type {other}"),
        });
        if !ok {
            errs.push(format!("{at}: {v} is not of type {types:?}"));
            return;
        }
    }
    if let (Some(p), Some(s)) = (schema.get("pattern").and_then(Value::as_str), v.as_str()) {
        if !regex::Regex::new(p).unwrap().is_match(s) {
            errs.push(format!("{at}: {s:?} does not match {p}"));
        }
    }
    if let (Some(m), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < m {
            errs.push(format!("{at}: {x} < {m}"));
        }
    }
    if let Some(o) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !o.contains_key(r) {
                errs.push(format!("{at}: missing {r}"));
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => schema_errors(s, x, &format!("{at}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if let Some(m) = schema.get("minItems").and_then(Value::as_u64) {
            if (a.len() as u64) < m {
                errs.push(format!("{at}: fewer than {m} items"));
            }
        }
        if let Some(s) = schema.get("items") {
            for (i, x) in a.iter().enumerate() {
                schema_errors(s, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
}

/// `ckpt status --json` of a real job (idle, and with a checkpoint hanging in a phase)
/// validates against docs/status.schema.json; and the validator does reject bad shapes.
#[test]
fn status_json_matches_its_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sb = Sandbox::new("schema");
    let dir = sb.ckpt_dir();
    let _job = launch_counter(&sb, &dir, &["--interval", "1h"]);
    let check = |what: &str| -> serde_json::Value {
        let out = sb_ckpt(&sb, &dir, &["status", "--json"]);
        assert!(out.success(), "{}", out.report());
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let mut errs = Vec::new();
        schema_errors(&schema, &v, "$", &mut errs);
        assert!(errs.is_empty(), "{what}: {errs:#?}\n{v:#}");
        v
    };
    let v = check("before any checkpoint");
    assert!(v["last_checkpoint"].is_null() && v["next_checkpoint_in"].as_f64().unwrap() > 3000.0);
    assert!(sb_ckpt(&sb, &dir, &["checkpoint"]).success());
    let v = check("after a checkpoint");
    assert_eq!(v["last_checkpoint"]["generation"], 1);
    let fake = FakeProcess::join_job(
        &socket_of(&dir),
        &dir,
        5,
        Behavior::StallAt(Phase::Snapshot),
    );
    let mut a = os(&["checkpoint", "--ckpt-dir"]);
    a.push(dir.clone().into());
    let _pending = Job::spawn("checkpoint", sb.ckpt(&a));
    fake.wait_for(|s| matches!(s, Seen::Barrier(2, Phase::Snapshot)));
    let v = check("during a checkpoint");
    assert_eq!(v["busy"], true);
    let states: Vec<&str> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"checkpointing (snapshot)"), "{states:?}");
    // The validator is not a rubber stamp.
    for (bad, why) in [
        (serde_json::json!({}), "missing"),
        (
            {
                let mut b = v.clone();
                b["extra"] = 1.into();
                b
            },
            "unexpected field extra",
        ),
        (
            {
                let mut b = v.clone();
                b["busy"] = "yes".into();
                b
            },
            "not of type",
        ),
        (
            {
                let mut b = v.clone();
                b["processes"][0]["state"] = "dancing".into();
                b
            },
            "does not match",
        ),
    ] {
        let mut errs = Vec::new();
        schema_errors(&schema, &bad, "$", &mut errs);
        assert!(errs.iter().any(|e| e.contains(why)), "{why}: {errs:?}");
    }
}

/// `ckpt list` of a real job: number, time, size, duration and processes per generation.
#[test]
fn list_shows_generations_of_a_real_job() {
    let sb = Sandbox::new("list");
    let dir = sb.ckpt_dir();
    let job = launch_counter(&sb, &dir, &["--keep", "2"]);
    for _ in 0..3 {
        assert!(sb_ckpt(&sb, &dir, &["checkpoint"]).success());
    }
    let out = sb_ckpt(&sb, &dir, &["list"]);
    assert!(out.success(), "{}", out.report());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[1].contains("GEN")
            && lines[1].contains("COMMITTED")
            && lines[1].contains("SIZE")
            && lines[1].contains("TOOK")
            && lines[1].contains("PROCESSES"),
        "{}",
        out.stdout
    );
    let row = regex::Regex::new(r"^\s+(\d+)\s+complete\*?\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\s+[\d.]+ [KMG]iB\s+[\d.]+m?s\s+1 e2e-counter\[(\d+)\]$").unwrap();
    let gens: Vec<u64> = lines
        .iter()
        .filter_map(|l| row.captures(l))
        .map(|c| {
            assert_eq!(c[2].parse::<i32>().unwrap(), job.pid());
            c[1].parse().unwrap()
        })
        .collect();
    // Every generation row parses; the newest two are there (an older one may be kept
    // while newer incremental generations refer to it).
    assert!(gens.ends_with(&[2, 3]), "{}", out.stdout);
    let any_row = regex::Regex::new(r"^\s+\d+\s").unwrap();
    let rows = lines.iter().filter(|l| any_row.is_match(l)).count();
    assert_eq!(gens.len(), rows, "{}", out.stdout);
}

/// `ckpt launch --checkpoint-at +3s`: the status shows the deadline; the coordinator takes
/// exactly one checkpoint when it comes (trigger "deadline" in the journal), and the job
/// runs on and can be restored from it.
#[test]
fn deadline_checkpoint_at_a_given_time() {
    let sb = Sandbox::new("deadline");
    let dir = sb.ckpt_dir();
    let mut job = launch_counter(&sb, &dir, &["--checkpoint-at", "+3s"]);
    let before = job.max_tick().unwrap_or(0);
    let out = sb_ckpt(&sb, &dir, &["status", "--json"]);
    assert!(out.success(), "{}", out.report());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = v["deadline_unix"]
        .as_u64()
        .expect("deadline_unix in the status");
    assert!(
        at > now.saturating_sub(1) && at <= now + 3,
        "{at} vs now {now}"
    );
    assert!(v["next_checkpoint_in"].as_f64().unwrap() <= 3.0, "{v:#}");
    let text = sb_ckpt(&sb, &dir, &["status"]);
    assert!(
        text.stdout.contains("deadline checkpoint: at"),
        "{}",
        text.stdout
    );
    // the checkpoint comes by itself
    let t0 = std::time::Instant::now();
    while listed(&sb, &dir).is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint 60 s after the deadline"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let at_most = job.max_tick().unwrap_or(0);
    ticks_on(&job, 5);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert_eq!(events.matches("\"deadline\"").count(), 1, "{events}");
    let v: serde_json::Value =
        serde_json::from_str(&sb_ckpt(&sb, &dir, &["status", "--json"]).stdout).unwrap();
    assert!(v["deadline_unix"].is_null(), "the deadline is spent: {v:#}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(listed(&sb, &dir).len(), 1, "a deadline fires once");
    // The deadline checkpoint holds the program's state of that moment: the job ends, and a
    // restart from it continues from a tick between the launch and the checkpoint.
    job.kill();
    let restarted = Job::spawn(
        "restart from the deadline checkpoint",
        sb.ckpt(&[
            OsString::from("restart"),
            dir.clone().into(),
            "--generation".into(),
            "1".into(),
        ]),
    );
    restarted.wait_tick(at_most + 3, T).unwrap();
    let first = restarted.ticks().first().copied();
    assert!(
        first.is_some_and(|f| f > before && f <= at_most + 1),
        "restored at the deadline's state: first tick {first:?}, launch saw {before}, checkpoint listed at {at_most}\n{}",
        restarted.transcript(20)
    );
    assert!(
        restarted.first_fail().is_none(),
        "{}",
        restarted.transcript(20)
    );
}
