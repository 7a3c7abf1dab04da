//! Benchmark entry points (cargo feature `bench`, absent from the object the daemon runs): they
//! restore the packet from `BENCH` before each run, so that BPF_PROG_TEST_RUN with a large
//! `repeat` measures the same path every time (BPF_PROG_TEST_RUN with `repeat` hands a program
//! its own output from the second run on), optionally with a new source port per run (a new
//! flow each time), with the packet's flow forgotten (its new-flow path with the tables in the
//! cache), or with its flow made unconfirmed again (the packet that confirms a flow). The floor
//! does the same restore before its MAC swap, so the restore's cost cancels out of the
//! comparison (forgetting a flow, or unconfirming it, is not cancelled: it counts against
//! k3s-xdp).

use crate::{
    csum,
    family::Family,
    maps::BENCH,
    parse::ptr_at,
    table::{FlowPlace, NatPlace},
};
use aya_ebpf::programs::XdpContext;
use k3s_xdp_common::{
    table::{UNCONFIRMED, WAYS},
    BenchPacket, BENCH_FORGET_FLOW, BENCH_MAX_LEN, BENCH_NEW_SOURCE_PORT, BENCH_UNCONFIRM_FLOW,
    NAT_UNCONFIRMED, V6,
};

/// Offset of the L4 source port in an untagged IPv4 packet without options.
const SPORT: usize = 14 + 20;
/// Offset of the TCP checksum in the same.
const TCP_CHECK: usize = 14 + 20 + 16;
/// The same in an untagged IPv6 packet without extension headers.
const SPORT6: usize = 14 + 40;
const TCP_CHECK6: usize = 14 + 40 + 16;

/// Whether the benchmark packet is IPv6 (its EtherType).
#[inline(always)]
fn is_ipv6(bench: *const BenchPacket) -> bool {
    // SAFETY: the benchmark's entry, valid for this run.
    unsafe { (*bench).bytes[12] == 0x86 && (*bench).bytes[13] == 0xdd }
}

/// Copies the benchmark packet over the frame; false if it does not fit.
#[inline(always)]
pub fn restore(ctx: &XdpContext) -> bool {
    let Some(bench) = BENCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the benchmark's entry (one per program, written before the run), valid for
    // this run.
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
                let Some(dst) = ptr_at::<u64>(ctx, $i * 8) else { return false };
                // SAFETY: `ptr_at` checked the 8 bytes in the frame; the source is word $i
                // of the entry's `BENCH_MAX_LEN` bytes (len <= BENCH_MAX_LEN), at an offset
                // of the map value that is a multiple of 8 (a copy in whole words: as bytes,
                // each word is 16 loads and stores, which a longer IPv6 frame pays more of
                // than the floor's IPv4 one).
                unsafe {
                    *dst = *core::ptr::addr_of!((*bench).bytes).cast::<u64>().add($i);
                }
            }
        )*};
    }
    copy_chunk!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19);
    // SAFETY: as above.
    let mode = unsafe { (*bench).mode };
    if mode == BENCH_FORGET_FLOW {
        return forget(bench);
    }
    if mode == BENCH_UNCONFIRM_FLOW {
        return unconfirm(bench);
    }
    if mode == BENCH_NEW_SOURCE_PORT {
        let (at_sport, at_check) = if is_ipv6(bench) {
            (SPORT6, TCP_CHECK6)
        } else {
            (SPORT, TCP_CHECK)
        };
        let (Some(sport), Some(check)) =
            (ptr_at::<u16>(ctx, at_sport), ptr_at::<u16>(ctx, at_check))
        else {
            return false;
        };
        // SAFETY: `ptr_at` checked both fields in the frame; the entry as above.
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

/// Forgets the packet's flow and its translation, as if they had never been: clears the seals
/// of the flow bucket and the reverse-NAT slot the benchmark names (the bucket's other flows,
/// if any, go too).
#[inline(always)]
fn forget(bench: *const BenchPacket) -> bool {
    // SAFETY: the benchmark's entry, valid for this run.
    let (bucket, nat) = unsafe { ((*bench).forget_bucket, (*bench).forget_nat) };
    if is_ipv6(bench) {
        clear::<V6>(bucket, nat)
    } else {
        clear::<u32>(bucket, nat)
    }
}

/// Makes the packet's flow and its translation unconfirmed again, as they were before the
/// client's second packet: marks the flows of the bucket the benchmark names, and the
/// reverse-NAT slot (outside their seals).
#[inline(always)]
fn unconfirm(bench: *const BenchPacket) -> bool {
    // SAFETY: the benchmark's entry, valid for this run.
    let (bucket, nat) = unsafe { ((*bench).forget_bucket, (*bench).forget_nat) };
    if is_ipv6(bench) {
        mark::<V6>(bucket, nat)
    } else {
        mark::<u32>(bucket, nat)
    }
}

#[inline(always)]
fn mark<F: Family>(bucket: u32, nat: u32) -> bool {
    let (Some(bucket), Some(slot)) = (F::flow_bucket(bucket), F::nat_slot(nat)) else {
        return false;
    };
    // SAFETY: map values valid for this run.
    unsafe {
        for way in 0..WAYS as usize {
            *F::FlowSlot::seen_at(&mut (*bucket).slots[way]) |= UNCONFIRMED;
        }
    }
    F::Nat::set_closing(slot, F::Nat::closing(slot) | NAT_UNCONFIRMED);
    true
}

/// Clears the seals of flow bucket `bucket` and reverse-NAT slot `nat` of family `F`.
#[inline(always)]
fn clear<F: Family>(bucket: u32, nat: u32) -> bool {
    let (Some(bucket), Some(slot)) = (F::flow_bucket(bucket), F::nat_slot(nat)) else {
        return false;
    };
    // SAFETY: map values valid for this run.
    unsafe {
        for way in 0..WAYS as usize {
            *F::FlowSlot::seal_at(&mut (*bucket).slots[way]) = 0;
        }
    }
    F::Nat::clear(slot);
    true
}
