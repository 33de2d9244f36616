//! Inter-process communication beyond pipes and stream sockets: SysV IPC objects,
//! datagram sockets, files mapped shared on tmpfs. Each program checks its own state on
//! every tick; two checkpoint --kill / restart cycles each.

use ckpt_tests::*;

/// Removes the SysV objects the `sysv` program creates in `dir` (keys from ftok), if any.
fn remove_sysv(dir: &std::path::Path) {
    let c = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: ftok and IPC_RMID of the objects whose keys derive from our own directory.
    unsafe {
        for (p, kind) in [(b'S', 0), (b'Q', 1), (b'M', 2), (b'P', 2)] {
            let key = libc::ftok(c.as_ptr(), p as i32);
            if key == -1 {
                continue;
            }
            match kind {
                0 => {
                    let id = libc::semget(key, 0, 0);
                    if id >= 0 {
                        libc::semctl(id, 0, libc::IPC_RMID);
                    }
                }
                1 => {
                    let id = libc::msgget(key, 0);
                    if id >= 0 {
                        libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                }
                _ => {
                    let id = libc::shmget(key, 0, 0);
                    if id >= 0 {
                        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    }
                }
            }
        }
    }
}

/// Runs `name` with TICKS and the sandbox's work directory as arguments.
fn run_in_work(name: &str, ticks: &str) {
    let sb = Sandbox::new(name);
    let work = sb.work_dir();
    let r = corpus_cycle(
        &sb,
        name,
        &programs().path(name),
        &[ticks, &work.to_string_lossy()],
    );
    remove_sysv(&work);
    match r {
        Ok(run) => println!("{name}: PASS\n{}", summarize(&run.cycles)),
        Err(e) => panic!("\n{e}"),
    }
}

/// A keyed semaphore set, a message queue with typed messages in flight, a shared segment
/// attached by parent and child (counter under a SEM_UNDO mutex) and a keyed detached
/// segment: ids unchanged for the program, values, messages (order, types, texts) and
/// bytes kept, and the child's SEM_UNDO adjustment still undone by the kernel when it dies
/// after the second restart.
#[test]
fn sysv_ipc() {
    run_in_work("sysv", "300");
}

/// UNIX datagram and seqpacket socketpairs, a named (path) and an abstract datagram socket
/// receiving from another process, a TCP connection over IPv6 loopback and a bound UDP
/// socket, with messages waiting in every queue at each checkpoint: after two restarts
/// every message arrives once, in order, with its length (boundaries kept) and bytes, from
/// the same sender address; the UDP socket keeps its address and port.
#[test]
fn message_sockets() {
    run_in_work("dgram", "300");
}

/// Files on tmpfs mapped MAP_SHARED (a POSIX shm object shared by parent and child with a
/// process-shared mutex and condition variable in it, and a /dev/shm file), removed after
/// each `checkpoint --kill` as a job's cleanup or a reboot would: each restart writes them
/// back from the image and maps them again — the mappings are the files again (pread
/// matches), shared (the condition variable still wakes the parent), contents intact.
#[test]
fn tmpfs_files_mapped_shared() {
    let sb = Sandbox::new("tmpfs");
    let tag = format!("ckpt-tmpfs-{}", std::process::id());
    let files = [
        format!("/dev/shm/{tag}-shm"),
        format!("/dev/shm/{tag}-data"),
    ];
    let run = || -> Result<String, String> {
        let mut job = sb.launch("tmpfs", &programs().path("tmpfs"), &["300", &tag]);
        job.wait_tick(3, START_TIMEOUT)?;
        let mut log = String::new();
        for cycle in 1..=2 {
            let before = job.max_tick().unwrap_or(0);
            let ck = sb.checkpoint(true);
            if !ck.success() {
                return Err(format!("checkpoint {cycle} failed:\n{}", ck.report()));
            }
            job.wait_exit(DIE_TIMEOUT)?;
            for f in &files {
                std::fs::remove_file(f).map_err(|e| format!("cycle {cycle}: removing {f}: {e}"))?;
            }
            let new = sb.restart(&format!("tmpfs #{cycle}"));
            let first =
                new.wait_for_line(|l| l.tick().is_some() || l.is_fail(), RESTART_TIMEOUT)?;
            if first.is_fail() {
                return Err(format!(
                    "restart {cycle}: {}\n{}",
                    first.text,
                    new.transcript(20)
                ));
            }
            let t = first.tick().unwrap();
            if t <= before {
                return Err(format!(
                    "restart {cycle} went back to tick {t} (had {before})"
                ));
            }
            new.wait_tick(t + 3, START_TIMEOUT)?;
            log.push_str(&format!("cycle {cycle}: tick {before} -> {t}\n"));
            job = new;
        }
        let st = job.wait_exit(FINISH_TIMEOUT)?;
        if let Some(f) = job.first_fail() {
            return Err(format!("after restart 2: {f}"));
        }
        check_consecutive("tmpfs", &job)?;
        if !st.success() || !job.stdout_lines().iter().any(|l| l == "PASS") {
            return Err(format!(
                "ended with {}\n{}",
                describe(Some(st)),
                job.transcript(20)
            ));
        }
        Ok(log)
    };
    let r = run();
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    match r {
        Ok(log) => println!("tmpfs: PASS\n{log}"),
        Err(e) => panic!("\n{e}"),
    }
}

/// A pidfd kept open across restarts and new `pidfd_open`s of a child's (virtual) pid
/// signal that very child; `/proc/<pid>/...` paths of the job's processes opened by name
/// (open, fopen, opendir, access) are those processes'; `waitid(P_PIDFD)` reaps the child
/// with its pid.
///
/// Ignored in CI for now: it failed once in a clean-clone CI run (second restart: the
/// child's shared counter read 1 instead of 15, as if the shared memory came back zeroed)
/// and could not be reproduced by hand, even with pids wrapping around between restarts.
/// Run it with `./tests/run.sh --test ipc -- --ignored`; issue #4 tracks it.
#[test]
#[ignore = "intermittent failure in CI under investigation (issue #4)"]
fn pidfds_and_proc_paths() {
    run_in_work("procpid", "300");
}

/// A client connected to a listening socket (UNIX, then TCP) that has not accepted it yet:
/// the checkpoint is refused with a message naming the listening socket, and the job runs
/// on to PASS (it accepts at the end and finds the bytes).
#[test]
fn connections_waiting_to_be_accepted_are_refused() {
    let sb = Sandbox::new("pending");
    let work = sb.work_dir();
    let w = work.to_string_lossy().into_owned();
    for (mode, listener) in [
        ("unix", format!("{w}/l.sock")),
        ("tcp", "127.0.0.1:".to_string()),
    ] {
        let mut job = sb.launch("pending", &programs().path("pending"), &["60", &w, mode]);
        job.wait_tick(3, START_TIMEOUT).unwrap();
        let ck = sb.checkpoint(false);
        assert!(
            !ck.success(),
            "{mode}: the checkpoint succeeded:\n{}",
            ck.report()
        );
        assert!(
            ck.stderr.contains("has not accepted the connection yet")
                && ck.stderr.contains(&format!("listening socket {listener}")),
            "{mode}: unexpected refusal:\n{}",
            ck.report()
        );
        let st = job.wait_exit(FINISH_TIMEOUT).unwrap();
        assert!(
            st.success() && job.stdout_lines().iter().any(|l| l == "PASS"),
            "{mode}: the job did not run on to PASS after the refused checkpoint:\n{}",
            job.transcript(20)
        );
    }
}

/// Standalone, the programs pass, and detect damage to their own state.
#[test]
fn ipc_programs_self_check() {
    let sb = Sandbox::new("ipc-self");
    for name in ["sysv", "dgram", "tmpfs", "procpid", "pending"] {
        let work = sb.work_dir().join(name);
        std::fs::create_dir_all(&work).unwrap();
        // tmpfs takes a name tag, the others a directory.
        let tag = |k: &str| format!("ckpt-self-{}-{k}", std::process::id());
        let w = if name == "tmpfs" {
            tag("a")
        } else {
            work.to_string_lossy().into_owned()
        };
        let prog = programs().path(name);
        let t = std::time::Duration::from_secs(60);
        let (out, lines) = run_standalone(&prog, &["12", &w], &[], t);
        assert!(
            out.success() && lines.last().map(String::as_str) == Some("PASS"),
            "{}",
            out.report()
        );
        let work2 = sb.work_dir().join(format!("{name}-corrupt"));
        std::fs::create_dir_all(&work2).unwrap();
        let w2 = if name == "tmpfs" {
            tag("b")
        } else {
            work2.to_string_lossy().into_owned()
        };
        let (out, lines) = run_standalone(&prog, &["12", &w2], &[("CKPT_TEST_CORRUPT", "3")], t);
        remove_sysv(&work);
        remove_sysv(&work2);
        for k in ["a-shm", "a-data", "b-shm", "b-data"] {
            let _ = std::fs::remove_file(format!("/dev/shm/{}", tag(k)));
        }
        assert!(
            !out.success() && lines.iter().any(|l| l.starts_with("FAIL ")),
            "{}",
            out.report()
        );
    }
}
