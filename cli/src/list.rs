//! `ckpt list`: the generations of a checkpoint directory.

use crate::fmt;
use anyhow::Context;
use ckpt_image::{CkptDir, GenerationInfo};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct ListedProcess {
    pub vpid: i32,
    pub real_pid: i32,
    pub program: String,
    pub host: String,
    pub file: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ListedGeneration {
    pub number: u64,
    pub path: String,
    pub complete: bool,
    /// Why it is not complete.
    pub problem: Option<String>,
    pub created_unix: Option<u64>,
    pub bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub processes: Vec<ListedProcess>,
    /// The generation `ckpt restart` picks.
    pub newest_complete: bool,
}

fn listed(g: &GenerationInfo, newest: Option<u64>) -> ListedGeneration {
    let m = g.manifest.as_ref();
    ListedGeneration {
        number: g.number,
        path: g.path.to_string_lossy().into_owned(),
        complete: g.is_complete(),
        problem: g.problem(),
        created_unix: m.map(|m| m.created_unix),
        bytes: m.map(|m| m.total_bytes),
        duration_seconds: m.map(|m| m.duration_seconds),
        processes: m
            .map(|m| {
                m.processes
                    .iter()
                    .map(|p| ListedProcess {
                        vpid: p.vpid,
                        real_pid: p.real_pid,
                        program: p.program.clone(),
                        host: p.host.clone(),
                        file: p.file.clone(),
                        bytes: p.bytes,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        newest_complete: Some(g.number) == newest,
    }
}

pub fn generations(dir: &Path) -> anyhow::Result<Vec<ListedGeneration>> {
    let cd = CkptDir::open(dir).with_context(|| {
        format!(
            "no checkpoint directory at {} (give one with --ckpt-dir or CKPT_DIR)",
            dir.display()
        )
    })?;
    let gens = cd
        .generations()
        .with_context(|| format!("listing {}", dir.display()))?;
    let newest = gens
        .iter()
        .rev()
        .find(|g| g.is_complete())
        .map(|g| g.number);
    Ok(gens.iter().map(|g| listed(g, newest)).collect())
}

pub fn run(dir: &Path, json: bool) -> anyhow::Result<()> {
    let gens = generations(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&gens)?);
        return Ok(());
    }
    if gens.is_empty() {
        println!("{}: no generations yet", dir.display());
        return Ok(());
    }
    println!("{}:", dir.display());
    println!(
        "  {:>4}  {:<10}  {:<23}  {:>10}  {:>8}  PROCESSES",
        "GEN", "STATE", "COMMITTED", "SIZE", "TOOK"
    );
    for g in &gens {
        let state = if g.newest_complete {
            "complete*"
        } else if g.complete {
            "complete"
        } else {
            "incomplete"
        };
        let procs = g
            .processes
            .iter()
            .map(|p| format!("{}[{}]", p.program, p.vpid))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "  {:>4}  {:<10}  {:<23}  {:>10}  {:>8}  {}",
            g.number,
            state,
            g.created_unix
                .map(fmt::unix_time)
                .unwrap_or_else(|| "-".into()),
            g.bytes.map(fmt::size).unwrap_or_else(|| "-".into()),
            g.duration_seconds
                .map(fmt::secs)
                .unwrap_or_else(|| "-".into()),
            if g.complete {
                format!("{} {procs}", g.processes.len())
            } else {
                g.problem.clone().unwrap_or_default()
            }
        );
    }
    if gens.iter().any(|g| g.newest_complete) {
        println!("  (* = newest complete generation: the one `ckpt restart` uses)");
    }
    Ok(())
}
