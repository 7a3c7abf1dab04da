//! Publishing the wanted state (services, backends, their health and weights) into the maps.
//!
//! [`Publisher`] keeps slots stable across updates (a service keeps its slot while its name
//! stays; a backend keeps its slot while its service and address stay), so flows pinned to a
//! backend slot survive reloads, and writes only what changed, in an order that never lets a
//! packet see a reference to something not yet written, nor a table that names a backend
//! whose entry no longer takes new flows (make before break):
//! 1. backend entries (new and changed), except those that stop taking new flows;
//! 2. Maglev tables, each built in a fresh inner map and swapped in with one update of `MAGLEV`
//!    (see [`publish_table`]): a packet reads the old table or the new one, never a mix; the
//!    swap returns once no program run still reads the old table;
//! 3. the entries of backends that stop taking new flows (drained, disabled, down): no table
//!    names them any more, so a new flow never lands on one while a healthy one could take it;
//! 4. the VIPs, so a new service appears only once its table exists: the whole VIP set is
//!    written into the half of `VIPS` that no program reads, one write of
//!    `VIP_TABLE` makes it live, and the publisher waits until no program run still reads the
//!    retired half (see [`Publisher::publish_vips`]);
//! 5. then removals: tables, then backend slots (marked free); no VIP refers to them any more.
//!
//! What to publish is computed by the pure functions of [`plan`](super::plan).

use super::{
    plan::{
        backend_entry, check_limits, pack_table, snat_sources_entry, stops_taking_new_flows, table,
        vip_entries, BackendEntry, ServiceSpec, SnatEntry, VipEntries,
    },
    sys, vip_index, Dataplane,
};
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, ArrayOfMaps, IterableMap, Map, MapData, PerCpuArray, PerCpuValues};
use k3s_xdp_common::{
    names, Address, Backend, Globals, NextHop, SnatSources, Traffic, VipSlot, VipTable,
    MAGLEV_INNER_FLAGS, MAX_BACKENDS, MAX_SERVICES, V6,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

/// What one [`Publisher::apply`] changed, for the log.
#[derive(Debug, Default)]
pub struct Applied {
    /// Services whose Maglev table was rebuilt: name, entries owned per backend slot, time.
    pub tables: Vec<(String, usize, Duration)>,
    /// Services left without any backend to take new flows (their table was removed).
    pub emptied: Vec<String>,
}

type BackendKey = (String, SocketAddr);

/// Slots and what was last written, so each apply writes only differences.
#[derive(Default)]
pub struct Publisher {
    service_slots: BTreeMap<String, u32>,
    backend_slots: BTreeMap<BackendKey, u32>,
    written_backends: BTreeMap<u32, BackendEntry>,
    tables: BTreeMap<u32, Vec<u32>>,
    vips: VipEntries,
    /// As last written to `SNAT_SOURCES` (or `SNAT_SOURCES6`), by service slot.
    snat_sources: BTreeMap<u32, SnatEntry>,
    /// As last written to `VIP_TABLE`: the live half and each half's hash.
    vip_table: VipTable,
    /// The `VIPS` and `VIPS6` slots written in each half, cleared when the half is next filled.
    vip_slots: [Vec<u32>; 2],
    vip_slots6: [Vec<u32>; 2],
    /// The inner map `GRACE` is updated with to wait for running programs.
    grace: Option<Array<MapData, u32>>,
    /// A flip of `VIP_TABLE` not yet followed by a completed wait for running programs.
    grace_owed: bool,
    /// Where the search for a free backend slot starts: slots are handed out round the ring,
    /// so a freed slot is reused as late as possible.
    next_backend_slot: u32,
}

impl Publisher {
    pub fn new() -> Self {
        Self {
            next_backend_slot: 1,
            ..Default::default()
        }
    }

    /// The slot of service `name`, once published.
    pub fn service_slot(&self, name: &str) -> Option<u32> {
        self.service_slots.get(name).copied()
    }

    /// The slot of a backend of `service` at `address`, once published.
    pub fn backend_slot(&self, service: &str, address: SocketAddr) -> Option<u32> {
        self.backend_slots
            .get(&(service.to_string(), address))
            .copied()
    }

    /// The Maglev table last published for service slot `slot` (empty: none).
    pub fn published_table(&self, slot: u32) -> &[u32] {
        self.tables.get(&slot).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Makes the maps describe `services`.
    pub fn apply(&mut self, dp: &mut Dataplane, services: &[ServiceSpec]) -> Result<Applied> {
        check_limits(services)?;
        let mut applied = Applied::default();

        // Slots for what is new.
        let wanted_services: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
        for s in services {
            if !self.service_slots.contains_key(&s.name) {
                let slot = (0..MAX_SERVICES)
                    .find(|slot| !self.service_slots.values().any(|v| v == slot))
                    .ok_or_else(|| anyhow!("no free service slot (at most {MAX_SERVICES})"))?;
                self.service_slots.insert(s.name.clone(), slot);
                reset_stats(dp, names::SERVICE_STATS, slot)?;
            }
        }
        let wanted_backends: BTreeSet<BackendKey> = services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.address)))
            .collect();
        for key in &wanted_backends {
            if !self.backend_slots.contains_key(key) {
                let slot = self.free_backend_slot()?;
                self.backend_slots.insert(key.clone(), slot);
                reset_stats(dp, names::BACKEND_STATS, slot)?;
                clear_hop(dp, slot)?;
            }
        }

        // 1. Backend entries, but those that stop taking new flows wait for step 3.
        let mut stopping = Vec::new();
        for s in services {
            let service_slot = self.service_slots[&s.name];
            for b in &s.backends {
                let slot = self.backend_slots[&(s.name.clone(), b.address)];
                let entry = backend_entry(b, service_slot);
                let written = self.written_backends.get(&slot);
                if written == Some(&entry) {
                    continue;
                }
                if stops_taking_new_flows(written, &entry) {
                    stopping.push((slot, entry));
                    continue;
                }
                write_backend(dp, slot, &entry)?;
                self.written_backends.insert(slot, entry);
            }
        }

        // 2. Maglev tables.
        for s in services {
            let service_slot = self.service_slots[&s.name];
            let started = Instant::now();
            let new = table(s, |b| self.backend_slots[&(s.name.clone(), b.address)]);
            if self.tables.get(&service_slot) == Some(&new) {
                continue;
            }
            if new.is_empty() {
                if self.tables.contains_key(&service_slot) {
                    remove_table(dp, service_slot)?;
                    self.tables.remove(&service_slot);
                }
                applied.emptied.push(s.name.clone());
                continue;
            }
            publish_table(dp, service_slot, &new)
                .with_context(|| format!("publishing the Maglev table of service {}", s.name))?;
            let owners: BTreeSet<u32> = new.iter().copied().collect();
            self.tables.insert(service_slot, new);
            applied
                .tables
                .push((s.name.clone(), owners.len(), started.elapsed()));
        }

        // 3. Out of every table now (each swap waited for the programs reading the old one):
        // their entries may refuse new flows.
        for (slot, entry) in stopping {
            write_backend(dp, slot, &entry)?;
            self.written_backends.insert(slot, entry);
        }

        // 4. SNAT pools (read by flows of their service only, which appear with the VIPs), then
        // the VIPs and the pools' own addresses.
        for s in services {
            let slot = self.service_slots[&s.name];
            let entry = snat_sources_entry(s);
            if self.snat_sources.get(&slot) != Some(&entry) {
                write_snat_sources(dp, slot, &entry)
                    .with_context(|| format!("writing the SNAT pool of service {}", s.name))?;
                self.snat_sources.insert(slot, entry);
            }
        }
        let vips = vip_entries(services, &self.service_slots)?;
        if vips != self.vips {
            self.publish_vips(dp, &vips)
                .context("publishing the VIPs")?;
            self.vips = vips;
        }

        // 5. Removals: tables, then backend slots.
        let gone: Vec<(String, u32)> = self
            .service_slots
            .iter()
            .filter(|(name, _)| !wanted_services.contains(name.as_str()))
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        for (name, slot) in gone {
            if self.tables.remove(&slot).is_some() {
                remove_table(dp, slot)?;
            }
            self.service_slots.remove(&name);
            self.snat_sources.remove(&slot);
        }
        let gone: Vec<(BackendKey, u32)> = self
            .backend_slots
            .iter()
            .filter(|(key, _)| !wanted_backends.contains(*key))
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (key, slot) in gone {
            // Freed in the map of the family it held.
            let free = match self.written_backends.get(&slot) {
                Some(entry) => entry.freed(),
                None => BackendEntry::V4(Backend::default()),
            };
            write_backend(dp, slot, &free)?;
            self.written_backends.remove(&slot);
            self.backend_slots.remove(&key);
        }
        Ok(applied)
    }

    /// Makes `vips` the VIP set the program sees, all at once. The program reads the half of
    /// `VIPS` that `VIP_TABLE.half` names; this writes the other half (no
    /// program reads it), then flips `half` in one update of `VIP_TABLE` (only the low byte of
    /// `half` changes, and the live half's hash is rewritten with the same bytes, so a
    /// concurrent reader sees the old table or the new one), then waits until every program
    /// run that may have read the old half has finished, so that the next publish may
    /// overwrite it. A packet therefore sees the whole old VIP set or the whole new one.
    fn publish_vips(&mut self, dp: &mut Dataplane, vips: &VipEntries) -> Result<()> {
        if self.grace_owed {
            // The last flip's wait failed: the idle half may still be read.
            self.wait_for_programs(dp)?;
            self.grace_owed = false;
        }
        let next = 1 - (self.vip_table.half & 1);
        let half = vip_index::layout(&vips.v4, next)?;
        let half6 = vip_index::layout(&vips.v6, next)?;
        // The halves are idle, so the order of these writes does not matter.
        fill_half(dp, names::VIPS, &mut self.vip_slots[next as usize], &half)?;
        fill_half(
            dp,
            names::VIPS6,
            &mut self.vip_slots6[next as usize],
            &half6,
        )?;
        let mut table = self.vip_table;
        table.hash[next as usize] = half.hash;
        table.hash6[next as usize] = half6.hash;
        table.half = next;
        let mut map: Array<&mut MapData, VipTable> =
            Array::try_from(map_mut(dp, names::VIP_TABLE)?)?;
        map.set(0, table, 0)?;
        self.vip_table = table;
        self.grace_owed = true;
        self.wait_for_programs(dp)?;
        self.grace_owed = false;
        Ok(())
    }

    /// Returns once every XDP program run that started before the call has finished: the
    /// kernel waits for an RCU grace period before an update of a map-in-map returns, so that
    /// userspace knows no program still uses the old value; `GRACE` exists for that update.
    fn wait_for_programs(&mut self, dp: &mut Dataplane) -> Result<()> {
        let inner = match self.grace.take() {
            Some(inner) => inner,
            None => {
                Array::create(1, 0).context("creating the inner map of GRACE (BPF_MAP_CREATE)")?
            }
        };
        let mut outer: ArrayOfMaps<&mut MapData, Array<MapData, u32>> =
            ArrayOfMaps::try_from(map_mut(dp, names::GRACE)?)?;
        let updated = outer.set(0, &inner, 0);
        self.grace = Some(inner);
        updated.context("waiting for running XDP programs (update of GRACE)")?;
        Ok(())
    }

    fn free_backend_slot(&mut self) -> Result<u32> {
        let used: BTreeSet<u32> = self.backend_slots.values().copied().collect();
        for i in 0..MAX_BACKENDS {
            let slot = (self.next_backend_slot + i) % MAX_BACKENDS;
            if slot != 0 && !used.contains(&slot) {
                self.next_backend_slot = slot + 1;
                return Ok(slot);
            }
        }
        bail!(
            "no free backend slot (at most {} backends)",
            MAX_BACKENDS - 1
        )
    }
}

/// Writes the idle half of `VIPS` or `VIPS6` (`map`): clears what `written` names that `half`
/// does not, then writes `half`'s slots.
fn fill_half<A: Address + Ord>(
    dp: &mut Dataplane,
    map: &str,
    written: &mut Vec<u32>,
    half: &vip_index::Half<A>,
) -> Result<()> {
    let mut index: Array<&mut MapData, VipSlot<A>> = Array::try_from(map_mut(dp, map)?)?;
    for &i in written.iter() {
        if !half.slots.contains_key(&i) {
            index.set(i, VipSlot::default(), 0)?;
        }
    }
    // Tracked before they are written: a write failing halfway leaves nothing that the next
    // fill of this half would not clear.
    written.extend(half.slots.keys().copied());
    for (&i, slot) in &half.slots {
        index.set(i, slot, 0)?;
    }
    *written = half.slots.keys().copied().collect();
    Ok(())
}

fn write_snat_sources(dp: &mut Dataplane, slot: u32, entry: &SnatEntry) -> Result<()> {
    match entry {
        SnatEntry::V4(e) => {
            let mut map: Array<&mut MapData, SnatSources> =
                Array::try_from(map_mut(dp, names::SNAT_SOURCES)?)?;
            Ok(map.set(slot, e, 0)?)
        }
        SnatEntry::V6(e) => {
            let mut map: Array<&mut MapData, SnatSources<V6>> =
                Array::try_from(map_mut(dp, names::SNAT_SOURCES6)?)?;
            Ok(map.set(slot, e, 0)?)
        }
    }
}

fn map_mut<'a>(dp: &'a mut Dataplane, name: &str) -> Result<&'a mut Map> {
    dp.map_mut(name)
}

fn write_backend(dp: &mut Dataplane, slot: u32, entry: &BackendEntry) -> Result<()> {
    fn write<A: Address>(dp: &mut Dataplane, map: &str, slot: u32, e: &Backend<A>) -> Result<()> {
        let mut backends: Array<&mut MapData, Backend<A>> = Array::try_from(map_mut(dp, map)?)?;
        backends
            .set(slot, e, 0)
            .with_context(|| format!("writing backend slot {slot}"))
    }
    match entry {
        BackendEntry::V4(e) => write(dp, names::BACKENDS, slot, e),
        BackendEntry::V6(e) => write(dp, names::BACKENDS6, slot, e),
    }
}

/// Forgets the next hops cached for a slot, in both families' maps.
fn clear_hop(dp: &mut Dataplane, slot: u32) -> Result<()> {
    let mut hops: Array<&mut MapData, NextHop> =
        Array::try_from(map_mut(dp, names::BACKEND_HOPS)?)?;
    hops.set(slot, NextHop::default(), 0)?;
    let mut hops: Array<&mut MapData, NextHop<V6>> =
        Array::try_from(map_mut(dp, names::BACKEND_HOPS6)?)?;
    Ok(hops.set(slot, NextHop::default(), 0)?)
}

fn reset_stats(dp: &mut Dataplane, map: &str, slot: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
    let mut stats: PerCpuArray<&mut MapData, Traffic> = PerCpuArray::try_from(map_mut(dp, map)?)?;
    let zeros = PerCpuValues::try_from(vec![Traffic::default(); cpus])?;
    Ok(stats.set(slot, zeros, 0)?)
}

/// Publishes `entries` (backend slots, each below 65536) as the Maglev table of service slot
/// `slot`: a new inner array (created with the template's flags) of 64-bit words holding four
/// 16-bit slots each, filled through a shared memory mapping in one copy, then swapped into
/// `MAGLEV` with a single update. The kernel replaces the pointer atomically and frees the old
/// table only after every program run that could still read it has finished (RCU), so no packet
/// ever sees a half-written table or a mix of two. The table's first word is its size, which
/// the program reads from the same table as the entry (one outer lookup), so a table of a new
/// size is never indexed with an old size.
pub fn publish_table(dp: &mut Dataplane, slot: u32, entries: &[u32]) -> Result<()> {
    let words = pack_table(entries)?;
    let inner: Array<MapData, u64> = Array::create(u32::try_from(words.len())?, MAGLEV_INNER_FLAGS)
        .context("creating a Maglev table (BPF_MAP_CREATE)")?;
    let fd = inner.map().fd().as_fd().as_raw_fd();
    sys::write_mmapable_array(fd, &words)?;
    let mut outer: ArrayOfMaps<&mut MapData, Array<MapData, u64>> =
        ArrayOfMaps::try_from(map_mut(dp, names::MAGLEV)?)?;
    outer
        .set(slot, &inner, 0)
        .with_context(|| format!("swapping in the Maglev table of service slot {slot}"))?;
    Ok(())
}

/// Removes the Maglev table of service slot `slot`: new flows of the service find no backend.
pub fn remove_table(dp: &mut Dataplane, slot: u32) -> Result<()> {
    let Map::ArrayOfMaps(outer) = map_mut(dp, names::MAGLEV)? else {
        bail!("{} is not an array of maps", names::MAGLEV);
    };
    sys::delete_elem(outer.fd().as_fd().as_raw_fd(), &slot)
        .with_context(|| format!("removing the Maglev table of service slot {slot}"))
}

/// Writes the program-wide settings (with the flow tables' mask, which only the loader knows).
pub fn write_globals(dp: &mut Dataplane, globals: &Globals) -> Result<()> {
    let globals = Globals {
        flow_mask: dp.flow_mask(),
        ..*globals
    };
    let mut map: Array<&mut MapData, Globals> = Array::try_from(map_mut(dp, names::GLOBALS)?)?;
    Ok(map.set(0, globals, 0)?)
}

/// The program-wide settings as last written.
pub fn read_globals(dp: &Dataplane) -> Result<Globals> {
    let map = dp
        .bpf()
        .map(names::GLOBALS)
        .ok_or_else(|| anyhow!("the XDP object has no map {}", names::GLOBALS))?;
    let map: Array<&MapData, Globals> = Array::try_from(map)?;
    Ok(map.get(&0, 0)?)
}
