//! Code that runs inside a new process forked by the monitor: a container's
//! init (both stages, [`container`]), an exec process ([`exec`]), the
//! process setup they share ([`setup`]), the rootfs plan and its executor
//! ([`rootfs`]), user resolution ([`user`]) and the pod init ([`pod`]);
//! why a step of them failed ([`error`]).
//!
//! Runs only in single-threaded processes forked from the monitor. Its
//! system calls go through [`crate::sys`]; the one `unsafe` here is the
//! pod init's claim to be single-threaded.

pub mod container;
pub mod error;
pub mod exec;
pub mod pod;
pub mod rootfs;
pub mod setup;
pub mod user;
