//! Raw Linux system calls for a program without libc: the pod init
//! (src/bin/crius-pod-init.rs) is `#![no_std]`, has its own `_start` and
//! links no C library, so that every pod pays a few pages for it instead
//! of a static glibc and std's runtime. It includes this file with
//! `#[path]`; the library compiles it too, so the wrappers are unit-tested
//! here. Only `core` is used outside the tests.
//!
//! x86_64 only (syscall(2) "Architecture calling conventions": number in
//! rax, arguments in rdi, rsi, rdx, r10, r8, r9; rcx and r11 clobbered;
//! -4095..-1 is an errno). The pod init refuses to compile elsewhere.
//!
//! A static-pie program has no dynamic loader to relocate it: [`start`]
//! applies its R_X86_64_RELATIVE relocations and write-protects its RELRO
//! segment (what glibc's `_dl_relocate_static_pie` and `_dl_protect_relro`
//! do) before any code reads a pointer stored in its data. The kernel
//! still loads it at a random address (ASLR).

use core::arch::asm;
use core::ffi::CStr;

/// System call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const MPROTECT: usize = 10;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const WAIT4: usize = 61;
    pub const CHDIR: usize = 80;
    pub const SETGROUPS: usize = 116;
    pub const SETRESUID: usize = 117;
    pub const SETRESGID: usize = 119;
    pub const CAPSET: usize = 126;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PIVOT_ROOT: usize = 155;
    pub const PRCTL: usize = 157;
    pub const MOUNT: usize = 165;
    pub const UMOUNT2: usize = 166;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const UNSHARE: usize = 272;
    pub const CLOSE_RANGE: usize = 436;
}

/// Flag and option values of the calls above (the uapi headers).
pub const AT_FDCWD: isize = -100;
pub const O_RDONLY_CLOEXEC: usize = 0o2000000;
pub const CLONE_NEWNS: usize = 0x0002_0000;
pub const MS_RDONLY: usize = 1;
pub const MS_NOSUID: usize = 2;
pub const MS_NODEV: usize = 4;
pub const MS_NOEXEC: usize = 8;
pub const MS_REMOUNT: usize = 32;
pub const MS_REC: usize = 0x4000;
pub const MS_PRIVATE: usize = 1 << 18;
pub const MNT_DETACH: usize = 2;
pub const PR_SET_DUMPABLE: usize = 4;
pub const PR_SET_NAME: usize = 15;
pub const PR_CAPBSET_READ: usize = 23;
pub const PR_CAPBSET_DROP: usize = 24;
pub const PR_SET_NO_NEW_PRIVS: usize = 38;
pub const PR_CAP_AMBIENT: usize = 47;
pub const PR_CAP_AMBIENT_CLEAR_ALL: usize = 4;
pub const WNOHANG: usize = 1;
pub const SIG_BLOCK: usize = 0;
pub const SIGCHLD: u32 = 17;
const PROT_READ: usize = 1;
/// The kernel's sigset_t is 64 bits on x86_64 (`sigsetsize` of the rt_ calls).
const SIGSET_SIZE: usize = 8;

/// A failed system call's error number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The symbolic name of the errors the pod init can meet, `None` for
    /// the others (they are printed as numbers).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            4 => "EINTR",
            9 => "EBADF",
            10 => "ECHILD",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            20 => "ENOTDIR",
            22 => "EINVAL",
            30 => "EROFS",
            38 => "ENOSYS",
            _ => return None,
        })
    }
}

pub type Result<T> = core::result::Result<T, Errno>;

/// The kernel's answer: -4095..-1 is an errno, anything else a value.
fn check(rc: isize) -> Result<usize> {
    if (-4095..0).contains(&rc) {
        Err(Errno(-rc as i32))
    } else {
        Ok(rc as usize)
    }
}

/// # Safety
/// The arguments must be what system call `n` expects: every pointer
/// valid for what the call reads or writes, for the call's duration.
unsafe fn syscall6(n: usize, a: [usize; 6]) -> isize {
    let rc: isize;
    // SAFETY: the x86_64 syscall instruction with the kernel's register
    // convention; it clobbers rcx and r11 only and touches no stack. What
    // the call does with memory is the caller's contract.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") n as isize => rc,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    rc
}

/// A call whose arguments are plain numbers (no pointer).
fn call(n: usize, a: [usize; 5]) -> Result<usize> {
    // SAFETY: every call made through here takes integers only, so no
    // memory of ours is read or written.
    check(unsafe { syscall6(n, [a[0], a[1], a[2], a[3], a[4], 0]) })
}

fn ptr(s: &CStr) -> usize {
    s.as_ptr() as usize
}

/// write(2) of `buf` to `fd`; the number of bytes written.
pub fn write(fd: i32, buf: &[u8]) -> Result<usize> {
    // SAFETY: the kernel reads buf.len() bytes from buf, which lives
    // across the call.
    check(unsafe {
        syscall6(
            nr::WRITE,
            [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
        )
    })
}

/// read(2) into `buf`; the number of bytes read, 0 at the end.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf, which is
    // borrowed mutably across the call.
    check(unsafe {
        syscall6(
            nr::READ,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    })
}

/// openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC).
pub fn open_read(path: &CStr) -> Result<i32> {
    // SAFETY: path is NUL-terminated and lives across the call.
    let rc = unsafe {
        syscall6(
            nr::OPENAT,
            [AT_FDCWD as usize, ptr(path), O_RDONLY_CLOEXEC, 0, 0, 0],
        )
    };
    check(rc).map(|fd| fd as i32)
}

pub fn close(fd: i32) -> Result<()> {
    call(nr::CLOSE, [fd as usize, 0, 0, 0, 0]).map(drop)
}

/// close_range(2) of every fd from `first` up. Sound only in a process
/// that owns all of them (a single-threaded program).
pub fn close_from(first: u32) -> Result<()> {
    call(
        nr::CLOSE_RANGE,
        [first as usize, u32::MAX as usize, 0, 0, 0],
    )
    .map(drop)
}

/// exit_group(2): ends the process at once.
pub fn exit(code: i32) -> ! {
    let _ = call(nr::EXIT_GROUP, [code as usize, 0, 0, 0, 0]);
    // exit_group does not return; should it, spin rather than run on.
    loop {
        core::hint::spin_loop();
    }
}

pub fn unshare(flags: usize) -> Result<()> {
    call(nr::UNSHARE, [flags, 0, 0, 0, 0]).map(drop)
}

/// mount(2); `None` passes NULL.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: usize,
    data: Option<&CStr>,
) -> Result<()> {
    let opt = |s: Option<&CStr>| s.map_or(0, ptr);
    // SAFETY: every pointer is NULL or a NUL-terminated string that lives
    // across the call; the kernel only reads them.
    let rc = unsafe {
        syscall6(
            nr::MOUNT,
            [opt(source), ptr(target), opt(fstype), flags, opt(data), 0],
        )
    };
    check(rc).map(drop)
}

pub fn umount2(target: &CStr, flags: usize) -> Result<()> {
    // SAFETY: target is NUL-terminated and lives across the call.
    check(unsafe { syscall6(nr::UMOUNT2, [ptr(target), flags, 0, 0, 0, 0]) }).map(drop)
}

pub fn chdir(path: &CStr) -> Result<()> {
    // SAFETY: path is NUL-terminated and lives across the call.
    check(unsafe { syscall6(nr::CHDIR, [ptr(path), 0, 0, 0, 0, 0]) }).map(drop)
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<()> {
    // SAFETY: both are NUL-terminated and live across the call.
    check(unsafe { syscall6(nr::PIVOT_ROOT, [ptr(new_root), ptr(put_old), 0, 0, 0, 0]) }).map(drop)
}

/// prctl(2) with integer arguments (the unused ones 0, as several options
/// demand).
pub fn prctl(option: usize, arg2: usize) -> Result<usize> {
    call(nr::PRCTL, [option, arg2, 0, 0, 0])
}

/// The calling thread's name (PR_SET_NAME; the kernel keeps 15 bytes).
pub fn set_name(name: &CStr) -> Result<()> {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (at most 16 bytes)
    // from arg2, which lives across the call.
    check(unsafe { syscall6(nr::PRCTL, [PR_SET_NAME, ptr(name), 0, 0, 0, 0]) }).map(drop)
}

/// setgroups(0, NULL): no supplementary groups.
pub fn clear_groups() -> Result<()> {
    call(nr::SETGROUPS, [0, 0, 0, 0, 0]).map(drop)
}

/// setresgid(2) of the calling thread (the raw call, unlike glibc's, does
/// not reach other threads: the pod init has none).
pub fn setresgid(gid: u32) -> Result<()> {
    let g = gid as usize;
    call(nr::SETRESGID, [g, g, g, 0, 0]).map(drop)
}

/// setresuid(2) of the calling thread (see [`setresgid`]).
pub fn setresuid(uid: u32) -> Result<()> {
    let u = uid as usize;
    call(nr::SETRESUID, [u, u, u, 0, 0]).map(drop)
}

/// capset(2) with every set empty (effective, permitted, inheritable;
/// version 3 of the header: 64 capabilities) for the calling thread.
pub fn clear_capabilities() -> Result<()> {
    /// _LINUX_CAPABILITY_VERSION_3.
    const VERSION_3: u32 = 0x2008_0522;
    let header: [u32; 2] = [VERSION_3, 0];
    // Two __user_cap_data_struct (effective, permitted, inheritable: u32
    // each), all zero.
    let data = [0u32; 6];
    // SAFETY: the kernel reads the 8-byte header and the two 12-byte data
    // structs version 3 names, both living across the call.
    let rc = unsafe {
        syscall6(
            nr::CAPSET,
            [header.as_ptr() as usize, data.as_ptr() as usize, 0, 0, 0, 0],
        )
    };
    check(rc).map(drop)
}

/// The set holding the one signal `sig`.
pub fn sigset(sig: u32) -> u64 {
    1 << (sig - 1)
}

/// Blocks `set` in the calling thread (rt_sigprocmask SIG_BLOCK).
pub fn block_signals(set: u64) -> Result<()> {
    // SAFETY: the kernel reads SIGSET_SIZE bytes from &set, which lives
    // across the call; the old mask is not asked for (NULL).
    let rc = unsafe {
        syscall6(
            nr::RT_SIGPROCMASK,
            [SIG_BLOCK, &set as *const u64 as usize, 0, SIGSET_SIZE, 0, 0],
        )
    };
    check(rc).map(drop)
}

/// Waits for one of the blocked signals `set` (rt_sigtimedwait without
/// siginfo or timeout); the signal number.
pub fn wait_signal(set: u64) -> Result<u32> {
    // SAFETY: the kernel reads SIGSET_SIZE bytes from &set, which lives
    // across the call; info and timeout are NULL.
    let rc = unsafe {
        syscall6(
            nr::RT_SIGTIMEDWAIT,
            [&set as *const u64 as usize, 0, 0, SIGSET_SIZE, 0, 0],
        )
    };
    check(rc).map(|s| s as u32)
}

/// wait4(pid, NULL, options, NULL): the pid reaped, 0 when WNOHANG finds
/// no exited child.
pub fn reap(pid: i32, options: usize) -> Result<i32> {
    call(nr::WAIT4, [pid as isize as usize, 0, options, 0, 0]).map(|p| p as i32)
}

/// One entry of the dynamic section (Elf64_Dyn).
#[repr(C)]
pub struct Dyn {
    pub tag: i64,
    pub val: u64,
}

/// One relocation with an addend (Elf64_Rela).
#[repr(C)]
pub struct Rela {
    pub offset: u64,
    pub info: u64,
    pub addend: i64,
}

const DT_NULL: i64 = 0;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_RELAENT: i64 = 9;
const DT_PLTRELSZ: i64 = 2;
const DT_TEXTREL: i64 = 22;
const DT_JMPREL: i64 = 23;
const DT_NEEDED: i64 = 1;
const DT_REL: i64 = 17;
const DT_RELR: i64 = 36;
const R_X86_64_RELATIVE: u64 = 8;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PAGE: usize = 4096;

/// Why a program cannot relocate itself: a relocation kind only a dynamic
/// loader handles (a symbol, REL or RELR tables), which a program that
/// links nothing dynamic should not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported(pub u64);

/// Applies the R_X86_64_RELATIVE relocations the dynamic section at
/// `dynamic` lists for a program loaded at `base`; the number applied.
///
/// # Safety
/// `dynamic` points to a DT_NULL-terminated dynamic section whose DT_RELA
/// table, at `base` + its value, is valid, and every relocation's target
/// `base` + offset is a writable, aligned u64 that nothing else uses.
pub unsafe fn relocate(
    base: usize,
    dynamic: *const Dyn,
) -> core::result::Result<usize, Unsupported> {
    let (mut rela, mut size, mut ent) = (0u64, 0u64, core::mem::size_of::<Rela>() as u64);
    let mut d = dynamic;
    // SAFETY: the caller's contract: the section is readable up to DT_NULL.
    unsafe {
        while (*d).tag != DT_NULL {
            match (*d).tag {
                DT_RELA => rela = (*d).val,
                DT_RELASZ => size = (*d).val,
                DT_RELAENT => ent = (*d).val,
                // Tables or needs only a dynamic loader handles; an empty
                // PLT table is harmless.
                DT_PLTRELSZ if (*d).val == 0 => {}
                DT_REL | DT_RELR | DT_JMPREL | DT_PLTRELSZ | DT_TEXTREL | DT_NEEDED => {
                    return Err(Unsupported((*d).tag as u64));
                }
                _ => {}
            }
            d = d.add(1);
        }
    }
    if size == 0 {
        return Ok(0);
    }
    if ent != core::mem::size_of::<Rela>() as u64 {
        return Err(Unsupported(ent));
    }
    let table = base.wrapping_add(rela as usize) as *const Rela;
    let count = (size / ent) as usize;
    for i in 0..count {
        // SAFETY: the caller's contract: the table holds `count` entries.
        let r = unsafe { &*table.add(i) };
        if r.info & 0xffff_ffff != R_X86_64_RELATIVE {
            return Err(Unsupported(r.info & 0xffff_ffff));
        }
        let target = base.wrapping_add(r.offset as usize) as *mut usize;
        // SAFETY: the caller's contract: the target is writable and
        // aligned, and no reference to it exists yet.
        unsafe { target.write(base.wrapping_add(r.addend as usize)) };
    }
    Ok(count)
}

/// Makes the program's RELRO segment (relocated pointers: vtables, string
/// tables) read-only once [`relocate`] is done, as a dynamic loader does.
///
/// # Safety
/// `base` is the program's ELF header, mapped with its program headers.
unsafe fn protect_relro(base: usize) -> Result<()> {
    // SAFETY: the caller's contract: an Elf64_Ehdr at base; e_phoff (u64
    // at 32), e_phentsize and e_phnum (u16 at 54 and 56); then e_phnum
    // program headers (p_type u32 at 0, p_vaddr u64 at 16, p_memsz u64 at
    // 40), all in the first, mapped, page of the file.
    unsafe {
        let phoff = ((base + 32) as *const u64).read_unaligned() as usize;
        let phentsize = ((base + 54) as *const u16).read_unaligned() as usize;
        let phnum = ((base + 56) as *const u16).read_unaligned() as usize;
        for i in 0..phnum {
            let ph = base + phoff + i * phentsize;
            if (ph as *const u32).read_unaligned() != PT_GNU_RELRO {
                continue;
            }
            let vaddr = ((ph + 16) as *const u64).read_unaligned() as usize;
            let memsz = ((ph + 40) as *const u64).read_unaligned() as usize;
            let start = (base + vaddr) & !(PAGE - 1);
            let end = (base + vaddr + memsz) & !(PAGE - 1);
            if start < end {
                call(nr::MPROTECT, [start, end - start, PROT_READ, 0, 0])?;
            }
        }
    }
    Ok(())
}

/// Exit code of a program that could not relocate itself (distinct from
/// 127, a failed exec).
pub const RELOCATION_FAILED: i32 = 124;

/// A pointer the linker can only fill in through a relocation: after
/// [`relocate_self`] it must point at [`ANCHOR`], so a relocation that did
/// not happen (a table the code skipped, a linker change) is caught at
/// start instead of on some later path; it also gives a release build one
/// relocation to run.
static ANCHOR: u8 = 0;
static ANCHOR_POINTER: &u8 = &ANCHOR;

/// Relocates the program (see [`relocate`]), checks the result on
/// [`ANCHOR_POINTER`] and protects its RELRO segment, as the first thing
/// after `_start` (see [`entry!`]). Ends the process with
/// [`RELOCATION_FAILED`] and a fixed message if it cannot (the literal
/// is addressed relative to the instruction pointer: no relocation needed).
///
/// # Safety
/// Called once, before any other code of the program ran, with the
/// addresses of the program's own ELF header (`__ehdr_start`) and dynamic
/// section (`_DYNAMIC`).
pub unsafe fn relocate_self(base: usize, dynamic: *const Dyn) {
    let fail = |what: &[u8]| -> ! {
        let _ = write(2, b"crius-init: cannot relocate itself: ");
        let _ = write(2, what);
        exit(RELOCATION_FAILED)
    };
    // SAFETY: the caller's contract; the dynamic section is the linker's,
    // and the relocation targets lie in the program's writable segment,
    // which no code has read yet.
    if unsafe { relocate(base, dynamic) }.is_err() {
        fail(b"an unsupported relocation\n");
    }
    if !core::ptr::eq(*core::hint::black_box(&ANCHOR_POINTER), &ANCHOR) {
        fail(b"a pointer was left unrelocated\n");
    }
    // SAFETY: base is the program's own, mapped, ELF header.
    if unsafe { protect_relro(base) }.is_err() {
        fail(b"mprotect of RELRO\n");
    }
}

/// memset(3) for a program without libc: the compiler emits calls to it
/// (zeroed buffers, struct copies), so [`entry!`] exports these under the
/// C names.
///
/// # Safety
/// `dest` is valid for `n` bytes of writes.
pub unsafe fn mem_set(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: rep stosb writes n bytes from dest (the caller's contract);
    // the direction flag is clear, as the ABI guarantees.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// memcpy(3) (see [`mem_set`]).
///
/// # Safety
/// `src` and `dest` are valid for `n` bytes and do not overlap.
pub unsafe fn mem_copy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: rep movsb copies n bytes forward (the caller's contract).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dest
}

/// memmove(3) (see [`mem_set`]): copies backwards when `dest` overlaps the
/// end of `src`.
///
/// # Safety
/// `src` and `dest` are valid for `n` bytes.
pub unsafe fn mem_move(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: dest is below src or past its end: a forward copy reads
        // every byte before it is overwritten.
        return unsafe { mem_copy(dest, src, n) };
    }
    if n == 0 {
        return dest;
    }
    // SAFETY: a backward rep movsb (direction flag set, cleared again
    // before the block ends, as Rust's asm rules demand) from the last
    // byte of each range: dest is above src, so every byte is read before
    // it is overwritten.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dest.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
    dest
}

/// memcmp(3) and bcmp(3) (see [`mem_set`]). Volatile reads: the compiler
/// must not turn the loop back into a call of memcmp.
///
/// # Safety
/// `a` and `b` are valid for `n` bytes of reads.
pub unsafe fn mem_compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n (the caller's contract).
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// Defines what a `#![no_std]`, `#![no_main]` program that includes this
/// module as `crate::sys::raw` needs around its `main` (a `fn() -> !`,
/// named by its path from the crate root):
/// - `_start`, which aligns the stack, relocates the program
///   ([`relocate_self`]) and calls `main`; the kernel's initial stack
///   (argc, argv, environ, auxv) is not read: the pod init takes nothing;
/// - memset, memcpy, memmove, memcmp and bcmp, which the compiler calls,
///   and the personality routine core's unwind tables name;
/// - the panic handler: `$message` on stderr, then exit 101 (Rust's
///   panic code).
#[allow(unused_macros)] // expanded by src/bin/crius-pod-init.rs only
macro_rules! entry {
    ($main:path, $message:expr) => {
        // The entry's assembly is this module's unsafe code, expanded in
        // the program (which denies unsafe code everywhere else): `$main`
        // must be a path from the crate root.
        #[allow(unsafe_code)]
        mod entry {
            use $crate::sys::raw;

            ::core::arch::global_asm!(
                ".globl _start",
                ".type _start,@function",
                "_start:",
                "xor ebp, ebp",
                "lea rdi, [rip + __ehdr_start]",
                "lea rsi, [rip + _DYNAMIC]",
                "and rsp, -16",
                "call {entry}",
                "ud2",
                entry = sym crius_entry,
            );

            extern "C" fn crius_entry(base: usize, dynamic: *const raw::Dyn) -> ! {
                // SAFETY: called once, by _start, with the linker's
                // __ehdr_start and _DYNAMIC, before any other code.
                unsafe { raw::relocate_self(base, dynamic) };
                // Called through an opaque pointer: nothing of main is
                // inlined here, so no read of relocated data can move
                // above the relocation.
                ::core::hint::black_box($main as fn() -> !)()
            }

            // SAFETY (all four): the C library's contracts, which the
            // compiler's calls keep; raw's functions implement them.
            #[unsafe(no_mangle)]
            unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
                unsafe { raw::mem_set(d, c, n) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
                unsafe { raw::mem_copy(d, s, n) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
                unsafe { raw::mem_move(d, s, n) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
                unsafe { raw::mem_compare(a, b, n) }
            }
            #[unsafe(no_mangle)]
            unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
                unsafe { raw::mem_compare(a, b, n) }
            }

            // core comes precompiled for unwinding panics, and its unwind
            // tables name this personality routine; with panic=abort
            // nothing unwinds, so it is never called (should it be, the
            // process ends).
            #[unsafe(no_mangle)]
            extern "C" fn rust_eh_personality() -> ! {
                raw::exit(101)
            }
        }

        #[panic_handler]
        fn panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            let _ = $crate::sys::raw::write(2, $message);
            $crate::sys::raw::exit(101)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use entry;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_flags_match_libc() {
        let nrs = [
            (nr::READ, libc::SYS_read),
            (nr::WRITE, libc::SYS_write),
            (nr::CLOSE, libc::SYS_close),
            (nr::MPROTECT, libc::SYS_mprotect),
            (nr::RT_SIGPROCMASK, libc::SYS_rt_sigprocmask),
            (nr::WAIT4, libc::SYS_wait4),
            (nr::CHDIR, libc::SYS_chdir),
            (nr::SETGROUPS, libc::SYS_setgroups),
            (nr::SETRESUID, libc::SYS_setresuid),
            (nr::SETRESGID, libc::SYS_setresgid),
            (nr::CAPSET, libc::SYS_capset),
            (nr::RT_SIGTIMEDWAIT, libc::SYS_rt_sigtimedwait),
            (nr::PIVOT_ROOT, libc::SYS_pivot_root),
            (nr::PRCTL, libc::SYS_prctl),
            (nr::MOUNT, libc::SYS_mount),
            (nr::UMOUNT2, libc::SYS_umount2),
            (nr::EXIT_GROUP, libc::SYS_exit_group),
            (nr::OPENAT, libc::SYS_openat),
            (nr::UNSHARE, libc::SYS_unshare),
            (nr::CLOSE_RANGE, libc::SYS_close_range),
        ];
        for (ours, theirs) in nrs {
            assert_eq!(ours as i64, theirs);
        }
        let flags = [
            (AT_FDCWD as i64, libc::AT_FDCWD as i64),
            (
                O_RDONLY_CLOEXEC as i64,
                (libc::O_RDONLY | libc::O_CLOEXEC) as i64,
            ),
            (CLONE_NEWNS as i64, libc::CLONE_NEWNS as i64),
            (MS_RDONLY as i64, libc::MS_RDONLY as i64),
            (MS_NOSUID as i64, libc::MS_NOSUID as i64),
            (MS_NODEV as i64, libc::MS_NODEV as i64),
            (MS_NOEXEC as i64, libc::MS_NOEXEC as i64),
            (MS_REMOUNT as i64, libc::MS_REMOUNT as i64),
            (MS_REC as i64, libc::MS_REC as i64),
            (MS_PRIVATE as i64, libc::MS_PRIVATE as i64),
            (MNT_DETACH as i64, libc::MNT_DETACH as i64),
            (PR_SET_DUMPABLE as i64, libc::PR_SET_DUMPABLE as i64),
            (PR_SET_NAME as i64, libc::PR_SET_NAME as i64),
            (PR_CAPBSET_READ as i64, libc::PR_CAPBSET_READ as i64),
            (PR_CAPBSET_DROP as i64, libc::PR_CAPBSET_DROP as i64),
            (PR_SET_NO_NEW_PRIVS as i64, libc::PR_SET_NO_NEW_PRIVS as i64),
            (PR_CAP_AMBIENT as i64, libc::PR_CAP_AMBIENT as i64),
            (
                PR_CAP_AMBIENT_CLEAR_ALL as i64,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as i64,
            ),
            (WNOHANG as i64, libc::WNOHANG as i64),
            (SIG_BLOCK as i64, libc::SIG_BLOCK as i64),
            (SIGCHLD as i64, libc::SIGCHLD as i64),
            (PROT_READ as i64, libc::PROT_READ as i64),
        ];
        for (i, (ours, theirs)) in flags.into_iter().enumerate() {
            assert_eq!(ours, theirs, "flag {i}");
        }
        assert_eq!(Errno(libc::EINVAL).name(), Some("EINVAL"));
        assert_eq!(Errno(libc::EPERM).name(), Some("EPERM"));
        assert_eq!(Errno(libc::ENOSYS).name(), Some("ENOSYS"));
    }

    #[test]
    fn write_read_and_close_move_bytes_and_report_errors() {
        let (r, w) = nix::unistd::pipe().unwrap();
        use std::os::fd::{AsRawFd, IntoRawFd};
        assert_eq!(write(w.as_raw_fd(), b"crius"), Ok(5));
        let mut buf = [0u8; 16];
        assert_eq!(read(r.as_raw_fd(), &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"crius");
        let w = w.into_raw_fd();
        assert_eq!(close(w), Ok(()));
        assert_eq!(read(r.as_raw_fd(), &mut buf), Ok(0), "writer closed");
        assert_eq!(write(w, b"x"), Err(Errno(libc::EBADF)));
    }

    #[test]
    fn open_reads_a_file_and_names_a_missing_one() {
        let fd = open_read(c"/proc/self/uid_map").unwrap();
        let mut buf = [0u8; 256];
        let n = read(fd, &mut buf).unwrap();
        close(fd).unwrap();
        let std = std::fs::read("/proc/self/uid_map").unwrap();
        assert_eq!(&buf[..n], &std[..]);
        assert_eq!(open_read(c"/nonexistent/crius"), Err(Errno(libc::ENOENT)));
        assert_eq!(chdir(c"/nonexistent/crius"), Err(Errno(libc::ENOENT)));
    }

    #[test]
    fn the_thread_name_and_signals_of_a_thread() {
        std::thread::spawn(|| {
            set_name(c"crius-raw-test").unwrap();
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim(), "crius-raw-test");
            // Blocked, then sent to this thread: it waits in the kernel
            // until wait_signal takes it.
            let set = sigset(libc::SIGUSR2 as u32);
            block_signals(set).unwrap();
            // SAFETY (test): tgkill to this very thread, whose SIGUSR2 is blocked.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGUSR2,
                )
            };
            assert_eq!(rc, 0);
            assert_eq!(wait_signal(set), Ok(libc::SIGUSR2 as u32));
        })
        .join()
        .unwrap();
        // A bad option is the kernel's EINVAL.
        assert_eq!(prctl(0xdead, 0), Err(Errno(libc::EINVAL)));
        // The bounding set of this process can be read (0 or 1).
        assert!(prctl(PR_CAPBSET_READ, 0).unwrap() <= 1);
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by the call under test
    fn reap_collects_a_given_child() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert_eq!(reap(pid, 0), Ok(pid));
        assert_eq!(reap(pid, WNOHANG), Err(Errno(libc::ECHILD)), "reaped");
    }

    #[test]
    fn the_memory_functions_follow_the_c_contracts() {
        let mut buf = *b"0123456789";
        let p = buf.as_mut_ptr();
        // SAFETY (test, all): every range lies inside `buf` or `src`.
        unsafe {
            assert_eq!(mem_set(p.add(2), i32::from(b'x'), 3), p.add(2));
            assert_eq!(&buf, b"01xxx56789");
            let src = *b"abcd";
            assert_eq!(mem_copy(p, src.as_ptr(), 4), p);
            assert_eq!(&buf, b"abcdx56789");
            // Overlapping both ways, and nothing at all.
            mem_move(p.add(2), p, 6);
            assert_eq!(&buf, b"ababcdx589");
            mem_move(p, p.add(3), 7);
            assert_eq!(&buf, b"bcdx589589");
            mem_move(p, p.add(1), 0);
            assert_eq!(&buf, b"bcdx589589");
            assert_eq!(mem_compare(b"abc".as_ptr(), b"abd".as_ptr(), 3), -1);
            assert_eq!(mem_compare(b"abd".as_ptr(), b"abc".as_ptr(), 3), 1);
            assert_eq!(mem_compare(b"abc".as_ptr(), b"abd".as_ptr(), 2), 0);
        }
    }

    /// A dynamic section naming `table` as the DT_RELA of a program at `base`.
    fn dynamic_of(table: &[Rela], base: usize) -> [Dyn; 4] {
        let entry = |tag, val| Dyn { tag, val };
        [
            entry(DT_RELA, (table.as_ptr() as usize).wrapping_sub(base) as u64),
            entry(DT_RELASZ, core::mem::size_of_val(table) as u64),
            entry(DT_RELAENT, 24),
            entry(DT_NULL, 0),
        ]
    }

    #[test]
    fn relocate_applies_relative_entries_and_refuses_others() {
        // A "program" at `base`: two pointer slots to relocate.
        let mut slots = [0usize; 2];
        let base = slots.as_mut_ptr() as usize;
        let rela = |offset, info, addend| Rela {
            offset,
            info,
            addend,
        };
        let table = [
            rela(0, R_X86_64_RELATIVE, 0x40),
            rela(8, R_X86_64_RELATIVE, 0x1000),
        ];
        let dynamic = dynamic_of(&table, base);
        // SAFETY (test): the table and both targets are live locals.
        let n = unsafe { relocate(base, dynamic.as_ptr()) };
        assert_eq!(n, Ok(2));
        assert_eq!(slots, [base + 0x40, base + 0x1000]);

        // A symbol relocation (R_X86_64_64 = 1) needs a loader: refused.
        let bad = [rela(0, (1 << 32) | 1, 0)];
        let dynamic = dynamic_of(&bad, base);
        // SAFETY (test): as above.
        let r = unsafe { relocate(base, dynamic.as_ptr()) };
        assert_eq!(r, Err(Unsupported(1)));
        // RELR tables are refused, no table at all is nothing to do.
        let relr = [
            Dyn {
                tag: DT_RELR,
                val: 0,
            },
            Dyn {
                tag: DT_NULL,
                val: 0,
            },
        ];
        // SAFETY (test): a terminated dynamic section of locals.
        let r = unsafe { relocate(base, relr.as_ptr()) };
        assert_eq!(r, Err(Unsupported(DT_RELR as u64)));
        // PLT relocations, TEXTREL and NEEDED are a loader's too; an empty
        // PLT table is nothing to do.
        for (tag, val, refused) in [
            (DT_JMPREL, 0, true),
            (DT_PLTRELSZ, 24, true),
            (DT_PLTRELSZ, 0, false),
            (DT_TEXTREL, 0, true),
            (DT_NEEDED, 1, true),
        ] {
            let d = [
                Dyn { tag, val },
                Dyn {
                    tag: DT_NULL,
                    val: 0,
                },
            ];
            // SAFETY (test): a terminated dynamic section of locals.
            let r = unsafe { relocate(base, d.as_ptr()) };
            assert_eq!(r.is_err(), refused, "tag {tag}: {r:?}");
        }
        let none = [Dyn {
            tag: DT_NULL,
            val: 0,
        }];
        // SAFETY (test): as above.
        let r = unsafe { relocate(base, none.as_ptr()) };
        assert_eq!(r, Ok(0));
    }
}
