//! The fast paths of the image writer and of the restorer restore exactly what the slow
//! paths do, asserted on program state: `bigmem` (a large region of random data whose
//! every word the program checks against regenerated data, and whose digest it re-verifies
//! every 5 ticks) goes through two checkpoint/restart cycles and must end with PASS,
//! once per way the writer can put page data on disk (O_DIRECT with asynchronous I/O,
//! O_DIRECT one write at a time, buffered with early writeback: `CKPT_IMAGE_IO`). The
//! restorer reads it back with two threads, from the page cache or with O_DIRECT, checking
//! every run's CRC-32C.
//!
//! A damaged page run is found by the restorer (not by a full read in `ckpt restart`): the
//! restore must end with a non-zero status and a message naming the run's address and the
//! image file, and the program must never run.

use ckpt_tests::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs the corpus cycle of `bigmem` (MiB of random data) with CKPT_IMAGE_IO=`mode`.
fn bigmem_cycle(mode: &str, mib: &str) {
    let sb = Sandbox::new(&format!("fastpath-{mode}"));
    // This test binary's own process: the variable reaches the launched program (whose
    // runtime writes the images) and, through its memory, the restored ones.
    std::env::set_var("CKPT_IMAGE_IO", mode);
    let prog = programs().path("bigmem");
    let res = corpus_cycle(&sb, "bigmem", &prog, &["300", mib]);
    std::env::remove_var("CKPT_IMAGE_IO");
    match res {
        Ok(run) => println!(
            "bigmem {mib} MiB, CKPT_IMAGE_IO={mode}: PASS\n{}",
            summarize(&run.cycles)
        ),
        Err(e) => panic!("\nCKPT_IMAGE_IO={mode}: {e}"),
    }
}

#[test]
fn bigmem_direct_async() {
    bigmem_cycle("auto", "384");
}

#[test]
fn bigmem_direct_sync() {
    bigmem_cycle("direct", "96");
}

#[test]
fn bigmem_buffered() {
    bigmem_cycle("buffered", "96");
}

fn only_image(gen: &Path) -> PathBuf {
    let imgs: Vec<PathBuf> = std::fs::read_dir(gen)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect();
    assert_eq!(imgs.len(), 1, "one image expected in {}", gen.display());
    imgs[0].clone()
}

#[test]
fn damaged_page_run_is_found_by_the_restorer() {
    let sb = Sandbox::new("fastpath-damaged");
    let prog = programs().path("bigmem");
    let job = sb.launch("bigmem", &prog, &["300", "64"]);
    job.wait_tick(3, START_TIMEOUT).expect("bigmem ticks");
    let ck = sb.checkpoint(true);
    assert!(ck.success(), "checkpoint failed:\n{}", ck.report());
    let mut job = job;
    let _ = job.wait_exit(Duration::from_secs(30));

    let gen = std::fs::read_dir(sb.ckpt_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("gen-"))
        .expect("a generation");
    let img = only_image(&gen);
    let reader = ckpt_image::ImageReader::open(&img).expect("the intact image opens");
    let runs = reader.page_runs().expect("page runs");
    // A run in the middle of the big region (the restorer reads it with either thread).
    let mut big: Vec<_> = runs.iter().filter(|r| r.len >= 1 << 20).collect();
    big.sort_by_key(|r| r.addr);
    assert!(
        big.len() >= 8,
        "expected the 64 MiB region in runs of >= 1 MiB: {runs:?}"
    );
    let victim = *big[big.len() / 2];
    drop(reader);
    let at = victim.offset + victim.len / 2 + 123;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let mut r = sb.restart("damaged");
    let ran = r
        .wait_for_line(|l| l.tick().is_some(), Duration::from_secs(20))
        .is_ok();
    let status = r.wait_exit(Duration::from_secs(30));
    let err = r.stderr_text();
    r.kill();
    assert!(
        !ran,
        "the damaged image was restored and ran:\n{}",
        r.transcript(20)
    );
    let st = status.unwrap_or_else(|e| panic!("restart did not end: {e}\n{err}"));
    assert!(!st.success(), "restart of a damaged image exited 0:\n{err}");
    let addr = format!("{:#018x}", victim.addr);
    let name = img.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        err.contains("damaged") && err.contains(&addr) && err.contains(&name),
        "the message must say the image is damaged, name the run's address {addr} and the file {name}:\n{err}"
    );
    println!(
        "restart of the damaged image: {}: {}",
        describe(Some(st)),
        err.trim()
    );
}

fn generation_dirs(ck: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(ck)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("gen-"))
        .collect();
    v.sort();
    v
}

/// Incremental chain: a full checkpoint, then three more while bigmem (384 MiB) changes a
/// few words per tick: each later image holds only the changed pages (≤ 5 % of the full
/// one) and points at the earlier images for the rest. Retention (keep 3) must keep the
/// first generation while a kept one references it. The chain's newest generation is then
/// restored and must run to PASS: every word of the region is compared with regenerated
/// data at the end.
#[test]
fn incremental_chain_restores_exactly() {
    let sb = Sandbox::new("fastpath-incr");
    let prog = programs().path("bigmem");
    let mut job = sb.launch("bigmem", &prog, &["400", "384"]);
    job.wait_tick(3, START_TIMEOUT).expect("bigmem ticks");
    let mut sizes = Vec::new();
    for k in 0..4 {
        let t = job.max_tick().unwrap_or(0);
        job.wait_tick(t + 3, START_TIMEOUT)
            .expect("ticks between checkpoints");
        let kill = k == 3;
        let ck = sb.checkpoint(kill);
        assert!(ck.success(), "checkpoint {k} failed:\n{}", ck.report());
        let gens = generation_dirs(&sb.ckpt_dir());
        let img = only_image(gens.last().unwrap());
        sizes.push(std::fs::metadata(&img).unwrap().len());
    }
    let _ = job.wait_exit(Duration::from_secs(30));
    println!("image sizes: {sizes:?}");
    assert!(
        sizes[0] > 384 << 20,
        "the first image is a full one: {sizes:?}"
    );
    for (k, s) in sizes.iter().enumerate().skip(1) {
        assert!(
            *s * 20 <= sizes[0],
            "image {k} is {s} bytes, more than 5 % of the full one ({}): {sizes:?}",
            sizes[0]
        );
    }
    let gens = generation_dirs(&sb.ckpt_dir());
    assert!(
        gens.iter().any(|g| g.ends_with("gen-000001")),
        "generation 1 was pruned although generation 4 takes page data from it: {gens:?}"
    );
    // The newest image is incremental and its parents check out.
    let newest = only_image(gens.last().unwrap());
    let r = ckpt_image::ImageReader::open(&newest).unwrap();
    let runs = r.page_runs().unwrap();
    assert!(
        runs.iter().any(|x| x.generation == 1),
        "no run of generation 1 in {}",
        newest.display()
    );
    r.verify_pages().expect("every run of the chain verifies");

    let mut res = sb.restart("incremental");
    let st = res
        .wait_exit(FINISH_TIMEOUT)
        .expect("the restored program finishes");
    let out = res.stdout_lines();
    assert!(
        st.success() && out.iter().any(|l| l == "PASS") && res.first_fail().is_none(),
        "the restored incremental chain did not run to PASS ({}):\n{}",
        describe(Some(st)),
        res.transcript(30)
    );
}
