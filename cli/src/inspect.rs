//! `ckpt inspect`: what a generation or one image file holds.

use crate::fmt;
use anyhow::{bail, Context};
use ckpt_image::{CkptDir, FdKind, ImageReader, Manifest, ProcessMeta, RegionKind};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct InspectedImage {
    pub file: String,
    pub bytes: u64,
    pub format_version: (u32, u32),
    pub created_unix: u64,
    pub sections: Vec<String>,
    pub page_runs: usize,
    /// Sum of region sizes.
    pub mapped_bytes: u64,
    /// Sum of the bytes the image stores for the regions.
    pub stored_bytes: u64,
    pub meta: ProcessMeta,
}

#[derive(Debug, Serialize)]
pub struct Inspected {
    /// None when a single image file was inspected.
    pub generation: Option<u64>,
    pub path: String,
    pub manifest: Option<Manifest>,
    pub processes: Vec<InspectedImage>,
}

/// Reads one image completely enough to describe it.
pub fn image(path: &Path) -> anyhow::Result<InspectedImage> {
    let r =
        ImageReader::open(path).with_context(|| format!("reading the image {}", path.display()))?;
    let meta = r
        .meta()
        .with_context(|| format!("reading the process description in {}", path.display()))?;
    let runs = r
        .page_runs()
        .with_context(|| format!("reading the page map of {}", path.display()))?;
    // Describing an image that would not restore would be misleading: check its data too.
    r.verify_pages()
        .with_context(|| format!("checking the page data of {}", path.display()))?;
    Ok(InspectedImage {
        file: path.to_string_lossy().into_owned(),
        bytes: r.file_len(),
        format_version: r.format_version(),
        created_unix: r.created_unix(),
        sections: r.sections().iter().map(|s| s.kind.to_string()).collect(),
        page_runs: runs.len(),
        mapped_bytes: meta
            .regions
            .iter()
            .map(|x| x.end.saturating_sub(x.start))
            .sum(),
        stored_bytes: meta.regions.iter().map(|x| x.stored_bytes).sum(),
        meta,
    })
}

/// Resolves `target` (a checkpoint directory, a generation directory, or an image file).
pub fn collect(target: &Path, generation: Option<u64>) -> anyhow::Result<Inspected> {
    let md = std::fs::metadata(target)
        .with_context(|| format!("cannot inspect {}", target.display()))?;
    if md.is_file() {
        if generation.is_some() {
            bail!(
                "--generation applies to a checkpoint directory, not to the image file {}",
                target.display()
            );
        }
        return Ok(Inspected {
            generation: None,
            path: target.to_string_lossy().into_owned(),
            manifest: None,
            processes: vec![image(target)?],
        });
    }
    // A generation directory given directly (it has a MANIFEST, or is named gen-N).
    let (cd, n) = match gen_dir_number(target) {
        Some(n) if generation.is_none() || generation == Some(n) => {
            let parent = target.parent().unwrap_or(Path::new("/"));
            (CkptDir::open(parent)?, n)
        }
        _ => {
            let cd = CkptDir::open(target).with_context(|| {
                format!("opening the checkpoint directory {}", target.display())
            })?;
            let n = match generation {
                Some(n) => n,
                None => match cd.newest_complete()? {
                    Some(g) => g.number,
                    None => {
                        let mut msg = format!("{} holds no complete generation", target.display());
                        for g in cd.generations()? {
                            if let Some(p) = g.problem() {
                                msg.push_str(&format!("\n  generation {}: {p}", g.number));
                            }
                        }
                        bail!(msg)
                    }
                },
            };
            (cd, n)
        }
    };
    let gens = cd.generations()?;
    let Some(g) = gens.into_iter().find(|g| g.number == n) else {
        bail!("{} has no generation {n}", cd.root().display());
    };
    let Some(manifest) = g.manifest.clone() else {
        bail!(
            "generation {n} is not complete: {}",
            g.problem().unwrap_or_default()
        );
    };
    let mut processes = Vec::new();
    for p in &manifest.processes {
        if ckpt_image::is_reexec_file(&p.file) {
            // a launcher re-executed at restart (srun): the manifest lists it; no image
            continue;
        }
        let path = g.path.join(&p.file);
        processes.push(
            image(&path).with_context(|| format!("process vpid {} ({})", p.vpid, p.program))?,
        );
    }
    Ok(Inspected {
        generation: Some(n),
        path: g.path.to_string_lossy().into_owned(),
        manifest: Some(manifest),
        processes,
    })
}

fn gen_dir_number(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    ckpt_image::generation::parse_generation_dir_name(name)
}

pub fn run(target: &Path, generation: Option<u64>, json: bool) -> anyhow::Result<()> {
    let ins = collect(target, generation)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
        return Ok(());
    }
    match (&ins.generation, &ins.manifest) {
        (Some(n), Some(m)) => println!(
            "generation {n} ({}): {} process{}, {}, committed {}, took {}",
            ins.path,
            m.processes.len(),
            if m.processes.len() == 1 { "" } else { "es" },
            fmt::size(m.total_bytes),
            fmt::unix_time(m.created_unix),
            fmt::secs(m.duration_seconds)
        ),
        _ => println!("image {}", ins.path),
    }
    for p in &ins.processes {
        print_image(p);
    }
    Ok(())
}

fn prot(r: &ckpt_image::Prot, shared: bool) -> String {
    format!(
        "{}{}{}{}",
        if r.read { 'r' } else { '-' },
        if r.write { 'w' } else { '-' },
        if r.exec { 'x' } else { '-' },
        if shared { 's' } else { 'p' }
    )
}

fn kind(k: &RegionKind) -> String {
    match k {
        RegionKind::Anon => "anon".into(),
        RegionKind::Heap => "[heap]".into(),
        RegionKind::Stack => "[stack]".into(),
        RegionKind::File { path, offset, .. } => format!("{path} @{offset:#x}"),
        RegionKind::SharedMem {
            name, ino, saved, ..
        } => {
            format!(
                "shared {name} (object {ino}{})",
                if *saved { ", saved here" } else { "" }
            )
        }
        RegionKind::Vvar => "[vvar]".into(),
        RegionKind::VvarVclock => "[vvar_vclock]".into(),
        RegionKind::Vdso => "[vdso]".into(),
    }
}

fn open_flags(flags: i32) -> String {
    let mut v = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        _ => "O_RDWR",
    }];
    for (bit, name) in [
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
    ] {
        if flags & bit != 0 {
            v.push(name);
        }
    }
    v.join("|")
}

fn print_image(p: &InspectedImage) {
    let m = &p.meta;
    println!();
    println!(
        "process vpid {} (pid {} on {}, parent vpid {}): {}",
        m.vpid, m.real_pid, m.host, m.vppid, m.program
    );
    println!(
        "  image: {}, {}, format {}.{}, sections {}",
        p.file,
        fmt::size(p.bytes),
        p.format_version.0,
        p.format_version.1,
        p.sections.join(" ")
    );
    println!("  exe: {}", m.exe);
    println!("  argv: {}", shell_words(&m.argv));
    println!("  cwd: {}  uid/gid: {}/{}", m.attrs.cwd, m.uid, m.gid);
    println!(
        "  kernel: {}  page size: {}",
        m.requirements.kernel_release, m.requirements.page_size
    );
    let runtime = m.threads.iter().filter(|t| t.runtime).count();
    println!(
        "  threads: {} ({} of the program, {} of the runtime)",
        m.threads.len(),
        m.threads.len() - runtime,
        runtime
    );
    for t in &m.threads {
        println!(
            "    tid {:<8} {}{}",
            t.vtid,
            t.name,
            if t.runtime { " (runtime)" } else { "" }
        );
    }
    println!("  memory regions: {}", m.regions.len());
    println!(
        "    {:<33}  {:<4}  {:>10}  {:>10}  MAPPING",
        "ADDRESS RANGE", "PROT", "SIZE", "STORED"
    );
    for r in &m.regions {
        println!(
            "    {:016x}-{:016x}  {:<4}  {:>10}  {:>10}  {}",
            r.start,
            r.end,
            prot(&r.prot, r.shared),
            fmt::size(r.end.saturating_sub(r.start)),
            fmt::size(r.stored_bytes),
            kind(&r.kind)
        );
    }
    println!(
        "    total: {} mapped, {} stored in {} page runs",
        fmt::size(p.mapped_bytes),
        fmt::size(p.stored_bytes),
        p.page_runs
    );
    if let Some(t) = &m.terminal {
        println!(
            "  terminal: controlling terminal {}, foreground group {}{}",
            match t.ctty_pty {
                Some(i) => format!("pty pair {i} of the job"),
                None => "the restarting command's (if any)".into(),
            },
            if t.foreground > 0 {
                t.foreground.to_string()
            } else {
                "none".into()
            },
            if t.stdio.is_some() {
                "; modes of the stdio terminal saved"
            } else {
                ""
            }
        );
    }
    println!("  files: {}", m.files.len());
    if !m.files.is_empty() {
        println!(
            "    {:>4}  {:<10}  {:>12}  {:<24}  PATH",
            "FD", "KIND", "OFFSET", "FLAGS"
        );
    }
    for f in &m.files {
        let (k, path, offset) = match &f.kind {
            FdKind::Inherited => ("inherited", String::new(), None),
            FdKind::Regular { path, offset, .. } => ("file", path.clone(), Some(*offset)),
            FdKind::Directory { path } => ("directory", path.clone(), None),
            FdKind::Device { path } => ("device", path.clone(), None),
            FdKind::Dup { of } => ("dup", format!("same open file as fd {of}"), None),
            FdKind::EventFd { count, semaphore } => (
                "eventfd",
                format!(
                    "count {count}{}",
                    if *semaphore { ", semaphore" } else { "" }
                ),
                None,
            ),
            FdKind::TimerFd {
                clockid,
                settime_flags,
                value_ns,
                interval_ns,
                ticks,
            } => (
                "timerfd",
                format!(
                    "{} {}: next in {:.3} s, interval {:.3} s, {ticks} unread expirations",
                    match clockid {
                        0 => "CLOCK_REALTIME",
                        1 => "CLOCK_MONOTONIC",
                        7 => "CLOCK_BOOTTIME",
                        8 => "CLOCK_REALTIME_ALARM",
                        9 => "CLOCK_BOOTTIME_ALARM",
                        _ => "clock ?",
                    },
                    if settime_flags & 1 != 0 {
                        "absolute"
                    } else {
                        "relative"
                    },
                    *value_ns as f64 / 1e9,
                    *interval_ns as f64 / 1e9
                ),
                None,
            ),
            FdKind::SignalFd { mask } => ("signalfd", format!("mask {mask:#x}"), None),
            FdKind::Pty {
                index,
                master,
                state,
            } => (
                if *master { "pty master" } else { "pty slave" },
                match state {
                    Some(s) => format!(
                        "pair {index}: {}x{}, {} byte(s) to the slave, {} byte(s) to the master",
                        s.winsize[0],
                        s.winsize[1],
                        s.to_slave.len() / 2,
                        s.to_master.len() / 2
                    ),
                    None => format!("pair {index}"),
                },
                None,
            ),
            FdKind::Epoll { targets } => (
                "epoll",
                targets
                    .iter()
                    .map(|t| format!("fd {} events {:#x} data {:#x}", t.fd, t.events, t.data))
                    .collect::<Vec<_>>()
                    .join("; "),
                None,
            ),
            FdKind::Inotify { watches } => (
                "inotify",
                watches
                    .iter()
                    .map(|w| format!("wd {} {} mask {:#x}", w.wd, w.path, w.mask))
                    .collect::<Vec<_>>()
                    .join("; "),
                None,
            ),
            FdKind::PidFd { vpid } => ("pidfd", format!("process {vpid}"), None),
            FdKind::Memfd {
                name,
                size,
                seals,
                offset,
                ..
            } => (
                "memfd",
                format!("memfd:{name}, {size} bytes saved, seals {seals:#x}"),
                Some(*offset),
            ),
            FdKind::Deleted {
                path, size, offset, ..
            } => (
                "deleted",
                format!("{path} (deleted), {size} bytes saved"),
                Some(*offset),
            ),
            FdKind::Path { path } => ("o_path", path.clone(), None),
            FdKind::Fifo { path } => ("fifo", path.clone(), None),
            FdKind::Socket {
                inode,
                state,
                rx,
                domain,
                ..
            } => (
                "socket",
                format!(
                    "socket:[{inode}] {} {state}, {} bytes waiting",
                    match *domain {
                        1 => "unix",
                        2 => "ipv4",
                        10 => "ipv6",
                        _ => "?",
                    },
                    rx.len() / 2
                ),
                None,
            ),
            FdKind::Pipe {
                inode,
                write_end,
                buffered,
                ..
            } => (
                "pipe",
                format!(
                    "pipe:[{inode}] {} end, {buffered} bytes buffered",
                    if *write_end { "write" } else { "read" }
                ),
                None,
            ),
        };
        let mut flags = open_flags(f.flags);
        if f.cloexec {
            flags.push_str("|CLOEXEC");
        }
        println!(
            "    {:>4}  {:<10}  {:>12}  {:<24}  {}",
            f.fd,
            k,
            offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
            flags,
            path
        );
    }
}

/// Shows argv so that arguments with spaces stay recognizable.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The default target of `ckpt inspect` when none is given.
pub fn default_target(dir: Option<PathBuf>) -> PathBuf {
    crate::coord::resolve_ckpt_dir(dir)
}
