//! Code generated from the vendored CRI v1 api.proto (see proto/README.md).
//! Only `cri/` uses these types; the rest of crius has its own domain types.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("runtime.v1");
