//! Progress reporting for long operations, implemented by front ends (progress bars).

/// Receives progress of a long operation, in bytes.
pub trait Progress: Sync {
    /// A phase begins; `total` bytes are expected.
    fn start(&self, _label: &str, _total: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// The phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
