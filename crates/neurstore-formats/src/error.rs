//! Errors of the format layer: one enum for every parser, converter and the skeleton codec.

/// Why a model file (or a stored skeleton) was rejected, or a conversion refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes break a rule of their format.
    #[error("{format} file is corrupt: {what}: {detail}")]
    Corrupt {
        /// The format being read ("ONNX", "GGUF", "zip", "pickle", "skeleton", ...).
        format: &'static str,
        /// The thing that is wrong (a field, a tensor name, an entry), with its offset.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The file is well formed but deliberately not accepted (unsafe or legacy content).
    #[error("{format} file refused: {reason}")]
    Refused {
        /// The format being read.
        format: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A pickle names a global outside the whitelist; nothing was executed.
    #[error(
        "pickle refused: global {module}.{name} is not allowed (only PyTorch tensor rebuild functions, \
         storage types, OrderedDict and plain containers are; the pickle was not executed)"
    )]
    ForbiddenGlobal {
        /// Module part of the global.
        module: String,
        /// Attribute part of the global.
        name: String,
    },
    /// The format is valid but uses a feature this reader does not implement.
    #[error("{format}: unsupported: {detail}")]
    Unsupported {
        /// The format being read or written.
        format: &'static str,
        /// The feature.
        detail: String,
    },
    /// A conversion would drop information and was not forced.
    #[error("conversion to {target} would lose information (force it to accept): {}", losses.join("; "))]
    Lossy {
        /// Target format name.
        target: &'static str,
        /// Every piece of information that would be lost.
        losses: Vec<String>,
    },
    /// The safetensors parser rejected the file.
    #[error("safetensors file is corrupt: {0}")]
    Safetensors(#[from] neurstore_core::safetensors::FormatError),
    /// Writing reassembled or converted bytes failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for [`Error::Corrupt`].
pub(crate) fn corrupt(
    format: &'static str,
    what: impl Into<String>,
    detail: impl Into<String>,
) -> Error {
    Error::Corrupt {
        format,
        what: what.into(),
        detail: detail.into(),
    }
}
