//! `crius-pod-init`: PID 1 of a pod's PID namespace, executed by the pod's
//! monitor (see [`crius::init::pod`]). It only reaps, so it is the smallest
//! program crius has: every pod in PID mode POD runs one.

fn main() {
    crius::init::pod::run()
}
