//! crius: a Kubernetes CRI v1 container runtime. A container is an ordinary
//! host process; namespaces change what it can see, cgroups limit what it can
//! use. See docs/ARCHITECTURE.md for the map of modules.
#![deny(unsafe_code)]

pub mod cgroups;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod error;
pub mod events;
pub mod ids;
pub mod image;
pub mod init;
#[cfg(test)]
mod layout_tests;
pub mod locks;
pub mod monitor;
pub mod network;
pub mod pod;
pub mod record;
pub mod seccomp;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod sys;
