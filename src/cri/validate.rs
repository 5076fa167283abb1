//! What the CRI layer refuses before a request reaches the host: names that
//! would end up in paths and ids, and configs larger than the `[grpc]`
//! bounds. Every refusal is InvalidArgument naming the field (and, for
//! sizes, the sizes), so a client sees what to fix and nothing is created.
//!
//! The sizes are prost's encoded lengths and plain sums of key and value
//! lengths: linear in the request, computed before any other work.

use std::collections::HashMap;

use tonic::Status;

use super::proto;
use crate::config::GrpcConfig;

/// Kubernetes' longest object name (a DNS subdomain).
pub const MAX_NAME_BYTES: usize = 253;

/// A metadata name, uid or namespace: required, at most 253 bytes, no `/`
/// (they reach paths) and no NUL.
pub fn name(field: &str, value: &str) -> Result<(), Status> {
    let invalid = |why: &str| {
        Err(Status::invalid_argument(format!(
            "{field} {}: {why}",
            shown(value)
        )))
    };
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if value.len() > MAX_NAME_BYTES {
        return invalid(&format!(
            "{} bytes, more than {MAX_NAME_BYTES}",
            value.len()
        ));
    }
    if value.contains('/') {
        return invalid("contains '/'");
    }
    if value.contains('\0') {
        return invalid("contains NUL");
    }
    Ok(())
}

/// A value quoted for an error message, cut to a readable length.
fn shown(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// The encoded size of a `map<string, string>` field (an upper bound: the
/// tags and lengths of every entry count, as in a List answer).
pub fn map_bytes(m: &HashMap<String, String>) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    m.iter()
        .map(|(k, v)| {
            let entry = 2 + varint(k.len() as u64) + k.len() + varint(v.len() as u64) + v.len();
            1 + varint(entry as u64) + entry
        })
        .sum()
}

fn strings_bytes(v: &[String]) -> usize {
    v.iter().map(String::len).sum()
}

/// Refuses a size over its bound, naming the bound's config key.
fn within(what: &str, size: usize, parts: &str, limit: u64, key: &str) -> Result<(), Status> {
    if size as u64 <= limit {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "{what} is {size} bytes ({parts}), more than the {limit} allowed (grpc.{key})"
    )))
}

/// The bounds of one PodSandboxConfig: labels + annotations, and all of it.
pub fn pod_size(c: &proto::PodSandboxConfig, limits: &GrpcConfig) -> Result<(), Status> {
    use prost::Message;
    let labels = map_bytes(&c.labels);
    let annotations = map_bytes(&c.annotations);
    within(
        "pod labels + annotations (encoded)",
        labels + annotations,
        &format!("labels {labels}, annotations {annotations}"),
        limits.max_pod_labels_bytes,
        "max_pod_labels_bytes",
    )?;
    within(
        "the pod sandbox config",
        c.encoded_len(),
        &format!("labels {labels}, annotations {annotations}"),
        limits.max_config_bytes,
        "max_config_bytes",
    )
}

/// The bounds of one ContainerConfig: labels + annotations, and all of it
/// (env, command, args, mounts, devices, ...).
pub fn container_size(c: &proto::ContainerConfig, limits: &GrpcConfig) -> Result<(), Status> {
    use prost::Message;
    let labels = map_bytes(&c.labels);
    let annotations = map_bytes(&c.annotations);
    within(
        "container labels + annotations (encoded)",
        labels + annotations,
        &format!("labels {labels}, annotations {annotations}"),
        limits.max_container_labels_bytes,
        "max_container_labels_bytes",
    )?;
    let env: usize = c.envs.iter().map(|e| e.key.len() + e.value.len()).sum();
    let argv = strings_bytes(&c.command) + strings_bytes(&c.args);
    let mounts: usize = c.mounts.iter().map(|m| m.encoded_len()).sum::<usize>()
        + c.devices.iter().map(|d| d.encoded_len()).sum::<usize>();
    execable("command", &c.command)?;
    execable("args", &c.args)?;
    for (i, e) in c.envs.iter().enumerate() {
        let len = e.key.len() + 1 + e.value.len();
        if len > MAX_ARG_BYTES {
            return Err(Status::invalid_argument(format!(
                "envs[{i}] {}: {len} bytes as KEY=value, more than the kernel passes in one ({MAX_ARG_BYTES})",
                shown(&e.key)
            )));
        }
    }
    within(
        "the container config",
        c.encoded_len(),
        &format!(
            "{} env vars {env}, command + args {argv}, mounts + devices {mounts}, labels + annotations {}",
            c.envs.len(),
            labels + annotations
        ),
        limits.max_config_bytes,
        "max_config_bytes",
    )
}

/// The longest single argument or environment entry execve(2) passes
/// (the kernel's MAX_ARG_STRLEN, 32 pages, less the terminating NUL): a
/// longer one fails the exec with E2BIG.
pub const MAX_ARG_BYTES: usize = 32 * 4096 - 1;

/// An argument vector the kernel can exec: no argument with a NUL byte (it
/// would end the argument) or longer than [`MAX_ARG_BYTES`].
fn execable(field: &str, args: &[String]) -> Result<(), Status> {
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "{field}[{i}] {}: contains NUL",
                shown(a)
            )));
        }
        if a.len() > MAX_ARG_BYTES {
            return Err(Status::invalid_argument(format!(
                "{field}[{i}] {}: {} bytes, more than the kernel passes in one argument ({MAX_ARG_BYTES})",
                shown(a),
                a.len()
            )));
        }
    }
    Ok(())
}

/// The command of an ExecSync or Exec: what [`execable`] allows, and in all
/// at most the container config's bound (a command is part of a config).
pub fn exec_cmd(cmd: &[String], limits: &GrpcConfig) -> Result<(), Status> {
    execable("cmd", cmd)?;
    within(
        "cmd",
        strings_bytes(cmd),
        &format!("{} arguments", cmd.len()),
        limits.max_config_bytes,
        "max_config_bytes",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn names() {
        name("f", "web-0").unwrap();
        name("f", &"a".repeat(253)).unwrap();
        for bad in ["", "a/b", "a\0b", &"a".repeat(254)] {
            let e = name("metadata.name", bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().starts_with("metadata.name"), "{}", e.message());
        }
        let long = name("f", &"é".repeat(200)).unwrap_err();
        assert!(long.message().contains("400 bytes"), "{}", long.message());
    }

    #[test]
    fn sizes_name_the_bound_and_the_parts() {
        let limits = GrpcConfig {
            max_config_bytes: 1000,
            max_pod_labels_bytes: 100,
            max_container_labels_bytes: 100,
            ..GrpcConfig::default()
        };
        let mut pod = proto::PodSandboxConfig::default();
        // 1 + 1 + (2 + 1 + 1 + 1 + 94) = 101 bytes encoded.
        pod.labels.insert("k".into(), "v".repeat(94));
        let e = pod_size(&pod, &limits).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("101 bytes") && e.message().contains("max_pod_labels_bytes"),
            "{}",
            e.message()
        );
        pod.labels.insert("k".into(), "v".repeat(93));
        pod_size(&pod, &limits).unwrap();
        pod.hostname = "h".repeat(1000);
        let e = pod_size(&pod, &limits).unwrap_err();
        assert!(e.message().contains("max_config_bytes"), "{}", e.message());

        let mut c = proto::ContainerConfig::default();
        for i in 0..200 {
            c.envs.push(proto::KeyValue {
                key: format!("K{i}"),
                value: b"v".to_vec(),
            });
        }
        let e = container_size(&c, &limits).unwrap_err();
        assert!(
            e.message().contains("200 env vars") && e.message().contains("1000 allowed"),
            "{}",
            e.message()
        );
        c.envs.truncate(10);
        container_size(&c, &limits).unwrap();
    }

    #[test]
    fn commands_the_kernel_cannot_exec_are_refused() {
        let limits = GrpcConfig {
            max_config_bytes: 1 << 20,
            ..GrpcConfig::default()
        };
        let ok = vec!["sh".to_string(), "x".repeat(MAX_ARG_BYTES)];
        exec_cmd(&ok, &limits).unwrap();
        let cases = [
            (vec!["sh".into(), "x".repeat(MAX_ARG_BYTES + 1)], "cmd[1]"),
            (vec!["a\0b".into()], "contains NUL"),
            (vec!["y".repeat(100_000); 11], "max_config_bytes"),
        ];
        for (cmd, says) in cases {
            let e = exec_cmd(&cmd, &limits).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().contains(says), "{}", e.message());
            assert!(e.message().len() < 400, "{}", e.message());
        }
        let mut c = proto::ContainerConfig {
            args: vec!["z".repeat(MAX_ARG_BYTES + 1)],
            ..Default::default()
        };
        let e = container_size(&c, &limits).unwrap_err();
        assert!(e.message().starts_with("args[0]"), "{}", e.message());
        c.args.clear();
        c.envs.push(proto::KeyValue {
            key: "K".into(),
            value: vec![b'v'; MAX_ARG_BYTES - 1],
        });
        let e = container_size(&c, &limits).unwrap_err();
        assert!(e.message().starts_with("envs[0]"), "{}", e.message());
        c.envs[0].value.pop();
        container_size(&c, &limits).unwrap();
    }
}
