//! The reference model of a device's guest-visible bytes, kept outside the engine.
//!
//! Per 512-byte sector it keeps the set of values the sector may durably hold (`stable`), the
//! values of completed-but-unflushed writes in completion order (`pending`), and the values of
//! writes in flight (`maybe`). Reads while nothing overlapping is in flight must see the latest
//! completed value. After a crash a sector may hold its last flushed value or any later completed
//! (or in-flight) write, nothing else; a `verify` after the crash then pins what it observed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use engine::io::is_zero;
use smallvec::{SmallVec, smallvec};

/// The values a sector may hold: almost always one, so kept inline (the model updates one of
/// these per sector of every write).
type Vals = SmallVec<[SectorVal; 2]>;

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
    let x = gen_seed(id, sector);
    ((x >> ((i % 8) * 8)) as u8) ^ (i / 8) as u8
}

/// The per-sector seed of [`gen_byte`].
fn gen_seed(id: u64, sector: u64) -> u64 {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^ (x >> 29)
}

/// The whole sector `sector` as workload write `id` fills it (what `gen_byte` gives byte by
/// byte, a word at a time: the checks run over every sector of every verify).
pub fn gen_sector(id: u64, sector: u64) -> [u8; SECTOR as usize] {
    let x = gen_seed(id, sector);
    let mut out = [0u8; SECTOR as usize];
    for (j, word) in out.chunks_exact_mut(8).enumerate() {
        // Byte k of word j is byte k of x, xored with j.
        let w = x ^ (j as u64).wrapping_mul(0x0101_0101_0101_0101);
        word.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Fill `out` with workload write `id`'s content from byte offset `pos` of the device.
pub fn fill_gen(id: u64, pos: u64, out: &mut [u8]) {
    let mut at = 0;
    while at < out.len() {
        let off = pos + at as u64;
        let (sector, within) = (off / SECTOR, (off % SECTOR) as usize);
        let n = (SECTOR as usize - within).min(out.len() - at);
        out[at..at + n].copy_from_slice(&gen_sector(id, sector)[within..within + n]);
        at += n;
    }
}

impl SectorVal {
    /// The sector's bytes.
    pub fn bytes(&self, sector: u64) -> Vec<u8> {
        match self {
            SectorVal::Zero => vec![0; SECTOR as usize],
            SectorVal::Fill(b) => vec![*b; SECTOR as usize],
            SectorVal::Gen(id) => gen_sector(*id, sector).to_vec(),
            SectorVal::Bytes(b) => b.to_vec(),
        }
    }

    /// True when `data` (one sector) is this value.
    pub fn matches(&self, sector: u64, data: &[u8]) -> bool {
        match self {
            SectorVal::Zero => is_zero(data),
            SectorVal::Fill(v) => data.iter().all(|b| b == v),
            SectorVal::Gen(id) => data == gen_sector(*id, sector).as_slice(),
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
    stable: Vals,
    /// (completion sequence, possible values) of completed, unflushed writes.
    pending: SmallVec<[(u64, Vals); 1]>,
    /// Values of writes in flight, by ticket.
    maybe: SmallVec<[(u64, SectorVal); 1]>,
    /// A lost flush covered it: what a read sees is not necessarily durable, so a verify must
    /// not pin it (until a flush succeeds or the power fails).
    unsure: bool,
}

impl Default for SectorState {
    fn default() -> SectorState {
        SectorState {
            stable: smallvec![SectorVal::Zero],
            pending: SmallVec::new(),
            maybe: SmallVec::new(),
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
fn dedup(vals: &mut Vals) {
    let mut out = Vals::with_capacity(vals.len());
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
#[derive(Clone, Debug, Default)]
pub struct DeviceModel {
    sectors: BTreeMap<u64, SectorState>,
    /// Sectors with completed writes not yet flushed: what a flush has to look at.
    unflushed: BTreeSet<u64>,
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

    /// Does `data` (the bytes of whole sectors from `first` on) hold values a read may return
    /// now? The first sector that does not, and what it may hold. Borrowing, with a fast path
    /// for the sectors never written (they must be zero): the checks that read whole devices
    /// spend their time here.
    pub fn mismatch(&self, first: u64, data: &[u8]) -> Option<(u64, Vec<SectorVal>)> {
        let end = first + (data.len() as u64).div_ceil(SECTOR);
        let sector_bytes = |s: u64| {
            let at = ((s - first) * SECTOR) as usize;
            &data[at..(at + SECTOR as usize).min(data.len())]
        };
        // Never-written sectors `[a, b)`: one word-wise check of the whole run, and only when
        // it fails a look for the first sector that is not zero.
        let gap_mismatch = |a: u64, b: u64| {
            let (from, to) = (
                ((a - first) * SECTOR) as usize,
                ((b - first) * SECTOR) as usize,
            );
            if is_zero(&data[from..to.min(data.len())]) {
                return None;
            }
            (a..b)
                .find(|&z| !is_zero(sector_bytes(z)))
                .map(|z| (z, vec![SectorVal::Zero]))
        };
        let mut next = first;
        for (&s, state) in self.sectors.range(first..end) {
            if let Some(bad) = gap_mismatch(next, s) {
                return Some(bad);
            }
            let vals = state.current();
            if !vals.iter().any(|v| v.matches(s, sector_bytes(s))) {
                return Some((s, vals.to_vec()));
            }
            next = s + 1;
        }
        gap_mismatch(next, end)
    }

    /// The values a sector may hold after a crash now.
    pub fn possible_after_crash(&self, sector: u64) -> Vec<SectorVal> {
        let Some(s) = self.sectors.get(&sector) else {
            return vec![SectorVal::Zero];
        };
        let mut all = s.stable.to_vec();
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
                smallvec![val]
            } else {
                let mut v: Vals = st.current().iter().cloned().collect();
                v.push(val);
                v
            };
            st.pending.push((self.seq, vals));
            self.unflushed.insert(s);
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
            let mut v: Vals = st.current().iter().cloned().collect();
            if !v.contains(&SectorVal::Zero) {
                v.push(SectorVal::Zero);
            }
            st.pending.push((self.seq, v));
            self.unflushed.insert(s);
        }
    }

    /// A flush starts; pass the result to [`DeviceModel::flush_done`].
    pub fn flush_start(&self) -> u64 {
        self.seq
    }

    /// A flush that started at `start` succeeded: everything completed before it is durable.
    pub fn flush_done(&mut self, start: u64) {
        let mut settled = Vec::new();
        for &s in &self.unflushed {
            let Some(st) = self.sectors.get_mut(&s) else {
                continue;
            };
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
            if st.pending.is_empty() {
                settled.push(s);
            }
        }
        for s in settled {
            self.unflushed.remove(&s);
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
        self.unflushed.clear();
        self.widen();
    }

    fn widen(&mut self) {
        for st in self.sectors.values_mut() {
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
            st.stable = smallvec![val];
        }
    }

    /// `verify` of whole sectors `data` from `first` on: each must hold one of the values a
    /// read may return now; a sector that could hold several is pinned to the one it holds.
    /// The number pinned, or the first sector that holds none and what it may hold.
    pub fn verify_and_pin(
        &mut self,
        first: u64,
        data: &[u8],
    ) -> Result<u64, (u64, Vec<SectorVal>)> {
        if let Some(bad) = self.mismatch(first, data) {
            return Err(bad);
        }
        let end = first + (data.len() as u64).div_ceil(SECTOR);
        let ambiguous: Vec<(u64, SectorVal)> = self
            .sectors
            .range(first..end)
            .filter(|(_, st)| st.current().len() > 1)
            .filter_map(|(&s, st)| {
                let at = ((s - first) * SECTOR) as usize;
                let bytes = &data[at..(at + SECTOR as usize).min(data.len())];
                st.current()
                    .iter()
                    .find(|v| v.matches(s, bytes))
                    .map(|v| (s, v.clone()))
            })
            .collect();
        let pinned = ambiguous.len() as u64;
        for (s, v) in ambiguous {
            self.pin(s, v);
        }
        Ok(pinned)
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
    fn whole_sector_generation_equals_the_byte_formula() {
        for (id, sector) in [(1, 0), (7, 12345), (u64::MAX, 3)] {
            let whole = gen_sector(id, sector);
            for (i, b) in whole.iter().enumerate() {
                assert_eq!(
                    *b,
                    gen_byte(id, sector, i),
                    "id {id} sector {sector} byte {i}"
                );
            }
        }
        let mut out = vec![0u8; 1500];
        fill_gen(9, 700, &mut out);
        for (i, b) in out.iter().enumerate() {
            let pos = 700 + i as u64;
            assert_eq!(*b, gen_byte(9, pos / SECTOR, (pos % SECTOR) as usize));
        }
    }

    #[test]
    fn mismatch_finds_the_first_wrong_sector_written_or_not() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(1024, 1024, &WriteData::Gen(5));
        m.complete_write(t, true);
        let mut data = vec![0u8; 8 * SECTOR as usize];
        fill_gen(5, 1024, &mut data[1024..2048]);
        assert_eq!(m.mismatch(0, &data), None);
        data[3000] = 1;
        assert_eq!(m.mismatch(0, &data), Some((5, vec![SectorVal::Zero])));
        data[3000] = 0;
        data[1030] ^= 0xff;
        assert_eq!(m.mismatch(0, &data), Some((2, vec![SectorVal::Gen(5)])));
        assert_eq!(m.verify_and_pin(3, &data[3 * SECTOR as usize..]), Ok(0));
    }

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
