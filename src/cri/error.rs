//! The single mapping from crius errors to gRPC status codes.

use tonic::{Code, Status};

use crate::error::{Classify, Kind, chain};

/// Converts any classified crius error into the status a CRI client sees,
/// with the whole error chain as its message.
pub fn status<E: Classify>(err: E) -> Status {
    let message = chain(&err);
    let code = match err.kind() {
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::DeadlineExceeded => Code::DeadlineExceeded,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::Unavailable => Code::Unavailable,
        Kind::Unimplemented => Code::Unimplemented,
        Kind::Internal => Code::Internal,
    };
    if code == Code::Internal {
        tracing::warn!(error = %message, "internal error");
    }
    Status::new(code, message)
}

/// The answer of the checkpoint RPCs (CheckpointContainer, CheckpointPod,
/// RestorePod), the only CRI v1 RPCs crius does not implement.
pub fn checkpoint_unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented by crius: checkpoint and restore need CRIU, and on the \
         kernel crius is built and tested on (Linux 6.18) `criu check` fails (CRIU 3.17.1 \
         cannot read the kernel's vDSO layout: \"Unexpected rt vDSO area bounds\"), so \
         there is no working CRIU to build and test it against"
    ))
}

/// A required request field is missing.
pub fn missing(field: &str) -> Status {
    Status::invalid_argument(format!("{field} is required"))
}
