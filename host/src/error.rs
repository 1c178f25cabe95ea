//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong in this crate.
///
/// Shape and format problems are detected on the host before any kernel runs, so they never
/// reach the GPU as out-of-bounds accesses.
#[derive(Debug, Error)]
pub enum Error {
    /// Two operands do not fit together, or a dimension is zero or too large.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The element type does not match (e.g. a bf16 weight file loaded as f16).
    #[error("unsupported dtype: {0}")]
    UnsupportedDtype(String),
    /// No CUDA driver or no CUDA-capable device is present.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The device is too old (Tensor Core kernels here need compute capability 8.0 or newer).
    #[error("unsupported device: {0}")]
    UnsupportedDevice(String),
    /// A CUDA driver call failed; carries the driver's error name.
    #[error("CUDA driver error in {context}: {name}")]
    Driver {
        /// What the library was doing.
        context: &'static str,
        /// The driver's error, e.g. `InvalidValue`.
        name: String,
    },
    /// A value is out of its valid range (e.g. a sparsity outside 0..=1).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file's bytes are corrupt or truncated: a sparse weight (or its arrays are
    /// inconsistent), or a model checkpoint such as GGUF. The message names the file format.
    #[error("invalid format: {0}")]
    Format(String),
    /// A well-formed model file or tokenizer does not have what is asked of it: a metadata key
    /// is missing or of another type, a tensor is absent, a tokenizer kind is unsupported.
    #[error("model: {0}")]
    Model(String),
    /// Reading or writing a file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// cuBLAS could not be loaded or a cuBLAS call failed (benchmarks only).
    #[error("cuBLAS: {0}")]
    Cublas(String),
    /// NCCL could not be loaded or an NCCL call failed (tensor-parallel models, feature
    /// `nccl`).
    #[error("NCCL: {0}")]
    Nccl(String),
}

/// `Result` with this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a driver error with what the library was doing when it happened.
    pub(crate) fn driver(context: &'static str, err: cust::error::CudaError) -> Self {
        Error::Driver { context, name: format!("{err:?}") }
    }

    /// `Ok` for a raw driver status of success, else the error with its context (for driver
    /// calls `cust` does not wrap).
    pub(crate) fn check_raw(context: &'static str, rc: cust::sys::CUresult) -> Result<()> {
        if rc == cust::sys::cudaError_enum::CUDA_SUCCESS {
            return Ok(());
        }
        Err(Error::Driver { context, name: format!("{rc:?}") })
    }
}
