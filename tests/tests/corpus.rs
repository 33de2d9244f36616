//! The zdtm-style corpus under checkpoint/restart: every program in tests/programs is
//! launched, checkpointed with --kill, restarted, checkpointed and killed again, restarted
//! again, and must continue from its checkpoint each time and finish with PASS.
//!
//! `standalone_self_check` runs each program without ckpt: it must PASS on its own, and
//! with CKPT_TEST_CORRUPT (the program damages its own state) it must FAIL — proof that
//! the checks the cycle relies on can fail.

use ckpt_tests::*;
use std::time::Duration;

/// Ticks for the cycle runs: enough that a slow checkpoint never lets the program finish
/// before it is killed (~35 ms a tick).
const TICKS: &str = "300";

fn expand(sb: &Sandbox, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| a.replace("{work}", &sb.work_dir().to_string_lossy()))
        .collect()
}

fn cycle(name: &str, args: &[&str]) -> CorpusRun {
    let mut sb = Sandbox::new(name);
    sb.feed_stdin = args.contains(&"stdin");
    let args = expand(&sb, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prog = programs().path(name);
    match corpus_cycle(&sb, name, &prog, &args) {
        Ok(run) => {
            println!("{name}: PASS\n{}", summarize(&run.cycles));
            run
        }
        Err(e) => panic!("\n{e}"),
    }
}

/// Program-specific evidence that the cycle tested what it claims.
fn after_cycle(name: &str, run: &CorpusRun) {
    if name == "fpu" {
        // The vector/x87 loop starts right after each tick line, so the checkpoint the
        // harness requests on seeing one lands inside it; the program reports loops that
        // were stopped in the middle. At least one of the two cycles must have done that,
        // else the registers were never live across a checkpoint.
        let restored = run.restored_stdout();
        let hits: Vec<&String> = restored
            .iter()
            .filter(|l| l.contains("was interrupted"))
            .collect();
        assert!(
            !hits.is_empty(),
            "fpu: no checkpoint landed inside the register loop (no 'interrupted' line from a restored run):\n{}",
            restored.iter().filter(|l| !l.starts_with("tick ")).cloned().collect::<Vec<_>>().join("\n")
        );
        println!(
            "{}",
            hits.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
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
        "{name} does not pass on its own (expected ticks 1..={ticks} then PASS, exit 0):\n{}",
        out.report()
    );

    let (out, lines) = run_standalone(&prog, &args, &[("CKPT_TEST_CORRUPT", "3")], t);
    assert!(
        out.status.and_then(|s| s.code()) == Some(1) && lines.iter().any(|l| l.starts_with("FAIL ")) && !lines.iter().any(|l| l == "PASS"),
        "{name} with CKPT_TEST_CORRUPT=3 did not detect the damage (expected a FAIL line and exit 1):\n{}",
        out.report()
    );
}

macro_rules! corpus {
    ($name:ident, [$($arg:expr),*], [$($sarg:expr),*]) => {
        mod $name {
            use super::*;
            #[test]
            fn checkpoint_restart_twice() {
                let run = cycle(stringify!($name), &[TICKS, $($arg),*]);
                after_cycle(stringify!($name), &run);
            }
            #[test]
            fn standalone_self_check() {
                selfcheck(stringify!($name), &[$($sarg),*]);
            }
        }
    };
}

corpus!(counter, [], ["12"]);
corpus!(threads4, [], ["12"]);
corpus!(bigmem, ["256"], ["12", "32"]);
corpus!(filemap, ["{work}"], ["12", "{work}"]);
corpus!(fpu, [], ["12"]);
corpus!(deepstack, ["20000"], ["12", "20000"]);
corpus!(signals, [], ["12"]);
corpus!(sleeper, ["stdin"], ["12"]);

/// sleeper with its own pipes (a reader thread blocked in read() on a pipe another thread
/// writes, a poller on a second pipe): the bytes in flight are drained and put back.
#[test]
fn sleeper_pipes() {
    let _ = cycle("sleeper", &[TICKS, "pipe"]);
}

/// Every .c in tests/programs is used by some test file (a new program needs a test).
#[test]
fn every_program_is_covered() {
    let tests_dir = programs_src().parent().unwrap().join("tests");
    let mut texts = String::new();
    for e in std::fs::read_dir(&tests_dir).unwrap().flatten() {
        texts.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    for e in std::fs::read_dir(programs_src()).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "c") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                texts.contains(&format!("\"{stem}\""))
                    || texts.contains(&format!("corpus!({stem},"))
                    || texts.contains(&format!("state!({stem},")),
                "tests/programs/{stem}.c is used by no test in tests/tests/"
            );
        }
    }
}
