//! Helpers shared by the end-to-end test binaries: the binaries, temporary directories,
//! a coordinator in the foreground, and fake *processes* speaking the real protocol.
#![allow(dead_code)]

use ckpt_image::{
    write_image_atomically, CkptDir, Entry, MmFields, ProcAttrs, ProcessMeta, Prot, Region,
    RegionKind, Requirements, SectionKind, ThreadMeta,
};
use ckpt_protocol::auth::{self, client_handshake, Secret};
use ckpt_protocol::{read_msg, write_msg, ImageWritten, Message, Phase, ProcessInfo, Role};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------ helpers

pub fn ckpt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ckpt"))
}

/// The coordinator binary next to `ckpt` (built on first use: it belongs to another package).
pub fn coordinatord_bin() -> PathBuf {
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
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
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
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a process by pid when dropped.
pub struct KillOnDrop {
    pub pid: i32,
    pub child: Option<Child>,
}

impl KillOnDrop {
    pub fn alive(&self) -> bool {
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
pub struct Coord {
    pub guard: KillOnDrop,
    pub socket: PathBuf,
}

pub fn start_coordinator(dir: &Path, extra: &[&str]) -> Coord {
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

pub fn ckpt(args: &[&str]) -> Output {
    Command::new(ckpt_bin())
        .args(args)
        .env_remove("CKPT_DIR")
        .env("CKPT_LIBEXEC", coordinatord_bin().parent().unwrap())
        .output()
        .expect("run ckpt")
}

pub fn ckpt_d(dir: &Path, args: &[&str]) -> Output {
    let mut a = args.to_vec();
    let d = dir.to_str().unwrap();
    a.extend(["--ckpt-dir", d]);
    ckpt(&a)
}

/// The job secret of a checkpoint directory (created by its coordinator).
pub fn job_secret(dir: &Path) -> Secret {
    auth::read_secret(&dir.join(auth::SECRET_FILE)).expect("read the job secret")
}

pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------- the fake process

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behavior {
    Normal,
    /// Sends Failed when asked for this phase (once; afterwards normal).
    FailAt(Phase),
    /// Closes its connection when asked for this phase.
    DisconnectAt(Phase),
    /// Leaves a half-written image in the generation directory and never answers this
    /// phase (the checkpoint hangs there until something else happens).
    StallAt(Phase),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Barrier(u64, Phase),
    Abort(u64),
    Terminate,
}

pub struct FakeProcess {
    pub vpid: i32,
    pub seen: mpsc::Receiver<Seen>,
    pub thread: Option<JoinHandle<()>>,
    pub stream: UnixStream,
}

impl FakeProcess {
    pub fn join(socket: &Path, vpid: i32, behavior: Behavior) -> FakeProcess {
        FakeProcess::join_job(socket, socket.parent().unwrap(), vpid, behavior)
    }

    /// Joins the coordinator at `socket` of the job whose checkpoint directory is `dir`.
    pub fn join_job(socket: &Path, dir: &Path, vpid: i32, behavior: Behavior) -> FakeProcess {
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
            step: None,
        };
        let secret = job_secret(dir);
        client_handshake(&mut s, Role::Process(info), &secret).expect("join the job");
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
    pub fn drain(&self) -> Vec<Seen> {
        self.seen.try_iter().collect()
    }

    pub fn wait_for(&self, want: impl Fn(&Seen) -> bool) -> Seen {
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

pub fn meta(vpid: i32, generation: u64) -> ProcessMeta {
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
                content: None,
            },
        }],
        attrs: ProcAttrs {
            cwd: "/tmp".into(),
            umask: 0o22,
            rlimits: vec![],
            mm: MmFields::default(),
            auxv: vec![],
        },
        terminal: None,
        entry: Entry::default(),
        zombies: vec![],
        sysv: vec![],
        sem_adj: vec![],
    }
}

pub fn write_fake_image(dir: &Path, vpid: i32, generation: u64) -> (String, u64) {
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

pub fn run_fake(mut s: UnixStream, vpid: i32, mut behavior: Behavior, tx: mpsc::Sender<Seen>) {
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
                ..
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
                    Behavior::StallAt(p) if p == phase => {
                        let _ = std::fs::write(
                            Path::new(&dir).join(format!("proc-{vpid}.img.tmp")),
                            [0u8; 1000],
                        );
                        continue;
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

pub fn gen_numbers(dir: &Path) -> Vec<(u64, bool)> {
    CkptDir::open(dir)
        .unwrap()
        .generations()
        .unwrap()
        .iter()
        .map(|g| (g.number, g.is_complete()))
        .collect()
}
