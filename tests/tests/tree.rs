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
