//! The corpus needs no privilege: as root, a system user `ckpttest` is created (if missing)
//! and a few corpus programs go through the full launch / checkpoint --kill / restart
//! cycle twice with every ckpt command run as that user (setpriv), in a directory it owns.
//! When the suite itself runs as an ordinary user, every other test already proves this.

use ckpt_tests::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const USER: &str = "ckpttest";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn id_of(flag: &str) -> Option<u32> {
    let o = Command::new("id").arg(flag).arg(USER).output().ok()?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|_| o.status.success())
}

fn ensure_user() -> RunAs {
    if id_of("-u").is_none() {
        let o = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .output()
            .expect("run useradd (Debian package passwd)");
        // another test binary may have created it meanwhile: only the lookup decides
        if id_of("-u").is_none() {
            panic!(
                "useradd {USER} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    RunAs {
        name: USER.into(),
        uid: id_of("-u").unwrap(),
        gid: id_of("-g").unwrap(),
    }
}

/// Can the user read (and for programs, execute) `p`?
fn user_can(u: &RunAs, test_flag: &str, p: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={}", u.uid))
        .arg(format!("--regid={}", u.gid))
        .arg("--init-groups")
        .arg("--")
        .args(["test", test_flag])
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

/// The user must be able to run the binaries where they are; if the build directory is not
/// reachable for them (e.g. a 0700 home), copy the built artifacts into the sandbox.
fn binaries_for(sb: &Sandbox, u: &RunAs) -> PathBuf {
    let bin = bin_dir();
    let files: Vec<PathBuf> = std::fs::read_dir(&bin)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            p.is_file()
                && (n.starts_with("ckpt") || n.starts_with("libckpt"))
                && !n.ends_with(".d")
                && !n.ends_with(".rlib")
        })
        .collect();
    if files.iter().all(|f| user_can(u, "-r", f)) && user_can(u, "-x", &bin.join("ckpt")) {
        return bin;
    }
    let copy = sb.path().join("bin");
    std::fs::create_dir_all(&copy).unwrap();
    for f in &files {
        std::fs::copy(f, copy.join(f.file_name().unwrap())).unwrap();
    }
    chown_tree(&copy, u.uid, u.gid);
    println!(
        "{} is not readable by {USER}: using a copy of the binaries in {}",
        bin.display(),
        copy.display()
    );
    copy
}

fn run_as_user(name: &str, args: &[&str]) {
    if !is_root() {
        println!("skipped: not running as root, so every other test already runs unprivileged");
        return;
    }
    let mut sb = Sandbox::new(&format!("{name}-user"));
    let u = ensure_user();
    sb.run_as(u.clone());
    sb.bin = binaries_for(&sb, &u);
    let prog = programs().path(name);
    assert!(
        user_can(&u, "-x", &prog),
        "{USER} cannot execute {}",
        prog.display()
    );

    // The identity check: the launched job must really run as the user.
    let who = run_cmd(
        "setpriv id -u",
        sb.command(Path::new("/usr/bin/id"), &[OsString::from("-u")]),
        Duration::from_secs(30),
    );
    assert_eq!(
        who.stdout.trim(),
        u.uid.to_string(),
        "setpriv does not switch user: {}",
        who.report()
    );

    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("{work}", &sb.work_dir().to_string_lossy()))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match corpus_cycle(&sb, name, &prog, &args) {
        Ok(info) => println!("{name} as {USER}: PASS\n{}", summarize(&info.cycles)),
        Err(e) => panic!("\n(as user {USER}, uid {})\n{e}", u.uid),
    }
    // Everything the user's checkpoints wrote belongs to the user and is private.
    let mut wrong = Vec::new();
    fn walk(p: &Path, uid: u32, wrong: &mut Vec<String>) {
        use std::os::unix::fs::MetadataExt;
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.uid() != uid {
                wrong.push(format!("{} owned by uid {}", e.path().display(), m.uid()));
            }
            if m.is_dir() {
                walk(&e.path(), uid, wrong);
            }
        }
    }
    walk(&sb.ckpt_dir(), u.uid, &mut wrong);
    assert!(
        wrong.is_empty(),
        "checkpoint files not owned by {USER}:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn counter_as_unprivileged_user() {
    run_as_user("counter", &["300"]);
}

#[test]
fn threads4_as_unprivileged_user() {
    run_as_user("threads4", &["300"]);
}

#[test]
fn filemap_as_unprivileged_user() {
    run_as_user("filemap", &["300", "{work}"]);
}
