//! Benchmark entry points, never attached and never loaded by the daemon: they restore the
//! packet from `BENCH` before each run, so that BPF_PROG_TEST_RUN with a large `repeat` measures
//! the same path every time (otherwise the program would see its own output: TOOLCHAIN.md),
//! optionally with a new source port per run (a new flow each time). The floor does the same
//! restore before its MAC swap, so the restore's cost cancels out of the comparison.

use crate::{csum, maps::BENCH, parse::ptr_at};
use aya_ebpf::programs::XdpContext;
use k3s_xdp_common::BENCH_MAX_LEN;

/// Offset of the L4 source port in an untagged IPv4 packet without options.
const SPORT: usize = 14 + 20;
/// Offset of the TCP checksum in the same.
const TCP_CHECK: usize = 14 + 20 + 16;

/// Copies the benchmark packet over the frame; false if it does not fit.
#[inline(always)]
pub fn restore(ctx: &XdpContext) -> bool {
    let Some(bench) = BENCH.get_ptr_mut(0) else {
        return false;
    };
    let len = unsafe { (*bench).len } as usize;
    // Benchmark frames are padded to whole 8-byte words (Ethernet padding after the IP
    // packet, which the program ignores), so only whole words are copied.
    if len > BENCH_MAX_LEN || !len.is_multiple_of(8) || ctx.data_end() - ctx.data() != len {
        return false;
    }
    // Constant offsets, fully unrolled: a loop's bounds checks get rewritten by LLVM into a
    // form the verifier cannot follow.
    macro_rules! copy_chunk {
        ($($i:literal)*) => {$(
            if len >= $i * 8 + 8 {
                let Some(dst) = ptr_at::<[u8; 8]>(ctx, $i * 8) else { return false };
                unsafe {
                    *dst = *core::ptr::addr_of!((*bench).bytes).cast::<[u8; 8]>().add($i);
                }
            }
        )*};
    }
    copy_chunk!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    if unsafe { (*bench).vary_sport } != 0 {
        let (Some(sport), Some(check)) = (ptr_at::<u16>(ctx, SPORT), ptr_at::<u16>(ctx, TCP_CHECK))
        else {
            return false;
        };
        unsafe {
            (*bench).counter = (*bench).counter.wrapping_add(1);
            let old = *sport;
            let new = (u16::from_be(old).wrapping_add((*bench).counter as u16)).to_be();
            *sport = new;
            *check = csum::replace2(*check, old, new);
        }
    }
    true
}
