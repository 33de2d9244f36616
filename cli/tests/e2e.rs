//! End-to-end tests of `ckpt` and `ckpt-coordinatord` with real processes: the coordinator
//! binary runs on a temporary directory, and fake *processes* written here speak the real
//! protocol over its socket (Hello, BarrierReached for every phase, a real image written
//! with `ckpt_image`, Written). Every process a test starts is killed by a guard.

use ckpt_image::{
    write_image_atomically, CkptDir, Entry, MmFields, ProcAttrs, ProcessMeta, Prot, Region,
    RegionKind, Requirements, SectionKind, ThreadMeta,
};
use ckpt_protocol::{
    read_msg, write_msg, ImageWritten, Message, Phase, ProcessInfo, Role, Status, PROTOCOL_VERSION,
};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------ helpers

fn ckpt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ckpt"))
}

/// The coordinator binary next to `ckpt` (built on first use: it belongs to another package).
fn coordinatord_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = ckpt_bin().parent().unwrap().to_path_buf();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "ckpt-coordinatord"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.file_name().unwrap() == "release" {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build");
            assert!(st.success(), "building ckpt-coordinatord failed");
            let bin = dir.join("ckpt-coordinatord");
            assert!(bin.is_file(), "{} missing", bin.display());
            bin
        })
        .clone()
}

/// A temporary directory (short path: sockets must fit in 107 bytes), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ckpt-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a process by pid when dropped.
struct KillOnDrop {
    pid: i32,
    child: Option<Child>,
}

impl KillOnDrop {
    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        } else if self.pid > 0 {
            // SAFETY: kill(2) of a pid this test started (read from its pid file).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}

/// A coordinator in the foreground (a child of the test) on `dir`.
struct Coord {
    guard: KillOnDrop,
    socket: PathBuf,
}

fn start_coordinator(dir: &Path, extra: &[&str]) -> Coord {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(coordinatord_bin())
        .arg("--ckpt-dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ckpt-coordinatord");
    let guard = KillOnDrop {
        pid: child.id() as i32,
        child: Some(child),
    };
    let socket = dir.join("coordinator.sock");
    let t0 = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Coord { guard, socket }
}

fn ckpt(args: &[&str]) -> Output {
    Command::new(ckpt_bin())
        .args(args)
        .env_remove("CKPT_DIR")
        .env("CKPT_LIBEXEC", coordinatord_bin().parent().unwrap())
        .output()
        .expect("run ckpt")
}

fn ckpt_d(dir: &Path, args: &[&str]) -> Output {
    let mut a = args.to_vec();
    let d = dir.to_str().unwrap();
    a.extend(["--ckpt-dir", d]);
    ckpt(&a)
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------- the fake process

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behavior {
    Normal,
    /// Sends Failed when asked for this phase (once; afterwards normal).
    FailAt(Phase),
    /// Closes its connection when asked for this phase.
    DisconnectAt(Phase),
}

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Barrier(u64, Phase),
    Abort(u64),
    Terminate,
}

struct FakeProcess {
    vpid: i32,
    seen: mpsc::Receiver<Seen>,
    thread: Option<JoinHandle<()>>,
    stream: UnixStream,
}

impl FakeProcess {
    fn join(socket: &Path, vpid: i32, behavior: Behavior) -> FakeProcess {
        let mut s = UnixStream::connect(socket).expect("connect to the coordinator");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let info = ProcessInfo {
            vpid,
            real_pid: 50_000 + vpid,
            host: "testhost".into(),
            program: format!("fake{vpid}"),
            restored_from: None,
            features: vec!["snapshot=test".into()],
            rank: None,
        };
        write_msg(
            &mut s,
            &Message::Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::Process(info),
            },
        )
        .unwrap();
        match read_msg(&mut s).unwrap() {
            Message::Welcome { .. } => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        s.set_read_timeout(None).unwrap();
        let (tx, rx) = mpsc::channel();
        let stream = s.try_clone().unwrap();
        let thread = std::thread::spawn(move || run_fake(s, vpid, behavior, tx));
        FakeProcess {
            vpid,
            seen: rx,
            thread: Some(thread),
            stream,
        }
    }

    /// Everything it received so far.
    fn drain(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }

    fn wait_for(&self, want: impl Fn(&Seen) -> bool) -> Seen {
        loop {
            match self.seen.recv_timeout(Duration::from_secs(20)) {
                Ok(s) if want(&s) => return s,
                Ok(_) => {}
                Err(e) => panic!("fake process {}: {e}", self.vpid),
            }
        }
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn meta(vpid: i32, generation: u64) -> ProcessMeta {
    ProcessMeta {
        meta_version: ckpt_image::META_VERSION,
        vpid,
        real_pid: 50_000 + vpid,
        vppid: 1,
        pgid: 0,
        sid: 0,
        program: format!("fake{vpid}"),
        exe: "/usr/bin/fake".into(),
        argv: vec![format!("fake{vpid}"), "--flag".into(), "two words".into()],
        host: "testhost".into(),
        uid: 1000,
        gid: 1000,
        created_unix: 1_700_000_000,
        generation,
        requirements: Requirements {
            kernel_release: "6.1.0-test".into(),
            vdso_hash: 1,
            xsave_features: 7,
            page_size: 4096,
        },
        regions: vec![Region {
            start: 0x10000,
            end: 0x12000,
            prot: Prot {
                read: true,
                write: true,
                exec: false,
            },
            shared: false,
            kind: RegionKind::Anon,
            stored_bytes: 4096,
        }],
        threads: vec![
            ThreadMeta {
                vtid: vpid,
                name: "main".into(),
                runtime: false,
            },
            ThreadMeta {
                vtid: vpid + 1,
                name: "ckpt".into(),
                runtime: true,
            },
        ],
        files: vec![ckpt_image::FdMeta {
            fd: 3,
            flags: libc::O_RDWR | libc::O_APPEND,
            cloexec: false,
            kind: ckpt_image::FdKind::Regular {
                path: "/tmp/data.txt".into(),
                offset: 42,
                dev: 1,
                ino: 2,
            },
        }],
        attrs: ProcAttrs {
            cwd: "/tmp".into(),
            umask: 0o22,
            rlimits: vec![],
            mm: MmFields::default(),
            auxv: vec![],
        },
        entry: Entry::default(),
    }
}

fn write_fake_image(dir: &Path, vpid: i32, generation: u64) -> (String, u64) {
    let file = CkptDir::image_file_name(vpid);
    let bytes = write_image_atomically(&dir.join(&file), |w| {
        w.add_section(
            SectionKind::Meta,
            &serde_json::to_vec(&meta(vpid, generation)).unwrap(),
        )?;
        w.begin_pages()?;
        let run = w.write_pages(0x10000, &[vpid as u8; 4096])?;
        w.end_pages()?;
        w.add_page_map(&[run])?;
        Ok(())
    })
    .expect("write the fake image");
    (file, bytes)
}

fn run_fake(mut s: UnixStream, vpid: i32, mut behavior: Behavior, tx: mpsc::Sender<Seen>) {
    let mut image_dir: Option<PathBuf> = None;
    loop {
        let msg = match read_msg(&mut s) {
            Ok(m) => m,
            Err(_) => return,
        };
        match msg {
            Message::Barrier {
                generation,
                phase,
                dir,
            } => {
                let _ = tx.send(Seen::Barrier(generation, phase));
                match behavior {
                    Behavior::FailAt(p) if p == phase => {
                        behavior = Behavior::Normal;
                        let _ = write_msg(
                            &mut s,
                            &Message::Failed {
                                generation,
                                error: "simulated failure: no space left on device".into(),
                            },
                        );
                        continue;
                    }
                    Behavior::DisconnectAt(p) if p == phase => {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    _ => {}
                }
                if phase == Phase::Snapshot {
                    image_dir = Some(PathBuf::from(dir));
                }
                let _ = write_msg(&mut s, &Message::BarrierReached { generation, phase });
                if phase == Phase::Resume {
                    let (file, bytes) =
                        write_fake_image(image_dir.as_ref().unwrap(), vpid, generation);
                    let _ = write_msg(
                        &mut s,
                        &Message::Written(ImageWritten {
                            generation,
                            file,
                            bytes,
                            stopped_seconds: 0.01,
                            write_seconds: 0.02,
                        }),
                    );
                }
            }
            Message::Abort { generation, .. } => {
                let _ = tx.send(Seen::Abort(generation));
            }
            Message::Terminate => {
                let _ = tx.send(Seen::Terminate);
                return;
            }
            _ => {}
        }
    }
}

fn gen_numbers(dir: &Path) -> Vec<(u64, bool)> {
    CkptDir::open(dir)
        .unwrap()
        .generations()
        .unwrap()
        .iter()
        .map(|g| (g.number, g.is_complete()))
        .collect()
}

// ------------------------------------------------------------------------------- tests

#[test]
fn checkpoint_commits_a_generation() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let p1 = FakeProcess::join(&c.socket, 101, Behavior::Normal);
    let _p2 = FakeProcess::join(&c.socket, 102, Behavior::Normal);

    let out = ckpt_d(&dir, &["checkpoint", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let s: ckpt_protocol::CheckpointSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.generation, 1);
    assert!(s.bytes > 8192);
    assert_eq!(gen_numbers(&dir), vec![(1, true)]);
    let m = CkptDir::open(&dir)
        .unwrap()
        .newest_complete()
        .unwrap()
        .unwrap()
        .manifest
        .unwrap();
    assert_eq!(
        m.processes.iter().map(|p| p.vpid).collect::<Vec<_>>(),
        vec![101, 102]
    );
    assert_eq!(m.total_bytes, s.bytes);
    // Every phase, in order.
    let phases = [
        Phase::Suspend,
        Phase::Drain,
        Phase::Snapshot,
        Phase::Refill,
        Phase::Resume,
    ];
    assert_eq!(
        p1.drain(),
        phases
            .iter()
            .map(|p| Seen::Barrier(1, *p))
            .collect::<Vec<_>>()
    );

    // Human output names the generation and its path.
    let out = ckpt_d(&dir, &["checkpoint"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.contains("checkpoint generation 2 committed"), "{o}");
    assert!(o.contains("gen-000002"), "{o}");

    // list (no coordinator needed) and inspect.
    let out = ckpt_d(&dir, &["list", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["newest_complete"], true);
    assert_eq!(v[1]["processes"].as_array().unwrap().len(), 2);
    let out = ckpt_d(&dir, &["list"]);
    assert!(
        text(&out.stdout).contains("complete*"),
        "{}",
        text(&out.stdout)
    );

    let out = ckpt(&["inspect", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generation"], 2);
    assert_eq!(v["processes"][0]["meta"]["vpid"], 101);
    assert_eq!(v["processes"][0]["stored_bytes"], 4096);
    let out = ckpt(&["inspect", dir.to_str().unwrap(), "--generation", "1"]);
    let o = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    for want in [
        "generation 1",
        "vpid 101",
        "fake102",
        "'two words'",
        "rw-p",
        "/tmp/data.txt",
        "O_RDWR|O_APPEND",
        "threads: 2",
    ] {
        assert!(o.contains(want), "missing {want:?} in:\n{o}");
    }
    // A single image file.
    let img = dir.join("gen-000001/proc-102.img");
    let out = ckpt(&["inspect", img.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("vpid 102"));

    // The journal.
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    let kinds: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "checkpoint_committed")
            .count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "process_joined").count(),
        2,
        "{kinds:?}"
    );
    drop(c);
}

#[test]
fn failed_process_aborts_and_job_goes_on() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let good = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    let _bad = FakeProcess::join(&c.socket, 2, Behavior::FailAt(Phase::Drain));

    let out = ckpt_d(&dir, &["checkpoint"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.starts_with("ckpt: error: "), "{e}");
    assert!(e.contains("vpid 2") && e.contains("fake2"), "{e}");
    assert!(e.contains("no space left on device"), "{e}");
    assert!(e.contains("drain"), "{e}");
    good.wait_for(|s| *s == Seen::Abort(1));
    assert!(
        gen_numbers(&dir).is_empty(),
        "the failed generation is removed"
    );

    // The coordinator still runs, and the next checkpoint (generation 2) succeeds.
    let out = ckpt_d(&dir, &["status", "--json"]);
    assert!(out.status.success());
    let st: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st.processes.len(), 2);
    assert!(!st.busy);
    let out = ckpt_d(&dir, &["checkpoint", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(gen_numbers(&dir), vec![(2, true)]);
    let ev = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(ev.contains("\"checkpoint_failed\""), "{ev}");
}

#[test]
fn disconnect_mid_checkpoint_fails_cleanly() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let good = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    let _gone = FakeProcess::join(&c.socket, 2, Behavior::DisconnectAt(Phase::Snapshot));
    let out = ckpt_d(&dir, &["checkpoint"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("vpid 2") && e.contains("disconnected during the snapshot phase"),
        "{e}"
    );
    good.wait_for(|s| *s == Seen::Abort(1));
    assert!(gen_numbers(&dir).is_empty());
    let out = ckpt_d(&dir, &["status", "--json"]);
    let st: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        st.processes.iter().map(|p| p.info.vpid).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(c.guard.alive());
}

#[test]
fn status_json_and_human() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &["--interval", "1h"]);
    let _p = FakeProcess::join(&c.socket, 7, Behavior::Normal);
    let out = ckpt_d(&dir, &["status", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let st: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st.protocol_version, PROTOCOL_VERSION);
    assert_eq!(st.coordinator_pid, c.guard.pid);
    assert_eq!(st.processes[0].info.vpid, 7);
    assert_eq!(st.processes[0].state, "running");
    assert_eq!(st.interval_seconds, Some(3600.0));
    assert!(st.next_checkpoint_in.unwrap() > 3500.0);
    assert_eq!(PathBuf::from(&st.socket), c.socket);
    let out = ckpt_d(&dir, &["status"]);
    let o = text(&out.stdout);
    assert!(
        o.contains("fake7") && o.contains("snapshot=test") && o.contains("next checkpoint: in"),
        "{o}"
    );
}

#[test]
fn protocol_version_mismatch_is_refused() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let mut s = UnixStream::connect(&c.socket).unwrap();
    write_msg(
        &mut s,
        &Message::Hello {
            protocol_version: 999,
            role: Role::Control,
        },
    )
    .unwrap();
    match read_msg(&mut s).unwrap() {
        Message::Refused { reason } => {
            assert!(reason.contains("999"), "{reason}");
            assert!(
                reason.contains(&format!("version {PROTOCOL_VERSION}")),
                "{reason}"
            );
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // Not a Hello first: refused too.
    let mut s = UnixStream::connect(&c.socket).unwrap();
    write_msg(&mut s, &Message::GetStatus).unwrap();
    assert!(matches!(read_msg(&mut s).unwrap(), Message::Refused { .. }));
}

#[test]
fn no_coordinator_gives_a_clear_error() {
    let t = TempDir::new();
    let dir = t.path().join("nothing-here");
    for cmd in ["checkpoint", "status"] {
        let out = ckpt_d(&dir, &[cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let e = text(&out.stderr);
        assert!(
            e.contains(&format!(
                "no job is running with checkpoint directory {}",
                dir.display()
            )),
            "{e}"
        );
        assert!(
            e.contains("coordinator.sock") && e.contains("ckpt launch"),
            "{e}"
        );
    }
    let out = ckpt_d(&dir, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no checkpoint directory"));
}

#[test]
fn retention_keeps_k_generations() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &["--keep", "2"]);
    let _p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    for _ in 0..4 {
        let out = ckpt_d(&dir, &["checkpoint"]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    }
    assert_eq!(gen_numbers(&dir), vec![(3, true), (4, true)]);
}

#[test]
fn numbering_continues_after_a_new_coordinator() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    {
        let c = start_coordinator(&dir, &[]);
        let _p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
        assert!(ckpt_d(&dir, &["checkpoint"]).status.success());
    }
    let c = start_coordinator(&dir, &[]);
    let _p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    let out = ckpt_d(&dir, &["checkpoint", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let s: ckpt_protocol::CheckpointSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.generation, 2);
}

#[test]
fn kill_terminates_the_job_after_commit() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    let out = ckpt_d(&dir, &["checkpoint", "--kill"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    p.wait_for(|s| *s == Seen::Terminate);
    assert_eq!(gen_numbers(&dir), vec![(1, true)]);
}

#[test]
fn interval_checkpoints_happen() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &["--interval", "300ms"]);
    let _p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    wait_until("two interval checkpoints", Duration::from_secs(20), || {
        gen_numbers(&dir).iter().filter(|g| g.1).count() >= 2
    });
}

#[test]
fn exits_when_idle() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let mut c = start_coordinator(&dir, &["--exit-when-idle", "1"]);
    let p = FakeProcess::join(&c.socket, 1, Behavior::Normal);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.guard
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "a process is connected"
    );
    drop(p);
    let child = c.guard.child.as_mut().unwrap();
    wait_until("idle exit", Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(child.try_wait().unwrap().unwrap().success());
    assert!(!dir.join("coordinator.sock").exists());
    assert!(!dir.join("coordinator.pid").exists());
}

#[test]
fn a_second_coordinator_for_the_same_dir_is_refused() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let c = start_coordinator(&dir, &[]);
    let out = Command::new(coordinatord_bin())
        .arg("--ckpt-dir")
        .arg(&dir)
        .arg("--daemon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!(
            "another coordinator (pid {}) is already running",
            c.guard.pid
        )),
        "{e}"
    );
    // Too long a socket path.
    let long = t.path().join("d".repeat(110));
    let out = Command::new(coordinatord_bin())
        .arg("--ckpt-dir")
        .arg(&long)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("at most 107 bytes") && e.contains("--socket"),
        "{e}"
    );
}

#[test]
fn launch_execs_the_program_with_the_runtime_env() {
    let t = TempDir::new();
    let dir = t.path().join("job");
    let lib = t.path().join("libckpt.so");
    // Used only when no libckpt.so is built next to `ckpt` (then nothing is preloaded for
    // real: an empty file is skipped by the dynamic loader with a warning).
    std::fs::write(&lib, b"").unwrap();
    let script =
        "echo \"DIR=$CKPT_DIR\"; echo \"SOCK=$CKPT_SOCKET\"; echo \"PRE=$LD_PRELOAD\"; exit 7";
    let out = Command::new(ckpt_bin())
        .args([
            "launch",
            "--ckpt-dir",
            dir.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg(script)
        .env("CKPT_LIBEXEC", coordinatord_bin().parent().unwrap())
        .env("CKPT_LIB", &lib)
        .env("LD_PRELOAD", "")
        .output()
        .unwrap();
    // Whatever happens, stop the daemon the launch started.
    let pid: i32 = std::fs::read_to_string(dir.join("coordinator.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let daemon = KillOnDrop { pid, child: None };
    assert!(
        pid > 0,
        "no coordinator pid file; stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.contains(&format!("DIR={}", dir.display())), "{o}");
    assert!(
        o.contains(&format!("SOCK={}", dir.join("coordinator.sock").display())),
        "{o}"
    );
    assert!(o.contains("PRE=/"), "{o}");
    assert!(o.contains("libckpt.so"), "{o}");
    assert!(daemon.alive());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);

    // While a process of the job is connected, a second launch is refused.
    let _p = FakeProcess::join(&dir.join("coordinator.sock"), 1, Behavior::Normal);
    let out = Command::new(ckpt_bin())
        .args(["launch", "--ckpt-dir", dir.to_str().unwrap(), "--", "true"])
        .env("CKPT_LIBEXEC", coordinatord_bin().parent().unwrap())
        .env("CKPT_LIB", &lib)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("a job is already running with checkpoint directory"),
        "{e}"
    );

    // A program that does not exist: 127, like a shell.
    let dir2 = t.path().join("job2");
    let out = Command::new(ckpt_bin())
        .args([
            "launch",
            "--ckpt-dir",
            dir2.to_str().unwrap(),
            "--",
            "/nonexistent/program",
        ])
        .env("CKPT_LIBEXEC", coordinatord_bin().parent().unwrap())
        .env("CKPT_LIB", &lib)
        .output()
        .unwrap();
    let pid2: i32 = std::fs::read_to_string(dir2.join("coordinator.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let _daemon2 = KillOnDrop {
        pid: pid2,
        child: None,
    };
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("cannot run /nonexistent/program"));
}

#[test]
fn inspect_rejects_bad_images() {
    let t = TempDir::new();
    let bad = t.path().join("bad.img");
    std::fs::write(&bad, b"this is not an image at all, just some text").unwrap();
    let out = ckpt(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("ckpt: error:") && e.contains("bad.img") && e.contains("not a ckpt image"),
        "{e}"
    );
    let empty = t.path().join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    let out = ckpt(&["inspect", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no complete generation"));
}

#[test]
fn help_names_the_default_dir_and_env() {
    let out = Command::new(ckpt_bin())
        .arg("--help")
        .env("CKPT_DIR", "/some/where")
        .output()
        .unwrap();
    let o = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        o.contains("Default checkpoint directory here: /some/where"),
        "{o}"
    );
    assert!(o.contains("CKPT_LIB") && o.contains("Exit status"), "{o}");
    let out = Command::new(ckpt_bin())
        .args(["checkpoint", "--help"])
        .env_remove("CKPT_DIR")
        .env("XDG_STATE_HOME", "/xdg")
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("/xdg/ckpt/default"));
}
