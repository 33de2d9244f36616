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

/// Standalone, the programs pass, and detect damage to their own state.
#[test]
fn ipc_programs_self_check() {
    let sb = Sandbox::new("ipc-self");
    for name in ["sysv", "dgram"] {
        let work = sb.work_dir().join(name);
        std::fs::create_dir_all(&work).unwrap();
        let w = work.to_string_lossy().into_owned();
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
        let w2 = work2.to_string_lossy().into_owned();
        let (out, lines) = run_standalone(&prog, &["12", &w2], &[("CKPT_TEST_CORRUPT", "3")], t);
        remove_sysv(&work);
        remove_sysv(&work2);
        assert!(
            !out.success() && lines.iter().any(|l| l.starts_with("FAIL ")),
            "{}",
            out.report()
        );
    }
}
