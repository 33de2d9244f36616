//! A SIGTERM held by the runtime (CKPT_HOLD_SIGTERM=1, as the Slurm plugin sets it): the
//! job is checkpointed before the process ends, by that SIGTERM, and a restart continues
//! from the instant of the signal, not from an older checkpoint.

use ckpt_tests::*;
use std::time::Duration;

#[test]
fn sigterm_checkpoints_then_ends_the_job() {
    let sb = Sandbox::new("sigterm");
    let prog = programs().path("counter");
    let mut cmd = sb.ckpt(&[
        "launch".into(),
        "--ckpt-dir".into(),
        sb.ckpt_dir().into(),
        "--".into(),
        prog.clone().into(),
        "3000".into(),
    ]);
    cmd.env("CKPT_HOLD_SIGTERM", "1");
    let mut job = Job::spawn("counter", cmd);
    job.wait_tick(20, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let at = job.max_tick().unwrap();
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(job.pid(), libc::SIGTERM) };
    let st = job
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGTERM),
        "the job should end by its SIGTERM: {}",
        job.transcript(10)
    );
    let end = job.max_tick().unwrap();
    let list = run_cmd(
        "list",
        sb.ckpt(&[
            "list".into(),
            "--ckpt-dir".into(),
            sb.ckpt_dir().into(),
            "--json".into(),
        ]),
        Duration::from_secs(30),
    );
    assert!(
        list.success() && list.stdout.contains("complete"),
        "{}",
        list.report()
    );
    let mut r = Job::spawn(
        "restart",
        sb.ckpt(&["restart".into(), sb.ckpt_dir().into()]),
    );
    let first = r
        .wait_for_line(|l| l.tick().is_some(), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = first.tick().unwrap();
    assert!(
        first > at && first <= end + 1,
        "restart continued at tick {first}; SIGTERM came at tick {at}..{end}"
    );
    r.kill();
}
