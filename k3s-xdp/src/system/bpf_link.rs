//! A kernel BPF link held by its id, so that a second process can keep an attachment alive.
//!
//! An XDP program attached through a bpf_link stays on the interface while any file descriptor
//! of the link is open. The daemon's guard opens the daemon's link by id: when the daemon dies
//! (`kill -9`), the program keeps forwarding until the guard has removed the VIPs, and only then
//! goes. Without it there were milliseconds in which the kernel held the VIP but no program
//! did, and answered the VIP's traffic with resets.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd` (uapi/linux/bpf.h).
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// An open reference to a BPF link. Dropping it closes the reference; the link goes when its
/// last reference does.
#[derive(Debug)]
pub struct LinkRef {
    fd: OwnedFd,
    id: u32,
}

impl LinkRef {
    /// Opens the link whose kernel id is `id` (what `bpftool link` lists).
    pub fn open(id: u32) -> io::Result<LinkRef> {
        // `union bpf_attr` for BPF_*_GET_FD_BY_ID: the id, next_id, open_flags.
        let attr: [u32; 3] = [id, 0, 0];
        // SAFETY: the attr buffer outlives the call and is as large as the size passed; the
        // kernel reads it only and returns a new file descriptor, which we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_GET_FD_BY_ID,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a file descriptor the kernel just created for us; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(LinkRef { fd, id })
    }

    /// The link's kernel id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Detaches the link now, whoever else holds it (BPF_LINK_DETACH, Linux 5.9+).
    pub fn detach(&self) -> io::Result<()> {
        // `union bpf_attr` for BPF_LINK_DETACH: the link's fd.
        let attr: [u32; 1] = [self.fd.as_raw_fd() as u32];
        // SAFETY: as in `open`; the kernel returns 0 or -1 and keeps no pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_DETACH,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_link_is_an_error() {
        // Link ids start at 1 and grow; u32::MAX is never reached on a test machine. Without
        // root the kernel refuses with EPERM: an error either way, never a bogus reference.
        assert!(LinkRef::open(u32::MAX).is_err());
    }
}
