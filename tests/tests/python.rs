//! A real interpreter as the test subject: tests/programs/state.py (a deterministic,
//! state-heavy simulation) is checkpointed midway, killed and restarted; the lines printed
//! before the checkpoint followed by the lines the restored run prints must be exactly the
//! lines of an uninterrupted run.

use ckpt_tests::*;
use std::time::Duration;

const STEPS: u64 = 150;

fn step_of(line: &str) -> Option<u64> {
    line.strip_prefix("step ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn python_restart_prints_exactly_the_uninterrupted_lines() {
    let sb = Sandbox::new("python");
    let script = programs_src().join("state.py");
    let py = python3();
    let steps = STEPS.to_string();

    // The reference: an uninterrupted run without ckpt.
    let (refrun, reference) = run_standalone(
        &py,
        &[script.to_str().unwrap(), &steps],
        &[],
        Duration::from_secs(300),
    );
    assert!(
        refrun.success()
            && reference.last().map(String::as_str) == Some("PASS")
            && reference.len() as u64 == STEPS + 1,
        "the uninterrupted python run failed:\n{}",
        refrun.report()
    );
    let expect = |s: u64| &reference[(s - 1) as usize];

    let job = sb.launch("state.py", &py, &[script.to_str().unwrap(), &steps]);
    job.wait_for_line(
        |l| l.value("step ").is_some_and(|s| s >= STEPS / 3),
        START_TIMEOUT,
    )
    .unwrap_or_else(|e| {
        panic!(
            "state.py under ckpt launch did not reach step {}: {e}\n{}",
            STEPS / 3,
            job.transcript(30)
        )
    });
    let before = job
        .lines()
        .iter()
        .filter_map(|l| l.value("step "))
        .max()
        .unwrap();

    let ck = sb.checkpoint(true);
    let returned = std::time::Instant::now();
    assert!(
        ck.success(),
        "checkpoint failed:\n{}\n{}",
        ck.report(),
        job.transcript(30)
    );
    std::thread::sleep(Duration::from_millis(500));
    let at_return = job
        .lines()
        .iter()
        .filter(|l| l.at <= returned + Duration::from_millis(500))
        .filter_map(|l| l.value("step "))
        .max()
        .unwrap();
    let mut job = job;
    let st = job
        .wait_exit(DIE_TIMEOUT)
        .unwrap_or_else(|e| panic!("the job survived checkpoint --kill: {e}"));
    assert!(
        !st.success(),
        "state.py finished before checkpoint --kill killed it:\n{}",
        job.transcript(10)
    );
    let pre = job.stdout_lines();

    let mut restored = sb.restart("state.py");
    let rst = restored
        .wait_exit(FINISH_TIMEOUT)
        .unwrap_or_else(|e| panic!("restored state.py did not finish: {e}"));
    let post = restored.stdout_lines();
    let first = post.iter().find_map(|l| step_of(l));

    let mut problems = Vec::new();
    match first {
        None => problems.push("the restored run printed no step line".to_string()),
        Some(f) => {
            if f <= 1 || f <= before || f > at_return + 2 {
                problems.push(format!(
                    "restored run starts at step {f}: not the continuation of the checkpoint (step {before} printed before \
                     the checkpoint was requested, {at_return} when it returned)"
                ));
            }
            // Every pre-checkpoint line, and the whole restored output, must match the
            // uninterrupted run line for line.
            for l in pre.iter().filter(|l| l.starts_with("step ")) {
                let s = step_of(l).unwrap();
                if l != expect(s) {
                    problems.push(format!(
                        "launched run, step {s}: {l:?} != uninterrupted {:?}",
                        expect(s)
                    ));
                }
            }
            let want: Vec<&String> = reference.iter().skip((f - 1) as usize).collect();
            let got: Vec<&String> = post.iter().collect();
            if got != want {
                let i = got
                    .iter()
                    .zip(want.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                problems.push(format!(
                    "restored output differs from the uninterrupted run at its line {i}: got {:?}, want {:?} ({} lines vs {})",
                    got.get(i),
                    want.get(i),
                    got.len(),
                    want.len()
                ));
            }
        }
    }
    if !rst.success() {
        problems.push(format!("restored run ended with {}", describe(Some(rst))));
    }
    assert!(
        problems.is_empty(),
        "python equivalence failed:\n  {}\n{}\n{}{}",
        problems.join("\n  "),
        ck.report(),
        job.transcript(10),
        restored.transcript(30)
    );
    println!(
        "python: PASS (checkpoint at step ~{at_return}, restored run began at step {})",
        first.unwrap()
    );
}
