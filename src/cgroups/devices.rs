//! Which device nodes a container may open or create: the device cgroup
//! (Documentation/admin-guide/cgroup-v1/devices.rst on v1; on v2 a
//! BPF_CGROUP_DEVICE program, include/uapi/linux/bpf.h
//! `struct bpf_cgroup_dev_ctx`, cgroup-v2.rst "Device controller").
//!
//! Every container gets runc's default allowlist (mknod of any node; read,
//! write and mknod of null, zero, full, random, urandom, tty, console,
//! ptmx and the pts nodes) plus the CRI devices it asked for, with their
//! permissions; everything else is denied. A privileged container may use
//! every device. The rules are applied three ways:
//!
//! - cgroup v1: `devices.deny` `a`, then one `devices.allow` line a rule;
//! - cgroup v2: a BPF_CGROUP_DEVICE program built here (a handful of
//!   compare-and-jump instructions per rule, first match allows, the end
//!   denies) and attached to the container's cgroup with
//!   BPF_F_ALLOW_MULTI, so programs of parent cgroups still apply;
//! - systemd: `DevicePolicy=strict` and `DeviceAllow=` on the scope, as
//!   runc's systemd driver does; the files or the program above are
//!   written as well, as runc does.
//!
//! The program is emitted in-tree rather than with a BPF crate: it is a
//! dozen instruction kinds, and the crates that assemble BPF (aya, ...)
//! pull in loaders and object parsers crius does not need. The load and
//! attach syscalls are in the syscall module.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Value;

use super::Error;

/// A node type as the device cgroup names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevKind {
    /// `a`: both types (v1 syntax only; a rule for one type in BPF).
    All,
    /// `c`
    Char,
    /// `b`
    Block,
}

impl DevKind {
    fn letter(self) -> char {
        match self {
            DevKind::All => 'a',
            DevKind::Char => 'c',
            DevKind::Block => 'b',
        }
    }
}

/// r, w, m as bits, with the values `bpf_cgroup_dev_ctx` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    /// "rwm" and any subset; empty means all three, as runc reads it.
    pub fn parse(s: &str) -> Result<Access, Error> {
        let mut bits = 0;
        for c in s.chars() {
            bits |= match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => {
                    return Err(Error::InvalidResources(format!(
                        "device permissions {s:?} are not a combination of r, w and m"
                    )));
                }
            };
        }
        Ok(if bits == 0 { Access::ALL } else { Access(bits) })
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (bit, c) in [(2, 'r'), (4, 'w'), (1, 'm')] {
            if self.0 & bit != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One allow rule: a type, major and minor (`None` = `*`), and access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub kind: DevKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl Rule {
    pub const fn new(
        kind: DevKind,
        major: Option<u32>,
        minor: Option<u32>,
        access: Access,
    ) -> Rule {
        Rule {
            kind,
            major,
            minor,
            access,
        }
    }
}

/// The v1 `devices.allow` syntax: `c 1:3 rwm`, `b *:* m`.
impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        write!(
            f,
            "{} {}:{} {}",
            self.kind.letter(),
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// runc's default allowlist (libcontainer/specconv AllowedDevices, without
/// tun/tap): what every container may use.
pub const DEFAULT_RULES: [Rule; 11] = {
    use DevKind::*;
    const RWM: Access = Access::ALL;
    [
        Rule::new(Char, None, None, Access::MKNOD),
        Rule::new(Block, None, None, Access::MKNOD),
        Rule::new(Char, Some(1), Some(3), RWM), // null
        Rule::new(Char, Some(1), Some(5), RWM), // zero
        Rule::new(Char, Some(1), Some(7), RWM), // full
        Rule::new(Char, Some(1), Some(8), RWM), // random
        Rule::new(Char, Some(1), Some(9), RWM), // urandom
        Rule::new(Char, Some(5), Some(0), RWM), // tty
        Rule::new(Char, Some(5), Some(1), RWM), // console
        Rule::new(Char, Some(5), Some(2), RWM), // ptmx
        Rule::new(Char, Some(136), None, RWM),  // pts/*
    ]
};

/// The device policy of a container cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceRules {
    /// Every device (privileged containers).
    AllowAll,
    /// Only these; everything else is denied.
    Allow(Vec<Rule>),
}

impl DeviceRules {
    /// runc's defaults plus `requested` (the CRI devices), or everything.
    pub fn container(privileged: bool, requested: &[Rule]) -> DeviceRules {
        if privileged {
            return DeviceRules::AllowAll;
        }
        let mut rules = DEFAULT_RULES.to_vec();
        rules.extend_from_slice(requested);
        DeviceRules::Allow(rules)
    }

    /// The v1 writes, in order: (file, line).
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        match self {
            DeviceRules::AllowAll => vec![("devices.allow", "a".into())],
            DeviceRules::Allow(rules) => std::iter::once(("devices.deny", "a".to_string()))
                .chain(rules.iter().map(|r| ("devices.allow", r.to_string())))
                .collect(),
        }
    }

    /// What the v2 program must answer for an access to a node.
    pub fn allows(&self, kind: DevKind, major: u32, minor: u32, access: Access) -> bool {
        match self {
            DeviceRules::AllowAll => true,
            DeviceRules::Allow(rules) => rules.iter().any(|r| {
                (r.kind == DevKind::All || r.kind == kind)
                    && r.major.is_none_or(|m| m == major)
                    && r.minor.is_none_or(|m| m == minor)
                    && r.access.contains(access)
            }),
        }
    }

    /// The BPF_CGROUP_DEVICE program (instructions, 8 bytes each as the
    /// kernel reads them on this machine's byte order).
    pub fn bpf_program(&self) -> Vec<u64> {
        bpf::program(self)
    }

    /// systemd's DevicePolicy= and DeviceAllow= (systemd.resource-control(5)),
    /// in runc's translation: `char-*`/`block-*` for wildcard rules,
    /// `char-<major>` for a wildcard minor (systemd >= 240),
    /// `/dev/char/<major>:<minor>` for one node.
    pub fn systemd_properties(&self) -> Vec<(&'static str, Value<'static>)> {
        let allow = |list: Vec<(String, String)>| ("DeviceAllow", Value::from(list));
        match self {
            DeviceRules::AllowAll => vec![("DevicePolicy", Value::from("auto")), allow(vec![])],
            DeviceRules::Allow(rules) => {
                let mut list = Vec::new();
                for r in rules {
                    for kind in match r.kind {
                        DevKind::All => vec![DevKind::Char, DevKind::Block],
                        k => vec![k],
                    } {
                        let name = if kind == DevKind::Char {
                            "char"
                        } else {
                            "block"
                        };
                        let path = match (r.major, r.minor) {
                            (None, None) => format!("{name}-*"),
                            // "*:n" has no systemd form: the files or the
                            // program carry it.
                            (None, Some(_)) => continue,
                            (Some(major), None) => format!("{name}-{major}"),
                            (Some(major), Some(minor)) => format!("/dev/{name}/{major}:{minor}"),
                        };
                        list.push((path, r.access.to_string()));
                    }
                }
                vec![("DevicePolicy", Value::from("strict")), allow(list)]
            }
        }
    }
}

/// The BPF emitter: eBPF instructions (Documentation/bpf/standardization/
/// instruction-set.rst) for the few operations the program needs.
mod bpf {
    use super::{DevKind, DeviceRules};

    // Opcodes.
    const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
    const ALU64_AND_K: u8 = 0x57;
    const ALU64_RSH_K: u8 = 0x77;
    const ALU64_MOV_K: u8 = 0xb7;
    const ALU64_MOV_X: u8 = 0xbf;
    const JMP_JNE_K: u8 = 0x55; // if dst != imm goto pc + 1 + off
    const JMP_JNE_X: u8 = 0x5d; // if dst != src goto pc + 1 + off
    const EXIT: u8 = 0x95;

    // Registers: r1 holds the context on entry; the program keeps the
    // node type in r2, the access bits in r3, major in r4, minor in r5.
    const R0: u8 = 0;
    const R1: u8 = 1;
    const R2: u8 = 2;
    const R3: u8 = 3;
    const R4: u8 = 4;
    const R5: u8 = 5;

    /// `bpf_cgroup_dev_ctx` types.
    const DEV_BLOCK: i32 = 1;
    const DEV_CHAR: i32 = 2;

    pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        // struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }
        // as little- or big-endian memory: build the bytes, read them back.
        let regs = if cfg!(target_endian = "little") {
            (src << 4) | (dst & 0xf)
        } else {
            (dst << 4) | (src & 0xf)
        };
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = regs;
        b[2..4].copy_from_slice(&off.to_ne_bytes());
        b[4..8].copy_from_slice(&imm.to_ne_bytes());
        u64::from_ne_bytes(b)
    }

    pub fn program(rules: &DeviceRules) -> Vec<u64> {
        let mut p = vec![
            // access_type = (access << 16) | type
            insn(LDX_MEM_W, R2, R1, 0, 0),
            insn(ALU64_AND_K, R2, 0, 0, 0xffff),
            insn(LDX_MEM_W, R3, R1, 0, 0),
            insn(ALU64_RSH_K, R3, 0, 0, 16),
            insn(LDX_MEM_W, R4, R1, 4, 0),
            insn(LDX_MEM_W, R5, R1, 8, 0),
        ];
        let rules = match rules {
            DeviceRules::AllowAll => {
                p.extend([insn(ALU64_MOV_K, R0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]);
                return p;
            }
            DeviceRules::Allow(rules) => rules,
        };
        for r in rules {
            // Each block: the checks jump past the block when they fail.
            let mut checks: Vec<(u8, u8, u8, i32)> = Vec::new();
            match r.kind {
                DevKind::All => {}
                DevKind::Char => checks.push((JMP_JNE_K, R2, 0, DEV_CHAR)),
                DevKind::Block => checks.push((JMP_JNE_K, R2, 0, DEV_BLOCK)),
            }
            let access_check = r.access.bits() != 7;
            if let Some(m) = r.major {
                checks.push((JMP_JNE_K, R4, 0, m as i32));
            }
            if let Some(m) = r.minor {
                checks.push((JMP_JNE_K, R5, 0, m as i32));
            }
            // Block length: checks, the access check (3), allow (2); a
            // failed check jumps to the block's end (offsets count from
            // the next instruction).
            let len = checks.len() + if access_check { 3 } else { 0 } + 2;
            let start = p.len();
            let to_end = |p: &Vec<u64>| (start + len - p.len() - 1) as i16;
            for (code, dst, src, imm) in checks {
                p.push(insn(code, dst, src, to_end(&p), imm));
            }
            if access_check {
                // (access & allowed) != access: something not allowed.
                p.push(insn(ALU64_MOV_X, R1, R3, 0, 0));
                p.push(insn(ALU64_AND_K, R1, 0, 0, r.access.bits() as i32));
                p.push(insn(JMP_JNE_X, R1, R3, to_end(&p), 0));
            }
            p.extend([insn(ALU64_MOV_K, R0, 0, 0, 1), insn(EXIT, 0, 0, 0, 0)]);
        }
        p.extend([insn(ALU64_MOV_K, R0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
        p
    }

    /// Runs a program of the instructions above on one context: the unit
    /// tests check the emitted code against [`DeviceRules::allows`].
    #[cfg(test)]
    pub fn run(prog: &[u64], access_type: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access_type, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let b = prog[pc].to_ne_bytes();
            let (dst, src) = if cfg!(target_endian = "little") {
                ((b[1] & 0xf) as usize, (b[1] >> 4) as usize)
            } else {
                ((b[1] >> 4) as usize, (b[1] & 0xf) as usize)
            };
            let off = i16::from_ne_bytes([b[2], b[3]]);
            let imm = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]) as i64 as u64;
            pc += 1;
            match b[0] {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    reg[dst] = ctx[off as usize / 4] as u64;
                }
                ALU64_AND_K => reg[dst] &= imm,
                ALU64_RSH_K => reg[dst] >>= imm,
                ALU64_MOV_K => reg[dst] = imm,
                ALU64_MOV_X => reg[dst] = reg[src],
                JMP_JNE_K if reg[dst] != imm => pc = (pc as i64 + off as i64) as usize,
                JMP_JNE_X if reg[dst] != reg[src] => pc = (pc as i64 + off as i64) as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                EXIT => return reg[0],
                op => panic!("unknown opcode {op:#x}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DevKind::*;

    fn defaults() -> DeviceRules {
        DeviceRules::container(false, &[])
    }

    #[test]
    fn v1_lines() {
        let w = DeviceRules::container(false, &[Rule::new(Block, Some(7), Some(0), Access::READ)])
            .v1_writes();
        assert_eq!(w[0], ("devices.deny", "a".into()));
        let lines: Vec<&str> = w[1..].iter().map(|(_, l)| l.as_str()).collect();
        assert!(lines.contains(&"c *:* m"), "{lines:?}");
        assert!(lines.contains(&"b *:* m"), "{lines:?}");
        assert!(lines.contains(&"c 1:3 rwm"), "{lines:?}");
        assert!(lines.contains(&"c 136:* rwm"), "{lines:?}");
        assert_eq!(lines.last(), Some(&"b 7:0 r"));
        assert!(w[1..].iter().all(|(f, _)| *f == "devices.allow"));
        assert_eq!(
            DeviceRules::AllowAll.v1_writes(),
            vec![("devices.allow", "a".into())]
        );
    }

    #[test]
    fn access_parses_rwm_only() {
        assert_eq!(Access::parse("").unwrap(), Access::ALL);
        assert_eq!(Access::parse("mr").unwrap().to_string(), "rm");
        assert!(Access::parse("rx").is_err());
    }

    /// The emitted program answers as the rules do, for the nodes of the
    /// attack (kmsg, a disk, a loop device), the defaults, and each access.
    #[test]
    fn program_matches_rules() {
        let requested = [
            Rule::new(Char, Some(10), Some(229), Access::parse("rw").unwrap()),
            Rule::new(Block, Some(7), None, Access::READ),
        ];
        let cases = [
            (Char, 1, 11),
            (Char, 1, 3),
            (Char, 1, 9),
            (Char, 5, 2),
            (Char, 136, 4),
            (Char, 137, 4),
            (Block, 8, 0),
            (Block, 7, 0),
            (Block, 7, 3),
            (Char, 7, 0),
            (Char, 10, 229),
            (Block, 10, 229),
        ];
        for rules in [
            defaults(),
            DeviceRules::container(false, &requested),
            DeviceRules::AllowAll,
        ] {
            let prog = rules.bpf_program();
            for (kind, major, minor) in cases {
                for bits in 1..=7u8 {
                    let access = Access(bits);
                    let ty = if kind == Char { 2 } else { 1 };
                    let got = bpf::run(&prog, ((bits as u32) << 16) | ty, major, minor);
                    let want = rules.allows(kind, major, minor, access);
                    assert_eq!(
                        got == 1,
                        want,
                        "{kind:?} {major}:{minor} {access} under {rules:?}"
                    );
                }
            }
        }
        // The attack: read of /dev/kmsg and of a disk, mknod allowed.
        let d = defaults();
        assert!(!d.allows(Char, 1, 11, Access::READ));
        assert!(!d.allows(Block, 8, 0, Access::READ));
        assert!(d.allows(Block, 8, 0, Access::MKNOD));
        assert!(d.allows(Char, 1, 3, Access::ALL));
    }

    #[test]
    fn systemd_allow_list() {
        let rules =
            DeviceRules::container(false, &[Rule::new(Block, Some(7), Some(0), Access::READ)]);
        let p: Vec<String> = rules
            .systemd_properties()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(p[0], "DevicePolicy=\"strict\"");
        for want in [
            "(\"char-*\", \"m\")",
            "(\"block-*\", \"m\")",
            "(\"/dev/char/1:3\", \"rwm\")",
            "(\"char-136\", \"rwm\")",
            "(\"/dev/block/7:0\", \"r\")",
        ] {
            assert!(p[1].contains(want), "{want} not in {}", p[1]);
        }
        let all: Vec<String> = DeviceRules::AllowAll
            .systemd_properties()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(all[0], "DevicePolicy=\"auto\"");
    }
}
