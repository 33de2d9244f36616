//! MPI: Debian's Open MPI, launched by its own `mpirun` under `ckpt launch`: the launcher and
//! every rank are checkpointed as one job and restored together, twice; the restored run
//! gives the same token as an uninterrupted one, bit for bit.

use ckpt_tests::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ITERS: u64 = 500;

/// Compiles tests/mpi/ring.c with Open MPI's mpicc into `dir`.
fn build_ring(dir: &Path) -> PathBuf {
    let src = programs_src().join("../mpi/ring.c");
    let out = dir.join("ring");
    let o = Command::new("mpicc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run mpicc (Debian packages openmpi-bin, libopenmpi-dev)");
    assert!(
        o.status.success(),
        "mpicc {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn mpirun(ring: &Path, np: &str) -> Vec<OsString> {
    vec![
        "mpirun".into(),
        "--oversubscribe".into(),
        "-np".into(),
        np.into(),
        ring.into(),
        ITERS.to_string().into(),
    ]
}

fn with_mpi_env(mut c: Command) -> Command {
    // Tests run as root in CI; Open MPI refuses that unless told.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn token(j: &Job) -> Option<String> {
    j.stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("token ").map(str::to_string))
}

#[test]
fn open_mpi_ring_under_mpirun_restarts_twice() {
    let t = Duration::from_secs(180);
    let sb = Sandbox::new("mpi-ring");
    let ring = build_ring(&sb.work_dir());
    // The uninterrupted run's result.
    let mut plain = Job::spawn(
        "mpirun ring",
        with_mpi_env(sb.command(Path::new("/usr/bin/env"), &mpirun(&ring, "4"))),
    );
    let st = plain.wait_exit(t).unwrap();
    assert!(
        st.success(),
        "{}\n{}",
        plain.exit_description(),
        plain.transcript(20)
    );
    let want = token(&plain).expect("the uninterrupted run prints its token");

    let mut a: Vec<OsString> = vec![
        "launch".into(),
        "--ckpt-dir".into(),
        sb.ckpt_dir().into(),
        "--".into(),
    ];
    a.extend(mpirun(&ring, "4"));
    let mut job = Job::spawn("ckpt launch mpirun", with_mpi_env(sb.ckpt(&a)));
    job.wait_tick(30, t)
        .unwrap_or_else(|e| panic!("{e}\n{}", job.transcript(30)));
    let mut last = job;
    for round in 1..=2 {
        let out = sb.checkpoint(true);
        assert!(out.success(), "round {round}: {}", out.report());
        let _ = last.wait_exit(t);
        let before = last.max_tick().unwrap_or(0);
        let list = sb.ckpt_cmd(&[
            "list",
            "--ckpt-dir",
            &sb.ckpt_dir().to_string_lossy(),
            "--json",
        ]);
        let gens: serde_json::Value = serde_json::from_str(&list.stdout).unwrap_or_default();
        let procs = gens
            .as_array()
            .and_then(|g| g.last())
            .and_then(|g| {
                g["processes"]
                    .as_u64()
                    .or_else(|| g["processes"].as_array().map(|a| a.len() as u64))
            })
            .unwrap_or(0);
        assert!(
            procs >= 5,
            "mpirun and 4 ranks in the image (round {round}): {}",
            list.stdout
        );
        let r = sb.restart(&format!("mpi round {round}"));
        let more = if round == 1 { before + 30 } else { before + 1 };
        r.wait_tick(more, t)
            .unwrap_or_else(|e| panic!("{e}\n{}", r.transcript(30)));
        let first = r.ticks().first().copied();
        assert!(
            first.is_some_and(|f| f > 1 && f <= before + 1),
            "round {round}: continued from the checkpoint (first tick {first:?}, last before {before})\n{}",
            r.transcript(20)
        );
        check_consecutive("mpi ring", &r).unwrap();
        last = r;
    }
    let st = last.wait_exit(t).unwrap();
    assert!(
        st.success(),
        "{}\n{}",
        last.exit_description(),
        last.transcript(30)
    );
    assert_eq!(last.max_tick(), Some(ITERS));
    assert_eq!(
        token(&last).as_deref(),
        Some(want.as_str()),
        "bit for bit the uninterrupted run's token"
    );
    assert_eq!(last.stdout_lines().last().map(String::as_str), Some("PASS"));
}
