//! One CNI plugin invocation: an executable found in the bin dirs, run with
//! the CNI_* environment and its configuration on stdin, answering JSON on
//! stdout (CNI SPEC.md, "Section 3: Execution Protocol").
//!
//! Plugins are spawned with `tokio::process` (a plain exec, no code of ours
//! between fork and exec) in their own process group, so that on timeout the
//! plugin *and* the IPAM plugin it may have exec'd are killed together,
//! addressed by the plugin's PID (= its group id), never by name.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The environment of one call (CNI_* variables).
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// Path of the network namespace; may be empty for DEL when it is gone.
    pub netns: &'a str,
    pub if_name: &'a str,
    pub args: &'a str,
    /// CNI_PATH: the bin dirs, colon-separated.
    pub path: &'a str,
}

/// Why a call failed; the caller adds which plugin and pod.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("spawn {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("io with plugin process")]
    Io(#[source] std::io::Error),
    #[error("timed out after {0:?}; killed")]
    Timeout(Duration),
    /// The plugin's error: its CNI error object's msg/details, or stderr.
    #[error("{0}")]
    Failed(String),
}

/// The first executable file named `name` in `dirs`.
pub fn find(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `binary` with `call`'s environment and `stdin`, killing it (and its
/// process group) after `timeout`. Returns stdout on exit status 0.
pub async fn exec(
    binary: &Path,
    call: &Call<'_>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.if_name)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", call.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        path: binary.into(),
        source,
    })?;
    let pid = child.id();
    let mut input = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let run = async {
        let write = async {
            if let Some(mut w) = input.take() {
                // A plugin may exit without reading its config (VERSION):
                // a broken pipe is not our error, its exit status tells.
                let _ = w.write_all(stdin).await;
            }
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let read_out = async {
            match out.as_mut() {
                Some(o) => o.read_to_end(&mut stdout).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let read_err = async {
            match err.as_mut() {
                Some(e) => e.read_to_end(&mut stderr).await.map(|_| ()),
                None => Ok(()),
            }
        };
        let ((), r1, r2) = tokio::join!(write, read_out, read_err);
        r1.and(r2).map_err(ExecError::Io)?;
        let status = child.wait().await.map_err(ExecError::Io)?;
        Ok::<_, ExecError>((status, stdout, stderr))
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let (status, stdout, stderr) = match outcome {
        Ok(r) => r?,
        Err(_) => {
            if let Some(pid) = pid {
                // The group was created for this plugin (process_group(0)),
                // so its id is the plugin's PID.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            return Err(ExecError::Timeout(timeout));
        }
    };
    tracing::debug!(
        plugin = %binary.display(),
        command = call.command,
        container_id = call.container_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        ok = status.success(),
        "CNI plugin call"
    );
    if status.success() {
        return Ok(stdout);
    }
    Err(ExecError::Failed(failure_message(
        &status, &stdout, &stderr,
    )))
}

/// A failed plugin prints a CNI error object on stdout (`code`, `msg`,
/// `details`); some only write to stderr.
fn failure_message(status: &std::process::ExitStatus, stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = v.get("msg").and_then(|m| m.as_str())
    {
        let mut text = msg.to_string();
        if let Some(d) = v.get("details").and_then(|d| d.as_str())
            && !d.is_empty()
        {
            text.push_str(": ");
            text.push_str(d);
        }
        if let Some(code) = v.get("code").and_then(|c| c.as_u64()) {
            text.push_str(&format!(" (CNI error code {code})"));
        }
        return text;
    }
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    let stdout = String::from_utf8_lossy(stdout);
    let stdout = stdout.trim();
    let detail = if !stderr.is_empty() { stderr } else { stdout };
    if detail.is_empty() {
        format!("plugin {status}")
    } else {
        format!("plugin {status}: {}", crate::error::cut(detail, 2048))
    }
}

/// The CNI versions a plugin supports (its VERSION answer).
pub async fn versions(
    binary: &Path,
    timeout: Duration,
    path: &str,
) -> Result<Vec<String>, ExecError> {
    let call = Call {
        command: "VERSION",
        container_id: "",
        netns: "",
        if_name: "",
        args: "",
        path,
    };
    let out = exec(binary, &call, br#"{"cniVersion":"1.0.0"}"#, timeout).await?;
    let v: Value = serde_json::from_slice(&out)
        .map_err(|e| ExecError::Failed(format!("invalid VERSION answer: {e}")))?;
    Ok(v.get("supportedVersions")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn call(command: &str) -> Call<'_> {
        Call {
            command,
            container_id: "cid",
            netns: "/proc/self/ns/net",
            if_name: "eth0",
            args: "A=1",
            path: "/x:/y",
        }
    }

    #[test]
    fn find_takes_the_first_executable_in_dir_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("p"), "not executable").unwrap();
        script(b.path(), "p", "exit 0");
        let dirs = vec![a.path().into(), b.path().into()];
        assert_eq!(find(&dirs, "p"), Some(b.path().join("p")));
        script(a.path(), "p", "exit 0");
        assert_eq!(find(&dirs, "p"), Some(a.path().join("p")));
        assert_eq!(find(&dirs, "q"), None);
    }

    #[tokio::test]
    async fn exec_passes_env_and_stdin_and_returns_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "p",
            "echo \"$CNI_COMMAND|$CNI_CONTAINERID|$CNI_NETNS|$CNI_IFNAME|$CNI_ARGS|$CNI_PATH\"; cat",
        );
        let out = exec(&p, &call("ADD"), b"{\"in\":1}", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ADD|cid|/proc/self/ns/net|eth0|A=1|/x:/y\n{\"in\":1}"
        );
    }

    #[tokio::test]
    async fn failure_reports_the_cni_error_object_or_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "p",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no IP left","details":"range full"}'; exit 1"#,
        );
        let e = exec(&p, &call("ADD"), b"{}", Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no IP left: range full (CNI error code 11)");
        let p = script(dir.path(), "q", "echo boom >&2; exit 3");
        let e = exec(&p, &call("ADD"), b"{}", Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 3") && e.contains("boom"), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_plugin_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The plugin starts a child (as bridge execs host-local) and both hang.
        let p = script(
            dir.path(),
            "p",
            &format!(
                "sleep 600 & echo $! > {pids}.child; echo $$ > {pids}; wait",
                pids = pids.display()
            ),
        );
        let started = Instant::now();
        let e = exec(&p, &call("ADD"), b"{}", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        for file in [pids.clone(), pids.with_extension("child")] {
            let pid: i32 = std::fs::read_to_string(&file)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // Killed and reaped: the pid no longer exists (the orphaned child
            // is reaped by init; give it a moment).
            let gone = (0..50).any(|_| {
                let alive = !crate::sys::process::has_exited(pid);
                if alive {
                    std::thread::sleep(Duration::from_millis(100));
                }
                !alive
            });
            assert!(gone, "process {pid} from {} still runs", file.display());
        }
    }

    #[tokio::test]
    async fn versions_reads_supported_versions() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "p",
            r#"[ "$CNI_COMMAND" = VERSION ] || exit 1; echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'"#,
        );
        let v = versions(&p, Duration::from_secs(10), "").await.unwrap();
        assert_eq!(v, vec!["0.4.0", "1.0.0"]);
    }
}
