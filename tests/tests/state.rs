//! Issue 3, complete process state: one self-verifying program per resource kind
//! (tests/programs/<kind>.c) through two checkpoint -> kill -> restart cycles, plus the
//! standalone self-check (passes alone; fails when told to damage its own state).

use ckpt_tests::*;

const TICKS: &str = "300";

fn cycle(name: &str, args: &[&str]) {
    let sb = Sandbox::new(name);
    let args = expand(&sb, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prog = programs().path(name);
    match corpus_cycle(&sb, name, &prog, &args) {
        Ok(run) => println!("{name}: PASS\n{}", summarize(&run.cycles)),
        Err(e) => panic!("\n{e}"),
    }
}

macro_rules! state {
    ($name:ident, [$($arg:expr),*], [$($sarg:expr),*]) => {
        mod $name {
            use super::*;
            #[test]
            fn checkpoint_restart_twice() {
                cycle(stringify!($name), &[TICKS, $($arg),*]);
            }
            #[test]
            fn standalone_self_check() {
                selfcheck(stringify!($name), &[$($sarg),*]);
            }
        }
    };
}

state!(eventfd, [], ["12"]);
state!(timerfd, [], ["12"]);
state!(signalfd, [], ["12"]);
state!(epoll, [], ["12"]);
state!(inotify, ["{work}/inotify"], ["12", "{work}/inotify"]);
state!(memfd, ["{work}/memfd"], ["12", "{work}/memfd"]);
state!(locks, ["{work}/locks"], ["12", "{work}/locks"]);
state!(timers, [], ["12"]);
state!(attrs, [], ["12"]);
state!(pty, [], ["12"]);
state!(threadsigs, [], ["12"]);

/// Checkpoints that let the job run on, for programs that keep signals pending: the
/// process-directed ones go back in the running process too, including those sent with
/// kill() (their siginfo may only be queued by the leader thread, see `signals.rs`).
#[test]
fn pending_signals_survive_live_checkpoints() {
    for name in ["signals", "threadsigs"] {
        let sb = Sandbox::new(&format!("{name}-live"));
        let mut job = sb.launch(name, &programs().path(name), &["80"]);
        job.wait_tick(5, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name} did not start: {e}\n{}", job.transcript(20)));
        for k in 0..2 {
            let ck = sb.checkpoint(false);
            assert!(
                ck.success(),
                "{name}: checkpoint {k} failed:\n{}",
                ck.report()
            );
            let now = job.max_tick().unwrap_or(0);
            job.wait_tick(now + 5, START_TIMEOUT).unwrap_or_else(|e| {
                panic!(
                    "{name}: no ticks after checkpoint {k}: {e}\n{}",
                    job.transcript(20)
                )
            });
        }
        let st = job.wait_exit(FINISH_TIMEOUT).unwrap();
        assert!(
            st.success()
                && job.stdout_lines().iter().any(|l| l == "PASS")
                && job.first_fail().is_none(),
            "{name}:\n{}",
            job.transcript(30)
        );
    }
}
