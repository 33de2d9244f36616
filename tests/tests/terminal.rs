//! Issue 3, terminals, for real under tmux: a full-screen program (tests/programs/screen.c)
//! and a Python REPL run in a tmux pane under `ckpt launch`, get state through keystrokes
//! (send-keys), are checkpointed with --kill and restarted in a NEW tmux session of another
//! size. The restored program must redraw by itself for the new window size (SIGWINCH
//! delivered, size read from the new terminal), keep its state, and still be in raw mode
//! (a key acts without Enter: its termios were applied to the new terminal). An
//! interactive bash with the program as its foreground job gets the terminal back for
//! that job. Plus: the pty pair of tests/programs/pty.c really has bytes in flight both
//! ways in its image.
//!
//! Each test runs its own tmux server on a private socket in the sandbox and kills it at
//! the end, pass or fail.

use ckpt_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A private tmux server (socket in the sandbox); killed when dropped.
struct Tmux {
    sock: PathBuf,
    log: PathBuf,
}

impl Tmux {
    fn new(sb: &Sandbox) -> Tmux {
        Tmux {
            sock: sb.path().join("tmux.sock"),
            log: sb.path().join("pane-stderr.log"),
        }
    }

    fn cmd(&self, args: &[&str]) -> CmdOut {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock).arg("-f").arg("/dev/null");
        c.args(args)
            .env_remove("TMUX")
            .env_remove("LD_PRELOAD")
            .env_remove("CKPT_DIR");
        run_cmd(
            &format!("tmux {}", args.join(" ")),
            c,
            Duration::from_secs(30),
        )
    }

    /// A new detached session `name` of `cols`x`rows` running `command` through sh; when
    /// the command ends the pane says so and stays (for the failure report).
    fn session(&self, name: &str, cols: u32, rows: u32, command: &str) {
        self.session_opts(name, cols, rows, command, true)
    }

    /// `log_stderr`: stderr goes to the log file (the runtime's messages), not the pane.
    fn session_opts(&self, name: &str, cols: u32, rows: u32, command: &str, log_stderr: bool) {
        let wrapped = if log_stderr {
            format!(
                "{command} 2>>{}; echo \"EXITED $?\"; sleep 600",
                self.log.display()
            )
        } else {
            format!("{command}; echo \"EXITED $?\"; sleep 600")
        };
        let o = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            &wrapped,
        ]);
        assert!(o.success(), "tmux new-session failed:\n{}", o.report());
    }

    fn capture(&self, name: &str) -> String {
        self.cmd(&["capture-pane", "-p", "-t", name]).stdout
    }

    fn pane_size(&self, name: &str) -> (u32, u32) {
        let o = self.cmd(&[
            "display-message",
            "-p",
            "-t",
            name,
            "#{pane_height} #{pane_width}",
        ]);
        let v: Vec<u32> = o
            .stdout
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        assert_eq!(v.len(), 2, "tmux display-message: {}", o.report());
        (v[0], v[1])
    }

    fn keys(&self, name: &str, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", name];
        a.extend_from_slice(keys);
        let o = self.cmd(&a);
        assert!(o.success(), "tmux send-keys failed:\n{}", o.report());
    }

    /// Polls the pane until `pred` holds for its text (panics with the screen after WAIT).
    fn wait_for(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.capture(name);
            if pred(&s) {
                return s;
            }
            if start.elapsed() > WAIT {
                panic!(
                    "tmux pane {name}: waited {WAIT:?} for {what}; the screen shows:\n{s}\n--- stderr of the pane's commands:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// (rows, cols, count, drawn) from the top line of screen.c.
fn screen_state(s: &str) -> Option<(u32, u32, u64, u64)> {
    let l = s.lines().find(|l| l.starts_with("SIZE "))?;
    let w: Vec<&str> = l.split_whitespace().collect();
    let (r, c) = w.get(1)?.split_once('x')?;
    Some((
        r.parse().ok()?,
        c.parse().ok()?,
        w.get(3)?.parse().ok()?,
        w.get(5)?.parse().ok()?,
    ))
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn full_screen_program_redraws_in_a_new_tmux_session_with_its_state_and_raw_mode() {
    let sb = Sandbox::new("tmux-screen");
    let tmux = Tmux::new(&sb);
    let ckpt = sb.bin.join("ckpt");
    let prog = programs().path("screen");
    let dir = sb.ckpt_dir();
    tmux.session(
        "s0",
        80,
        24,
        &format!(
            "cd {} && {} launch --ckpt-dir {} -- {}",
            q(&sb.work_dir()),
            q(&ckpt),
            q(&dir),
            q(&prog)
        ),
    );
    let (rows, cols) = tmux.pane_size("s0");
    tmux.wait_for("s0", "the first screen", |s| {
        screen_state(s).is_some_and(|(r, c, n, _)| r == rows && c == cols && n == 0)
    });
    tmux.keys("s0", &["a", "a", "a"]);
    tmux.wait_for("s0", "COUNT 3", |s| {
        screen_state(s).is_some_and(|(_, _, n, _)| n == 3)
    });
    let mut count = 3;
    let mut prev = "s0".to_string();
    for (k, (c, r)) in [(100u32, 33u32), (70, 20)].into_iter().enumerate() {
        let ck = sb.checkpoint(true);
        assert!(
            ck.success(),
            "checkpoint {} failed:\n{}\nscreen:\n{}",
            k + 1,
            ck.report(),
            tmux.capture(&prev)
        );
        tmux.wait_for(&prev, "the program to end after checkpoint --kill", |s| {
            s.contains("EXITED")
        });
        let _ = tmux.cmd(&["kill-session", "-t", &prev]);
        let name = format!("s{}", k + 1);
        tmux.session(
            &name,
            c,
            r,
            &format!(
                "cd {} && {} restart {}",
                q(&sb.work_dir()),
                q(&ckpt),
                q(&dir)
            ),
        );
        let (rows2, cols2) = tmux.pane_size(&name);
        assert_ne!(
            (rows2, cols2),
            (rows, cols),
            "the new session must have another size"
        );
        // No key is sent: only SIGWINCH makes the restored program redraw, with the size
        // it reads from the new terminal.
        let s = tmux.wait_for(
            &name,
            "the restored program's redraw for the new size",
            |s| screen_state(s).is_some_and(|(r, c, _, _)| r == rows2 && c == cols2),
        );
        let (_, _, n, drawn) = screen_state(&s).unwrap();
        assert_eq!(n, count, "the restored program lost its state:\n{s}");
        assert!(
            s.contains(&format!("BOTTOM {rows2}")),
            "not drawn for {rows2} rows:\n{s}"
        );
        // Raw mode: one key, no Enter, acts at once (a terminal left canonical would hold
        // it back and echo it).
        tmux.keys(&name, &["a"]);
        count += 1;
        let s = tmux.wait_for(&name, &format!("COUNT {count} after one key"), |s| {
            screen_state(s).is_some_and(|(_, _, n, d)| n == count && d > drawn)
        });
        assert!(!s.contains("aEXITED"), "{s}");
        println!(
            "restart {}: redrawn at {rows2}x{cols2}, COUNT {count}, DRAWN {}",
            k + 1,
            screen_state(&s).unwrap().3
        );
        prev = name;
    }
    tmux.keys(&prev, &["q"]);
    tmux.wait_for(&prev, "the program to exit on q", |s| {
        s.contains("EXITED 0")
    });
}

#[test]
fn python_repl_keeps_its_variables_in_a_new_tmux_session() {
    let sb = Sandbox::new("tmux-python");
    let tmux = Tmux::new(&sb);
    let ckpt = sb.bin.join("ckpt");
    let dir = sb.ckpt_dir();
    tmux.session(
        "p0",
        80,
        24,
        &format!(
            "cd {} && {} launch --ckpt-dir {} -- {} -q",
            q(&sb.work_dir()),
            q(&ckpt),
            q(&dir),
            q(&python3())
        ),
    );
    tmux.wait_for("p0", "the python prompt", |s| s.contains(">>>"));
    tmux.keys("p0", &["secret = 6 * 7 + 1000", "Enter"]);
    tmux.keys("p0", &["print('set', secret)", "Enter"]);
    tmux.wait_for("p0", "the variable to be set", |s| s.contains("set 1042"));
    let ck = sb.checkpoint(true);
    assert!(ck.success(), "checkpoint failed:\n{}", ck.report());
    tmux.wait_for("p0", "python to end after checkpoint --kill", |s| {
        s.contains("EXITED")
    });
    tmux.session(
        "p1",
        110,
        35,
        &format!(
            "cd {} && {} restart {}",
            q(&sb.work_dir()),
            q(&ckpt),
            q(&dir)
        ),
    );
    // The REPL waits in readline: type an expression that needs the old variable.
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys("p1", &["print('got', secret * 2)", "Enter"]);
    let s = tmux.wait_for("p1", "the restored REPL to evaluate", |s| {
        s.contains("got 2084") || s.contains("Error")
    });
    assert!(s.contains("got 2084"), "the restored REPL:\n{s}");
    tmux.keys(
        "p1",
        &[
            "import os, shutil; print('cols', shutil.get_terminal_size().columns)",
            "Enter",
        ],
    );
    tmux.wait_for("p1", "the new terminal's width", |s| s.contains("cols 110"));
    tmux.keys("p1", &["exit()", "Enter"]);
    tmux.wait_for("p1", "python to exit", |s| s.contains("EXITED 0"));
}

/// A job-control shell as the job: an interactive bash (which keeps /dev/tty open as fd
/// 255) runs the full-screen program as its foreground job, in a process group of its own.
/// After a restart in a new, larger tmux session that group is the terminal's foreground
/// group again (it gets the SIGWINCH and reads keys), and when it ends, bash takes the
/// terminal back and runs commands.
#[test]
fn job_control_shell_gives_the_terminal_back_to_its_foreground_job() {
    let sb = Sandbox::new("tmux-bash");
    let tmux = Tmux::new(&sb);
    let ckpt = sb.bin.join("ckpt");
    let prog = programs().path("screen");
    let dir = sb.ckpt_dir();
    // bash prompts on stderr: it stays on the pane.
    tmux.session_opts(
        "b0",
        80,
        24,
        &format!(
            "cd {} && PS1='bash> ' {} launch --ckpt-dir {} -- bash --norc --noprofile -i",
            q(&sb.work_dir()),
            q(&ckpt),
            q(&dir)
        ),
        false,
    );
    tmux.wait_for("b0", "the bash prompt", |s| s.contains("bash>"));
    tmux.keys("b0", &[&q(&prog), "Enter"]);
    let (rows, cols) = tmux.pane_size("b0");
    tmux.wait_for("b0", "the program's first screen", |s| {
        screen_state(s).is_some_and(|(r, c, n, _)| r == rows && c == cols && n == 0)
    });
    tmux.keys("b0", &["a", "a"]);
    tmux.wait_for("b0", "COUNT 2", |s| {
        screen_state(s).is_some_and(|(_, _, n, _)| n == 2)
    });
    let ck = sb.checkpoint(true);
    assert!(
        ck.success(),
        "checkpoint failed:\n{}\nscreen:\n{}",
        ck.report(),
        tmux.capture("b0")
    );
    tmux.wait_for("b0", "the job to end after checkpoint --kill", |s| {
        s.contains("EXITED")
    });
    tmux.session_opts(
        "b1",
        96,
        31,
        &format!(
            "cd {} && {} restart {}",
            q(&sb.work_dir()),
            q(&ckpt),
            q(&dir)
        ),
        false,
    );
    let (rows2, cols2) = tmux.pane_size("b1");
    assert_ne!((rows2, cols2), (rows, cols));
    tmux.wait_for("b1", "the foreground job's redraw for the new size", |s| {
        screen_state(s).is_some_and(|(r, c, n, _)| r == rows2 && c == cols2 && n == 2)
    });
    tmux.keys("b1", &["a"]);
    tmux.wait_for(
        "b1",
        "COUNT 3 (the foreground job reads the terminal)",
        |s| screen_state(s).is_some_and(|(_, _, n, _)| n == 3),
    );
    tmux.keys("b1", &["q"]);
    tmux.wait_for("b1", "bash's prompt after the job ended", |s| {
        s.contains("bash>")
    });
    tmux.keys("b1", &["echo shell-$((6*7))", "Enter"]);
    tmux.wait_for("b1", "bash to run a command", |s| s.contains("shell-42"));
    tmux.keys("b1", &["exit", "Enter"]);
    tmux.wait_for("b1", "bash to exit", |s| s.contains("EXITED 0"));
}

/// The pty pair of tests/programs/pty.c holds bytes both ways at a checkpoint (so the
/// state corpus's cycle of it really carries data in flight).
#[test]
fn pty_pair_image_holds_bytes_in_flight_both_ways() {
    let sb = Sandbox::new("pty-inflight");
    let job = sb.launch("pty", &programs().path("pty"), &["400"]);
    job.wait_tick(20, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("pty did not start: {e}\n{}", job.transcript(20)));
    let ck = sb.checkpoint(false);
    assert!(ck.success(), "checkpoint failed:\n{}", ck.report());
    let o = sb.ckpt_cmd(&["inspect", sb.ckpt_dir().to_str().unwrap()]);
    assert!(o.success(), "{}", o.report());
    let line = o
        .stdout
        .lines()
        .find(|l| l.contains("pty master") && l.contains("byte(s) to the slave"))
        .unwrap_or_else(|| panic!("no drained pty master in:\n{}", o.stdout))
        .to_string();
    let num = |tag: &str| -> u64 {
        let i = line.find(tag).unwrap();
        line[..i]
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    let (to_slave, to_master) = (num(" byte(s) to the slave"), num(" byte(s) to the master"));
    assert!(
        to_slave > 0 && to_master > 0 && to_slave % 25 != 0,
        "expected bytes in flight both ways and a partial line towards the slave: {line}"
    );
    assert!(line.contains("33x77"), "{line}");
    println!("{}", line.trim());
    // The job ran on: the drained bytes went back into the live pair, each once (the
    // program checks every message and reply in order).
    let now = job.max_tick().unwrap_or(0);
    job.wait_tick(now + 15, START_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "pty did not go on after the checkpoint: {e}\n{}",
            job.transcript(20)
        )
    });
    assert!(job.first_fail().is_none(), "{}", job.transcript(20));
}
