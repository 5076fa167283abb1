//! Anonymous memory mapped directly (mmap(2)): pages the kernel fills
//! with zeros on first touch, so a buffer sized for the largest message
//! costs only what the messages it held have touched. (A zeroed heap
//! buffer is written, hence resident, when it is made.)

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use super::{Error, Result};

/// The size of a memory page (4096 if the kernel's answer is unusable).
pub fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// `len` bytes of private anonymous memory, zero until written, unmapped
/// on drop.
pub struct ZeroPages {
    ptr: NonNull<u8>,
    len: usize,
}

impl ZeroPages {
    pub fn new(len: usize) -> Result<ZeroPages> {
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks: it aliases no memory of the program.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Sys {
                what: format!("map {len} bytes of anonymous memory"),
                source: nix::Error::last(),
            });
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| Error::Sys {
            what: "mmap returned address 0".into(),
            source: nix::Error::EINVAL,
        })?;
        Ok(ZeroPages { ptr, len })
    }
}

impl Deref for ZeroPages {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is this mapping, readable and writable (zero
        // where never written), alive until drop; &self borrows it shared.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for ZeroPages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ZeroPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, unmapped once; no borrow of it
        // outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::ZeroPages;

    #[test]
    fn zero_pages_read_zero_and_keep_what_is_written() {
        let mut p = ZeroPages::new(3 * 4096 + 1).unwrap();
        assert_eq!(p.len(), 3 * 4096 + 1);
        assert!(p.iter().all(|&b| b == 0));
        p[5000] = 7;
        p[3 * 4096] = 9;
        assert_eq!((p[5000], p[3 * 4096], p[4999]), (7, 9, 0));
        assert!(ZeroPages::new(0).is_err(), "mmap refuses an empty mapping");
    }
}
