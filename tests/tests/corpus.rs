//! The zdtm-style corpus under checkpoint/restart: every program in tests/programs is
//! launched, checkpointed with --kill, restarted, checkpointed and killed again, restarted
//! again, and must continue from its checkpoint each time and finish with PASS.
//!
//! `standalone_self_check` runs each program without ckpt: it must PASS on its own, and
//! with CKPT_TEST_CORRUPT (the program damages its own state) it must FAIL — proof that
//! the checks the cycle relies on can fail.

use ckpt_tests::*;

/// Ticks for the cycle runs: enough that a slow checkpoint never lets the program finish
/// before it is killed (~35 ms a tick).
const TICKS: &str = "300";

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
