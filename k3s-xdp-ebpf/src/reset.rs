//! Refusing a TCP packet with a RST built in place: when its flow's backend went down
//! (`on_backend_down = "reset"`) or when no backend is healthy, so clients such as kubectl
//! watches reconnect at once instead of waiting for a timeout (RFC 9293, 3.10.7.1).

use crate::{
    counters,
    csum::fold,
    family::{Family, TCP_LEN},
    forward,
    headers::{TcpHdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    hop,
    parse::{ptr_at, Ip, Valid, L4},
    rewrite,
    verdict::Verdict,
};
use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use k3s_xdp_common::{reason, IPPROTO_TCP};

/// Turns the TCP packet into a RST back to its sender, sent toward the sender's next hop from
/// the FIB (not the frame's source MAC, which may be another router's).
#[inline(always)]
pub fn send<F: Family>(
    ctx: &XdpContext,
    ip: &Ip<F>,
    valid: &Valid,
    l4: &L4,
    service: u32,
    backend: u32,
) -> Verdict {
    let Some(tcp) = l4.tcp(ctx) else {
        return Verdict::drop(reason::DROP_NO_BACKEND);
    };
    // SAFETY: `tcp` and `ip`'s headers were checked in bounds by the parser, and `valid` says
    // where the packet ends; every write stays within them, and the tail moves last.
    let hop = unsafe {
        let flags = (*tcp).flags;
        // Never answer a RST with a RST.
        if flags & TCP_RST != 0 {
            return Verdict::drop(reason::DROP_NO_BACKEND);
        }
        let doff = (((*tcp).doff >> 4) as usize) * 4;
        let (seq, ack, rst_flags) = if flags & TCP_ACK != 0 {
            ((*tcp).ack_seq, 0, TCP_RST)
        } else {
            let mut len = (valid.end - valid.l4 - doff) as u32;
            if flags & TCP_SYN != 0 {
                len += 1;
            }
            if flags & TCP_FIN != 0 {
                len += 1;
            }
            (
                0,
                u32::from_be((*tcp).seq).wrapping_add(len).to_be(),
                TCP_RST | TCP_ACK,
            )
        };
        let sport = (*tcp).dport;
        let dport = (*tcp).sport;

        let src = F::dst(ip.hdr);
        let dst = F::src(ip.hdr);
        // Ethernet: toward the sender's next hop (written before the tail moves, which ends
        // every packet pointer).
        let hop = hop::resolve(ctx, src, dst, false, 0);
        if let Ok(hop) = &hop {
            rewrite::l2(ip, hop);
        }
        let at = F::turn_around(ip.hdr, ip.l3, valid);

        // TCP: a bare 20-byte header right after the IP header, checksummed from scratch.
        let Some(out) = ptr_at::<TcpHdr>(ctx, at & 0x3fff) else {
            return Verdict::drop(reason::DROP_NO_BACKEND);
        };
        (*out).sport = sport;
        (*out).dport = dport;
        (*out).seq = seq;
        (*out).ack_seq = ack;
        (*out).doff = 5 << 4;
        (*out).flags = rst_flags;
        (*out).window = 0;
        (*out).urg_ptr = 0;
        let doff_flags = u16::from_ne_bytes([5 << 4, rst_flags]);
        let mut sum = dst.sum(src.sum(0));
        sum += u32::from(u16::from(IPPROTO_TCP).to_be());
        sum += u32::from((TCP_LEN as u16).to_be());
        sum += u32::from(sport) + u32::from(dport);
        sum = crate::csum::add32(crate::csum::add32(sum, seq), ack);
        sum += u32::from(doff_flags);
        (*out).check = !fold(sum);

        // Cut the options and payload off (and any Ethernet padding).
        let keep = (at & 0x3fff) + TCP_LEN;
        let delta = keep as i32 - (ctx.data_end() - ctx.data()) as i32;
        if delta != 0 && bpf_xdp_adjust_tail(ctx.ctx, delta) != 0 {
            return Verdict::drop(reason::DROP_NO_BACKEND);
        }
        hop
    };
    counters::reset(service, backend);
    forward::depart(ctx, ip, hop, reason::TX_RESET)
}
