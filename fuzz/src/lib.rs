//! What the fuzz targets share: an allocator that refuses huge allocations, the checks after
//! an import, the fixed flow-sync key, and a reader of structured input from the fuzzer's
//! bytes.

use k3s_xdp::{config, flowsync::wire::Key, import};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write,
    net::IpAddr,
    path::Path,
};

/// The largest single allocation a target may make: no parser needs this much for inputs of a
/// few kilobytes (the control socket reads at most 64 KiB).
pub const ALLOCATION_LIMIT: usize = 64 << 20;

/// The system allocator, except that an allocation above [`ALLOCATION_LIMIT`] aborts: a crash
/// that libFuzzer saves with its input. Without a sanitizer, libFuzzer's `-malloc_limit_mb`
/// sees no allocation, and `-rss_limit_mb` misses memory reserved but not yet touched (a
/// `Vec::with_capacity` of a length read from the input).
pub struct Limited;

fn within_limit(size: usize) {
    if size > ALLOCATION_LIMIT {
        // No formatting: it could allocate.
        let _ = std::io::stderr().write_all(b"fuzz: an allocation above ALLOCATION_LIMIT\n");
        std::process::abort();
    }
}

// SAFETY: every call goes to the system allocator with the caller's arguments.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        within_limit(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        within_limit(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        within_limit(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;

/// Imports `haproxy` (and `keepalived`) as `k3s-xdp import` does; what comes out must be TOML
/// (whether `check` accepts it is the operator's next step, and is run too).
pub fn import_and_check(haproxy: &str, keepalived: Option<&str>, vips: &[IpAddr]) {
    let imported = import::import(
        import::Input {
            name: "haproxy.cfg",
            text: haproxy,
        },
        keepalived.map(|text| import::Input {
            name: "keepalived.conf",
            text,
        }),
        vips,
    );
    let Ok(imported) = imported else {
        return;
    };
    let _ = imported.warnings.to_string();
    if let Err(e) = imported.toml.parse::<toml_edit::DocumentMut>() {
        panic!("the import is not TOML: {e}\n{}", imported.toml);
    }
    let _ = config::parse(&imported.toml, Path::new("imported.toml"));
}

/// The flow-sync key file of the targets (fixed: a fuzzer that knows it reaches past the
/// HMAC).
pub const KEY_BYTES: &[u8] = b"k3s-xdp fuzzing key, 32 bytes or more";

pub fn key() -> Key {
    Key::from_file_bytes(KEY_BYTES).expect("a long enough key")
}

/// Reads values off the fuzzer's bytes; past the end, everything is zero.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u16()) << 48)
            | (u64::from(self.u16()) << 32)
            | (u64::from(self.u16()) << 16)
            | u64::from(self.u16())
    }

    /// One of `choices` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }

    /// At most `max` bytes, their count read first.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (usize::from(self.u16()) % (max + 1)).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    pub fn rest_len(&self) -> usize {
        self.0.len()
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
