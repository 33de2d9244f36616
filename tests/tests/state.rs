//! Issue 3, complete process state: one self-verifying program per resource kind
//! (tests/programs/<kind>.c) through two checkpoint -> kill -> restart cycles, plus the
//! standalone self-check (passes alone; fails when told to damage its own state).

use ckpt_tests::*;
use std::time::Duration;

const TICKS: &str = "300";

fn expand(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| a.replace("{work}", &sb.work_dir().to_string_lossy()))
        .collect()
}

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

fn selfcheck(name: &str, args: &[&str]) {
    let sb = Sandbox::new(&format!("{name}-self"));
    let args = expand(&sb, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prog = programs().path(name);
    let ticks: u64 = args[0].parse().unwrap();
    let t = Duration::from_secs(120);
    let (out, lines) = run_standalone(&prog, &args, &[], t);
    let got: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    let want: Vec<u64> = (1..=ticks).collect();
    assert!(
        out.success() && lines.last().map(String::as_str) == Some("PASS") && got == want,
        "{name} does not pass on its own:\n{}",
        out.report()
    );
    let (out, lines) = run_standalone(&prog, &args, &[("CKPT_TEST_CORRUPT", "3")], t);
    assert!(
        out.status.and_then(|s| s.code()) == Some(1)
            && lines.iter().any(|l| l.starts_with("FAIL "))
            && !lines.iter().any(|l| l == "PASS"),
        "{name} with CKPT_TEST_CORRUPT=3 did not detect the damage:\n{}",
        out.report()
    );
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
