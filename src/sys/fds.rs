//! Passing file descriptors over a unix socket (SCM_RIGHTS, unix(7)):
//! the monitor hands an exec's stdio to the daemon beside a reply line.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most fds one message carries.
pub const MAX_FDS: usize = 4;

/// Sends `data` with `fds` attached to its first byte.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(std::io::Error::from)
}

/// Reads what is available into `data`, collecting fds that arrive with
/// it (close-on-exec). Returns the byte count (0 at EOF).
pub fn recv_with_fds(
    sock: &impl AsRawFd,
    data: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut buf = [0u8; 4096];
    let n = recv_into(sock, &mut buf, fds)?;
    data.extend_from_slice(&buf[..n]);
    Ok(n)
}

/// Receives one message into `buf` (a datagram or seqpacket message
/// longer than `buf` is cut), collecting the fds that ride with it
/// (close-on-exec). Returns the byte count (0 at EOF).
pub fn recv_into(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, got) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut got = Vec::new();
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(list) = c {
                got.extend(list);
            }
        }
        (msg.bytes, got)
    };
    for fd in got {
        // SAFETY: the kernel installed these fds in our table for us; each
        // is owned by exactly one OwnedFd from here on.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn fds_travel_with_the_line() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut r, mut w) = std::io::pipe().unwrap();
        send_with_fds(a.as_fd(), b"hello\n", &[w.as_raw_fd()]).unwrap();
        let mut data = Vec::new();
        let mut fds = Vec::new();
        recv_with_fds(&b, &mut data, &mut fds).unwrap();
        assert_eq!(data, b"hello\n");
        assert_eq!(fds.len(), 1);
        let mut passed = std::fs::File::from(fds.pop().unwrap());
        passed.write_all(b"x").unwrap();
        drop(passed);
        w.flush().unwrap();
        drop(w);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
    }
}
