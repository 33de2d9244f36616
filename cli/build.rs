//! Builds the no_std restorer (its own workspace, see restorer/Cargo.toml) with a nested
//! cargo and embeds it into `ckpt`, so that `ckpt restart` is self-contained.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let restorer = root.join("restorer");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out.join("restorer-target");
    for p in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={}", restorer.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("plan/src").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(restorer.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&restorer);
    // The outer build's flags must not leak into the restorer (e.g. clippy's wrapper,
    // instrumentation or target-cpu flags meant for the std crates).
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k == "RUSTFLAGS"
            || k.starts_with("RUSTC_")
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("running cargo for the restorer");
    if !status.success() {
        panic!("building the restorer (restorer/) failed");
    }
    let bin = target_dir.join("release/ckpt-restore");
    let dest = out.join("ckpt-restore.bin");
    std::fs::copy(&bin, &dest).expect("copying the restorer binary");
}
