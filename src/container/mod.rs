//! Containers: the CRI container lifecycle and its translation into an OCI
//! runtime Spec.
//!
//! The translation (`spec`) is pure: CRI config + image config + the pod's
//! context in, an `oci_spec::runtime::Spec` out. The engine that creates the
//! container processes (src/linux, src/monitor) consumes the Spec, so an
//! external OCI runtime could be plugged in later and the translation is
//! unit-tested without privileges.

pub mod log;
pub mod rootfs;
pub mod spec;
pub mod user;
