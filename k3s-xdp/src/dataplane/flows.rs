//! The flow tables seen from userspace: the SNAT ports each backend holds (for status and
//! metrics), and single entries of the flow and reverse-NAT tables read and written where the
//! XDP program looks for them (the BPF tests stage states with them; flow sync will install a
//! peer's flows with them). Layout and hashing are `k3s_xdp_common::table`'s, shared with the
//! program.

use super::{sys, Dataplane};
use crate::flowsync::translate::{Install, InstallOf};
use anyhow::Result;
use aya::maps::{Array, MapData};
use k3s_xdp_common::{
    hash::flow_hash,
    names,
    table::{
        self, bucket_index, keep_rank, nat_index, FlowBucket, FlowSlot, FlowWay, NatSlot, NatSlot6,
        ServiceTuple, Translation,
    },
    Address, Flow, FlowEvent, FlowKey, FlowLogHead, FlowLogSlot, NatReverse, FLOW_EVENT_NEW,
    FLOW_LOG_SLOTS, NAT_UNCONFIRMED, V6,
};
use std::collections::BTreeMap;

/// An event of the `FLOW_EVENTS` log, of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEventOf {
    V4(FlowEvent),
    V6(FlowEvent<V6>),
}

impl FlowEventOf {
    /// The event a slot of the log holds, if it holds one.
    pub fn of(slot: &FlowLogSlot) -> Option<Self> {
        fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
            (bytes.len() >= std::mem::size_of::<T>())
                // SAFETY: at least the bytes of a `T`, a plain `repr(C)` record without
                // invalid bit patterns; read unaligned.
                .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
        }
        match slot.family {
            4 => read::<FlowEvent>(&slot.event)
                .filter(|e| e.family == 4)
                .map(FlowEventOf::V4),
            6 => read::<FlowEvent<V6>>(&slot.event)
                .filter(|e| e.family == 6)
                .map(FlowEventOf::V6),
            _ => None,
        }
    }

    fn op(&self) -> u8 {
        match self {
            FlowEventOf::V4(e) => e.op,
            FlowEventOf::V6(e) => e.op,
        }
    }
}

/// Where to read a CPU's part of the log from, given that `read` events were read before and
/// `written` were written: the first event still in the log, and how many were overwritten
/// unread (the log keeps the last `slots`).
pub fn unread_from(read: u64, written: u64, slots: u64) -> (u64, u64) {
    // A count below `read` is a log that started again (never while the program is loaded).
    let read = read.min(written);
    let oldest = written.saturating_sub(slots);
    (read.max(oldest), oldest.saturating_sub(read))
}

/// Whether event `i`, copied while the writer's count went on to `written`, was whole when
/// copied: the writer had not come round to its slot again (it writes the slot of event
/// `written` before counting it).
pub fn intact(i: u64, written: u64, slots: u64) -> bool {
    written < i + slots
}

/// The reader of the `FLOW_EVENTS` log, through shared mappings of the log and its heads (see
/// `k3s_xdp_common::FlowLogSlot`): no system call per read. Events overwritten before they
/// were read are counted (`lost`, shared with the data plane's [`Dataplane::flow_events_lost`]).
pub struct FlowEvents {
    slots: sys::MappedArray<FlowLogSlot>,
    heads: sys::MappedArray<FlowLogHead>,
    /// Events read, per CPU.
    read: Vec<u64>,
    /// The CPU the next drain starts with, so that none waits behind the others.
    next: usize,
    lost: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FlowEvents {
    /// Up to `max` events, each CPU's in the order it wrote them; the new flows of one drain
    /// before its closed translations (a connection that opens and closes within one drain
    /// may have its two events on two CPUs).
    pub fn drain(&mut self, max: usize) -> Vec<FlowEventOf> {
        use std::sync::atomic::{fence, Ordering};
        let slots = u64::from(FLOW_LOG_SLOTS);
        let cpus = self.read.len();
        let mut out = Vec::new();
        let mut copied = Vec::new();
        for n in 0..cpus {
            let cpu = (self.next + n) % cpus;
            if out.len() >= max {
                break;
            }
            let Some(head) = self.heads.get(cpu) else {
                continue;
            };
            // The slots are read after the count that says they are written.
            fence(Ordering::Acquire);
            let (from, overwritten) = unread_from(self.read[cpu], head.written, slots);
            let to = head.written.min(from + (max - out.len()) as u64);
            copied.clear();
            copied.extend((from..to).filter_map(|i| {
                let at = cpu * FLOW_LOG_SLOTS as usize + (i % slots) as usize;
                self.slots.get(at).map(|slot| (i, slot))
            }));
            // ... and the count again after them: a slot written meanwhile is not kept.
            fence(Ordering::Acquire);
            let after = self.heads.get(cpu).map_or(head.written, |h| h.written);
            let mut lost = overwritten;
            for (i, slot) in &copied {
                match FlowEventOf::of(slot) {
                    Some(event) if intact(*i, after, slots) => out.push(event),
                    _ => lost += 1,
                }
            }
            self.lost.fetch_add(lost, Ordering::Relaxed);
            self.read[cpu] = to;
        }
        self.next = (self.next + 1) % cpus.max(1);
        // New flows first (stable): see above.
        out.sort_by_key(|e| e.op() != FLOW_EVENT_NEW);
        out
    }
}

/// One family's flow and reverse-NAT tables, mapped.
struct Tables<A: Address> {
    flows: sys::MappedArray<A::FlowSlot>,
    nat: sys::MappedArray<A::NatSlot>,
}

/// The flow and reverse-NAT tables mapped into this process ([`Dataplane::flow_tables`]):
/// flow sync installs a peer's flows in them, removes closed ones, and lists the live ones
/// for a peer's bulk sync. Single slots are written, never whole buckets: the program may be
/// writing the bucket's other slots, and the seals keep a torn slot from ever forwarding (see
/// `k3s_xdp_common::table`).
pub struct FlowTables {
    mask: u32,
    v4: Tables<u32>,
    v6: Option<Tables<V6>>,
}

impl FlowTables {
    /// Writes a peer's flows where this node's program looks for them, at `clock`, as last
    /// seen at `seen` (a peer's copies are older than this node's own flows): each flow into
    /// one slot of its bucket (the one holding its key, else a free one, else the least
    /// recently seen, unless even that one is worth more than the copy: `Installed::crowded`),
    /// each translation into its reverse-NAT slot unless this node serves (`Role::Serving`)
    /// and the slot holds a live translation of another client that is its own: confirmed,
    /// and seen by its program more recently than any copy is made to look (within the last
    /// `COPY_AGE - REFRESH_SECS` seconds). A copy the peer has since replaced (it took the
    /// SNAT port over), refreshed or not, is replaced here too; on `Role::Standby` the
    /// peer's translation always takes the slot (see [`Role`]).
    pub fn install(
        &mut self,
        entries: &[InstallOf],
        (clock, seen): (u32, u32),
        role: Role,
    ) -> Result<Installed> {
        let mut done = Installed::default();
        let at = (clock, seen, role);
        for e in entries {
            match e {
                InstallOf::V4(i) => install_one(&mut self.v4, self.mask, i, at, &mut done),
                InstallOf::V6(i) => match &mut self.v6 {
                    Some(t) => install_one(t, self.mask, i, at, &mut done),
                    None => anyhow::bail!(
                        "IPv6 flows, and the IPv6 flow tables were not sized at start"
                    ),
                },
            }
        }
        Ok(done)
    }

    /// Applies a peer's closed translations (`closing`: the bits the peer saw, FINs or a RST)
    /// at `clock`: each translation, if this node holds it for the same client, gets the bits
    /// (so its SNAT port waits out the backend's TIME_WAIT as it would here), and the flow
    /// entry goes. Returns how many were found.
    pub fn close(&mut self, entries: &[(InstallOf, u8)], clock: u32) -> u64 {
        let mut found = 0;
        for (e, closing) in entries {
            let closing = u32::from(*closing);
            found += u64::from(match e {
                InstallOf::V4(i) => close_one(&mut self.v4, self.mask, i, closing, clock),
                InstallOf::V6(i) => self
                    .v6
                    .as_mut()
                    .is_some_and(|t| close_one(t, self.mask, i, closing, clock)),
            });
        }
        found
    }

    /// The flows whose slots were seen at most `within` seconds before `clock` (of both
    /// families, as the program reports new ones): for a peer's bulk sync (`within` below
    /// `IDLE_SECS`: every live flow) and the periodic refresh. An IPv6 flow slot keeps its
    /// service's slot, not the VIP, port and protocol: `services6` says what a slot stands
    /// for (the published services); a flow of a slot it does not know is left out.
    pub fn live(
        &self,
        clock: u32,
        within: u32,
        services6: &dyn Fn(u32) -> Option<ServiceTuple<V6>>,
    ) -> Vec<FlowEventOf> {
        let mut out = Vec::new();
        live_of(&self.v4, clock, within, &|_| None, |e| {
            out.push(FlowEventOf::V4(e))
        });
        if let Some(t) = &self.v6 {
            live_of(t, clock, within, services6, |e| {
                out.push(FlowEventOf::V6(e))
            });
        }
        out
    }

    /// Whether this node's reverse-NAT table still holds the translation of the flow `e` for
    /// its client (always, for a dsr flow): a flow entry whose translation another client
    /// took since (a peer's word replaced it here) is stale, and goes in no bulk or refresh,
    /// where it would take that client's slot on the peer.
    pub fn holds_translation(&self, e: &InstallOf) -> bool {
        fn held<A: Address>(t: &Tables<A>, mask: u32, i: &Install<A>) -> bool {
            i.reverse.as_ref().is_none_or(|(rkey, reverse)| {
                translation_of(t, mask, rkey).is_some_and(|s| same_client::<A>(&s, reverse))
            })
        }
        match e {
            InstallOf::V4(i) => held(&self.v4, self.mask, i),
            InstallOf::V6(i) => self.v6.as_ref().is_some_and(|t| held(t, self.mask, i)),
        }
    }

    /// The flow of the IPv4 client tuple `key`, if its bucket holds it.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        let hash = flow_hash(key);
        let ways = table::WAYS as usize;
        let first = bucket_index(hash, self.mask) as usize * ways;
        (first..first + ways)
            .filter_map(|j| self.v4.flows.get(j))
            .find(|s| s.holds(key, hash))
            .map(|s| s.flow)
    }

    /// The translation of the IPv4 reverse tuple `key`, if its slot holds it.
    pub fn translation(&self, key: &FlowKey) -> Option<NatSlot> {
        translation_of(&self.v4, self.mask, key)
    }

    /// The translation of the IPv6 reverse tuple `key`, if its slot holds it.
    pub fn translation6(&self, key: &FlowKey<V6>) -> Option<NatSlot6> {
        translation_of(self.v6.as_ref()?, self.mask, key)
    }
}

fn translation_of<A: Address>(t: &Tables<A>, mask: u32, key: &FlowKey<A>) -> Option<A::NatSlot> {
    let hash = flow_hash(key);
    t.nat
        .get(nat_index(hash, mask) as usize)
        .filter(|s| s.holds(key, hash))
}

fn live_of<A: Address>(
    t: &Tables<A>,
    clock: u32,
    within: u32,
    services: &dyn Fn(u32) -> Option<ServiceTuple<A>>,
    mut f: impl FnMut(FlowEvent<A>),
) {
    let count = t.flows.entries();
    for i in 0..count {
        let Some(slot) = t.flows.get(i) else { break };
        let seen = slot.seen();
        let age = clock.wrapping_sub(seen) & !table::UNCONFIRMED;
        let recent = age <= within || age >= 1 << 30;
        // An unconfirmed flow (one client packet so far: a flood's are) was reported when it
        // began; a bulk or refresh carries confirmed ones only.
        let confirmed = seen & table::UNCONFIRMED == 0;
        if !(recent && confirmed && slot.sealed()) {
            continue;
        }
        if let Some(key) = slot.whole_key(services) {
            f(FlowEvent {
                key,
                flow: slot.flow(),
                op: FLOW_EVENT_NEW,
                family: if A::LEN == 4 { 4 } else { 6 },
                _pad: [0; 6],
            });
        }
    }
}

/// Whether the translation in slot `s` is `reverse`'s client's.
fn same_client<A: Address>(s: &A::NatSlot, reverse: &NatReverse<A>) -> bool {
    let nat = s.nat();
    nat.client_addr.diff(&reverse.client_addr) == 0 && nat.client_port == reverse.client_port
}

/// Whether `a` was seen after `b`, on the 31-bit clock (the top bit is `UNCONFIRMED`'s).
fn newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b) & !table::UNCONFIRMED;
    d != 0 && d < 1 << 30
}

fn install_one<A: Address>(
    t: &mut Tables<A>,
    mask: u32,
    i: &Install<A>,
    (clock, seen, role): (u32, u32, Role),
    done: &mut Installed,
) {
    if let Some((rkey, reverse)) = &i.reverse {
        let rhash = flow_hash(rkey);
        let at = nat_index(rhash, mask) as usize;
        let current = t.nat.get(at).filter(|s| s.is_valid());
        // This very translation (same tuple, same client) already here.
        let same = current.filter(|s| s.holds(rkey, rhash) && same_client::<A>(s, reverse));
        // Another client's, live, and this node's own: its program saw it more recently than
        // any copy is made to look (a refreshed one is as if seen `COPY_AGE - REFRESH_SECS`
        // ago), and its client sent more than one packet (an unconfirmed translation's one
        // use, the answer to a UDP request or a SYN, is long over, or was never coming). A
        // node that serves keeps its own; a copy (of the peer's, which replaced it since)
        // never holds a slot against the peer.
        let own = |s: &A::NatSlot| {
            !s.reusable(clock)
                && s.nat().closing & NAT_UNCONFIRMED == 0
                && newer(s.seen(), crate::flowsync::runtime::refreshed_seen(clock))
        };
        let taken = role == Role::Serving && same.is_none() && current.is_some_and(|s| own(&s));
        if let Some(s) = current.filter(|_| taken) {
            done.conflicts += 1;
            done.last_conflict = Some(Held {
                protocol: s.reverse().protocol,
                same_tuple: s.holds(rkey, rhash),
                age: table::age(s.seen(), clock),
                closing: s.nat().closing,
            });
            return;
        }
        // A translation this node has already keeps its closing bits, next hop and the
        // last time its packets went through here.
        let mut reverse = *reverse;
        let mut last = seen;
        if let Some(s) = same {
            let held = s.nat();
            reverse.closing |= held.closing;
            reverse.next_hop = held.next_hop;
            if newer(s.seen(), seen) {
                last = s.seen();
            }
        }
        t.nat.set(at, A::NatSlot::new(rkey, rhash, &reverse, last));
        // The translation replaced, another client's: its flow entry goes with it (as the
        // program's SNAT search clears the flow of a translation it takes over). Left, it
        // would send that client's packets on with a SNAT port now another's, and a bulk or
        // refresh would carry it to the peers.
        if let Some(old) = current.filter(|_| same.is_none()) {
            forget_owner(t, mask, &old, i);
        }
    }
    let hash = flow_hash(&i.key);
    let ways = table::WAYS as usize;
    let first = bucket_index(hash, mask) as usize * ways;
    let current: Vec<A::FlowSlot> = (first..first + ways)
        .filter_map(|j| t.flows.get(j))
        .collect();
    let held = current
        .iter()
        .position(|s| s.holds(&i.key, i.service, hash));
    // A sealed slot counts as taken, whole or not: a torn one is being written by the
    // program (a new flow of its own, which a copy must not take the place of).
    let rank = |w: usize| keep_rank(current[w].sealed(), current[w].seen(), clock);
    let way = match held {
        Some(w) => w,
        None => {
            let Some(w) = (0..current.len()).min_by_key(|&w| rank(w)) else {
                return;
            };
            // A copy takes a way only from an entry worth less than itself: a bucket full of
            // this node's own flows, or of copies refreshed since, keeps them (the
            // translation, installed above, still answers the server; a client's packet
            // chooses the same backend and finds it).
            if rank(w) > keep_rank(true, seen, clock) {
                done.crowded += 1;
                return;
            }
            w
        }
    };
    let last = match held {
        Some(w) if newer(current[w].seen(), seen) => current[w].seen(),
        _ => seen,
    };
    t.flows.set(
        first + way,
        A::FlowSlot::new(&i.key, i.service, hash, i.flow, last),
    );
    done.flows += 1;
}

/// Removes the flow entry of the translation `old`, replaced by `i`'s. Its key is the old
/// client's tuple to the VIP: `i`'s VIP for the same service, else the address the backend
/// answered (the VIP, without a SNAT pool); only an entry whose flow used that translation
/// (its backend slot and SNAT port) goes.
fn forget_owner<A: Address>(t: &mut Tables<A>, mask: u32, old: &A::NatSlot, i: &Install<A>) {
    let (nat, tuple) = (old.nat(), old.reverse());
    let vip = match &i.reverse {
        Some((_, reverse)) if reverse.service == nat.service => i.key.dst,
        _ => tuple.dst,
    };
    let key = FlowKey {
        src: nat.client_addr,
        dst: vip,
        sport: nat.client_port,
        dport: nat.vip_port,
        protocol: tuple.protocol,
        _pad: [0; 3],
    };
    let hash = flow_hash(&key);
    let first = bucket_index(hash, mask) as usize * table::WAYS as usize;
    for j in first..first + table::WAYS as usize {
        if let Some(s) = t.flows.get(j).filter(|s| {
            s.holds(&key, u32::from(nat.service), hash)
                && s.flow().backend == u32::from(nat.backend)
                && s.flow().snat_port == tuple.dport
        }) {
            t.flows.set(j, s.cleared());
        }
    }
}

fn close_one<A: Address>(
    t: &mut Tables<A>,
    mask: u32,
    i: &Install<A>,
    closing: u32,
    clock: u32,
) -> bool {
    let mut found = false;
    if let Some((rkey, reverse)) = &i.reverse {
        let rhash = flow_hash(rkey);
        let at = nat_index(rhash, mask) as usize;
        if let Some(s) = t
            .nat
            .get(at)
            .filter(|s| s.holds(rkey, rhash) && same_client::<A>(s, reverse))
        {
            t.nat.set(at, s.closing_with(closing, clock));
            found = true;
        }
    }
    let hash = flow_hash(&i.key);
    let ways = table::WAYS as usize;
    let first = bucket_index(hash, mask) as usize * ways;
    for j in first..first + ways {
        if let Some(s) = t
            .flows
            .get(j)
            .filter(|s| s.holds(&i.key, i.service, hash) && s.flow() == i.flow)
        {
            t.flows.set(j, s.cleared());
            found = true;
        }
    }
    found
}

/// Whether this node serves the VIPs now, for [`FlowTables::install`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It does (VRRP master, `[bgp]`, or alone): a live translation of its own connection
    /// keeps its reverse-NAT slot against a peer's.
    Serving,
    /// It does not (VRRP backup, or fault): the peer that serves chose that SNAT port because
    /// it holds nothing live there, and its connections are the ones carrying traffic. This
    /// node's own translations are leftovers of its last time as master: connections that
    /// moved to the peer (which then holds them too, so it would not choose their slot) or
    /// that ended where this node did not see it (their flow reset for a backend gone down,
    /// a UDP request or a SYN never answered, a close whose report was lost). Keeping one
    /// would leave the peer's new connection without its translation here, to be reset at
    /// the next failover.
    Standby,
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
    /// Flow entries not written because every way of their bucket holds an entry worth more
    /// (`keep_rank`): this node's own flows, or copies refreshed more recently.
    pub crowded: u64,
    /// The translation that kept its slot in the last conflict.
    pub last_conflict: Option<Held>,
}

/// A translation of this node's that kept its reverse-NAT slot against a peer's (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its protocol.
    pub protocol: u8,
    /// The same reverse tuple as the peer's (the same backend and SNAT port; else the two
    /// tuples only share the slot).
    pub same_tuple: bool,
    /// Seconds since this node's program last saw the slot's translation.
    pub age: u32,
    /// Its closing bits (`NAT_*`).
    pub closing: u32,
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
        sys::scan_mmapable_array(map.fd().as_fd().as_raw_fd(), count, |slot: A::NatSlot| {
            if !slot.is_valid() || table::idle(slot.seen(), clock) {
                return;
            }
            let nat = slot.nat();
            let ports = out.entry(u32::from(nat.backend)).or_default();
            if k3s_xdp_common::waits(nat.closing, slot.seen(), clock, timewait) {
                ports.waiting += 1;
            } else if !nat.closed() {
                ports.in_use += 1;
            }
        })
    }

    /// Takes up to `max` events from the `FLOW_EVENTS` log (for flow sync), each CPU's in the
    /// order it wrote them (see [`FlowEvents::drain`]).
    pub fn drain_flow_events(&mut self, max: usize) -> Result<Vec<FlowEventOf>> {
        if self.flow_events.is_none() {
            self.flow_events = Some(self.flow_events_reader()?);
        }
        Ok(self
            .flow_events
            .as_mut()
            .map(|r| r.drain(max))
            .unwrap_or_default())
    }

    /// Writes a peer's flows (flow sync) where this node's program looks for them, as a copy
    /// installed at `clock` (see [`FlowTables::install`]).
    pub fn install(
        &mut self,
        entries: &[crate::flowsync::translate::InstallOf],
        clock: u32,
        role: Role,
    ) -> Result<Installed> {
        let seen = crate::flowsync::runtime::copy_seen(clock);
        self.flow_tables()?.install(entries, (clock, seen), role)
    }

    /// The flow and reverse-NAT tables of both families, mapped into this process (flow
    /// sync's view of them; it outlives neither the program nor the maps, which the kernel
    /// keeps while mapped).
    pub fn flow_tables(&self) -> Result<FlowTables> {
        use std::os::fd::{AsFd, AsRawFd};
        let slots = (self.flow_mask as usize + 1) * table::WAYS as usize;
        let fd = |name: &str| -> Result<i32> {
            let aya::maps::Map::Array(map) = self.map(name)? else {
                anyhow::bail!("{name} is not an array");
            };
            Ok(map.fd().as_fd().as_raw_fd())
        };
        fn family<A: Address>(flows: i32, nat: i32, slots: usize) -> Result<Tables<A>> {
            Ok(Tables {
                flows: sys::MappedArray::map(flows, slots, true)?,
                nat: sys::MappedArray::map(nat, slots, true)?,
            })
        }
        Ok(FlowTables {
            mask: self.flow_mask,
            v4: family(fd(names::FLOWS)?, fd(names::NAT_REVERSE)?, slots)?,
            v6: if self.ipv6 {
                Some(family(fd(names::FLOWS6)?, fd(names::NAT_REVERSE6)?, slots)?)
            } else {
                None
            },
        })
    }

    /// Takes the reader of the `FLOW_EVENTS` log out of the data plane, for flow sync's own
    /// thread ([`Dataplane::drain_flow_events`] then reads no more).
    pub fn take_flow_events(&mut self) -> Result<FlowEvents> {
        match self.flow_events.take() {
            Some(reader) => {
                self.flow_events_taken = true;
                Ok(reader)
            }
            None if self.flow_events_taken => {
                anyhow::bail!("{} was taken already", names::FLOW_EVENTS)
            }
            None => {
                self.flow_events_taken = true;
                self.flow_events_reader()
            }
        }
    }

    fn flow_events_reader(&self) -> Result<FlowEvents> {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = |name: &str| -> Result<i32> {
            let aya::maps::Map::Array(map) = self.map(name)? else {
                anyhow::bail!("{name} is not an array");
            };
            Ok(map.fd().as_fd().as_raw_fd())
        };
        let cpus = self.flow_log_cpus as usize;
        Ok(FlowEvents {
            slots: sys::MappedArray::map(
                fd(names::FLOW_EVENTS)?,
                cpus * FLOW_LOG_SLOTS as usize,
                false,
            )?,
            heads: sys::MappedArray::map(fd(names::FLOW_EVENTS_HEADS)?, cpus, false)?,
            read: vec![0; cpus],
            next: 0,
            lost: self.flow_events_lost.clone(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_in_time_reads_from_where_it_stopped() {
        assert_eq!(unread_from(0, 0, 8), (0, 0));
        assert_eq!(unread_from(3, 10, 8), (3, 0));
        assert_eq!(unread_from(2, 10, 8), (2, 0));
    }

    #[test]
    fn a_reader_behind_the_log_counts_what_was_overwritten() {
        // 11 written, the log keeps 8 (events 3..11): 0, 1 and 2 were lost.
        assert_eq!(unread_from(0, 11, 8), (3, 3));
        assert_eq!(unread_from(5, 100, 8), (92, 87));
    }

    #[test]
    fn a_log_that_started_again_is_read_from_its_start() {
        assert_eq!(unread_from(50, 4, 8), (4, 0));
    }

    #[test]
    fn a_copy_is_whole_until_the_writer_comes_round_to_its_slot() {
        // Event 3's slot is next written for event 11 (3 + 8), after 11 events are counted.
        assert!(intact(3, 10, 8));
        assert!(
            !intact(3, 11, 8),
            "the writer may be writing event 11 into it"
        );
        assert!(!intact(3, 20, 8));
    }

    #[test]
    fn a_slot_says_which_family_its_event_is() {
        let v4 = FlowEvent {
            op: FLOW_EVENT_NEW,
            family: 4,
            ..Default::default()
        };
        let mut slot = FlowLogSlot {
            family: 4,
            _pad: 0,
            event: [0; 56],
        };
        // SAFETY: a `FlowEvent` is 32 plain bytes, within the slot's 56.
        unsafe { std::ptr::write_unaligned(slot.event.as_mut_ptr().cast(), v4) };
        assert_eq!(FlowEventOf::of(&slot), Some(FlowEventOf::V4(v4)));
        slot.family = 6;
        assert_eq!(
            FlowEventOf::of(&slot),
            None,
            "a family the event does not carry"
        );
        slot.family = 0;
        assert_eq!(FlowEventOf::of(&slot), None, "a slot never written");
    }
}
