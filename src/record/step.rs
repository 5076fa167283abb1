//! The error of a named creation step, and the crash points the e2e tests
//! pause creations at.

use crate::error::{Classify, Kind};

/// A step of a multi-step call failed; everything before it was undone.
#[derive(Debug, thiserror::Error)]
#[error("{op}: step {step:?} failed")]
pub struct StepFailed {
    /// The call: "run pod sandbox", "create container", ...
    pub op: &'static str,
    pub step: String,
    pub kind: Kind,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl Classify for StepFailed {
    fn kind(&self) -> Kind {
        self.kind
    }
}

/// `.map_err(step(op, "create pod cgroup"))`: the error, classified as
/// its source is, named by its step.
pub fn step<E>(op: &'static str, name: &str) -> impl FnOnce(E) -> StepFailed
where
    E: std::error::Error + Classify + Send + Sync + 'static,
{
    let name = name.to_string();
    move |e| StepFailed {
        op,
        step: name,
        kind: e.kind(),
        source: Box::new(e),
    }
}

impl StepFailed {
    /// A step that failed on a path (an internal error).
    pub fn io(op: &'static str, name: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        StepFailed {
            op,
            step: name.to_string(),
            kind: Kind::Internal,
            source: format!("{}: {e}", path.display()).into(),
        }
    }
}

/// Test hook: the env var naming a step before which a creation pauses
/// (e2e tests kill the daemon there, or let a client's deadline pass), for
/// `CRIUS_TEST_PAUSE_SECS` seconds (default 3600). Never set in production.
pub const TEST_PAUSE_ENV: &str = "CRIUS_TEST_PAUSE_AT";
pub const TEST_PAUSE_SECS_ENV: &str = "CRIUS_TEST_PAUSE_SECS";

/// A crash point: pauses when [`TEST_PAUSE_ENV`] names `step`.
pub async fn pause_point(step: &str) {
    if std::env::var(TEST_PAUSE_ENV).is_ok_and(|s| s == step) {
        let secs = std::env::var(TEST_PAUSE_SECS_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600);
        tracing::warn!(step, secs, "test hook: pausing before this step");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
}
