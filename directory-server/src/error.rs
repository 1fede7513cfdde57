//! The directory's error type and how each error becomes a gRPC status.
//!
//! Callers' mistakes map to INVALID_ARGUMENT / RESOURCE_EXHAUSTED / UNAUTHENTICATED /
//! PERMISSION_DENIED / NOT_FOUND with a message that names the field and the bound; our own failures map to
//! INTERNAL with a generic message (the detail goes to the log, not to the caller).

use crate::catalog::CatalogError;
use crate::index::IndexError;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = DirectoryError> = std::result::Result<T, E>;

pub fn invalid(msg: impl Into<String>) -> DirectoryError {
    DirectoryError::InvalidArgument(msg.into())
}

impl From<DirectoryError> for tonic::Status {
    fn from(e: DirectoryError) -> Self {
        use DirectoryError::*;
        match e {
            InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            Unauthenticated(m) => tonic::Status::unauthenticated(m),
            NotFound(m) => tonic::Status::not_found(m),
            PermissionDenied(m) => tonic::Status::permission_denied(m),
            Catalog(CatalogError::TooManyFiles { would_have, limit }) => tonic::Status::resource_exhausted(
                format!("this peer would share {would_have} files; the limit is {limit}"),
            ),
            Index(IndexError::BadQuery(m)) => tonic::Status::invalid_argument(m),
            other => {
                tracing::error!(error = %other, "request failed");
                tonic::Status::internal("internal error; the directory logged the details")
            }
        }
    }
}
