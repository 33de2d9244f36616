//! Load generator for `ckpt-coordinatord`: N simulated processes on one thread (epoll over
//! N UNIX-socket connections) speak the real protocol — authenticated handshake, every
//! barrier phase, an image file (empty) and `Written` — while a control client asks for
//! checkpoints and times them.
//!
//! ```text
//! cargo run --release --manifest-path bench/coordinator/Cargo.toml -- \
//!     --coordinator target/release/ckpt-coordinatord --n 100,1000,10000 --rounds 5
//! ```
//!
//! For each N it starts a fresh coordinator on a directory under /dev/shm (so that the
//! image files and the manifest cost little: this measures the coordinator, not a disk),
//! joins N processes, runs `--rounds` checkpoints and prints, per round: the whole
//! checkpoint (request -> 5 barrier rounds -> N images written -> manifest committed ->
//! reply), the 5 barrier rounds alone, and one barrier round on average; then the
//! coordinator's resident memory (VmRSS, VmHWM).

use ckpt_protocol::auth::{client_handshake, read_secret, SECRET_FILE};
use ckpt_protocol::{
    decode_frame, encode, read_msg, write_msg, ImageWritten, Message, Phase, ProcessInfo, Role,
    MAX_FRAME,
};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    coordinator: PathBuf,
    ns: Vec<usize>,
    rounds: usize,
    base: PathBuf,
    json: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        coordinator: PathBuf::from("target/release/ckpt-coordinatord"),
        ns: vec![100, 1000, 10000],
        rounds: 5,
        base: PathBuf::from("/dev/shm"),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--coordinator" => a.coordinator = PathBuf::from(v()),
            "--n" => {
                a.ns = v()
                    .split(',')
                    .map(|x| x.parse().expect("--n N[,N...]"))
                    .collect()
            }
            "--rounds" => a.rounds = v().parse().expect("--rounds R"),
            "--base" => a.base = PathBuf::from(v()),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "usage: ckpt-coordinator-bench [--coordinator PATH] [--n 100,1000,10000] \
                     [--rounds 5] [--base /dev/shm] [--json]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn raise_nofile() {
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

struct Coord {
    child: Child,
    dir: PathBuf,
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(args: &Args, n: usize) -> Coord {
    let dir = args
        .base
        .join(format!("ckpt-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = Command::new(&args.coordinator)
        .arg("--ckpt-dir")
        .arg(&dir)
        .args(["--keep", "2", "--phase-timeout", "600s"])
        .env("CKPT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", args.coordinator.display()));
    let sock = dir.join("coordinator.sock");
    let t0 = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Coord { child, dir }
}

struct Sim {
    s: UnixStream,
    vpid: i32,
    buf: Vec<u8>,
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        st.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

#[derive(Default, Clone, Copy)]
struct Round {
    total: f64,
    barriers: f64,
}

/// Asks for one checkpoint and serves every simulated process until it is answered.
/// `barriers`: from the first Suspend barrier received to the last Resume answered.
fn run_round(epfd: i32, sims: &mut [Sim], ctl: &mut UnixStream) -> Round {
    let t0 = Instant::now();
    write_msg(ctl, &Message::Checkpoint { kill: false }).unwrap();
    ctl.set_nonblocking(true).unwrap();
    let mut ctl_buf = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    let mut first_suspend: Option<Instant> = None;
    let mut resume_done: Option<Instant> = None;
    let mut resumed = 0usize;
    let mut scratch = vec![0u8; 1 << 16];
    let ctl_token = u64::MAX;
    let total = sims.len();
    loop {
        // SAFETY: epoll_wait into a valid array.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 1000) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        for ev in &events[..n as usize] {
            if ev.u64 == ctl_token {
                loop {
                    match ctl.read(&mut scratch) {
                        Ok(0) => panic!("the coordinator closed the control connection"),
                        Ok(k) => ctl_buf.extend_from_slice(&scratch[..k]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("control read: {e}"),
                    }
                }
                if let Some((m, _)) = decode_frame(&ctl_buf, MAX_FRAME).unwrap() {
                    ctl.set_nonblocking(false).unwrap();
                    match m {
                        Message::CheckpointDone(_) => {}
                        other => panic!("checkpoint failed: {other:?}"),
                    }
                    let end = Instant::now();
                    return Round {
                        total: (end - t0).as_secs_f64(),
                        barriers: (resume_done.unwrap_or(end) - first_suspend.unwrap_or(t0))
                            .as_secs_f64(),
                    };
                }
                continue;
            }
            let sim = &mut sims[ev.u64 as usize];
            loop {
                match sim.s.read(&mut scratch) {
                    Ok(0) => panic!("the coordinator closed process {}", sim.vpid),
                    Ok(k) => {
                        sim.buf.extend_from_slice(&scratch[..k]);
                        if k < scratch.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            let mut pos = 0;
            while let Some((m, used)) = decode_frame(&sim.buf[pos..], MAX_FRAME).unwrap() {
                pos += used;
                match m {
                    Message::Barrier {
                        generation,
                        phase,
                        dir,
                        ..
                    } => {
                        if phase == Phase::Suspend && first_suspend.is_none() {
                            first_suspend = Some(Instant::now());
                        }
                        let mut out = encode(&Message::BarrierReached { generation, phase });
                        if phase == Phase::Resume {
                            resumed += 1;
                            if resumed == total {
                                resume_done = Some(Instant::now());
                            }
                            // The image: an empty file (the coordinator checks its size).
                            let file = format!("proc-{}.img", sim.vpid);
                            std::fs::File::create(Path::new(&dir).join(&file)).unwrap();
                            out.extend(encode(&Message::Written(ImageWritten {
                                generation,
                                file,
                                bytes: 0,
                                stopped_seconds: 0.0,
                                write_seconds: 0.0,
                            })));
                        }
                        // A few hundred bytes: a socket buffer always takes them at once.
                        let k = sim.s.write(&out).expect("write to the coordinator");
                        assert_eq!(k, out.len(), "short write");
                    }
                    Message::Abort { reason, .. } => panic!("aborted: {reason}"),
                    _ => {}
                }
            }
            sim.buf.drain(..pos);
        }
    }
}

fn bench(args: &Args, n: usize) -> String {
    let coord = start(args, n);
    let dir = coord.dir.clone();
    let sock = dir.join("coordinator.sock");
    let secret = read_secret(&dir.join(SECRET_FILE)).expect("the job secret");
    let t_join = Instant::now();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = UnixStream::connect(&sock).expect("connect");
        let vpid = 100_000 + i as i32;
        let info = ProcessInfo {
            vpid,
            real_pid: vpid,
            host: "bench".into(),
            program: "sim".into(),
            restored_from: None,
            features: vec![],
            rank: Some(i as i32),
            step: None,
        };
        client_handshake(&mut s, Role::Process(info), &secret).expect("handshake");
        sims.push(Sim {
            s,
            vpid,
            buf: Vec::new(),
        });
    }
    let join_s = t_join.elapsed().as_secs_f64();
    // SAFETY: epoll_create1 has no preconditions.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (i, sim) in sims.iter().enumerate() {
        sim.s.set_nonblocking(true).unwrap();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: adding a valid fd with a valid event.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, sim.s.as_raw_fd(), &mut ev) };
    }
    let mut ctl = UnixStream::connect(&sock).unwrap();
    client_handshake(&mut ctl, Role::Control, &secret).unwrap();
    // Everyone joined?
    write_msg(&mut ctl, &Message::GetStatus).unwrap();
    match read_msg(&mut ctl).unwrap() {
        Message::Status(st) => assert_eq!(st.processes.len(), n),
        other => panic!("{other:?}"),
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::MAX,
    };
    // SAFETY: as above.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, ctl.as_raw_fd(), &mut ev) };
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        rounds.push(run_round(epfd, &mut sims, &mut ctl));
    }
    let (rss, hwm) = rss_kib(coord.child.id());
    // SAFETY: closing our epoll fd.
    unsafe { libc::close(epfd) };
    let med = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (tot, tot_min, tot_max) = med(|r| r.total);
    let (bar, _, _) = med(|r| r.barriers);
    if args.json {
        format!(
            "{{\"n\":{n},\"rounds\":{},\"join_s\":{join_s:.4},\"checkpoint_median_s\":{tot:.4},\"checkpoint_min_s\":{tot_min:.4},\"checkpoint_max_s\":{tot_max:.4},\"barriers_median_s\":{bar:.4},\"barrier_round_s\":{:.5},\"rss_kib\":{rss},\"hwm_kib\":{hwm}}}",
            args.rounds,
            bar / 5.0
        )
    } else {
        format!(
            "N={n:>6}  join {:>8.1} ms | checkpoint median {:>7.1} ms (min {:>6.1}, max {:>6.1}) | 5 barriers {:>7.1} ms, one barrier round {:>6.2} ms | coordinator RSS {:>6.1} MiB (peak {:>6.1} MiB)",
            join_s * 1e3,
            tot * 1e3,
            tot_min * 1e3,
            tot_max * 1e3,
            bar * 1e3,
            bar / 5.0 * 1e3,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        )
    }
}

fn main() {
    let args = parse_args();
    raise_nofile();
    for &n in &args.ns {
        println!("{}", bench(&args, n));
    }
}
