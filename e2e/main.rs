//! End-to-end tests: each test starts its own `crius serve` with temporary
//! directories (see harness.rs) and talks CRI to it over the unix socket.

mod boundary;
mod breakout;
mod campaign;
mod cgroup;
mod container;
mod container_ops;
mod engine;
mod events;
mod harness;
mod hostile;
mod hostile_image;
mod hostile_memory;
mod image;
mod mounts;
mod pod;
mod pod_recovery;
mod pull_limits;
mod registry;
mod runtime;
mod security;
mod state_lost;
mod stats;
mod streaming;
mod streaming_attach;
mod streaming_tty;
mod userns;
mod vm;
