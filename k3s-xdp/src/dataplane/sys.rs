//! The map operations aya 0.14 does not offer: deleting an entry of an array of maps (the slot
//! becomes empty), and filling or reading a `BPF_F_MMAPABLE` array through a shared mapping.

use anyhow::{bail, Context, Result};
use std::{io, os::fd::RawFd};

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// The `map_elem` member of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `bpf(BPF_MAP_DELETE_ELEM)` on map `fd`.
pub fn delete_elem(fd: RawFd, key: &u32) -> Result<()> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as *const u32 as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for this command and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // Already empty is fine.
        if e.raw_os_error() != Some(libc::ENOENT) {
            bail!("bpf(BPF_MAP_DELETE_ELEM): {e}");
        }
    }
    Ok(())
}

/// Copies `values` into the `BPF_F_MMAPABLE` array map `fd` (of exactly `values.len()` u64
/// entries) through a shared mapping (the kernel lays 8-byte elements out back to back).
pub fn write_mmapable_array(fd: RawFd, values: &[u64]) -> Result<()> {
    let map = MappedArray::<u64>::map(fd, values.len(), true).context("mmap of a Maglev table")?;
    // SAFETY: the mapping holds `values.len()` u64 entries, page aligned, and nobody else
    // writes this fresh map.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), map.ptr, values.len()) };
    Ok(())
}

/// Calls `f` with a copy of each of the first `count` entries of the `BPF_F_MMAPABLE` array map
/// `fd` (entries of `T`, a multiple of 8 bytes, laid out back to back), read through a
/// read-only shared mapping: one pass over the memory, no system call per entry. The program
/// may write an entry while it is read; `T`'s own checks (a seal) tell a torn copy.
pub fn scan_mmapable_array<T: Copy>(fd: RawFd, count: usize, mut f: impl FnMut(T)) -> Result<()> {
    let map = MappedArray::<T>::map(fd, count, false).context("mmap of a flow table")?;
    (0..count).filter_map(|i| map.get(i)).for_each(&mut f);
    Ok(())
}

/// A shared mapping of the first `count` entries of the `BPF_F_MMAPABLE` array map `fd`
/// (entries of `T` back to back), unmapped on drop. The program reads and writes the same
/// memory concurrently: entries are accessed with volatile reads and writes only.
pub struct MappedArray<T> {
    ptr: *mut T,
    len: usize,
    count: usize,
}

// SAFETY: the mapping belongs to this value alone (unmapped on its drop); moving it to another
// thread moves that ownership. Entries are read and written with volatile accesses only.
unsafe impl<T: Send> Send for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    /// Maps it read-only, or for writing too (`writable`).
    pub fn map(fd: RawFd, count: usize, writable: bool) -> Result<Self> {
        let bytes = count * std::mem::size_of::<T>();
        // SAFETY: page size query has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: mapping a map fd the kernel created mmapable; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                if writable {
                    libc::PROT_READ | libc::PROT_WRITE
                } else {
                    libc::PROT_READ
                },
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap: {}", io::Error::last_os_error());
        }
        Ok(MappedArray {
            ptr: ptr.cast(),
            len,
            count,
        })
    }

    /// Entries mapped.
    pub fn entries(&self) -> usize {
        self.count
    }

    /// A copy of entry `i` (`None` beyond the mapping).
    pub fn get(&self, i: usize) -> Option<T> {
        // SAFETY: within the mapping; volatile, as the program writes it concurrently.
        (i < self.count).then(|| unsafe { std::ptr::read_volatile(self.ptr.add(i)) })
    }

    /// Writes entry `i` (of a writable mapping); false beyond the mapping.
    pub fn set(&mut self, i: usize, value: T) -> bool {
        if i >= self.count {
            return false;
        }
        // SAFETY: within the mapping; volatile, as the program reads it concurrently.
        unsafe { std::ptr::write_volatile(self.ptr.add(i), value) };
        true
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
