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
