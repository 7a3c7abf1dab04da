//! What the program returns for a packet, and the reason it is counted under.

use aya_ebpf::bindings::xdp_action;

pub struct Verdict {
    pub action: u32,
    pub reason: u32,
}

impl Verdict {
    #[inline(always)]
    pub fn pass(reason: u32) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    #[inline(always)]
    pub fn drop(reason: u32) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    /// Back out of the interface the frame came in on.
    #[inline(always)]
    pub fn tx(reason: u32) -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}
