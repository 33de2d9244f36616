//! The one error type of this crate. Every variant names the file (or directory) it is
//! about and says what is wrong with it.

use std::io;
use std::path::{Path, PathBuf};

/// The broad class of an [`ImageError`], for callers (and tests) that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Io,
    Empty,
    NotAnImage,
    Truncated,
    Checksum,
    FutureVersion,
    UnsupportedSection,
    Corrupt,
    InvalidManifest,
    Exists,
    Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An operating-system call failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: empty file (0 bytes): not a ckpt image", path.display())]
    Empty { path: PathBuf },
    /// Wrong magic: some other kind of file.
    #[error("{}: not a ckpt image: {detail}", path.display())]
    NotAnImage { path: PathBuf, detail: String },
    /// The file ends before a structure that must be there (e.g. a writer died mid-way).
    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: checksum mismatch in {what}: stored {stored:#010x}, computed {computed:#010x}", path.display())]
    Checksum {
        path: PathBuf,
        what: String,
        stored: u32,
        computed: u32,
    },
    /// A version number newer than this build understands.
    #[error("{}: {what} version {found} is newer than this ckpt supports (up to {supported}): written by a newer ckpt", path.display())]
    FutureVersion {
        path: PathBuf,
        what: String,
        found: u32,
        supported: u32,
    },
    #[error("{}: unsupported section: {detail}", path.display())]
    UnsupportedSection { path: PathBuf, detail: String },
    /// Structurally invalid (inconsistent offsets, overlapping runs, bad JSON, ...).
    #[error("{}: corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{}: invalid manifest: {detail}", path.display())]
    InvalidManifest { path: PathBuf, detail: String },
    #[error("{}: already exists", path.display())]
    Exists { path: PathBuf },
    /// The API was called in a way it does not allow (a bug in the caller).
    #[error("{}: {detail}", path.display())]
    Usage { path: PathBuf, detail: String },
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Io { .. } => ErrorKind::Io,
            ImageError::Empty { .. } => ErrorKind::Empty,
            ImageError::NotAnImage { .. } => ErrorKind::NotAnImage,
            ImageError::Truncated { .. } => ErrorKind::Truncated,
            ImageError::Checksum { .. } => ErrorKind::Checksum,
            ImageError::FutureVersion { .. } => ErrorKind::FutureVersion,
            ImageError::UnsupportedSection { .. } => ErrorKind::UnsupportedSection,
            ImageError::Corrupt { .. } => ErrorKind::Corrupt,
            ImageError::InvalidManifest { .. } => ErrorKind::InvalidManifest,
            ImageError::Exists { .. } => ErrorKind::Exists,
            ImageError::Usage { .. } => ErrorKind::Usage,
        }
    }

    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Io { path, .. }
            | ImageError::Empty { path }
            | ImageError::NotAnImage { path, .. }
            | ImageError::Truncated { path, .. }
            | ImageError::Checksum { path, .. }
            | ImageError::FutureVersion { path, .. }
            | ImageError::UnsupportedSection { path, .. }
            | ImageError::Corrupt { path, .. }
            | ImageError::InvalidManifest { path, .. }
            | ImageError::Exists { path }
            | ImageError::Usage { path, .. } => path,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// `result.ctx(path, "op")` turns an `io::Result` into an [`ImageError::Io`].
pub(crate) trait IoCtx<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, ImageError>;
}

impl<T> IoCtx<T> for io::Result<T> {
    fn ctx(self, path: &Path, op: &'static str) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(path, op, e))
    }
}
