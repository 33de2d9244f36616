//! End-to-end tests of `ckpt` and `ckpt-coordinatord` with real processes: the coordinator
//! binary runs on a temporary directory, and fake *processes* written here speak the real
//! protocol over its socket (Hello, BarrierReached for every phase, a real image written
//! with `ckpt_image`, Written). Every process a test starts is killed by a guard.

mod common;

use ckpt_image::CkptDir;
use ckpt_protocol::{read_msg, write_msg, Message, Phase, Role, Status, PROTOCOL_VERSION};
use common::*;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

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
            nonce: None,
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
