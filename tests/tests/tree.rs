//! Process trees: several processes of one job, checkpointed as one consistent cut and
//! restored together, twice, each verifying its own state.

use ckpt_tests::*;

fn run(name: &str, program: &std::path::Path, args: &[&str]) {
    let sb = Sandbox::new(name);
    match corpus_cycle(&sb, name, program, args) {
        Ok(run) => println!("{name}: PASS\n{}", summarize(&run.cycles)),
        Err(e) => panic!("\n{e}"),
    }
}

/// A parent and two children joined by two pipes exchanging numbered words: no word lost,
/// duplicated or reordered across two restarts; pids, parent pids, kill and waitpid of
/// the children as before.
#[test]
fn parent_two_children_pipes() {
    run("tree", &programs().path("tree"), &["300"]);
}

/// A shell pipeline `produce | square | consume` run by bash: bash, three programs and the
/// two pipes between them are restored together; the consumer checks every line.
#[test]
fn shell_pipeline() {
    run("pipeline", &programs().path("pipeline"), &["300"]);
}

/// A parent and two children sharing MAP_SHARED anonymous memory with a process-shared
/// mutex: after each restart the memory is still one object (the children's writes reach
/// the parent; total = sum of counters) and its contents are intact.
#[test]
fn shared_anonymous_memory() {
    run("shm", &programs().path("shm"), &["300"]);
}

/// A UNIX socketpair and a loopback TCP connection between a parent and a child, with
/// bytes in flight on both, and a listening socket: every word once and in order across
/// two restarts; the listening socket accepts afterwards.
#[test]
fn sockets_between_processes() {
    run("sockets", &programs().path("sockets"), &["300"]);
}

/// Children that ended before the checkpoint and were not yet waited for (one exited with
/// 7, one killed by SIGTERM, and a grandchild zombie of a living child): after each restart
/// they are still waitable (waitid WNOWAIT) with the same pids and statuses, no extra
/// SIGCHLD arrives, and at the end waitpid reaps each with its status.
#[test]
fn zombies_stay_waitable() {
    run("zombies", &programs().path("zombies"), &["300"]);
}

/// A named pipe (FIFO) whose read end the program keeps open: reopened by path.
#[test]
fn fifo_kept_open() {
    let sb = Sandbox::new("fifo");
    let work = sb.work_dir();
    match corpus_cycle(
        &sb,
        "fifo",
        &programs().path("fifo"),
        &["300", &work.to_string_lossy()],
    ) {
        Ok(run) => println!("fifo: PASS\n{}", summarize(&run.cycles)),
        Err(e) => panic!("\n{e}"),
    }
}

/// Standalone, both programs pass, and detect damage to their own state.
#[test]
fn tree_programs_self_check() {
    // Everything a test starts must run while it holds a sandbox (the global test lock):
    // another test's cleanup sweeps this process's stray children.
    let _sb = Sandbox::new("tree-self");
    for (name, args) in [
        ("tree", vec!["12"]),
        ("pipeline", vec!["12"]),
        ("shm", vec!["12"]),
        ("zombies", vec!["12"]),
    ] {
        let prog = programs().path(name);
        let t = std::time::Duration::from_secs(60);
        let (out, lines) = run_standalone(&prog, &args, &[], t);
        assert!(
            out.success() && lines.last().map(String::as_str) == Some("PASS"),
            "{}",
            out.report()
        );
        let (out, lines) = run_standalone(&prog, &args, &[("CKPT_TEST_CORRUPT", "3")], t);
        assert!(
            !out.success() && lines.iter().any(|l| l.starts_with("FAIL ")),
            "{}",
            out.report()
        );
    }
}

/// A launcher (a program named in CKPT_REEXEC; `srun` by default) is not restored but
/// executed again at restart, in its place in the tree: it starts from the beginning with
/// its arguments and environment, keeps its pid (the restored shell still waits for it and
/// gets its exit status), and the shell is not rerun (what it did before is not repeated).
#[test]
fn launcher_is_reexecuted_in_place() {
    use std::ffi::OsString;
    let t = std::time::Duration::from_secs(120);
    let sb = Sandbox::new("reexec");
    let counter = programs().path("counter");
    let script = format!("echo start; {} 150; echo rc=$?", counter.display());
    let a: Vec<OsString> = vec![
        "launch".into(),
        "--ckpt-dir".into(),
        sb.ckpt_dir().into(),
        "--".into(),
        "/bin/bash".into(),
        "-c".into(),
        script.into(),
    ];
    let mut cmd = sb.ckpt(&a);
    cmd.env("CKPT_REEXEC", "counter");
    let mut job = Job::spawn("launch bash -c counter", cmd);
    job.wait_tick(20, t).unwrap();
    let vpid = |j: &Job| {
        j.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("counter pid ")
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        })
    };
    let before = vpid(&job).expect("counter printed its pid");
    let out = sb.checkpoint(true);
    assert!(out.success(), "{}", out.report());
    let _ = job.wait_exit(t);
    let gen = generations(&sb.ckpt_dir()).pop().expect("a generation");
    let files: Vec<String> = std::fs::read_dir(&gen)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f == &format!("reexec-{before}.json")),
        "the launcher left a description, not an image: {files:?}"
    );
    for round in 1..=2 {
        let mut r = sb.restart(&format!("reexec {round}"));
        let st = r.wait_exit(t).unwrap();
        let lines = r.stdout_lines();
        assert!(
            st.success(),
            "restart {round}: {}\n{}",
            r.exit_description(),
            r.transcript(40)
        );
        assert_eq!(
            vpid(&r).as_deref(),
            Some(before.as_str()),
            "the launcher keeps its pid: {lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l == "start"),
            "the shell was rerun: {lines:?}"
        );
        assert_eq!(
            r.ticks().first(),
            Some(&1),
            "executed again from the start: {lines:?}"
        );
        assert_eq!(r.max_tick(), Some(150));
        let tail: Vec<&str> = lines.iter().rev().take(2).map(String::as_str).collect();
        assert_eq!(
            tail,
            ["rc=0", "PASS"],
            "the restored shell got the launcher's status: {lines:?}"
        );
        assert!(r.first_fail().is_none(), "{:?}", r.first_fail());
    }
}

/// Two processes of one job that are *not* one process tree (as two tasks of a job step
/// are), joined by a loopback TCP connection with messages in flight both ways, each
/// restarted by its own `ckpt restart --vpid`: the connection is re-established through the
/// coordinator's rendezvous, every message arrives once, in order, across two restarts.
#[test]
fn tcp_between_separately_restored_processes() {
    use std::ffi::OsString;
    let t = std::time::Duration::from_secs(150);
    let sb = Sandbox::new("rendezvous");
    let dir = sb.ckpt_dir();
    let prog = programs().path("tcpnode");
    let portfile = sb.work_dir().join("port");
    let pf = portfile.to_string_lossy().into_owned();
    let total = 700u64;
    let mut server = sb.launch("tcpnode server", &prog, &["700", "server", &pf]);
    // The second process joins the same job the way the Slurm plugin makes tasks join it,
    // once `ckpt launch` has the coordinator listening.
    let t0 = std::time::Instant::now();
    while !dir.join("coordinator.pid").exists() || !dir.join("coordinator.secret").exists() {
        assert!(t0.elapsed() < t, "no coordinator for {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let socket = std::fs::read_to_string(dir.join("coordinator.socket"))
        .map(|s| std::path::PathBuf::from(s.trim()))
        .unwrap_or_else(|_| dir.join("coordinator.sock"));
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            t0.elapsed() < t,
            "the coordinator does not listen on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut cmd = sb.command(&prog, &["700".into(), "client".into(), OsString::from(&pf)]);
    cmd.env("LD_PRELOAD", built("libckpt.so"))
        .env("CKPT_DIR", &dir)
        .env("CKPT_SOCKET", &socket);
    let mut client = Job::spawn("tcpnode client", cmd);
    server.wait_tick(20, t).unwrap();
    client.wait_tick(20, t).unwrap();
    let joined = || {
        let st = sb.ckpt_cmd(&["status", "--ckpt-dir", &dir.to_string_lossy(), "--json"]);
        serde_json::from_str::<serde_json::Value>(&st.stdout)
            .ok()
            .and_then(|v| v["processes"].as_array().map(|a| a.len()))
    };
    while joined() != Some(2) {
        assert!(
            t0.elapsed() < t,
            "both processes joined the job\n{}",
            client.transcript(30)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (sv, cv) = (server.pid(), client.pid());
    let mut outputs: Vec<(String, Job)> = Vec::new();
    for round in 1..=2 {
        let out = sb.checkpoint(true);
        assert!(out.success(), "round {round}: {}", out.report());
        let _ = server.wait_exit(t);
        let _ = client.wait_exit(t);
        let restart = |vpid: i32| {
            let a: Vec<OsString> = vec![
                "restart".into(),
                dir.clone().into(),
                "--vpid".into(),
                vpid.to_string().into(),
            ];
            Job::spawn(&format!("restart {vpid} (round {round})"), sb.ckpt(&a))
        };
        let before = (
            server.max_tick().unwrap_or(0),
            client.max_tick().unwrap_or(0),
        );
        outputs.push(("server".into(), server));
        outputs.push(("client".into(), client));
        server = restart(sv);
        client = restart(cv);
        let more = if round == 1 { 20 } else { 1 };
        for (j, b) in [(&server, before.0), (&client, before.1)] {
            if let Err(e) = j.wait_tick(b + more, t) {
                panic!("{e}\n{}\n{}", server.transcript(30), client.transcript(30));
            }
        }
        for (name, j, b) in [("server", &server, before.0), ("client", &client, before.1)] {
            let first = j.ticks().first().copied();
            assert!(
                first.is_some_and(|f| f > 1 && f <= b + 1),
                "{name} round {round}: first tick after the restore {first:?}, last before {b}\n{}",
                j.transcript(30)
            );
            check_consecutive(name, j).unwrap();
        }
    }
    for (name, j) in [("server", &mut server), ("client", &mut client)] {
        let st = j.wait_exit(t).unwrap();
        assert!(
            st.success(),
            "{name}: {}\n{}",
            j.exit_description(),
            j.transcript(30)
        );
        assert_eq!(j.max_tick(), Some(total), "{name}");
        assert_eq!(
            j.stdout_lines().last().map(String::as_str),
            Some("PASS"),
            "{name}"
        );
        assert!(j.first_fail().is_none(), "{name}: {:?}", j.first_fail());
    }
}
