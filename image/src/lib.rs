//! The ckpt on-disk format: generation directories, manifests and process images.
//! See docs/image-format.md.

pub mod model;
pub use model::*;
