//! The flow tables seen from userspace: the SNAT ports each backend holds (for status and
//! metrics), and single entries of the flow and reverse-NAT tables read and written where the
//! XDP program looks for them (the BPF tests stage states with them; flow sync will install a
//! peer's flows with them). Layout and hashing are `k3s_xdp_common::table`'s, shared with the
//! program.

use super::{sys, Dataplane};
use anyhow::Result;
use aya::maps::{Array, MapData};
use k3s_xdp_common::{
    hash::flow_hash,
    names,
    table::{self, bucket_index, keep_rank, nat_index, FlowBucket, FlowSlot, NatSlot},
    Address, Flow, FlowEvent, FlowKey, NatReverse, V6,
};
use std::collections::BTreeMap;

/// A record of the `FLOW_EVENTS` ring, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEventOf {
    V4(FlowEvent),
    V6(FlowEvent<V6>),
}

impl FlowEventOf {
    /// The record in `bytes` (as the ring holds it), if it is one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
            (bytes.len() == std::mem::size_of::<T>())
                // SAFETY: exactly the bytes of a `T`, a plain `repr(C)` record without
                // invalid bit patterns; read unaligned.
                .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
        }
        let event = match read::<FlowEvent>(bytes) {
            Some(e) if e.family == 4 => FlowEventOf::V4(e),
            _ => match read::<FlowEvent<V6>>(bytes) {
                Some(e) if e.family == 6 => FlowEventOf::V6(e),
                _ => return None,
            },
        };
        Some(event)
    }
}

/// What [`Dataplane::install`] did with a batch of a peer's flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Flows written (new here, or refreshed).
    pub flows: u64,
    /// Translations refused because a live translation of another connection holds their
    /// reverse-NAT slot (the same backend and SNAT address and port for another client, or a
    /// colliding tuple): that connection wins.
    pub conflicts: u64,
}

/// A backend's SNAT ports (see [`Dataplane::snat_ports`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPorts {
    /// Held by a live translation.
    pub in_use: u64,
    /// Closed by the backend first, less than `snat_timewait` ago: not given to another client.
    pub waiting: u64,
}

impl Dataplane {
    /// SNAT ports per backend slot: held by a live translation, and closed but waiting for
    /// the backend's TIME_WAIT (`snat_timewait` of `timewait` seconds), at `clock` (the
    /// controller's). One pass over the reverse-NAT table's memory.
    /// Backend slots are numbered across both families, so one map holds both tables' counts.
    pub fn snat_ports(&self, clock: u32, timewait: u32) -> Result<BTreeMap<u32, SnatPorts>> {
        let mut out: BTreeMap<u32, SnatPorts> = BTreeMap::new();
        self.count_snat_ports::<u32>(names::NAT_REVERSE, clock, timewait, &mut out)?;
        if self.ipv6 {
            self.count_snat_ports::<V6>(names::NAT_REVERSE6, clock, timewait, &mut out)?;
        }
        out.retain(|_, p| *p != SnatPorts::default());
        Ok(out)
    }

    fn count_snat_ports<A: Address>(
        &self,
        name: &str,
        clock: u32,
        timewait: u32,
        out: &mut BTreeMap<u32, SnatPorts>,
    ) -> Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let aya::maps::Map::Array(map) = self.map(name)? else {
            anyhow::bail!("{name} is not an array");
        };
        let count = (self.flow_mask as usize + 1) * table::WAYS as usize;
        sys::scan_mmapable_array(map.fd().as_fd().as_raw_fd(), count, |slot: NatSlot<A>| {
            if !slot.is_valid() || table::idle(slot.seen, clock) {
                return;
            }
            let ports = out.entry(u32::from(slot.nat.backend)).or_default();
            if k3s_xdp_common::waits(slot.nat.closing, slot.seen, clock, timewait) {
                ports.waiting += 1;
            } else if !slot.nat.closed() {
                ports.in_use += 1;
            }
        })
    }

    /// Takes up to `max` records from the `FLOW_EVENTS` ring (new flows, for flow sync), in
    /// the order the program wrote them; a record that is not an event is skipped.
    pub fn drain_flow_events(&mut self, max: usize) -> Result<Vec<FlowEventOf>> {
        let mut ring = aya::maps::RingBuf::try_from(self.map_mut(names::FLOW_EVENTS)?)?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = ring.next() else { break };
            if let Some(event) = FlowEventOf::parse(&item) {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Writes a peer's flows (flow sync) where this node's program looks for them, last seen
    /// at `clock`: each flow into one slot of its bucket (the one holding its key, else a
    /// free one, else the least recently seen), each translation into its reverse-NAT slot
    /// unless a live translation of another client holds it. Single slots are written through
    /// a shared mapping, never whole buckets: the program may be writing the bucket's other
    /// slots, and the seals keep a torn slot from ever forwarding (see `k3s_xdp_common::table`).
    pub fn install(
        &mut self,
        entries: &[crate::flowsync::translate::InstallOf],
        clock: u32,
    ) -> Result<Installed> {
        use crate::flowsync::translate::InstallOf;
        let v4: Vec<_> = entries
            .iter()
            .filter_map(|e| match e {
                InstallOf::V4(i) => Some(*i),
                InstallOf::V6(_) => None,
            })
            .collect();
        let v6: Vec<_> = entries
            .iter()
            .filter_map(|e| match e {
                InstallOf::V6(i) => Some(*i),
                InstallOf::V4(_) => None,
            })
            .collect();
        let mut done = Installed::default();
        if !v4.is_empty() {
            self.install_family(names::FLOWS, names::NAT_REVERSE, &v4, clock, &mut done)?;
        }
        if !v6.is_empty() {
            if !self.ipv6 {
                anyhow::bail!("IPv6 flows, and the IPv6 flow tables were not sized at start");
            }
            self.install_family(names::FLOWS6, names::NAT_REVERSE6, &v6, clock, &mut done)?;
        }
        Ok(done)
    }

    fn install_family<A: Address>(
        &mut self,
        flows: &str,
        nat: &str,
        entries: &[crate::flowsync::translate::Install<A>],
        clock: u32,
        done: &mut Installed,
    ) -> Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let slots = (self.flow_mask as usize + 1) * table::WAYS as usize;
        let fd = |name: &str| -> Result<i32> {
            let aya::maps::Map::Array(map) = self.map(name)? else {
                anyhow::bail!("{name} is not an array");
            };
            Ok(map.fd().as_fd().as_raw_fd())
        };
        let mut flow_slots = sys::MappedArray::<FlowSlot<A>>::map(fd(flows)?, slots, true)?;
        let mut nat_slots = sys::MappedArray::<NatSlot<A>>::map(fd(nat)?, slots, true)?;
        let ways = table::WAYS as usize;
        for i in entries {
            if let Some((rkey, reverse)) = &i.reverse {
                let rhash = flow_hash(rkey);
                let at = nat_index(rhash, self.flow_mask) as usize;
                // Live, and not this very translation (same tuple, same client): another
                // connection's, which this node keeps.
                let taken = nat_slots.get(at).is_some_and(|s| {
                    let same = s.holds(rkey, rhash)
                        && s.nat.client_addr.diff(&reverse.client_addr) == 0
                        && s.nat.client_port == reverse.client_port;
                    s.is_valid() && !s.reusable(clock) && !same
                });
                if taken {
                    done.conflicts += 1;
                    continue;
                }
                nat_slots.set(at, NatSlot::new(*rkey, rhash, *reverse, clock));
            }
            let hash = flow_hash(&i.key);
            let first = bucket_index(hash, self.flow_mask) as usize * ways;
            let current: Vec<FlowSlot<A>> = (first..first + ways)
                .filter_map(|j| flow_slots.get(j))
                .collect();
            let way = current
                .iter()
                .position(|s| s.holds(&i.key, hash))
                .or_else(|| {
                    (0..current.len())
                        .min_by_key(|&w| keep_rank(current[w].is_valid(), current[w].seen, clock))
                })
                .unwrap_or(0);
            flow_slots.set(first + way, FlowSlot::new(i.key, hash, i.flow, clock));
            done.flows += 1;
        }
        Ok(())
    }

    /// The flow table entry of a client → VIP tuple.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        let hash = flow_hash(key);
        let bucket: FlowBucket = self.bucket(names::FLOWS, hash)?;
        Ok(bucket
            .slots
            .iter()
            .find(|s| s.holds(key, hash))
            .map(|s| s.flow))
    }

    /// The reverse NAT entry of a backend → VIP:snat_port tuple.
    pub fn nat_reverse(&self, key: &FlowKey) -> Result<Option<NatReverse>> {
        Ok(self.nat_slot(key)?.map(|s| s.nat))
    }

    /// The reverse NAT slot of a backend → VIP:snat_port tuple (with when it was last seen).
    pub fn nat_slot(&self, key: &FlowKey) -> Result<Option<NatSlot>> {
        let hash = flow_hash(key);
        let map: Array<&MapData, NatSlot> = Array::try_from(self.map(names::NAT_REVERSE)?)?;
        let slot = map.get(&nat_index(hash, self.flow_mask), 0)?;
        Ok(slot.holds(key, hash).then_some(slot))
    }

    /// Writes a flow entry, last seen at `clock`, where the program would look for it
    /// (tests use it to stage states): in the slot holding the key, else the first free one,
    /// else the first.
    pub fn store_flow(&mut self, key: &FlowKey, flow: &Flow, clock: u32) -> Result<()> {
        let hash = flow_hash(key);
        let mut bucket: FlowBucket = self.bucket(names::FLOWS, hash)?;
        let way = bucket
            .slots
            .iter()
            .position(|s| s.holds(key, hash))
            .or_else(|| bucket.slots.iter().position(|s| s.seal == 0))
            .unwrap_or(0);
        bucket.slots[way] = FlowSlot::new(*key, hash, *flow, clock);
        self.set_bucket(names::FLOWS, hash, bucket)
    }

    /// Writes a reverse NAT entry, last seen at `clock`, into its slot (tests stage
    /// collisions).
    pub fn store_nat_reverse(&mut self, key: &FlowKey, nat: &NatReverse, clock: u32) -> Result<()> {
        let hash = flow_hash(key);
        let index = nat_index(hash, self.flow_mask);
        let mut map: Array<&mut MapData, NatSlot> =
            Array::try_from(self.map_mut(names::NAT_REVERSE)?)?;
        Ok(map.set(index, NatSlot::new(*key, hash, *nat, clock), 0)?)
    }

    /// Clears the flow entry of `key`, if any (as an eviction would).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        let hash = flow_hash(key);
        let mut bucket: FlowBucket = self.bucket(names::FLOWS, hash)?;
        for slot in bucket.slots.iter_mut().filter(|s| s.holds(key, hash)) {
            *slot = FlowSlot::default();
        }
        self.set_bucket(names::FLOWS, hash, bucket)
    }

    fn bucket<B: aya::Pod>(&self, name: &str, hash: u32) -> Result<B> {
        let map: Array<&MapData, B> = Array::try_from(self.map(name)?)?;
        Ok(map.get(&bucket_index(hash, self.flow_mask), 0)?)
    }

    fn set_bucket<B: aya::Pod>(&mut self, name: &str, hash: u32, bucket: B) -> Result<()> {
        let index = bucket_index(hash, self.flow_mask);
        let mut map: Array<&mut MapData, B> = Array::try_from(self.map_mut(name)?)?;
        Ok(map.set(index, bucket, 0)?)
    }
}
