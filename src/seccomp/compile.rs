//! Profile → BPF program, with libseccomp (through the `libseccomp` crate),
//! following runc's reading of the OCI profile: errno actions default to
//! EPERM, a rule whose action equals the default action is dropped (it
//! changes nothing), syscall names libseccomp does not know are skipped (a
//! profile written for a newer kernel still loads), and a rule whose
//! arguments name the same index twice becomes one rule per argument (OR),
//! else one rule with every argument (AND).
//!
//! The result is the raw `struct sock_filter` array libseccomp exports; the
//! container's init loads it with seccomp(2) ([`crate::sys::seccomp`])
//! and never links against anything.

use std::collections::HashSet;
use std::io::{Read, Seek};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::profile::{Arg, Condition, Profile, Rule};
use super::{Error, Filter};

/// What rules are selected by (Docker's `includes`/`excludes`).
#[derive(Debug, Clone)]
pub struct Host {
    /// Go's name of the architecture (`amd64`, `arm64`...), as profiles
    /// write it.
    pub arch: &'static str,
    /// (major, minor) of the running kernel.
    pub kernel: (u32, u32),
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        // The running kernel does not change: read its release once.
        static KERNEL: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
        let kernel = *KERNEL.get_or_init(|| {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            parse_kernel(release.trim()).unwrap_or((0, 0))
        });
        Host {
            arch: go_arch(),
            kernel,
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// "6.1.0-28-amd64" or "4.8" → (6, 1) / (4, 8).
fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// A capability name as the kernel's, without `CAP_`, upper case.
pub fn cap_key(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

const MAX_ERRNO: u32 = 4095;

/// Why a field of a profile is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("seccomp notify agents are not supported")]
    Listener,
    #[error("no syscall names")]
    NoNames,
    #[error("errno {0} is not between 1 and {MAX_ERRNO}")]
    Errno(u32),
    #[error("SCMP_ACT_NOTIFY needs a seccomp agent, which crius does not support")]
    Notify,
    #[error("unknown action {0:?}")]
    Action(String),
    #[error("{field} is only allowed with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {action}")]
    ErrnoWithout { field: &'static str, action: String },
    #[error("unsupported flag {0:?}")]
    Flag(String),
    #[error("unknown architecture {0:?}")]
    Arch(String),
    #[error("give either architectures or archMap, not both")]
    ArchitecturesAndArchMap,
    #[error("index {0} is not a syscall argument (0-5)")]
    ArgIndex(u32),
    #[error("unknown operator {0:?}")]
    Operator(String),
    #[error("{which}.minKernel {version:?} is not a kernel version")]
    MinKernel {
        which: &'static str,
        version: String,
    },
}

/// Compiles `profile` for a container holding `caps` (names as
/// [`cap_key`] makes them) on `host`. `origin` names the profile in errors.
pub fn compile(
    profile: &Profile,
    origin: &str,
    caps: &HashSet<String>,
    host: &Host,
) -> Result<Filter, Error> {
    let invalid = |field: String, reason: Reason| Error::Invalid {
        origin: origin.to_string(),
        field,
        reason,
    };
    let lib = |what: String| {
        let origin = origin.to_string();
        move |source| Error::Compile {
            origin,
            what,
            source,
        }
    };
    if profile.listener_path.is_some() || profile.listener_metadata.is_some() {
        return Err(invalid("listenerPath".into(), Reason::Listener));
    }
    let default = action(
        &profile.default_action,
        profile.default_errno_ret,
        "defaultAction",
    )
    .map_err(|reason| invalid("defaultAction".into(), reason))?;
    let flags = flags(&profile.flags).map_err(|reason| invalid("flags".into(), reason))?;

    let mut ctx = ScmpFilterContext::new(default).map_err(lib("create a filter".into()))?;
    for (field, arch) in architectures(profile).map_err(|(f, r)| invalid(f, r))? {
        ctx.add_arch(arch)
            .map_err(lib(format!("add architecture {field}")))?;
    }
    for (i, rule) in profile.syscalls.iter().enumerate() {
        let field = format!("syscalls[{i}]");
        if rule.all_names().next().is_none() {
            return Err(invalid(field, Reason::NoNames));
        }
        let act = action(&rule.action, rule.errno_ret, "action")
            .map_err(|reason| invalid(format!("{field}.action"), reason))?;
        let args = comparisons(&rule.args)
            .map_err(|(j, reason)| invalid(format!("{field}.args[{j}]"), reason))?;
        let applies = applies(rule, caps, host).map_err(|reason| invalid(field.clone(), reason))?;
        if !applies || act == default {
            continue;
        }
        let same_index = {
            let mut seen = HashSet::new();
            !rule.args.iter().all(|a| seen.insert(a.index))
        };
        for name in rule.all_names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                tracing::debug!(%name, origin, "seccomp: syscall unknown to libseccomp, skipped");
                continue;
            };
            let what = || format!("add {field} ({name})");
            if args.is_empty() {
                ctx.add_rule(act, syscall).map_err(lib(what()))?;
            } else if same_index {
                for a in &args {
                    ctx.add_rule_conditional(act, syscall, std::slice::from_ref(a))
                        .map_err(lib(what()))?;
                }
            } else {
                ctx.add_rule_conditional(act, syscall, &args)
                    .map_err(lib(what()))?;
            }
        }
    }
    Ok(Filter {
        program: export(&ctx, origin)?,
        flags,
    })
}

/// An action name (with its errno for ERRNO and TRACE) as libseccomp's.
fn action(name: &str, errno_ret: Option<u32>, field: &str) -> Result<ScmpAction, Reason> {
    let errno = || -> Result<u16, Reason> {
        match errno_ret {
            None => Ok(libc::EPERM as u16),
            Some(e) if (1..=MAX_ERRNO).contains(&e) => Ok(e as u16),
            Some(e) => Err(Reason::Errno(e)),
        }
    };
    let act = match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(errno()?.into()),
        "SCMP_ACT_TRACE" => ScmpAction::Trace(errno()?),
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(Reason::Notify);
        }
        other => return Err(Reason::Action(other.to_string())),
    };
    if errno_ret.is_some() && !matches!(act, ScmpAction::Errno(_) | ScmpAction::Trace(_)) {
        let errno_field = if field == "defaultAction" {
            "defaultErrnoRet"
        } else {
            "errnoRet"
        };
        return Err(Reason::ErrnoWithout {
            field: errno_field,
            action: name.to_string(),
        });
    }
    Ok(act)
}

/// seccomp(2)'s SECCOMP_FILTER_FLAG_* bits for the load.
fn flags(names: &[String]) -> Result<u32, Reason> {
    let mut bits = 0;
    for name in names {
        bits |= match name.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => 1,
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            other => return Err(Reason::Flag(other.to_string())),
        };
    }
    Ok(bits)
}

/// The architectures to add besides the native one: `architectures`, or
/// the `archMap` entry of the native architecture.
fn architectures(profile: &Profile) -> Result<Vec<(String, ScmpArch)>, (String, Reason)> {
    let parse = |field: String, name: &str| {
        ScmpArch::from_str(name)
            .map(|a| (field.clone(), a))
            .map_err(|_| (field, Reason::Arch(name.to_string())))
    };
    if !profile.architectures.is_empty() && !profile.arch_map.is_empty() {
        return Err(("archMap".into(), Reason::ArchitecturesAndArchMap));
    }
    let mut out = Vec::new();
    for (i, name) in profile.architectures.iter().enumerate() {
        out.push(parse(format!("architectures[{i}]"), name)?);
    }
    for (i, m) in profile.arch_map.iter().enumerate() {
        let (_, arch) = parse(format!("archMap[{i}].architecture"), &m.architecture)?;
        if arch != ScmpArch::native() {
            continue;
        }
        out.push((format!("archMap[{i}].architecture"), arch));
        for (j, sub) in m.sub_architectures.iter().enumerate() {
            out.push(parse(format!("archMap[{i}].subArchitectures[{j}]"), sub)?);
        }
    }
    Ok(out)
}

fn comparisons(args: &[Arg]) -> Result<Vec<ScmpArgCompare>, (usize, Reason)> {
    args.iter()
        .enumerate()
        .map(|(j, a)| {
            if a.index > 5 {
                return Err((j, Reason::ArgIndex(a.index)));
            }
            let op = match a.op.as_str() {
                "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
                "SCMP_CMP_LT" => ScmpCompareOp::Less,
                "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
                "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
                "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
                "SCMP_CMP_GT" => ScmpCompareOp::Greater,
                // value is the mask, valueTwo what the masked argument equals.
                "SCMP_CMP_MASKED_EQ" => {
                    return Ok(ScmpArgCompare::new(
                        a.index,
                        ScmpCompareOp::MaskedEqual(a.value),
                        a.value_two,
                    ));
                }
                other => return Err((j, Reason::Operator(other.to_string()))),
            };
            Ok(ScmpArgCompare::new(a.index, op, a.value))
        })
        .collect()
}

/// Docker's includes (all must hold) and excludes (any one excludes).
fn applies(rule: &Rule, caps: &HashSet<String>, host: &Host) -> Result<bool, Reason> {
    let kernel_at_least = |c: &Condition, which: &'static str| -> Result<Option<bool>, Reason> {
        c.min_kernel
            .as_deref()
            .map(|v| {
                parse_kernel(v)
                    .map(|min| host.kernel >= min)
                    .ok_or_else(|| Reason::MinKernel {
                        which,
                        version: v.to_string(),
                    })
            })
            .transpose()
    };
    let inc = &rule.includes;
    if !inc.caps.iter().all(|c| caps.contains(&cap_key(c)))
        || (!inc.arches.is_empty() && !inc.arches.iter().any(|a| a == host.arch))
        || kernel_at_least(inc, "includes")? == Some(false)
    {
        return Ok(false);
    }
    let exc = &rule.excludes;
    if exc.caps.iter().any(|c| caps.contains(&cap_key(c)))
        || exc.arches.iter().any(|a| a == host.arch)
        || kernel_at_least(exc, "excludes")? == Some(true)
    {
        return Ok(false);
    }
    Ok(true)
}

/// The filter as the kernel takes it: libseccomp writes it to an fd.
fn export(ctx: &ScmpFilterContext, origin: &str) -> Result<Vec<u8>, Error> {
    let io = |what: &'static str| {
        let origin = origin.to_string();
        move |source| Error::Export {
            origin,
            what,
            source,
        }
    };
    let fd =
        nix::sys::memfd::memfd_create(c"crius-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| io("create a memfd")(e.into()))?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(&file).map_err(|source| Error::Compile {
        origin: origin.to_string(),
        what: "export the filter".into(),
        source,
    })?;
    let mut program = Vec::new();
    file.rewind().map_err(io("rewind the exported filter"))?;
    file.read_to_end(&mut program)
        .map_err(io("read the exported filter"))?;
    Ok(program)
}
