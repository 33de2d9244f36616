//! The ckpt on-disk format: generation directories, manifests and process images.
//! See docs/image-format.md.

pub mod container;
pub mod error;
pub mod generation;
pub mod incremental;
pub mod manifest;
pub mod model;

pub use container::{
    sync_dir, write_image_atomically, ImageReader, ImageWriter, PageIo, PageSink, ParentRef,
    SectionInfo, SectionKind,
};
pub use error::{ErrorKind, ImageError};
pub use generation::{CkptDir, GenerationInfo, GenerationState};
pub use manifest::{JobInfo, Manifest, ManifestProcess};
pub use model::*;

#[cfg(test)]
mod tests;
