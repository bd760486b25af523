//! The one error type of the core library.
//!
//! Decoders work on bytes or readers and do not know where their input came
//! from; the thin path wrappers attach the file name with [`Error::in_file`],
//! so every message a user sees names the file and the problem.

use std::path::Path;

/// Everything that can go wrong in the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error about one named input (file, folder or object key).
    // The inner error is part of the message, not a separate `source`, so
    // that error-chain printers do not repeat it.
    #[error("{path}: {error}")]
    File {
        /// The input as the user named it.
        path: String,
        /// What went wrong with it.
        error: Box<Error>,
    },
    /// Reading or writing failed at the operating-system level.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The bytes are not in the format we were asked to read.
    #[error("not a {format} file: {reason}")]
    WrongFormat {
        /// The format that was expected, e.g. "NIfTI".
        format: &'static str,
        /// Why the bytes were rejected.
        reason: String,
    },
    /// The header parses but describes something impossible or unsafe.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The header asks for more voxels than the configured limit.
    #[error(
        "volume of {voxels} voxels exceeds the limit of {limit} voxels \
         (raise it with --max-voxels if the scan is genuine)"
    )]
    TooLarge {
        /// Voxels the header implies.
        voxels: u128,
        /// The configured limit.
        limit: u64,
    },
    /// The data ended before the header's promised size.
    #[error("truncated data: {0}")]
    Truncated(String),
    /// Valid input that this project does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A DICOM series that cannot be assembled into one volume.
    #[error("DICOM: {0}")]
    Dicom(String),
    /// A caller passed values that make no sense (sizes, spacings, options).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A cohort manifest is malformed.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A model checkpoint is malformed or does not fit the network.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Another process holds a resource this one needs (an output folder).
    #[error("{0}")]
    Busy(String),
    /// A computation gave NaN or infinity where a number was needed.
    #[error("non-finite result: {0}")]
    NonFinite(String),
    /// A libtorch operation failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Attaches the input's name, unless an inner error already names one.
    pub fn in_file(self, path: impl AsRef<Path>) -> Error {
        match self {
            Error::File { .. } => self,
            other => Error::File {
                path: path.as_ref().display().to_string(),
                error: Box::new(other),
            },
        }
    }

    /// The innermost error, with any file context removed.
    pub fn root(&self) -> &Error {
        match self {
            Error::File { error, .. } => error.root(),
            other => other,
        }
    }

    /// Whether the input or the environment is at fault; see [`Fault`].
    pub fn fault(&self) -> Fault {
        use std::io::ErrorKind as K;
        match self.root() {
            Error::Io(e) => match e.kind() {
                // The named input is missing, unreadable or not what it
                // claims: trying again will not change that.
                K::NotFound
                | K::PermissionDenied
                | K::InvalidData
                | K::InvalidInput
                | K::UnexpectedEof
                | K::IsADirectory
                | K::NotADirectory => Fault::Input,
                _ => Fault::Environment,
            },
            // libtorch failures are out-of-memory, device and driver
            // trouble far more often than anything about one scan.
            Error::Torch(_) => Fault::Environment,
            _ => Fault::Input,
        }
    }

    /// Whether this is an operating-system I/O failure (exit status 74).
    pub fn is_io(&self) -> bool {
        matches!(self.root(), Error::Io(_))
    }
}

/// Whose fault a failure is, which decides what a driver does with it: an
/// input fault is final (an error row; the same bytes would fail again), an
/// environment fault may pass (retry the scan later or elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// The scan's files: missing, corrupt, implausible, on another grid.
    Input,
    /// This machine or its services: disk, memory, device, network.
    Environment,
}

impl Fault {
    /// "input" or "environment", as in the result tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Input => "input",
            Fault::Environment => "environment",
        }
    }
}

/// Result alias of the core library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Extension to attach a path to any core result.
pub trait Context<T> {
    /// Names the input that the error is about.
    fn in_file(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn in_file(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| e.into().in_file(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_context_names_file_once() {
        let e = Error::Truncated("expected 10 bytes, got 3".into())
            .in_file("a.nii")
            .in_file("b.nii");
        assert_eq!(
            e.to_string(),
            "a.nii: truncated data: expected 10 bytes, got 3"
        );
        assert!(matches!(e.root(), Error::Truncated(_)));
    }

    #[test]
    fn faults_tell_bad_input_from_a_bad_environment() {
        let missing = Error::Io(std::io::Error::from(std::io::ErrorKind::NotFound)).in_file("a");
        assert_eq!(missing.fault(), Fault::Input);
        assert!(missing.is_io());
        let full = Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(full.fault(), Fault::Environment);
        assert_eq!(
            Error::InvalidHeader("x".into()).in_file("a").fault(),
            Fault::Input
        );
        assert!(!Error::InvalidHeader("x".into()).is_io());
    }
}
