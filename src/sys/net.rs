//! Network devices of the caller's network namespace, by ioctl on a
//! datagram socket (netdevice(7)).

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::{Result, sys};

/// Brings the loopback device `lo` of the caller's network namespace up,
/// as the CNI loopback plugin would. The kernel then gives it 127.0.0.1/8
/// (and ::1 where IPv6 is on). A no-op when it is up already.
pub fn loopback_up() -> Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket for the loopback device"))?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of `req`,
    // which outlives the call.
    let got = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    nix::errno::Errno::result(got).map_err(sys("read the flags of lo"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of `req`.
    let set = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    nix::errno::Errno::result(set).map_err(sys("bring lo up"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a new network namespace of the test's own thread (threads
    /// may unshare it; the others stay in the host's), lo starts down, so
    /// 127.0.0.1 is unreachable, and comes up with it reachable.
    #[test]
    fn loopback_comes_up_in_a_new_network_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root");
            return;
        }
        let t = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = l.local_addr().unwrap();
            let down = s.send_to(b"x", to).unwrap_err();
            assert_eq!(down.raw_os_error(), Some(libc::ENETUNREACH), "{down}");
            loopback_up().unwrap();
            // Twice: the second finds it up.
            loopback_up().unwrap();
            s.send_to(b"x", to).unwrap();
            let mut b = [0u8; 1];
            l.recv_from(&mut b).unwrap();
        });
        t.join().unwrap();
    }
}
