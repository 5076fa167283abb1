//! The monitor process itself (`crius monitor <pod dir>`): single-threaded,
//! no tokio. [`server`] answers the daemon, [`sandbox`] creates the pod's
//! namespaces, [`workload`] forks container inits and exec processes,
//! [`pending`] follows their setups without waiting, [`log`] formats their
//! output in the CRI log format and [`logwriter`] writes it from a child
//! process of its own.

pub mod attach;
pub mod log;
mod logwriter;
mod pending;
pub mod probe;
mod sandbox;
mod server;
mod workload;

pub use server::main;
