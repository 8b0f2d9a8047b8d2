//! The reference model of a device's guest-visible bytes, kept outside the engine.
//!
//! Per 512-byte sector it keeps the set of values the sector may durably hold (`stable`), the
//! values of completed-but-unflushed writes in completion order (`pending`), and the values of
//! writes in flight (`maybe`). Reads while nothing overlapping is in flight must see the latest
//! completed value. After a crash a sector may hold its last flushed value or any later completed
//! (or in-flight) write, nothing else; a `verify` after the crash then pins what it observed.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

/// Sector size of the model.
pub const SECTOR: u64 = 512;

/// What a sector holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectorVal {
    /// All zeroes.
    Zero,
    /// Every byte equal (qemu-io `-P` patterns).
    Fill(u8),
    /// Generated content of a workload write (`gen_byte`).
    Gen(u64),
    /// Anything else (a partial-sector write over earlier content).
    Bytes(Rc<[u8]>),
}

impl fmt::Display for SectorVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectorVal::Zero => write!(f, "zeroes"),
            SectorVal::Fill(b) => write!(f, "pattern 0x{b:02x}"),
            SectorVal::Gen(id) => write!(f, "workload write #{id}"),
            SectorVal::Bytes(_) => write!(f, "mixed bytes"),
        }
    }
}

/// Byte `i` of sector `sector` as workload write `id` fills it: unique per write and sector, so
/// a misplaced or stale sector is recognised.
pub fn gen_byte(id: u64, sector: u64, i: usize) -> u8 {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let x = x ^ (x >> 29);
    ((x >> ((i % 8) * 8)) as u8) ^ (i / 8) as u8
}

impl SectorVal {
    /// The sector's bytes.
    pub fn bytes(&self, sector: u64) -> Vec<u8> {
        match self {
            SectorVal::Zero => vec![0; SECTOR as usize],
            SectorVal::Fill(b) => vec![*b; SECTOR as usize],
            SectorVal::Gen(id) => (0..SECTOR as usize)
                .map(|i| gen_byte(*id, sector, i))
                .collect(),
            SectorVal::Bytes(b) => b.to_vec(),
        }
    }

    /// True when `data` (one sector) is this value.
    pub fn matches(&self, sector: u64, data: &[u8]) -> bool {
        match self {
            SectorVal::Zero => data.iter().all(|&b| b == 0),
            SectorVal::Fill(v) => data.iter().all(|b| b == v),
            SectorVal::Gen(id) => data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == gen_byte(*id, sector, i)),
            SectorVal::Bytes(b) => &b[..] == data,
        }
    }
}

/// What a write puts into the sectors it covers.
#[derive(Clone, Debug)]
pub enum WriteData {
    /// Zeroes (write-zeroes, or a zero buffer).
    Zero,
    /// A byte pattern.
    Fill(u8),
    /// Workload content of write `id`.
    Gen(u64),
}

#[derive(Clone, Debug)]
struct SectorState {
    stable: Vec<SectorVal>,
    /// (completion sequence, possible values) of completed, unflushed writes.
    pending: Vec<(u64, Vec<SectorVal>)>,
    /// Values of writes in flight, by ticket.
    maybe: Vec<(u64, SectorVal)>,
    /// A lost flush covered it: what a read sees is not necessarily durable, so a verify must
    /// not pin it (until a flush succeeds or the power fails).
    unsure: bool,
}

impl Default for SectorState {
    fn default() -> SectorState {
        SectorState {
            stable: vec![SectorVal::Zero],
            pending: Vec::new(),
            maybe: Vec::new(),
            unsure: false,
        }
    }
}

impl SectorState {
    fn current(&self) -> &[SectorVal] {
        match self.pending.last() {
            Some((_, vals)) => vals,
            None => &self.stable,
        }
    }
}

/// Drop repeated values, keeping the first of each.
fn dedup(vals: &mut Vec<SectorVal>) {
    let mut out: Vec<SectorVal> = Vec::with_capacity(vals.len());
    for v in vals.drain(..) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    *vals = out;
}

/// A write in flight.
#[derive(Clone, Debug)]
pub struct Ticket {
    id: u64,
    offset: u64,
    len: u64,
    values: Vec<(u64, SectorVal)>,
}

impl Ticket {
    /// Where the write starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The model of one device.
#[derive(Debug, Default)]
pub struct DeviceModel {
    sectors: BTreeMap<u64, SectorState>,
    seq: u64,
    next_ticket: u64,
    /// A fault that loses the data of a failed flush was injected (`Family::LostFlush`): from
    /// then on a failed guest flush widens the unflushed sectors ([`DeviceModel::flush_failed`]).
    pub lossy_flush: bool,
}

fn sector_range(offset: u64, len: u64) -> std::ops::Range<u64> {
    offset / SECTOR..(offset + len).div_ceil(SECTOR)
}

impl DeviceModel {
    /// A device whose every sector is zero.
    pub fn new() -> DeviceModel {
        DeviceModel::default()
    }

    /// The values a read of `sector` may return now.
    pub fn expected(&self, sector: u64) -> Vec<SectorVal> {
        self.sectors
            .get(&sector)
            .map_or_else(|| vec![SectorVal::Zero], |s| s.current().to_vec())
    }

    /// The values a sector may hold after a crash now.
    pub fn possible_after_crash(&self, sector: u64) -> Vec<SectorVal> {
        let Some(s) = self.sectors.get(&sector) else {
            return vec![SectorVal::Zero];
        };
        let mut all = s.stable.clone();
        for (_, vals) in &s.pending {
            all.extend(vals.iter().cloned());
        }
        all.extend(s.maybe.iter().map(|(_, v)| v.clone()));
        all
    }

    /// A write of `data` to `[offset, offset+len)` starts.
    pub fn begin_write(&mut self, offset: u64, len: u64, data: &WriteData) -> Ticket {
        self.next_ticket += 1;
        let id = self.next_ticket;
        let mut values = Vec::new();
        for s in sector_range(offset, len) {
            let whole = offset <= s * SECTOR && (s + 1) * SECTOR <= offset + len;
            let val = match (data, whole) {
                (WriteData::Zero, true) => SectorVal::Zero,
                (WriteData::Fill(b), true) => SectorVal::Fill(*b),
                (WriteData::Gen(g), true) => SectorVal::Gen(*g),
                (_, false) => {
                    // A partial sector: the new bytes over what the sector holds now.
                    let mut bytes = self.expected(s)[0].bytes(s);
                    let from = offset.max(s * SECTOR) - s * SECTOR;
                    let to = (offset + len).min((s + 1) * SECTOR) - s * SECTOR;
                    for i in from..to {
                        bytes[i as usize] = match data {
                            WriteData::Zero => 0,
                            WriteData::Fill(b) => *b,
                            WriteData::Gen(g) => gen_byte(*g, s, i as usize),
                        };
                    }
                    SectorVal::Bytes(bytes.into())
                }
            };
            self.sectors
                .entry(s)
                .or_default()
                .maybe
                .push((id, val.clone()));
            values.push((s, val));
        }
        Ticket {
            id,
            offset,
            len,
            values,
        }
    }

    /// A write finished. A failed write may have landed in part: each sector may hold either.
    pub fn complete_write(&mut self, ticket: Ticket, ok: bool) {
        self.seq += 1;
        for (s, val) in ticket.values {
            let st = self.sectors.entry(s).or_default();
            st.maybe.retain(|(id, _)| *id != ticket.id);
            let vals = if ok {
                vec![val]
            } else {
                let mut v = st.current().to_vec();
                v.push(val);
                v
            };
            st.pending.push((self.seq, vals));
        }
    }

    /// A discard finished: the range may read as zeroes or as before.
    pub fn discarded(&mut self, offset: u64, len: u64) {
        self.seq += 1;
        for s in sector_range(offset, len) {
            if offset > s * SECTOR || (s + 1) * SECTOR > offset + len {
                continue; // partial sectors are not discarded
            }
            let st = self.sectors.entry(s).or_default();
            let mut v = st.current().to_vec();
            if !v.contains(&SectorVal::Zero) {
                v.push(SectorVal::Zero);
            }
            st.pending.push((self.seq, v));
        }
    }

    /// A flush starts; pass the result to [`DeviceModel::flush_done`].
    pub fn flush_start(&self) -> u64 {
        self.seq
    }

    /// A flush that started at `start` succeeded: everything completed before it is durable.
    pub fn flush_done(&mut self, start: u64) {
        for st in self.sectors.values_mut() {
            let covered = st
                .pending
                .iter()
                .take_while(|(seq, _)| *seq <= start)
                .count();
            if covered > 0 {
                st.stable = st.pending[covered - 1].1.clone();
                st.pending.drain(..covered);
                st.unsure = false;
            }
        }
    }

    /// A guest flush failed. Normally nothing changes (the writes stay unflushed and readable).
    /// Once a lost-flush fault is in play, the host may have dropped them or will drop them at
    /// an eviction: each unflushed sector may then read as its stable value or any later
    /// write's, as after a power loss.
    pub fn flush_failed(&mut self) {
        if !self.lossy_flush {
            return;
        }
        for st in self.sectors.values_mut() {
            if st.pending.is_empty() {
                continue;
            }
            for (_, vals) in std::mem::take(&mut st.pending) {
                st.stable.extend(vals);
            }
            dedup(&mut st.stable);
            st.unsure = true;
        }
    }

    /// Power loss: each sector may hold its stable value or any later write's.
    pub fn crash(&mut self) {
        self.widen();
    }

    fn widen(&mut self) {
        for (s, st) in self.sectors.iter_mut() {
            let _ = s;
            let mut all = std::mem::take(&mut st.stable);
            for (_, vals) in st.pending.drain(..) {
                all.extend(vals);
            }
            all.extend(st.maybe.drain(..).map(|(_, v)| v));
            dedup(&mut all);
            st.stable = all;
            st.unsure = false;
        }
    }

    /// After a verify: the sector holds what was observed (it is durable by now or the verify
    /// would have failed).
    pub fn pin(&mut self, sector: u64, val: SectorVal) {
        let st = self.sectors.entry(sector).or_default();
        if st.pending.is_empty() && st.maybe.is_empty() && !st.unsure {
            st.stable = vec![val];
        }
    }

    /// Sectors the model knows anything about (others are zero).
    pub fn touched(&self) -> usize {
        self.sectors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_makes_completed_writes_durable_and_crash_widens_the_rest() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(0, 1024, &WriteData::Fill(1));
        m.complete_write(t, true);
        let f = m.flush_start();
        let t = m.begin_write(512, 512, &WriteData::Fill(2));
        m.complete_write(t, true);
        m.flush_done(f);
        assert_eq!(m.expected(0), vec![SectorVal::Fill(1)]);
        assert_eq!(m.expected(1), vec![SectorVal::Fill(2)]);
        let _inflight = m.begin_write(0, 512, &WriteData::Fill(3));
        m.crash();
        assert_eq!(m.expected(0), vec![SectorVal::Fill(1), SectorVal::Fill(3)]);
        assert_eq!(m.expected(1), vec![SectorVal::Fill(1), SectorVal::Fill(2)]);
        assert_eq!(m.expected(2), vec![SectorVal::Zero]);
    }

    #[test]
    fn partial_sectors_and_generated_content() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(0, 512, &WriteData::Gen(9));
        m.complete_write(t, true);
        let t = m.begin_write(100, 10, &WriteData::Fill(0xff));
        m.complete_write(t, true);
        let bytes = m.expected(0)[0].bytes(0);
        assert_eq!(bytes[99], gen_byte(9, 0, 99));
        assert_eq!(bytes[100..110], [0xff; 10]);
        assert!(SectorVal::Gen(9).matches(3, &SectorVal::Gen(9).bytes(3)));
        assert!(
            !SectorVal::Gen(9).matches(3, &SectorVal::Gen(9).bytes(4)),
            "misplaced data is caught"
        );
    }
}
