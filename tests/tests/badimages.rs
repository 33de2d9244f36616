//! Damaged images are refused clearly: after a real checkpoint of `counter`, the newest
//! generation is copied and damaged in several ways (truncated image, a flipped bit in the
//! middle, wrong magic, no MANIFEST, truncated MANIFEST, an empty directory). `ckpt restart`
//! and `ckpt inspect` must each exit non-zero (not crash, not panic, not restore anything)
//! with a message naming the file or what is wrong. The intact copy is the control: it must
//! inspect and restart fine, so the refusals are caused by the damage.

use ckpt_tests::*;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Checkpoints a running counter (without --kill) and returns the sandbox and the
/// generation directory.
fn checkpoint_counter(tag: &str) -> (Sandbox, PathBuf) {
    let sb = Sandbox::new(tag);
    let mut job = sb.launch("counter", &programs().path("counter"), &["100000"]);
    job.wait_tick(3, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let ck = sb.checkpoint(false);
    assert!(
        ck.success(),
        "checkpoint of counter failed:\n{}\n{}",
        ck.report(),
        job.transcript(20)
    );
    job.kill();
    let gens = generations(&sb.ckpt_dir());
    let gen = gens.last().cloned().unwrap_or_else(|| {
        panic!(
            "checkpoint succeeded but no generation directory with a MANIFEST is under {}:\n{}",
            sb.ckpt_dir().display(),
            tree(&sb.ckpt_dir())
        )
    });
    (sb, gen)
}

/// The process image of a generation: a `*.img` file if there is one, else its largest
/// non-MANIFEST file.
fn image_file(gen: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(gen)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.retain(|p| p.file_name().unwrap() != "MANIFEST");
    files.sort_by_key(|p| {
        (
            p.extension().is_some_and(|x| x == "img"),
            fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        )
    });
    files
        .pop()
        .unwrap_or_else(|| panic!("no image file in {}:\n{}", gen.display(), tree(gen)))
}

/// A copy of the checkpoint dir holding only generation `gen` (no older generation to fall
/// back to); returns (copy root, the copied generation dir).
fn copy_with_only(sb: &Sandbox, gen: &Path, name: &str) -> (PathBuf, PathBuf) {
    let root = sb.path().join("variants").join(name);
    copy_tree(&sb.ckpt_dir(), &root).unwrap();
    let rel = gen.strip_prefix(sb.ckpt_dir()).unwrap();
    let gen_copy = root.join(rel);
    for other in generations(&root) {
        if other != gen_copy {
            fs::remove_dir_all(&other).unwrap();
        }
    }
    (root, gen_copy)
}

fn flip_bit(p: &Path, at: u64) {
    let mut f = OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x10;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}

struct Variant {
    name: &'static str,
    /// Damage the copy; returns the words one of which the error message must contain.
    damage: fn(root: &Path, gen: &Path) -> Vec<String>,
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "truncated-image",
        damage: |_, gen| {
            let img = image_file(gen);
            let len = fs::metadata(&img).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(&img)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            vec![file_name(&img)]
        },
    },
    Variant {
        name: "bit-flip-in-middle",
        damage: |_, gen| {
            let img = image_file(gen);
            flip_bit(&img, fs::metadata(&img).unwrap().len() / 2);
            vec![file_name(&img)]
        },
    },
    Variant {
        name: "wrong-magic",
        damage: |_, gen| {
            let img = image_file(gen);
            let mut f = OpenOptions::new().write(true).open(&img).unwrap();
            f.write_all(b"NOTCKPT\0").unwrap();
            vec![file_name(&img)]
        },
    },
    Variant {
        name: "missing-manifest",
        damage: |_, gen| {
            fs::remove_file(gen.join("MANIFEST")).unwrap();
            vec!["MANIFEST".into(), "manifest".into(), "generation".into()]
        },
    },
    Variant {
        name: "truncated-manifest",
        damage: |_, gen| {
            let m = gen.join("MANIFEST");
            let len = fs::metadata(&m).unwrap().len();
            OpenOptions::new()
                .write(true)
                .open(&m)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            vec!["MANIFEST".into(), "manifest".into()]
        },
    },
    Variant {
        name: "empty-directory",
        damage: |root, _| {
            for e in fs::read_dir(root).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    fs::remove_dir_all(&p).unwrap();
                } else {
                    fs::remove_file(&p).unwrap();
                }
            }
            vec![
                root.to_string_lossy().into_owned(),
                "generation".into(),
                "empty".into(),
            ]
        },
    },
];

/// Checks one refusal; returns the problems found.
fn judge(what: &str, out: &CmdOut, words: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    match out.status {
        None => p.push(format!("{what}: did not finish (killed after the timeout)")),
        Some(s) if s.code().is_none() => p.push(format!("{what}: crashed: {}", describe(Some(s)))),
        Some(s) if s.success() => p.push(format!("{what}: exit status 0 on a damaged image")),
        _ => {}
    }
    let all = format!("{}{}", out.stdout, out.stderr);
    if all.contains("panicked at") {
        p.push(format!("{what}: panicked"));
    }
    if out.stdout.lines().any(|l| l.starts_with("tick ")) {
        p.push(format!("{what}: the damaged image was restored and ran"));
    }
    if out.stderr.trim().is_empty() {
        p.push(format!("{what}: no error message on stderr"));
    } else if !words
        .iter()
        .any(|w| out.stderr.to_lowercase().contains(&w.to_lowercase()))
    {
        p.push(format!("{what}: the message names none of {words:?}"));
    }
    if !p.is_empty() {
        p.push(format!("  {}", out.report().replace('\n', "\n  ")));
    }
    p
}

#[test]
fn damaged_images_are_refused_clearly() {
    let (sb, gen) = checkpoint_counter("badimages");
    let dir_str = |p: &Path| p.to_string_lossy().into_owned();
    let mut problems = Vec::new();

    // Control: the intact copy inspects and restarts.
    let (root, _) = copy_with_only(&sb, &gen, "intact");
    let ins = sb.ckpt_cmd(&["inspect", &dir_str(&root)]);
    if !ins.success() {
        problems.push(format!(
            "control: `ckpt inspect` of the intact image failed:\n  {}",
            ins.report().replace('\n', "\n  ")
        ));
    }
    {
        let mut r = sb.restart_dir("intact", &root);
        match r.wait_for_line(|l| l.tick().is_some() || l.is_fail(), RESTART_TIMEOUT) {
            Ok(l) if l.tick().is_some_and(|t| t > 1) => {}
            Ok(l) => problems.push(format!(
                "control: the intact image restarted with `{}`",
                l.text
            )),
            Err(e) => problems.push(format!(
                "control: the intact image does not restart: {e}\n{}",
                r.transcript(20)
            )),
        }
        r.kill();
    }

    for v in VARIANTS {
        let (root, gen_copy) = copy_with_only(&sb, &gen, v.name);
        let words = (v.damage)(&root, &gen_copy);
        let out = {
            let mut r = sb.restart_dir(v.name, &root);
            // a tick means the damaged image is running: stop it at once
            let ran = r
                .wait_for_line(|l| l.tick().is_some(), Duration::from_secs(60))
                .is_ok();
            let status = if ran {
                None
            } else {
                r.wait_exit(Duration::from_secs(10)).ok()
            };
            r.kill();
            let lines = r.lines();
            let text = |s: Stream| {
                lines
                    .iter()
                    .filter(|l| l.stream == s)
                    .map(|l| format!("{}\n", l.text))
                    .collect::<String>()
            };
            CmdOut {
                what: format!("ckpt restart {}", root.display()),
                status,
                stdout: text(Stream::Out),
                stderr: text(Stream::Err),
                elapsed: r.started.elapsed(),
            }
        };
        problems.extend(judge(&format!("[{}] restart", v.name), &out, &words));
        let ins = sb.ckpt_cmd(&["inspect", &dir_str(&root)]);
        problems.extend(judge(&format!("[{}] inspect", v.name), &ins, &words));
        for (what, o) in [("restart", &out), ("inspect", &ins)] {
            println!(
                "[{}] {what}: {}: {}",
                v.name,
                describe(o.status),
                o.stderr.lines().next().unwrap_or("(no message)")
            );
        }
    }
    assert!(
        problems.is_empty(),
        "\n{} problem(s) with damaged images (generation {}, layout:\n{}):\n{}",
        problems.iter().filter(|p| !p.starts_with("  ")).count(),
        gen.display(),
        tree(&sb.ckpt_dir()),
        problems.join("\n")
    );
}

/// Images are readable by their owner only.
#[test]
fn image_files_are_private() {
    let (sb, _gen) = checkpoint_counter("private");
    let open = non_private_files(&sb.ckpt_dir());
    assert!(
        open.is_empty(),
        "checkpoint files readable by others (want mode 0600):\n{}",
        open.join("\n")
    );
}

/// `ckpt status`, `ckpt list` and `ckpt inspect --json` answer for a live job / a real
/// image, and the JSON forms parse.
#[test]
fn status_list_inspect_answer() {
    let sb = Sandbox::new("cli");
    let mut job = sb.launch("counter", &programs().path("counter"), &["100000"]);
    job.wait_tick(3, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let ckdir = sb.ckpt_dir().to_string_lossy().into_owned();
    let mut problems = Vec::new();
    let st = sb.ckpt_cmd(&["status", "--ckpt-dir", &ckdir, "--json"]);
    if !st.success() || serde_json::from_str::<serde_json::Value>(&st.stdout).is_err() {
        problems.push(format!("status --json of a running job:\n{}", st.report()));
    }
    let ck = sb.checkpoint(false);
    if !ck.success() {
        problems.push(format!("checkpoint:\n{}", ck.report()));
    }
    let ls = sb.ckpt_cmd(&["list", "--ckpt-dir", &ckdir]);
    if !ls.success() || ls.stdout.trim().is_empty() {
        problems.push(format!("list after a checkpoint:\n{}", ls.report()));
    }
    let ins = sb.ckpt_cmd(&["inspect", &ckdir, "--json"]);
    if !ins.success() || serde_json::from_str::<serde_json::Value>(&ins.stdout).is_err() {
        problems.push(format!("inspect --json:\n{}", ins.report()));
    }
    let human = sb.ckpt_cmd(&["inspect", &ckdir]);
    if !human.success() || !human.stdout.contains("counter") {
        problems.push(format!(
            "inspect (human-readable, should name the program `counter`):\n{}",
            human.report()
        ));
    }
    job.kill();
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
