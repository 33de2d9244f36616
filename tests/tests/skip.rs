//! Descriptors that cannot be checkpointed: refused up front by default, naming the
//! process and the fd; left out with a warning when the user asked for it
//! (`ckpt launch --skip-unsupported`), and /dev/null after a restart.

use ckpt_tests::*;
use std::ffi::OsString;
use std::time::Duration;

#[test]
fn unsupported_fd_is_refused_or_skipped_on_request() {
    let t = Duration::from_secs(120);
    // A listener outside the job: the program's connection to it cannot be restored.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let prog = programs().path("outside");
    let fd_of = |j: &Job| {
        j.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("outside pid ")
                .and_then(|r| r.split(" fd ").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        })
    };
    {
        let sb = Sandbox::new("outside-refused");
        let mut job = sb.launch("outside", &prog, &["100000", &port]);
        job.wait_tick(3, t).unwrap();
        let fd = fd_of(&job).expect("the program printed its fd");
        let out = sb.checkpoint(false);
        assert!(!out.success(), "{}", out.report());
        assert!(
            out.stderr.contains(&format!("fd {fd}")) && out.stderr.contains("outside the job"),
            "the refusal names the fd and why: {}",
            out.report()
        );
        let n = job.max_tick().unwrap();
        job.wait_tick(n + 3, t).unwrap();
        job.kill();
    }
    let sb = Sandbox::new("outside-skipped");
    let a: Vec<OsString> = vec![
        "launch".into(),
        "--ckpt-dir".into(),
        sb.ckpt_dir().into(),
        "--skip-unsupported".into(),
        "--".into(),
        prog.into(),
        "200".into(),
        port.clone().into(),
    ];
    let mut job = Job::spawn("outside --skip-unsupported", sb.ckpt(&a));
    job.wait_tick(20, t).unwrap();
    let fd = fd_of(&job).expect("the program printed its fd");
    let out = sb.checkpoint(true);
    assert!(out.success(), "{}", out.report());
    let _ = job.wait_exit(t);
    assert!(
        job.stderr_text().contains(&format!("fd {fd}"))
            && job.stderr_text().contains("skipped (--skip-unsupported)"),
        "a warning names the skipped fd: {}",
        job.stderr_text()
    );
    let before = job.max_tick().unwrap();
    let mut r = sb.restart("outside");
    r.wait_tick(before + 2, t)
        .unwrap_or_else(|e| panic!("{e}\n{}", r.transcript(20)));
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", r.pid()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert_eq!(link, "/dev/null", "the skipped fd after the restart");
    let st = r.wait_exit(t).unwrap();
    assert!(
        st.success(),
        "{}\n{}",
        r.exit_description(),
        r.transcript(20)
    );
    let first = r.ticks().first().copied();
    assert!(
        first.is_some_and(|f| f > 1 && f <= before + 1),
        "continued from the checkpoint: first tick {first:?}, last before {before}"
    );
    assert_eq!(r.stdout_lines().last().map(String::as_str), Some("PASS"));
    drop(listener);
}
