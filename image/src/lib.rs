//! The ckpt on-disk format: generation directories, manifests and process images.
//! See docs/image-format.md.

pub mod container;
pub mod error;
pub mod generation;
pub mod incremental;
pub mod manifest;
pub mod model;
pub mod reexec;

pub use container::{
    sync_dir, write_image_atomically, ImageReader, ImageWriter, PageIo, PageSink, ParentRef,
    SectionInfo, SectionKind,
};
pub use error::{ErrorKind, ImageError};
pub use generation::{CkptDir, GenerationInfo, GenerationState};
pub use manifest::{JobInfo, Manifest, ManifestProcess};
pub use model::*;
pub use reexec::{is_reexec_file, reexec_file_name, ReexecSpec};

#[cfg(test)]
mod tests;
