//! What a long-lived, mostly idle process (the per-pod monitor) hands back
//! to the kernel once it has nothing to do: pages it touched for work that
//! is over and that the kernel refills, unchanged or with zeros, the next
//! time they are used (madvise(2) MADV_DONTNEED, malloc_trim(3)).
//!
//! - [`release_stack_below_here`]: the stack below the caller's frame.
//!   Below the stack pointer nothing is live (the x86_64 ABI's red zone is
//!   128 bytes; a margin of a page is kept), so dropping those pages loses
//!   nothing; a deeper call later faults in zero pages.
//! - [`release_image_pages`]: the program's own read-only segments (code,
//!   read-only data, the relocation table). Their pages are clean copies of
//!   the executable's file: the mapping is private and never written (no
//!   text relocations, checked), and an executing file cannot be written
//!   (ETXTBSY), so a later access maps the same page-cache page again.
//!   What stays mapped is what the process runs afterwards, instead of
//!   every page its start and setup touched (the kernel maps up to 64 KiB
//!   around each fault). The writable segments (data, the relocated
//!   RELRO data) are never touched here. A breakpoint that a debugger or
//!   a uprobe wrote into those pages (a private copy of the page) goes
//!   with them: the page comes back from the file without it.
//! - [`super::malloc::trim`]: the free pages inside malloc's heap.

use std::mem::size_of;

use super::pages::page_size;

/// `madvise(addr, len, MADV_DONTNEED)` over whole pages; true on success.
fn dont_need(start: usize, end: usize) -> bool {
    if end <= start {
        return false;
    }
    // SAFETY: callers pass whole pages that hold nothing live: stack below
    // the caller's frame, or clean private file pages that are refilled
    // from the same file. No reference into them exists or survives.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) == 0 }
}

/// The mapping of /proc/self/maps that holds `addr`: (start, end).
fn mapping_of(maps: &str, addr: usize) -> Option<(usize, usize)> {
    maps.lines().find_map(|line| {
        let range = line.split_whitespace().next()?;
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then_some((start, end))
    })
}

/// Drops the resident pages of the calling thread's stack below this
/// function's frame, less one page of margin (the frames of the
/// madvise call itself). Returns the bytes of address range released.
#[inline(never)]
pub fn release_stack_below_here() -> usize {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let page = page_size();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let Some((start, _)) = mapping_of(&maps, here) else {
        return 0;
    };
    drop(maps);
    let end = (here & !(page - 1)).saturating_sub(page);
    if dont_need(start, end) {
        end - start
    } else {
        0
    }
}

const DT_NULL: u64 = 0;
const DT_TEXTREL: u64 = 22;
const DT_FLAGS: u64 = 30;
const DF_TEXTREL: u64 = 0x4;

/// The program's own read-only load segments as page ranges (whole pages
/// only, none shared with a writable segment or the RELRO range); empty
/// when the headers cannot be found or the program has text relocations
/// (its "read-only" pages were then written at start).
fn image_read_only_ranges() -> Vec<(usize, usize)> {
    // SAFETY: getauxval reads the process's auxiliary vector; no pointers.
    let (phdr, phnum, phent) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
            libc::getauxval(libc::AT_PHENT) as usize,
        )
    };
    if phdr == 0 || phnum == 0 || phent != size_of::<libc::Elf64_Phdr>() {
        return Vec::new();
    }
    // SAFETY: the kernel's AT_PHDR/AT_PHNUM describe the program headers of
    // the running executable, mapped read-only for the process's life.
    let phdrs = unsafe { std::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, phnum) };
    // The load bias: where the headers are against where they were linked.
    let Some(bias) = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_PHDR)
        .map(|p| phdr.wrapping_sub(p.p_vaddr as usize))
    else {
        return Vec::new();
    };
    let range = |p: &libc::Elf64_Phdr| {
        let start = bias.wrapping_add(p.p_vaddr as usize);
        (start, start.wrapping_add(p.p_memsz as usize))
    };
    if let Some(d) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) {
        let (start, end) = range(d);
        let mut at = start;
        while at + 16 <= end {
            // SAFETY: PT_DYNAMIC lies inside a loaded segment; entries are
            // (tag, value) pairs of u64 up to DT_NULL, read in its bounds.
            let (tag, value) = unsafe { (*(at as *const u64), *((at + 8) as *const u64)) };
            if tag == DT_NULL {
                break;
            }
            if tag == DT_TEXTREL || (tag == DT_FLAGS && value & DF_TEXTREL != 0) {
                return Vec::new();
            }
            at += 16;
        }
    }
    let page = page_size();
    let written: Vec<(usize, usize)> = phdrs
        .iter()
        .filter(|p| {
            p.p_type == libc::PT_GNU_RELRO
                || (p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W != 0)
        })
        .map(|p| {
            let (s, e) = range(p);
            (s & !(page - 1), e.next_multiple_of(page))
        })
        .collect();
    phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_W == 0)
        .map(|p| {
            let (s, e) = range(p);
            (s.next_multiple_of(page), e & !(page - 1))
        })
        .filter(|&(s, e)| s < e && written.iter().all(|&(ws, we)| e <= ws || we <= s))
        .collect()
}

/// Drops the mappings of the program's read-only segments (see the module
/// doc); the pages it runs next are mapped again on first use. Returns
/// the bytes of address range released.
pub fn release_image_pages() -> usize {
    image_read_only_ranges()
        .into_iter()
        .filter(|&(s, e)| dont_need(s, e))
        .map(|(s, e)| e - s)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident KiB of the mapping of /proc/self/smaps that holds `addr`.
    fn rss_kib_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((s, e)) = range.split_once('-')
                && let (Ok(s), Ok(e)) = (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16))
            {
                inside = s <= addr && addr < e;
            } else if inside && let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches(" kB").parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[inline(never)]
    fn deep(depth: usize) -> u8 {
        let mut buf = [0u8; 4096];
        std::hint::black_box(&mut buf)[depth % 4096] = depth as u8;
        if depth == 0 {
            return buf[0];
        }
        deep(depth - 1).wrapping_add(std::hint::black_box(&buf)[7])
    }

    #[test]
    fn the_stack_below_the_caller_is_released_and_still_usable() {
        // A thread of its own: its stack is a mapping no other test uses.
        std::thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(|| {
                let marker = 0u8;
                let here = std::hint::black_box(&marker) as *const u8 as usize;
                deep(128); // 512 KiB below us
                let before = rss_kib_at(here);
                assert!(before >= 512, "the deep calls touched {before} KiB");
                assert!(release_stack_below_here() >= 500 << 10);
                let after = rss_kib_at(here);
                assert!(after < 64, "{before} KiB -> {after} KiB resident");
                // Deep calls work again (zero pages).
                deep(128);
                assert!(rss_kib_at(here) >= 512);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn the_read_only_segments_of_the_program_are_dropped_and_fault_back() {
        let ranges = image_read_only_ranges();
        assert!(!ranges.is_empty(), "the test binary has read-only segments");
        let code = rss_kib_at as *const () as usize;
        assert!(
            ranges.iter().any(|&(s, e)| s <= code && code < e),
            "the code segment is among {ranges:x?}"
        );
        let page = page_size();
        assert!(ranges.iter().all(|&(s, e)| s % page == 0 && e % page == 0));
        let released = release_image_pages();
        assert_eq!(released, ranges.iter().map(|(s, e)| e - s).sum::<usize>());
        // The code runs on: its pages come back from the file.
        assert_eq!(deep(3), deep(3));
        assert!(rss_kib_at(code) > 0);
    }
}
