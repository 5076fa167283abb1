//! The module dependency rules docs/ARCHITECTURE.md states ("Source
//! layout"), checked on the source text (comments and `#[cfg(test)]`
//! modules left out): a rule broken here is a layering mistake, not a style
//! nit. The monitor binary's freedom from the daemon's crates is checked on
//! the built binary by the e2e test `engine::monitor_binary_links_no_daemon_crate`.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            out.push(d);
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
                stack.push(p);
            }
        }
    }
    out
}

/// The production code of a file: no comment lines, nothing from the first
/// `#[cfg(test)]` on (test modules sit at the end), no test-only files.
fn code(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// Every `crate::<module>` a piece of code names.
fn crate_modules(code: &str) -> Vec<String> {
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn violations(dirs: &[&str], bad: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    for d in dirs {
        for f in files(&src(d)) {
            if let Some(why) = bad(&code(&f)) {
                out.push(format!("{}: {why}", f.display()));
            }
        }
    }
    out
}

#[test]
fn sys_imports_nothing_of_crius_but_the_error_leaf() {
    let v = violations(&["sys"], |code| {
        let m: Vec<String> = crate_modules(code)
            .into_iter()
            .filter(|m| m != "sys" && m != "error")
            .collect();
        (!m.is_empty()).then(|| format!("uses crate::{}", m.join(", crate::")))
    });
    assert!(v.is_empty(), "{v:#?}");
    // error.rs is the leaf sys may use.
    let error = code(&src("error.rs"));
    assert!(crate_modules(&error).is_empty(), "error.rs imports crius");
}

#[test]
fn only_the_cri_layer_knows_tonic_and_prost() {
    let dirs: Vec<String> = std::fs::read_dir(src(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cri")
        .collect();
    let dirs: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let v = violations(&dirs, |code| {
        ["tonic", "prost"]
            .iter()
            .find(|w| code.contains(*w))
            .map(|w| format!("mentions {w}"))
    });
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn the_monitor_and_init_use_no_daemon_module() {
    let forbidden = ["tokio", "tonic", "clap", "toml", "tracing"];
    let daemon = [
        "cri",
        "config",
        "daemon",
        "pod",
        "container",
        "image",
        "network",
        "store",
        "seccomp",
        "cgroups",
    ];
    let v = violations(
        &[
            "monitor/process",
            "monitor/protocol.rs",
            "monitor/sync.rs",
            "monitor/mod.rs",
            "init",
            "bin/crius-monitor.rs",
            "bin/crius-pod-init.rs",
        ],
        |code| {
            if let Some(w) = forbidden.iter().find(|w| code.contains(&format!("{w}::"))) {
                return Some(format!("uses {w}"));
            }
            crate_modules(code)
                .into_iter()
                .find(|m| daemon.contains(&m.as_str()))
                .map(|m| format!("uses crate::{m}"))
                .or_else(|| {
                    code.contains("monitor::client")
                        .then(|| "uses the daemon's monitor client".to_string())
                })
        },
    );
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn the_monitor_and_the_init_it_forks_take_no_oci_spec() {
    // The daemon turns the Spec into the compact launch
    // (monitor::client::launch); the rootfs plan is made there too.
    let v = violations(
        &[
            "monitor/process",
            "monitor/protocol.rs",
            "monitor/sync.rs",
            "monitor/mod.rs",
            "init/container.rs",
            "init/exec.rs",
            "init/setup.rs",
            "init/pod.rs",
            "init/rootfs/apply.rs",
            "bin",
        ],
        |code| {
            code.contains("oci_spec")
                .then(|| "names an OCI Spec type".to_string())
        },
    );
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn the_daemon_side_client_never_reaches_into_the_monitor_process() {
    let v = violations(&["monitor/client"], |code| {
        code.contains("monitor::process")
            .then(|| "uses the monitor process".to_string())
    });
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn the_rules_see_what_they_check() {
    // A rule over no file would pass forever.
    for d in ["sys", "init", "monitor/process", "monitor/client", "cri"] {
        assert!(files(&src(d)).len() >= 2, "{d} holds no files");
    }
    assert_eq!(
        crate_modules("use crate::sys::ns; crate::error::chain"),
        ["sys", "error"]
    );
    assert!(code(&src("sys/process.rs")).contains("fn fork_into"));
    assert!(!code(&src("sys/caps.rs")).contains("ALL_CAPABILITIES"));
}
