//! `spank_ckpt.so`: the Slurm SPANK plugin of ckpt.
//!
//! * `--checkpoint-dmtcp[=INTERVAL]` (sbatch, salloc, srun) opts a job in; `--restart-from=DIR`
//!   (srun) restores a step's tasks from DIR.
//! * In every step of an opted-in job, every task gets the runtime (`LD_PRELOAD`, `CKPT_DIR`,
//!   `CKPT_SOCKET`, `CKPT_BIN`, and `CKPT_RESTART=1` when it is to be restored).
//! * The batch step (or, in a job without one, the first node of a step that finds no
//!   coordinator) starts `ckpt-slurm agent` as the job's user, a child of slurmstepd: it runs
//!   the job's `ckpt-coordinatord` in the foreground and watches the job for preemption and the
//!   time limit. The plugin stops it when the step's tasks have exited, and the job epilog kills
//!   anything left, so no coordinator outlives its job.
//!
//! See docs/admin.md. All unsafe code (bindings, exported symbols and callbacks, libc) is
//! in `ffi`; `plugin` is the logic, one function per callback.

mod config;
mod duration;
mod ffi;
mod plugin;
