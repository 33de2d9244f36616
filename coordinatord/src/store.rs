//! Where generations go: the coordinator's view of the checkpoint directory.

use crate::machine::CommittedImage;
use anyhow::Context;
use ckpt_image::{CkptDir, JobInfo, Manifest, ManifestProcess};
use ckpt_protocol::CheckpointSummary;
use std::path::{Path, PathBuf};

/// The generation operations the coordinator needs (a trait so the machine's tests and
/// alternative layouts can stand in).
pub trait GenerationStore: Send {
    /// Creates the directory of the next generation; returns its number and path.
    fn begin(&mut self) -> anyhow::Result<(u64, PathBuf)>;
    /// Writes and commits the manifest of `generation` (atomically, last).
    fn commit(
        &mut self,
        generation: u64,
        images: &[CommittedImage],
        summary: &CheckpointSummary,
    ) -> anyhow::Result<()>;
    /// Removes an incomplete generation.
    fn abandon(&mut self, generation: u64) -> anyhow::Result<()>;
    /// Keeps the newest `keep` complete generations.
    fn prune(&mut self, keep: usize) -> anyhow::Result<()>;
}

/// The real store: a [`CkptDir`] (generation directories `gen-NNNNNN/` with a `MANIFEST`).
pub struct DirStore {
    dir: CkptDir,
    job: Option<JobInfo>,
    /// The last number this coordinator began: an abandoned generation's number is never
    /// reused while its processes may still send late messages or files for it.
    last_begun: u64,
}

/// Opens (creating if needed) the checkpoint directory `root`.
pub fn open(root: &Path) -> anyhow::Result<Box<dyn GenerationStore>> {
    let dir = CkptDir::create(root)
        .with_context(|| format!("opening the checkpoint directory {}", root.display()))?;
    Ok(Box::new(DirStore {
        dir,
        job: job_from_env(),
        last_begun: 0,
    }))
}

/// Describes the batch job from the scheduler's environment, when there is one.
fn job_from_env() -> Option<JobInfo> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(id) = var("SLURM_JOB_ID") {
        return Some(JobInfo {
            scheduler: Some("slurm".into()),
            job_id: Some(id),
            job_name: var("SLURM_JOB_NAME"),
            step_id: var("SLURM_STEP_ID"),
            user: var("SLURM_JOB_USER").or_else(|| var("USER")),
            cluster: var("SLURM_CLUSTER_NAME"),
            restart_count: var("SLURM_RESTART_COUNT"),
        });
    }
    if let Some(id) = var("PBS_JOBID") {
        return Some(JobInfo {
            scheduler: Some("pbs".into()),
            job_id: Some(id),
            job_name: var("PBS_JOBNAME"),
            user: var("USER"),
            ..JobInfo::default()
        });
    }
    None
}

impl GenerationStore for DirStore {
    fn begin(&mut self) -> anyhow::Result<(u64, PathBuf)> {
        let n = self.dir.next_number()?.max(self.last_begun + 1);
        let path = self.dir.begin(n)?;
        self.last_begun = n;
        Ok((n, path))
    }

    fn commit(
        &mut self,
        generation: u64,
        images: &[CommittedImage],
        summary: &CheckpointSummary,
    ) -> anyhow::Result<()> {
        let processes = images
            .iter()
            .map(|i| ManifestProcess {
                vpid: i.info.vpid,
                real_pid: i.info.real_pid,
                program: i.info.program.clone(),
                host: i.info.host.clone(),
                file: i.written.file.clone(),
                bytes: i.written.bytes,
                rank: i.info.rank,
                step: i.info.step.clone(),
            })
            .collect();
        let m = Manifest::new(
            generation,
            summary.committed_unix,
            summary.seconds,
            processes,
            self.job.clone(),
        );
        self.dir.commit(generation, &m)?;
        Ok(())
    }

    fn abandon(&mut self, generation: u64) -> anyhow::Result<()> {
        self.dir.abandon(generation)?;
        Ok(())
    }

    fn prune(&mut self, keep: usize) -> anyhow::Result<()> {
        let removed = self.dir.prune(keep)?;
        if !removed.is_empty() {
            tracing::info!("pruned generations {removed:?} (keeping {keep})");
        }
        Ok(())
    }
}
