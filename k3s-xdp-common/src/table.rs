//! The flow table (`FLOWS`) and the reverse NAT table (`NAT_REVERSE`): set-associative hash
//! tables laid out in BPF arrays, with least-recently-used replacement within a bucket.
//!
//! Why not the kernel's LRU hash map: every insert into it is a chain of kernel calls (pop a
//! free node from a per-CPU list, lock the bucket, walk it, link), and a new nat flow makes two
//! inserts. Measured with `cargo xtask bench micro`, that was +630 ns per new flow even with
//! tables small enough to stay in the cache. An array lookup is inlined by the verifier (a bounds
//! check and an address computation), so the program finds and fills slots itself: an
//! established flow costs a lookup in the cache lines of one bucket, a new one writes a slot.
//!
//! The flow table: `buckets(size)` buckets (map entries) of `WAYS` slots; a key lives in one
//! of the slots of the bucket `hash & mask` (`mask = buckets - 1`). A new key takes, in this
//! order, the slot already holding it, a free slot, an unconfirmed or idle one (see
//! [`UNCONFIRMED`]: a flood's entries go before established connections'), or the slot least
//! recently seen (`seen`, from the controller's coarse clock in `Globals::clock`):
//! least-recently-used replacement within a bucket, as the kernel's LRU hash does
//! (approximately) within its lists.
//!
//! The reverse NAT table: as many slots, direct-mapped (`nat_index`). A slot held by a live
//! translation makes the SNAT port search step to its next port, whose slot is elsewhere, so
//! the port search gives it the associativity. A translation whose connection closed, or that
//! saw no packet for `IDLE_SECS`, may be replaced. When every port the search tries is live
//! (the table is full, or flooded with connections that never close), the one seen longest ago
//! is replaced, as an LRU table would evict it, rather than refusing new flows until
//! translations age out.
//!
//! Concurrency without locks (the BPF target has no compare-and-swap in Rust): each slot
//! carries a `seal`, a function of its key's hash and of the value's fields that choose where
//! a packet goes. A reader accepts a slot only if the key matches and the seal matches what it
//! read, so a slot read while another CPU rewrites it (a torn read, in any order of the stores)
//! is a miss, never a wrong forward; a miss makes the flow choose again, which gives the same
//! backend while the Maglev table is unchanged. Two CPUs writing the same slot at the same
//! instant can lose one of the two entries (as if evicted at once); the SNAT claim reads its
//! slot back after writing to narrow that window further. `seen` and the mutable fields of a
//! translation (`closing`, `next_hop`) are outside the seal: they are hints that a stale value
//! cannot turn into a wrong destination (a next hop is used only for the address it names).

use crate::{hash::flow_hash, Address, Flow, FlowKey, NatReverse, NextHop, V6};

/// Slots per bucket.
pub const WAYS: u32 = 4;

/// Seconds after which a translation nobody used may be taken over by a new flow even though
/// its connection did not close (a client that vanished). Any packet of the connection, in
/// either direction, keeps it live; TCP keepalives (15 s in Go, kubectl's language) do too.
pub const IDLE_SECS: u32 = 300;

/// Largest number of buckets: slot indexes stay within `u32`.
const MAX_BUCKETS: u32 = 1 << 28;

/// Buckets of a table asked to hold `size` entries: the power of two that gives at least
/// `size` slots.
pub const fn buckets(size: u32) -> u32 {
    let wanted = size.div_ceil(WAYS);
    if wanted <= 1 {
        1
    } else if wanted >= MAX_BUCKETS {
        MAX_BUCKETS
    } else {
        wanted.next_power_of_two()
    }
}

/// Slots (map entries) of a table asked to hold `size` entries.
pub const fn slots(size: u32) -> u32 {
    buckets(size) * WAYS
}

/// The bucket (map index) that `hash` selects.
#[inline(always)]
pub fn bucket_index(hash: u32, mask: u32) -> u32 {
    hash & mask
}

/// The reverse NAT table's slot (map index) for `hash`: the reverse table is direct-mapped,
/// with as many slots as the flow table (`buckets * WAYS`).
#[inline(always)]
pub fn nat_index(hash: u32, mask: u32) -> u32 {
    hash & (mask * WAYS + (WAYS - 1))
}

/// Whether two keys are the same tuple, with one branch (the verifier explores every branch
/// of every way of a bucket; fewer branches keep the program within its limits).
#[inline(always)]
pub fn same_key<A: Address>(a: &FlowKey<A>, b: &FlowKey<A>) -> bool {
    (a.src.diff(&b.src)
        | a.dst.diff(&b.dst)
        | ((u32::from(a.sport) << 16 | u32::from(a.dport))
            ^ (u32::from(b.sport) << 16 | u32::from(b.dport)))
        | u32::from(a.protocol ^ b.protocol))
        == 0
}

/// Mixes the fields that decide a packet's destination with the key's hash. Never 0, so an
/// all-zero (never written) or cleared slot never passes. A flow slot seals
/// `(backend, snat_source << 16 | snat_port, 0)`; a translation `(client_addr, client_port << 16 | vip_port,
/// backend << 16 | service)` (see [`flow_seal`] and [`nat_seal`]).
#[inline(always)]
pub fn seal(hash: u32, a: u32, b: u32, c: u32) -> u32 {
    (hash
        ^ a.wrapping_mul(0x9e37_79b1)
        ^ b.wrapping_mul(0x85eb_ca77).rotate_left(11)
        ^ c.wrapping_mul(0xc2b2_ae3d).rotate_left(22))
        | 1
}

/// The seal of a flow slot (either family's) holding `flow` for the key whose flow hash is
/// `hash`.
#[inline(always)]
pub fn flow_seal(hash: u32, flow: &Flow) -> u32 {
    seal(
        hash,
        flow.backend,
        snat_word(flow.snat_port, flow.snat_source),
        0,
    )
}

/// The word a flow's seal takes its SNAT port and source from.
#[inline(always)]
pub fn snat_word(snat_port: u16, snat_source: u16) -> u32 {
    (u32::from(snat_source) << 16) | u32::from(snat_port)
}

/// A bucket of `FLOWS` or `FLOWS6` (one map entry): `WAYS` slots of 32 bytes ([`FlowSlot`],
/// [`FlowSlot6`]), two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBucket<A: Address = u32> {
    pub slots: [A::FlowSlot; WAYS as usize],
}

/// A slot of `FLOWS`: a client → VIP flow and where it goes. 32 bytes, two slots per cache
/// line. (`FLOWS6`'s slots are [`FlowSlot6`].)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot<A: Address = u32> {
    pub key: FlowKey<A>,
    pub flow: Flow,
    /// See the module documentation; 0 = free.
    pub seal: u32,
    /// `Globals::clock` when a packet of the flow last went through.
    pub seen: u32,
}

impl<A: Address> FlowSlot<A> {
    /// A slot holding `flow` for the key whose flow hash is `hash`.
    #[inline(always)]
    pub fn new(key: FlowKey<A>, hash: u32, flow: Flow, seen: u32) -> Self {
        FlowSlot {
            key,
            flow,
            seal: flow_seal(hash, &flow),
            seen,
        }
    }

    /// Whether this slot holds `key` (whose flow hash is `hash`), whole.
    #[inline(always)]
    pub fn holds(&self, key: &FlowKey<A>, hash: u32) -> bool {
        same_key(&self.key, key) & (self.seal == flow_seal(hash, &self.flow))
    }

    /// Whether the slot holds a whole entry (for readers that do not know the key).
    pub fn is_valid(&self) -> bool {
        self.holds(&self.key, flow_hash(&self.key))
    }
}

/// A slot of `FLOWS6`: a client → IPv6 VIP flow and where it goes, in 32 bytes as IPv4's.
/// Laid out as IPv4's, with its two 16-byte addresses, it was 56 bytes: a bucket of four took
/// 224 bytes, four cache lines, and `bench micro` measured a new IPv6 flow's store about 5 ns
/// dearer than IPv4's for the extra bytes compared and written. What makes it fit:
/// - the VIP, its port and the protocol are not kept: `service` names them (the service's slot,
///   which the program knows from the VIP table before it looks a flow up), and the key's
///   flow hash, which took them in, is in the seal as in IPv4's;
/// - the service slot (below `MAX_SERVICES`), the backend slot (below `MAX_BACKENDS`) and the
///   SNAT source (below `MAX_SNAT_SOURCES + 1`) are narrowed to what they need. A flow whose
///   backend or SNAT source did not fit would be sealed with a value it cannot read back: a
///   miss, never a wrong forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot6 {
    /// The key's source: the client.
    pub client_addr: V6,
    pub client_port: u16,
    /// Service slot (below `MAX_SERVICES`): the key's VIP, port and protocol.
    pub service: u8,
    /// `Flow::snat_source`.
    pub snat_source: u8,
    /// `Flow::backend`.
    pub backend: u16,
    /// `Flow::snat_port`.
    pub snat_port: u16,
    /// See the module documentation; 0 = free.
    pub seal: u32,
    /// `Globals::clock` when a packet of the flow last went through.
    pub seen: u32,
}

// What `FlowSlot6` narrows must fit.
const _: () = assert!(crate::MAX_SERVICES <= 1 << 8);
const _: () = assert!(crate::MAX_BACKENDS <= 1 << 16);
const _: () = assert!(crate::MAX_SNAT_SOURCES < 1 << 8);

impl FlowSlot6 {
    /// The flow it holds, as read (the seal was made from these values).
    #[inline(always)]
    pub fn flow(&self) -> Flow {
        Flow {
            backend: u32::from(self.backend),
            snat_port: self.snat_port,
            snat_source: u16::from(self.snat_source),
        }
    }

    /// Whether the slot's client and service are `key`'s source and `service`.
    #[inline(always)]
    pub fn same_client(&self, key: &FlowKey<V6>, service: u32) -> bool {
        (self.client_addr.diff(&key.src)
            | (u32::from(self.client_port ^ key.sport))
            | (u32::from(self.service) ^ service))
            == 0
    }
}

/// What a client tuple's service slot stands for: its VIP, port (network byte order) and
/// protocol. An IPv6 flow slot keeps the slot only; readers that rebuild its key (flow sync's
/// bulk and refresh) ask the published services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceTuple<A> {
    pub vip: A,
    pub port: u16,
    pub protocol: u8,
}

/// What flow sync and the tools need of a family's flow slot, whatever its layout
/// ([`FlowSlot`] for IPv4, [`FlowSlot6`]); the program reads and writes slots in place, in
/// `k3s-xdp-ebpf`'s `table.rs`.
pub trait FlowWay<A: Address>:
    Copy + Default + core::fmt::Debug + PartialEq + Eq + 'static
{
    /// A slot holding `flow` for the client tuple `key` of service slot `service`, whose
    /// flow hash is `hash`.
    fn new(key: &FlowKey<A>, service: u32, hash: u32, flow: Flow, seen: u32) -> Self;

    /// Whether this slot holds `key` of `service` (flow hash `hash`), whole. (IPv4's key has
    /// the VIP, port and protocol themselves: `service` is not looked at.)
    fn holds(&self, key: &FlowKey<A>, service: u32, hash: u32) -> bool;

    /// Its key, with what its service slot stands for from `tuple` (IPv4's is in the slot);
    /// `None` when `tuple` knows no such service.
    fn key(&self, tuple: &dyn Fn(u32) -> Option<ServiceTuple<A>>) -> Option<FlowKey<A>>;

    /// The service slot it keeps (IPv4's: none, 0).
    fn service(&self) -> u32;

    /// Its key, if the slot holds a whole entry (for readers that do not know the key).
    fn whole_key(&self, tuple: &dyn Fn(u32) -> Option<ServiceTuple<A>>) -> Option<FlowKey<A>> {
        self.key(tuple)
            .filter(|k| self.holds(k, self.service(), flow_hash(k)))
    }

    /// Whether it holds an entry, whole or torn (not free, not cleared).
    fn sealed(&self) -> bool;

    fn flow(&self) -> Flow;

    fn seen(&self) -> u32;

    /// The slot cleared: no reader takes it any more.
    fn cleared(self) -> Self;
}

impl FlowWay<u32> for FlowSlot<u32> {
    fn new(key: &FlowKey<u32>, _service: u32, hash: u32, flow: Flow, seen: u32) -> Self {
        FlowSlot::new(*key, hash, flow, seen)
    }

    fn holds(&self, key: &FlowKey<u32>, _service: u32, hash: u32) -> bool {
        FlowSlot::holds(self, key, hash)
    }

    fn key(&self, _tuple: &dyn Fn(u32) -> Option<ServiceTuple<u32>>) -> Option<FlowKey<u32>> {
        Some(self.key)
    }

    fn service(&self) -> u32 {
        0
    }

    fn sealed(&self) -> bool {
        self.seal != 0
    }

    fn flow(&self) -> Flow {
        self.flow
    }

    fn seen(&self) -> u32 {
        self.seen
    }

    fn cleared(self) -> Self {
        FlowSlot { seal: 0, ..self }
    }
}

impl FlowWay<V6> for FlowSlot6 {
    fn new(key: &FlowKey<V6>, service: u32, hash: u32, flow: Flow, seen: u32) -> Self {
        // Sealed with the values given: one that did not fit reads back as another, which
        // the seal refuses (a service that did not fit matches no packet's).
        FlowSlot6 {
            client_addr: key.src,
            client_port: key.sport,
            service: service as u8,
            snat_source: flow.snat_source as u8,
            backend: flow.backend as u16,
            snat_port: flow.snat_port,
            seal: flow_seal(hash, &flow),
            seen,
        }
    }

    fn holds(&self, key: &FlowKey<V6>, service: u32, hash: u32) -> bool {
        self.same_client(key, service) & (self.seal == flow_seal(hash, &self.flow()))
    }

    fn key(&self, tuple: &dyn Fn(u32) -> Option<ServiceTuple<V6>>) -> Option<FlowKey<V6>> {
        let t = tuple(u32::from(self.service))?;
        Some(FlowKey {
            src: self.client_addr,
            dst: t.vip,
            sport: self.client_port,
            dport: t.port,
            protocol: t.protocol,
            _pad: [0; 3],
        })
    }

    fn service(&self) -> u32 {
        u32::from(self.service)
    }

    fn sealed(&self) -> bool {
        self.seal != 0
    }

    fn flow(&self) -> Flow {
        FlowSlot6::flow(self)
    }

    fn seen(&self) -> u32 {
        self.seen
    }

    fn cleared(self) -> Self {
        FlowSlot6 { seal: 0, ..self }
    }
}

/// A slot of `NAT_REVERSE`: a backend → VIP:snat_port tuple and the client it stands for.
/// 64 bytes: one cache line (the maps are page-aligned, `BPF_F_MMAPABLE`). `NAT_REVERSE6`'s
/// slots are [`NatSlot6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSlot<A: Address = u32> {
    pub key: FlowKey<A>,
    pub nat: NatReverse<A>,
    /// See the module documentation; 0 = free.
    pub seal: u32,
    /// `Globals::clock` when a packet of the connection last went through, either way.
    pub seen: u32,
}

/// The seal of a translation `nat` for the reverse tuple whose flow hash is `hash`.
#[inline(always)]
pub fn nat_seal<A: Address>(hash: u32, nat: &NatReverse<A>) -> u32 {
    seal(
        hash,
        nat.client_addr.seal_word(),
        (u32::from(nat.client_port) << 16) | u32::from(nat.vip_port),
        (u32::from(nat.backend) << 16) | u32::from(nat.service),
    )
}

impl<A: Address> NatSlot<A> {
    /// A slot holding `nat` for the reverse key whose flow hash is `hash`.
    #[inline(always)]
    pub fn new(key: FlowKey<A>, hash: u32, nat: NatReverse<A>, seen: u32) -> Self {
        NatSlot {
            key,
            nat,
            seal: nat_seal(hash, &nat),
            seen,
        }
    }

    /// Whether this slot holds `key` (whose flow hash is `hash`), whole.
    #[inline(always)]
    pub fn holds(&self, key: &FlowKey<A>, hash: u32) -> bool {
        same_key(&self.key, key) & (self.seal == nat_seal(hash, &self.nat))
    }

    /// Whether the slot holds a whole entry (for readers that do not know the key).
    pub fn is_valid(&self) -> bool {
        self.holds(&self.key, flow_hash(&self.key))
    }

    /// Whether a new flow may take this slot although it holds a translation: its connection
    /// closed, or nothing went through it for [`IDLE_SECS`].
    #[inline(always)]
    pub fn reusable(&self, clock: u32) -> bool {
        self.nat.closed() | idle(self.seen, clock)
    }
}

/// A slot of `NAT_REVERSE6`: an IPv6 backend → VIP:snat_port tuple and the client it stands
/// for. 64 bytes, one cache line, as IPv4's: laid out as IPv4's, with its 16-byte addresses, it
/// was 120 bytes, and `bench micro` measured what that cost a new flow in 1M-entry tables:
/// each more cache line a new flow touches costs about 50 ns on this machine kind, and a
/// reverse table twice the size (more page-table walks) about as much again. What makes it fit:
/// - the tuple's source, the backend's address, is not kept: `backend` names its slot, and the
///   program checks a reply's source against `BACKENDS6[backend]` (a removed backend's slot is
///   freed or holds another address: its old translations then match nothing);
/// - `hash`, the tuple's flow hash (which took that address in), is, so that a reader that
///   does not know the tuple can check the seal;
/// - the next hop toward the client lives in `NAT_HOPS6`, at the same index, written by the
///   first reply (`hop` says it was, for this translation), never by the claim.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSlot6 {
    /// The tuple's destination: the VIP or the address of the SNAT pool the backend sees.
    pub snat_addr: V6,
    pub client_addr: V6,
    /// The tuple's source port (the backend's) and destination port (the SNAT port).
    pub backend_port: u16,
    pub snat_port: u16,
    pub client_port: u16,
    /// The service port on the VIP, restored as the reply's source port.
    pub vip_port: u16,
    /// Backend slot (below `MAX_BACKENDS`): the tuple's source is `BACKENDS6[backend].addr`.
    pub backend: u16,
    /// Service slot (below `MAX_SERVICES`).
    pub service: u16,
    pub protocol: u8,
    /// `NAT_*` bits (`NatReverse::closing`).
    pub closing: u8,
    /// 1 when `next_hop` was resolved for this translation; 0 until its first reply.
    pub hop: u8,
    pub _pad: u8,
    /// The tuple's flow hash.
    pub hash: u32,
    /// See the module documentation; 0 = free.
    pub seal: u32,
    /// `Globals::clock` when a packet of the connection last went through, either way.
    pub seen: u32,
    pub _line: u32,
}

/// What flow sync and the tools need of a family's reverse-NAT slot, whatever its layout
/// ([`NatSlot`] for IPv4, [`NatSlot6`]): the program reads and writes slots in place, in
/// `k3s-xdp-ebpf`'s `table.rs`.
pub trait Translation<A: Address>:
    Copy + Default + core::fmt::Debug + PartialEq + Eq + 'static
{
    /// Whether the slot keeps the tuple's source (the backend's address), or only the
    /// backend's slot, whose address the program checks (IPv6).
    const KEEPS_BACKEND_ADDR: bool;

    /// A slot holding `nat` for the reverse tuple `key`, whose flow hash is `hash`.
    fn new(key: &FlowKey<A>, hash: u32, nat: &NatReverse<A>, seen: u32) -> Self;

    /// Whether this slot holds `key` (whose flow hash is `hash`), whole. An IPv6 slot does not
    /// keep the backend's address: it is taken as the one its flow hash took in (the program
    /// checks it against the backend's slot).
    fn holds(&self, key: &FlowKey<A>, hash: u32) -> bool;

    /// Whether the slot holds a whole entry (for readers that do not know the tuple).
    fn is_valid(&self) -> bool;

    /// The client side. (An IPv6 slot's next hop is in `NAT_HOPS6`: it reads as none.)
    fn nat(&self) -> NatReverse<A>;

    /// The reverse tuple; its source is 0 in an IPv6 slot (see `KEEPS_BACKEND_ADDR`).
    fn reverse(&self) -> FlowKey<A>;

    fn seen(&self) -> u32;

    /// Whether a new flow may take this slot although it holds a translation: its connection
    /// closed, or nothing went through it for [`IDLE_SECS`].
    fn reusable(&self, clock: u32) -> bool {
        crate::closed(self.nat().closing) | idle(self.seen(), clock)
    }

    /// The same translation with the `NAT_*` bits `closing` added, seen at `seen`: both are
    /// outside the seal, and the rest (the hop toward the client, IPv6's mark that it has one)
    /// is kept.
    fn closing_with(self, closing: u32, seen: u32) -> Self;
}

impl<A: Address> Translation<A> for NatSlot<A> {
    const KEEPS_BACKEND_ADDR: bool = true;

    fn new(key: &FlowKey<A>, hash: u32, nat: &NatReverse<A>, seen: u32) -> Self {
        NatSlot::new(*key, hash, *nat, seen)
    }

    fn holds(&self, key: &FlowKey<A>, hash: u32) -> bool {
        NatSlot::holds(self, key, hash)
    }

    fn is_valid(&self) -> bool {
        NatSlot::is_valid(self)
    }

    fn nat(&self) -> NatReverse<A> {
        self.nat
    }

    fn reverse(&self) -> FlowKey<A> {
        self.key
    }

    fn seen(&self) -> u32 {
        self.seen
    }

    fn closing_with(mut self, closing: u32, seen: u32) -> Self {
        self.nat.closing |= closing;
        self.seen = seen;
        self
    }
}

impl NatSlot6 {
    /// Whether the slot's tuple, all but its source, is `key`'s, and its hash `hash`.
    #[inline(always)]
    pub fn same_tuple(&self, key: &FlowKey<V6>, hash: u32) -> bool {
        (self.snat_addr.diff(&key.dst)
            | ((u32::from(self.backend_port) << 16 | u32::from(self.snat_port))
                ^ (u32::from(key.sport) << 16 | u32::from(key.dport)))
            | u32::from(self.protocol ^ key.protocol)
            | (self.hash ^ hash))
            == 0
    }
}

impl Translation<V6> for NatSlot6 {
    const KEEPS_BACKEND_ADDR: bool = false;

    fn new(key: &FlowKey<V6>, hash: u32, nat: &NatReverse<V6>, seen: u32) -> Self {
        NatSlot6 {
            snat_addr: key.dst,
            client_addr: nat.client_addr,
            backend_port: key.sport,
            snat_port: key.dport,
            client_port: nat.client_port,
            vip_port: nat.vip_port,
            backend: nat.backend,
            service: nat.service,
            protocol: key.protocol,
            closing: nat.closing as u8,
            hash,
            seal: nat_seal(hash, nat),
            seen,
            ..Default::default()
        }
    }

    fn holds(&self, key: &FlowKey<V6>, hash: u32) -> bool {
        self.same_tuple(key, hash) & (self.seal == nat_seal(hash, &self.nat()))
    }

    fn is_valid(&self) -> bool {
        self.seal == nat_seal(self.hash, &self.nat())
    }

    fn nat(&self) -> NatReverse<V6> {
        NatReverse {
            client_addr: self.client_addr,
            client_port: self.client_port,
            vip_port: self.vip_port,
            backend: self.backend,
            service: self.service,
            closing: u32::from(self.closing),
            _tail: 0,
            next_hop: NextHop::default(),
        }
    }

    fn reverse(&self) -> FlowKey<V6> {
        FlowKey {
            src: [0; 2],
            dst: self.snat_addr,
            sport: self.backend_port,
            dport: self.snat_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    fn seen(&self) -> u32 {
        self.seen
    }

    fn closing_with(mut self, closing: u32, seen: u32) -> Self {
        // The `NAT_*` bits are the low byte.
        self.closing |= closing as u8;
        self.seen = seen;
        self
    }
}

/// `FlowSlot::seen`'s top bit: the flow has seen one client packet only (its first, or SYNs
/// since). A client proves it exists by a second packet (the ACK of the handshake): a flood
/// of SYNs from forged sources, or of lone packets, never does. Unconfirmed flows are replaced
/// before any confirmed one that is not idle, so a flood churns through its own entries and
/// leaves established connections theirs. The clock (seconds since the daemon started) never
/// reaches this bit.
pub const UNCONFIRMED: u32 = 1 << 31;

/// When an entry was last seen, without the [`UNCONFIRMED`] bit.
#[inline(always)]
pub fn seen_at(seen: u32) -> u32 {
    seen & !UNCONFIRMED
}

/// Seconds from `seen` to `clock` on the 31-bit clock (the top bit is `UNCONFIRMED`'s); "seen
/// in the future" (the clock restarted) counts as now.
#[inline(always)]
pub fn age(seen: u32, clock: u32) -> u32 {
    let age = clock.wrapping_sub(seen) & !UNCONFIRMED;
    if age >= 1 << 30 {
        0
    } else {
        age
    }
}

/// Whether an entry last seen at `seen` is idle at `clock` (the clock may wrap).
#[inline(always)]
// `&` on purpose, not `Range::contains` (`&&`): one branch less for the verifier to walk.
#[allow(clippy::manual_range_contains)]
pub fn idle(seen: u32, clock: u32) -> bool {
    let age = clock.wrapping_sub(seen) & !UNCONFIRMED;
    (age >= IDLE_SECS) & (age < 1 << 30)
}

/// How much a slot is worth keeping, for replacement: the lowest rank goes first. Free (or
/// torn) slots first; then unconfirmed or idle entries, the one seen longest ago first; then
/// confirmed ones, the one seen longest ago first.
#[inline(always)]
pub fn keep_rank(valid: bool, seen: u32, clock: u32) -> u32 {
    const HALF: u32 = 1 << 30;
    if !valid {
        return 0;
    }
    let age = age(seen, clock);
    let recency = HALF - age.min(HALF - 1);
    if (seen & UNCONFIRMED != 0) | (age >= IDLE_SECS) {
        recency
    } else {
        HALF + recency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: u32::from_be_bytes([192, 0, 2, 101]).to_be(),
            dst: u32::from_be_bytes([192, 0, 2, 100]).to_be(),
            sport: sport.to_be(),
            dport: 6443u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    fn nat() -> NatReverse {
        NatReverse {
            client_addr: 0x6502_00c0,
            client_port: 40000u16.to_be(),
            vip_port: 6443u16.to_be(),
            backend: 3,
            service: 1,
            ..Default::default()
        }
    }

    #[test]
    fn slots_fit_cache_lines() {
        assert_eq!(size_of::<FlowSlot>(), 32);
        assert_eq!(size_of::<NatSlot>(), 64);
        assert_eq!(size_of::<FlowBucket>(), 128);
        assert_eq!(size_of::<FlowSlot6>(), 32);
        assert_eq!(size_of::<NatSlot6>(), 64);
        assert_eq!(size_of::<FlowBucket<crate::V6>>(), 128);
    }

    #[test]
    fn tables_round_up_to_whole_power_of_two_buckets() {
        assert_eq!(buckets(0), 1);
        assert_eq!(buckets(1), 1);
        assert_eq!(buckets(4), 1);
        assert_eq!(buckets(5), 2);
        assert_eq!(buckets(16), 4);
        assert_eq!(buckets(100), 32);
        assert_eq!(slots(100), 128);
        assert_eq!(slots(262_144), 262_144);
        assert_eq!(buckets(u32::MAX), MAX_BUCKETS);
        assert!(slots(u32::MAX) >= MAX_BUCKETS);
        for size in [1u32, 3, 17, 1000, 262_143, 1 << 20] {
            assert!(slots(size) >= size);
            assert!(buckets(size).is_power_of_two());
        }
    }

    #[test]
    fn bucket_indexes_stay_in_the_table() {
        let mask = buckets(100) - 1;
        for hash in [0u32, 1, 0xffff_ffff, 0x8000_0000, 0x1234_5678] {
            assert!(bucket_index(hash, mask) < buckets(100));
        }
    }

    #[test]
    fn keys_differing_in_any_field_are_different() {
        let k = key(40000);
        assert!(same_key(&k, &k));
        for other in [
            FlowKey {
                src: k.src ^ 1,
                ..k
            },
            FlowKey {
                dst: k.dst ^ 0x100,
                ..k
            },
            FlowKey {
                sport: k.sport ^ 1,
                ..k
            },
            FlowKey {
                dport: k.dport ^ 0x8000,
                ..k
            },
            FlowKey { protocol: 17, ..k },
        ] {
            assert!(!same_key(&k, &other), "{other:?}");
        }
    }

    #[test]
    fn a_written_slot_holds_its_key_and_no_other() {
        let k = key(40000);
        let h = flow_hash(&k);
        let flow = Flow {
            backend: 7,
            snat_port: 5000u16.to_be(),
            snat_source: 0,
        };
        let slot = FlowSlot::new(k, h, flow, 3);
        assert!(slot.holds(&k, h));
        assert!(slot.is_valid());
        assert!(!slot.holds(&key(40001), flow_hash(&key(40001))));
        assert!(
            !FlowSlot::<u32>::default().is_valid(),
            "a zeroed slot is free"
        );
        assert!(!FlowSlot::<u32>::default().holds(&FlowKey::default(), 0));
        let mut cleared = slot;
        cleared.seal = 0;
        assert!(!cleared.holds(&k, h));
        // `seen` is outside the seal.
        let mut refreshed = slot;
        refreshed.seen = 99;
        assert!(refreshed.holds(&k, h));
    }

    /// The point of the seal: a slot read while another CPU rewrites it, whatever mix of
    /// the old and the new fields the reader sees, is either one of the two entries whole or
    /// rejected. Checked over every mix of the old and new words of a flow slot.
    #[test]
    fn a_torn_flow_slot_is_never_taken_for_a_whole_one() {
        let (k1, k2) = (key(40000), key(40001));
        let old = FlowSlot::new(
            k1,
            flow_hash(&k1),
            Flow {
                backend: 1,
                snat_port: 1111,
                snat_source: 0,
            },
            1,
        );
        let new = FlowSlot::new(
            k2,
            flow_hash(&k2),
            Flow {
                backend: 2,
                snat_port: 2222,
                snat_source: 0,
            },
            2,
        );
        let words = |s: &FlowSlot| -> [u32; 8] { unsafe { core::mem::transmute(*s) } };
        let (a, b) = (words(&old), words(&new));
        for mix in 0u32..256 {
            let mut w = [0u32; 8];
            for i in 0..8 {
                w[i] = if mix & (1 << i) != 0 { b[i] } else { a[i] };
            }
            let torn: FlowSlot = unsafe { core::mem::transmute(w) };
            for (k, whole) in [(k1, old), (k2, new)] {
                if torn.holds(&k, flow_hash(&k)) {
                    assert_eq!(
                        torn.flow, whole.flow,
                        "mix {mix:#b} passed with a foreign value"
                    );
                }
            }
        }
    }

    #[test]
    fn a_torn_nat_slot_is_never_taken_for_a_whole_one() {
        let (k1, k2) = (key(1111), key(2222));
        let old = NatSlot::new(k1, flow_hash(&k1), nat(), 1);
        let other = NatReverse {
            client_addr: 0x6602_00c0,
            client_port: 40001u16.to_be(),
            backend: 4,
            service: 2,
            ..nat()
        };
        let new = NatSlot::new(k2, flow_hash(&k2), other, 2);
        let words = |s: &NatSlot| -> [u32; 16] { unsafe { core::mem::transmute(*s) } };
        let (a, b) = (words(&old), words(&new));
        for mix in 0u32..(1 << 16) {
            let mut w = [0u32; 16];
            for i in 0..16 {
                w[i] = if mix & (1 << i) != 0 { b[i] } else { a[i] };
            }
            let torn: NatSlot = unsafe { core::mem::transmute(w) };
            for (k, whole) in [(k1, old), (k2, new)] {
                if torn.holds(&k, flow_hash(&k)) {
                    assert_eq!(torn.nat.client_addr, whole.nat.client_addr, "mix {mix:#x}");
                    assert_eq!(torn.nat.client_port, whole.nat.client_port, "mix {mix:#x}");
                    assert_eq!(torn.nat.vip_port, whole.nat.vip_port, "mix {mix:#x}");
                    assert_eq!(torn.nat.backend, whole.nat.backend, "mix {mix:#x}");
                    assert_eq!(torn.nat.service, whole.nat.service, "mix {mix:#x}");
                }
            }
        }
    }

    fn key6(backend_last: u8, sport: u16) -> FlowKey<V6> {
        let addr = |last: u8| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            b[15] = last;
            crate::address::v6_words(b)
        };
        FlowKey {
            src: addr(backend_last),
            dst: addr(100),
            sport: 6443u16.to_be(),
            dport: sport.to_be(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    fn nat6(client_last: u8, backend: u16) -> NatReverse<V6> {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        b[15] = client_last;
        NatReverse {
            client_addr: crate::address::v6_words(b),
            client_port: 40000u16.to_be(),
            vip_port: 6443u16.to_be(),
            backend,
            service: 1,
            ..Default::default()
        }
    }

    /// An IPv6 translation without the backend's address: its tuple, all else, and the hash.
    #[test]
    fn an_ipv6_translation_holds_its_tuple_through_its_hash() {
        let k = key6(50, 5000);
        let h = flow_hash(&k);
        let slot = NatSlot6::new(&k, h, &nat6(101, 3), 7);
        assert!(slot.holds(&k, h));
        assert!(slot.is_valid());
        assert_eq!(slot.nat(), nat6(101, 3));
        assert_eq!(slot.reverse(), FlowKey { src: [0; 2], ..k });
        assert_eq!(slot.seen(), 7);
        // The backend's address is not kept, but the tuple's hash took it in.
        let other = key6(51, 5000);
        assert!(!slot.holds(&other, flow_hash(&other)));
        for k2 in [key6(50, 5001), FlowKey { protocol: 17, ..k }] {
            assert!(!slot.holds(&k2, flow_hash(&k2)), "{k2:?}");
        }
        assert!(!NatSlot6 { seal: 0, ..slot }.is_valid());
        assert!(!NatSlot6::default().is_valid());
        // Closing bits and `seen` are outside the seal.
        let closed = NatSlot6::new(
            &k,
            h,
            &NatReverse {
                closing: crate::NAT_RESET,
                ..nat6(101, 3)
            },
            9,
        );
        assert!(closed.holds(&k, h));
        assert!(closed.reusable(9));
        assert!(!slot.reusable(9));
    }

    /// A peer's word that a translation closed adds its bits and keeps the rest: the seal
    /// (still whole) and, in IPv6, the mark that the hop toward the client was resolved.
    #[test]
    fn closing_a_translation_keeps_its_seal_and_hop() {
        let k = key6(50, 5000);
        let h = flow_hash(&k);
        let slot = NatSlot6 {
            hop: 1,
            ..NatSlot6::new(&k, h, &nat6(101, 3), 7)
        };
        let closed = slot.closing_with(crate::NAT_CLIENT_FIN | crate::NAT_BACKEND_FIN, 9);
        assert!(closed.holds(&k, h));
        assert_eq!(closed.hop, 1);
        assert_eq!(closed.seen(), 9);
        assert!(closed.nat().closed());
        assert_eq!(closed.nat().client_addr, slot.nat().client_addr);
        let k4 = key(1111);
        let hop = NextHop {
            ifindex: 4,
            ..Default::default()
        };
        let slot4 = NatSlot::new(
            k4,
            flow_hash(&k4),
            NatReverse {
                next_hop: hop,
                ..nat()
            },
            7,
        );
        let closed4 = slot4.closing_with(crate::NAT_RESET, 9);
        assert!(closed4.holds(&k4, flow_hash(&k4)));
        assert_eq!(closed4.nat.next_hop, hop);
        assert!(closed4.nat.closed());
    }

    /// The seal of an IPv6 slot: whatever mix of two translations' words a reader sees, it takes one of them whole or neither.
    #[test]
    fn a_torn_ipv6_nat_slot_is_never_taken_for_a_whole_one() {
        let (k1, k2) = (key6(50, 1111), key6(51, 2222));
        let old = NatSlot6::new(&k1, flow_hash(&k1), &nat6(101, 3), 1);
        let new = NatSlot6::new(&k2, flow_hash(&k2), &nat6(102, 4), 2);
        let words = |s: &NatSlot6| -> [u64; 8] { unsafe { core::mem::transmute(*s) } };
        let (a, b) = (words(&old), words(&new));
        for mix in 0u32..(1 << 8) {
            let mut w = a;
            for i in 0..8 {
                if mix & (1 << i) != 0 {
                    w[i] = b[i];
                }
            }
            let torn: NatSlot6 = unsafe { core::mem::transmute(w) };
            for (k, whole) in [(k1, old), (k2, new)] {
                if torn.holds(&k, flow_hash(&k)) {
                    assert_eq!(torn.nat(), whole.nat(), "mix {mix:#x}");
                }
            }
        }
    }

    /// A client tuple to an IPv6 VIP, from client `client_last`, port `sport`.
    fn client6(client_last: u8, sport: u16) -> FlowKey<V6> {
        let k = key6(client_last, sport);
        FlowKey {
            src: k.src,
            dst: k.dst,
            sport: sport.to_be(),
            dport: 6443u16.to_be(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    fn tuple6(service: u32) -> Option<ServiceTuple<V6>> {
        (service == 1).then(|| ServiceTuple {
            vip: key6(0, 0).dst,
            port: 6443u16.to_be(),
            protocol: 6,
        })
    }

    /// An IPv6 flow slot keeps its service's slot in place of the VIP, port and protocol: it
    /// holds its client's tuple to that service, and a reader that asks the service back
    /// rebuilds the key.
    #[test]
    fn an_ipv6_flow_holds_its_client_through_its_service() {
        let k = client6(101, 40000);
        let h = flow_hash(&k);
        let flow = Flow {
            backend: 7,
            snat_port: 5000u16.to_be(),
            snat_source: 2,
        };
        let slot = FlowSlot6::new(&k, 1, h, flow, 3);
        assert!(slot.holds(&k, 1, h));
        assert_eq!(FlowWay::flow(&slot), flow);
        assert_eq!(slot.key(&tuple6), Some(k));
        assert!(slot.whole_key(&tuple6).is_some());
        assert!(
            slot.whole_key(&|_| None).is_none(),
            "a service no longer published"
        );
        assert!(!slot.holds(&k, 2, h), "another service");
        for other in [client6(102, 40000), client6(101, 40001)] {
            assert!(!slot.holds(&other, 1, flow_hash(&other)), "{other:?}");
        }
        // Another VIP of the same client and port (the service slot reused): its hash.
        let vip2 = FlowKey {
            dst: key6(0, 0).src,
            ..k
        };
        assert!(!slot.holds(&vip2, 1, flow_hash(&vip2)));
        assert!(!slot.cleared().holds(&k, 1, h));
        assert!(!slot.cleared().sealed());
        assert!(FlowSlot6::default().whole_key(&tuple6).is_none());
        // `seen` is outside the seal.
        assert!(FlowSlot6 { seen: 99, ..slot }.holds(&k, 1, h));
    }

    /// A flow whose backend or SNAT source does not fit its slot's narrowed fields never
    /// reads back as another. (Service slots fit by construction: below `MAX_SERVICES`.)
    #[test]
    fn an_ipv6_flow_that_does_not_fit_its_slot_is_never_taken() {
        let k = client6(101, 40000);
        let h = flow_hash(&k);
        let flow = Flow {
            backend: 7,
            snat_port: 5000u16.to_be(),
            snat_source: 1,
        };
        assert!(FlowSlot6::new(&k, 1, h, flow, 3).holds(&k, 1, h));
        for flow in [
            Flow {
                backend: 0x1_0007,
                ..flow
            },
            Flow {
                snat_source: 0x101,
                ..flow
            },
        ] {
            assert!(
                !FlowSlot6::new(&k, 1, h, flow, 3).holds(&k, 1, h),
                "{flow:?}"
            );
        }
    }

    #[test]
    fn a_torn_ipv6_flow_slot_is_never_taken_for_a_whole_one() {
        let (k1, k2) = (client6(101, 40000), client6(102, 40001));
        let f1 = Flow {
            backend: 1,
            snat_port: 1111,
            snat_source: 0,
        };
        let f2 = Flow {
            backend: 2,
            snat_port: 2222,
            snat_source: 1,
        };
        let old = FlowSlot6::new(&k1, 1, flow_hash(&k1), f1, 1);
        let new = FlowSlot6::new(&k2, 1, flow_hash(&k2), f2, 2);
        let words = |s: &FlowSlot6| -> [u32; 8] { unsafe { core::mem::transmute(*s) } };
        let (a, b) = (words(&old), words(&new));
        for mix in 0u32..256 {
            let mut w = a;
            for i in 0..8 {
                if mix & (1 << i) != 0 {
                    w[i] = b[i];
                }
            }
            let torn: FlowSlot6 = unsafe { core::mem::transmute(w) };
            for (k, whole) in [(k1, f1), (k2, f2)] {
                if torn.holds(&k, 1, flow_hash(&k)) {
                    assert_eq!(torn.flow(), whole, "mix {mix:#b}");
                }
            }
        }
    }

    #[test]
    fn translations_become_reusable_when_closed_or_idle() {
        let k = key(1111);
        let slot = NatSlot::new(k, flow_hash(&k), nat(), 100);
        assert!(!slot.reusable(100));
        assert!(!slot.reusable(100 + IDLE_SECS - 1));
        assert!(slot.reusable(100 + IDLE_SECS));
        // A clock behind the entry (restarted) does not make it idle.
        assert!(!slot.reusable(50));
        let mut closed = slot;
        closed.nat.closing = crate::NAT_RESET;
        assert!(closed.reusable(100));
        // Across the clock's wrap (31 bits: the top one is `UNCONFIRMED`'s).
        let wrapped = NatSlot::new(k, flow_hash(&k), nat(), (1 << 31) - 10);
        assert!(!wrapped.reusable(5));
        assert!(wrapped.reusable(IDLE_SECS));
    }

    #[test]
    fn replacement_takes_free_slots_first_then_the_least_recently_seen() {
        let clock = 1000;
        assert_eq!(keep_rank(false, 999, clock), 0);
        assert!(keep_rank(true, 10, clock) < keep_rank(true, 500, clock));
        assert!(keep_rank(true, 500, clock) < keep_rank(true, 1000, clock));
        assert!(keep_rank(false, 1000, clock) < keep_rank(true, 0, clock));
        // Seen "after" the clock (the controller restarted its clock): kept like a fresh one.
        assert_eq!(keep_rank(true, 2000, clock), keep_rank(true, clock, clock));
    }

    #[test]
    fn unconfirmed_flows_go_before_any_confirmed_one_that_is_not_idle() {
        let clock = 1000;
        let fresh_unconfirmed = keep_rank(true, clock | UNCONFIRMED, clock);
        let old_confirmed = keep_rank(true, clock - (IDLE_SECS - 1), clock);
        let idle_confirmed = keep_rank(true, clock - IDLE_SECS, clock);
        assert!(keep_rank(false, clock, clock) < fresh_unconfirmed);
        assert!(fresh_unconfirmed < old_confirmed);
        assert!(idle_confirmed < fresh_unconfirmed, "idle: LRU as before");
        assert!(
            keep_rank(true, (clock - 5) | UNCONFIRMED, clock) < fresh_unconfirmed,
            "among unconfirmed ones, the oldest first"
        );
        // The bit is no part of the time.
        assert_eq!(seen_at(clock | UNCONFIRMED), clock);
        assert!(!idle(clock | UNCONFIRMED, clock));
        assert!(idle((clock - IDLE_SECS) | UNCONFIRMED, clock));
    }
}
