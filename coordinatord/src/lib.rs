//! The per-job checkpoint coordinator (`ckpt-coordinatord`): membership, the barrier
//! sequence of a checkpoint, intervals, control requests and the generation manifest.
//! See docs/protocol.md.

pub mod app;
pub mod duration;
pub mod events;
pub mod machine;
pub mod server;
pub mod store;
pub mod sys;

/// Longest UNIX socket path (sun_path holds 108 bytes including the final NUL).
pub const SUN_PATH_MAX: usize = 107;
