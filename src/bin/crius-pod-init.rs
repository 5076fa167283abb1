//! `crius-pod-init`: PID 1 of a pod's PID namespace, executed by the pod's
//! monitor (see [`init::pod`], src/init/pod.rs). Every pod in PID mode POD
//! runs one, so it costs a few pages: `#![no_std]`, no libc, its own
//! `_start` ([`sys::raw`], src/sys/raw.rs), linked static-pie with
//! `-nostartfiles -nostdlib` (hack/rustc-wrapper.sh). Both files are the
//! library's modules of the same name, included here with `#[path]`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "crius-pod-init makes raw x86_64 system calls (src/sys/raw.rs); \
     this architecture is not supported yet"
);

// The library's `crate::sys::raw` (the only module with `unsafe`) and
// `crate::init::pod`, under the same paths.
#[path = "../init/pod.rs"]
pub(crate) mod pod;
#[allow(unsafe_code)]
#[path = "../sys/raw.rs"]
pub(crate) mod raw;
mod sys {
    pub(crate) use super::raw;
}
mod init {
    pub(crate) use super::pod;
}

raw::entry!(crate::init::pod::run, b"crius-init: panic\n");
