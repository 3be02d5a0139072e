//! Errors of inference.

/// Result alias for this crate.
pub type Result<T, E = InferError> = std::result::Result<T, E>;

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// From the store.
    #[error(transparent)]
    Store(#[from] neurstore::Error),
    /// The model lacks a tensor or has one of the wrong shape or type.
    #[error("model {model:?}: {detail}")]
    Weights {
        /// Model name.
        model: String,
        /// What is missing or wrong.
        detail: String,
    },
    /// A bad configuration or tokenizer file.
    #[error("{what}: {detail}")]
    Config {
        /// Which file.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// Bad input to the model (empty batch, too long a sequence, unknown token id).
    #[error("{0}")]
    Input(String),
    /// From the tensor library.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
