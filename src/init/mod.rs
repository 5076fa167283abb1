//! Code that runs inside a new process forked by the monitor: a container's
//! init (both stages, [`container`]), an exec process ([`exec`]), the
//! process setup they share ([`setup`]), the rootfs plan and its executor
//! ([`rootfs`]), user resolution ([`user`]) and the pod init ([`pod`]);
//! why a step of them failed ([`error`]).
//!
//! Runs only in single-threaded processes forked from the monitor. Its
//! system calls go through [`crate::sys`]. The pod init is also a program
//! of its own without std or libc (src/bin/crius-pod-init.rs), built on
//! [`crate::sys::raw`] (x86_64 only).

pub mod container;
pub mod error;
pub mod exec;
#[cfg(target_arch = "x86_64")]
pub mod pod;
pub mod rootfs;
pub mod setup;
pub mod user;
