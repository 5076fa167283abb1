//! Capabilities (capabilities(7)): the five sets of a container process
//! from the Spec, applied in runc's order around the change of user:
//! bounding set first (needs CAP_SETPCAP), then setuid with KEEPCAPS, then
//! effective/permitted/inheritable (capset(2)) and the ambient set.
//! A privileged container asks for every capability; it gets only those
//! crius itself holds (its bounding set) and the kernel knows.

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities};

use super::{Result, sys};

/// Kernel capability names in kernel order (the index is the number).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The kernel number of a capability.
pub fn number(cap: Capability) -> Option<u32> {
    let name = cap.to_string();
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// The highest capability number the running kernel knows, found by asking
/// the kernel (PR_CAPBSET_READ answers EINVAL past the last one) and never
/// by reading /proc/sys/kernel/cap_last_cap: inside a container that file
/// can be covered by a mount or reached through a planted symlink, and a
/// forged `0` there would leave every capability in the bounding set.
/// Probed once per process; the answer does not change while it runs.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(probe_last_cap)
}

fn probe_last_cap() -> u32 {
    // Capability numbers fit in 64 bits of the kernel's sets; 63 bounds
    // the probe whatever the kernel answers.
    let mut last = 0;
    for cap in 0..64u32 {
        // SAFETY: PR_CAPBSET_READ takes a capability number and reads
        // nothing from our memory.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 {
            break;
        }
        last = cap;
    }
    last
}

/// Whether `cap` is in this process's bounding set.
fn in_bounding(cap: u32) -> bool {
    // SAFETY: PR_CAPBSET_READ takes a capability number and reads nothing
    // from our memory.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1 }
}

/// The capabilities this process may hand on: its bounding set.
pub fn held() -> HashSet<u32> {
    (0..=last_cap()).filter(|&c| in_bounding(c)).collect()
}

/// One set from the Spec as kernel numbers.
fn set(caps: &Option<HashSet<Capability>>) -> u64 {
    caps.iter()
        .flatten()
        .filter_map(|&c| number(c))
        .filter(|&n| n < 64)
        .fold(0u64, |acc, n| acc | (1u64 << n))
}

/// The sets a process will get, as bit masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Sets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl Sets {
    /// The Spec's sets as asked for.
    pub fn requested(caps: Option<&LinuxCapabilities>) -> Sets {
        match caps {
            None => Sets::default(),
            Some(c) => Sets {
                bounding: set(c.bounding()),
                effective: set(c.effective()),
                permitted: set(c.permitted()),
                inheritable: set(c.inheritable()),
                ambient: set(c.ambient()),
            },
        }
    }

    /// These sets without the capabilities this process does not hold.
    pub fn held_only(self) -> Sets {
        let held = held()
            .into_iter()
            .filter(|&n| n < 64)
            .fold(0u64, |acc, n| acc | (1u64 << n));
        Sets {
            bounding: self.bounding & held,
            effective: self.effective & held,
            permitted: self.permitted & held,
            inheritable: self.inheritable & held,
            ambient: self.ambient & held,
        }
    }
}

/// Drops every capability outside `bounding` from the bounding set.
pub fn apply_bounding(bounding: u64) -> Result<()> {
    for cap in 0..=last_cap() {
        if bounding & (1 << cap) == 0 && in_bounding(cap) {
            // SAFETY: PR_CAPBSET_DROP takes a capability number only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 {
                return Err(sys(format!("drop capability {cap} from the bounding set"))(
                    nix::Error::last(),
                ));
            }
        }
    }
    Ok(())
}

/// Keeps the permitted set across the coming setuid (PR_SET_KEEPCAPS).
pub fn keep_caps(on: bool) -> Result<()> {
    // SAFETY: PR_SET_KEEPCAPS takes a flag only.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(sys("prctl(PR_SET_KEEPCAPS)")(nix::Error::last()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable (capset(2)), then raises the
/// ambient ones (each must be permitted and inheritable).
pub fn apply(sets: &Sets) -> Result<()> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data = [
        CapData {
            effective: lo(sets.effective),
            permitted: lo(sets.permitted),
            inheritable: lo(sets.inheritable),
        },
        CapData {
            effective: hi(sets.effective),
            permitted: hi(sets.permitted),
            inheritable: hi(sets.inheritable),
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, both alive
    // and laid out as the kernel's (repr(C), u32 fields).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(sys("capset")(nix::Error::last()));
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..64u32 {
        if sets.ambient & (1 << cap) != 0 {
            // SAFETY: PR_CAP_AMBIENT_RAISE takes a capability number only.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if rc != 0 {
                return Err(sys(format!("raise ambient capability {cap}"))(
                    nix::Error::last(),
                ));
            }
        }
    }
    Ok(())
}

/// The effective set of process `pid` from /proc (CapEff), for tests and
/// status.
pub fn effective_of(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_cap_is_probed_not_read() {
        // The probe agrees with the kernel's own file on the host, where
        // nothing covers it.
        let file: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(probe_last_cap(), file);
        assert_eq!(last_cap(), file);
    }

    #[test]
    fn numbers_follow_the_kernel() {
        assert_eq!(number(Capability::Chown), Some(0));
        assert_eq!(number(Capability::SysAdmin), Some(21));
        assert_eq!(number(Capability::CheckpointRestore), Some(40));
        for cap in crate::container::spec::ALL_CAPABILITIES {
            assert!(number(cap).is_some(), "{cap} has a number");
        }
    }

    #[test]
    fn sets_keep_only_held_capabilities() {
        let caps = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
            .bounding(
                crate::container::spec::ALL_CAPABILITIES
                    .iter()
                    .copied()
                    .collect::<HashSet<_>>(),
            )
            .build()
            .unwrap();
        let asked = Sets::requested(Some(&caps));
        let s = asked.held_only();
        let held = held();
        for cap in 0..64 {
            assert_eq!(s.bounding & (1 << cap) != 0, held.contains(&cap));
        }
        let known = crate::container::spec::ALL_CAPABILITIES.len();
        assert_eq!(asked.bounding.count_ones() as usize, known);
    }
}
