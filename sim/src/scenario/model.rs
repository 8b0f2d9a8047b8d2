//! The reference model of a device's guest-visible bytes, kept outside the engine.
//!
//! Per 512-byte sector (kept as runs of sectors sharing one state) it keeps the set of values the sector may durably hold (`stable`), the
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

/// Word `j` of a generated sector with seed `x`: byte k of it is byte k of x, xored with j.
fn gen_word(x: u64, j: usize) -> u64 {
    x ^ (j as u64).wrapping_mul(0x0101_0101_0101_0101)
}

/// Write sector `sector` as workload write `id` fills it into `out` (one whole sector).
fn put_gen_sector(id: u64, sector: u64, out: &mut [u8]) {
    let x = gen_seed(id, sector);
    for (j, word) in out.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&gen_word(x, j).to_le_bytes());
    }
}

/// The whole sector `sector` as workload write `id` fills it (what `gen_byte` gives byte by
/// byte, a word at a time: the checks run over every sector of every verify).
pub fn gen_sector(id: u64, sector: u64) -> [u8; SECTOR as usize] {
    let mut out = [0u8; SECTOR as usize];
    put_gen_sector(id, sector, &mut out);
    out
}

/// True when `data` (one whole sector) is `gen_sector(id, sector)`: compared a word at a time,
/// without building the sector.
fn gen_matches(id: u64, sector: u64, data: &[u8]) -> bool {
    let x = gen_seed(id, sector);
    data.chunks_exact(8)
        .enumerate()
        .all(|(j, word)| word == gen_word(x, j).to_le_bytes())
}

/// True when every byte of `data` is `v`: eight bytes at a time (pattern writes fill whole
/// images, and every verify checks them).
fn is_fill(data: &[u8], v: u8) -> bool {
    let word = u64::from_ne_bytes([v; 8]);
    let mut words = data.chunks_exact(8);
    words
        .by_ref()
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == word)
        && words.remainder().iter().all(|&b| b == v)
}

/// Fill `out` with workload write `id`'s content from byte offset `pos` of the device.
pub fn fill_gen(id: u64, pos: u64, out: &mut [u8]) {
    let mut at = 0;
    while at < out.len() {
        let off = pos + at as u64;
        let (sector, within) = (off / SECTOR, (off % SECTOR) as usize);
        let n = (SECTOR as usize - within).min(out.len() - at);
        if n == SECTOR as usize {
            // Whole sectors (every workload write): generated in place, not copied.
            put_gen_sector(id, sector, &mut out[at..at + n]);
        } else {
            out[at..at + n].copy_from_slice(&gen_sector(id, sector)[within..within + n]);
        }
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
            SectorVal::Fill(v) => is_fill(data, *v),
            SectorVal::Gen(id) => data.len() == SECTOR as usize && gen_matches(*id, sector, data),
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

/// What every sector of a run may hold. A value stands for its bytes at each sector of the run
/// (`Gen` content depends on the sector, the others do not), so one state serves a whole run.
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

/// Sectors `[start, end)` (the map key is `start`) sharing one state.
#[derive(Clone, Debug)]
struct Run {
    end: u64,
    st: SectorState,
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
    /// Sector ranges `[a, b)` and the value the write puts in each of their sectors.
    values: Vec<(u64, u64, SectorVal)>,
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

/// The model of one device: runs of sectors with one state each (a 64 KiB write is one run,
/// not 128 sector entries: the model is updated on every request of every workload).
/// Sectors outside every run were never touched and hold zeroes.
#[derive(Clone, Debug, Default)]
pub struct DeviceModel {
    runs: BTreeMap<u64, Run>,
    /// Starts of runs with completed writes not yet flushed: what a flush has to look at.
    unflushed: BTreeSet<u64>,
    seq: u64,
    next_ticket: u64,
    /// A fault that loses the data of a failed flush was injected (`Family::LostFlush`): from
    /// then on a failed guest flush widens the unflushed sectors ([`DeviceModel::flush_failed`]).
    pub lossy_flush: bool,
    /// Guest writes started since the last [`DeviceModel::take_submitted`], as `(offset, len)`,
    /// kept only once something asked (`track_submitted`): the dirty bitmap oracle's input.
    submitted: Vec<(u64, u64)>,
    /// Keep `submitted` (a bitmap oracle watches this device).
    pub track_submitted: bool,
}

impl DeviceModel {
    /// A device whose every sector is zero.
    pub fn new() -> DeviceModel {
        DeviceModel::default()
    }

    /// The device's contents become `saved`'s (an internal snapshot applied); the request
    /// bookkeeping (tickets, tracking, fault mode) stays this model's.
    pub fn restore_contents(&mut self, saved: &DeviceModel) {
        self.runs = saved.runs.clone();
        self.unflushed = saved.unflushed.clone();
    }

    /// The state of `sector`, if it was ever touched.
    fn state(&self, sector: u64) -> Option<&SectorState> {
        self.runs
            .range(..=sector)
            .next_back()
            .filter(|(_, r)| sector < r.end)
            .map(|(_, r)| &r.st)
    }

    /// Runs overlapping sectors `[a, b)`, clipped to it: `(start, end, state)`.
    fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = (u64, u64, &SectorState)> {
        let before = self
            .runs
            .range(..a)
            .next_back()
            .filter(|(_, r)| r.end > a)
            .map(|(_, r)| (a, r.end.min(b), &r.st));
        let inside = self
            .runs
            .range(a..b)
            .map(move |(&s, r)| (s, r.end.min(b), &r.st));
        before.into_iter().chain(inside)
    }

    /// Make a run boundary at `at` (the run across it becomes two with the same state).
    fn split(&mut self, at: u64) {
        let Some((&start, run)) = self.runs.range_mut(..at).next_back() else {
            return;
        };
        if run.end <= at {
            return;
        }
        let tail = Run {
            end: run.end,
            st: run.st.clone(),
        };
        run.end = at;
        if self.unflushed.contains(&start) {
            self.unflushed.insert(at);
        }
        self.runs.insert(at, tail);
    }

    /// Make sectors `[a, b)` exactly a sequence of runs (boundaries at `a` and `b`, untouched
    /// gaps filled with zero runs), ready for `runs.range_mut(a..b)`.
    fn cover(&mut self, a: u64, b: u64) {
        self.split(a);
        self.split(b);
        let mut gaps = Vec::new();
        let mut next = a;
        for (&s, r) in self.runs.range(a..b) {
            if s > next {
                gaps.push((next, s));
            }
            next = r.end;
        }
        if next < b {
            gaps.push((next, b));
        }
        for (start, end) in gaps {
            self.runs.insert(
                start,
                Run {
                    end,
                    st: SectorState::default(),
                },
            );
        }
    }

    /// The values a read of `sector` may return now.
    pub fn expected(&self, sector: u64) -> Vec<SectorVal> {
        self.state(sector)
            .map_or_else(|| vec![SectorVal::Zero], |s| s.current().to_vec())
    }

    /// Does `data` (the bytes of whole sectors from `first` on) hold values a read may return
    /// now? The first sector that does not, and what it may hold. Borrowing, and a run at a
    /// time (never-written runs and runs of one zero or fill value in one word-wise pass): the
    /// checks that read whole devices spend their time here.
    pub fn mismatch(&self, first: u64, data: &[u8]) -> Option<(u64, Vec<SectorVal>)> {
        let end = first + (data.len() as u64).div_ceil(SECTOR);
        let zero = [SectorVal::Zero];
        let mut next = first;
        for (a, b, state) in self.overlapping(first, end) {
            if let Some(s) = run_mismatch(&zero, first, data, next, a) {
                return Some((s, vec![SectorVal::Zero]));
            }
            let vals = state.current();
            if let Some(s) = run_mismatch(vals, first, data, a, b) {
                return Some((s, vals.to_vec()));
            }
            next = b;
        }
        run_mismatch(&zero, first, data, next, end).map(|s| (s, vec![SectorVal::Zero]))
    }

    /// The values a sector may hold after a crash now.
    pub fn possible_after_crash(&self, sector: u64) -> Vec<SectorVal> {
        let Some(s) = self.state(sector) else {
            return vec![SectorVal::Zero];
        };
        let mut all = s.stable.to_vec();
        for (_, vals) in &s.pending {
            all.extend(vals.iter().cloned());
        }
        all.extend(s.maybe.iter().map(|(_, v)| v.clone()));
        all
    }

    /// What a write of `data` over `[offset, offset+len)` puts in partial sector `s`: the new
    /// bytes over what the sector holds now.
    fn partial(&self, s: u64, offset: u64, len: u64, data: &WriteData) -> SectorVal {
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

    /// A write of `data` to `[offset, offset+len)` starts.
    pub fn begin_write(&mut self, offset: u64, len: u64, data: &WriteData) -> Ticket {
        if self.track_submitted {
            self.submitted.push((offset, len));
        }
        self.next_ticket += 1;
        let id = self.next_ticket;
        let (first, end) = (offset / SECTOR, (offset + len).div_ceil(SECTOR));
        // Whole sectors `[wa, wb)`; a partial one at either side of them.
        let (wa, wb) = (offset.div_ceil(SECTOR), (offset + len) / SECTOR);
        let mut values = Vec::new();
        if wa < wb {
            if first < wa {
                values.push((first, wa, self.partial(first, offset, len, data)));
            }
            let whole = match data {
                WriteData::Zero => SectorVal::Zero,
                WriteData::Fill(b) => SectorVal::Fill(*b),
                WriteData::Gen(g) => SectorVal::Gen(*g),
            };
            values.push((wa, wb, whole));
            if wb < end {
                values.push((wb, end, self.partial(wb, offset, len, data)));
            }
        } else {
            for s in first..end {
                values.push((s, s + 1, self.partial(s, offset, len, data)));
            }
        }
        for (a, b, val) in &values {
            self.cover(*a, *b);
            for (_, r) in self.runs.range_mut(*a..*b) {
                r.st.maybe.push((id, val.clone()));
            }
        }
        Ticket {
            id,
            offset,
            len,
            values,
        }
    }

    /// The guest writes started since the last call (see `track_submitted`).
    pub fn take_submitted(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.submitted)
    }

    /// Forget the last write started: it was declared content, not a guest write
    /// (`model DEV fill`).
    pub fn unsubmit_last(&mut self) {
        self.submitted.pop();
    }

    /// A write finished. A failed write may have landed in part: each sector may hold either.
    pub fn complete_write(&mut self, ticket: Ticket, ok: bool) {
        self.seq += 1;
        for (a, b, val) in ticket.values {
            self.cover(a, b);
            for (&s, r) in self.runs.range_mut(a..b) {
                let st = &mut r.st;
                st.maybe.retain(|(id, _)| *id != ticket.id);
                let vals = if ok {
                    smallvec![val.clone()]
                } else {
                    let mut v: Vals = st.current().iter().cloned().collect();
                    v.push(val.clone());
                    v
                };
                st.pending.push((self.seq, vals));
                self.unflushed.insert(s);
            }
        }
    }

    /// A discard finished: the range may read as zeroes or as before (partial sectors are not
    /// discarded).
    pub fn discarded(&mut self, offset: u64, len: u64) {
        self.seq += 1;
        let (a, b) = (offset.div_ceil(SECTOR), (offset + len) / SECTOR);
        if a >= b {
            return;
        }
        self.cover(a, b);
        for (&s, r) in self.runs.range_mut(a..b) {
            let st = &mut r.st;
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
            let Some(r) = self.runs.get_mut(&s) else {
                continue;
            };
            let st = &mut r.st;
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
        for s in std::mem::take(&mut self.unflushed) {
            let Some(r) = self.runs.get_mut(&s) else {
                continue;
            };
            let st = &mut r.st;
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
        for r in self.runs.values_mut() {
            let st = &mut r.st;
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

    /// After a verify: sectors `[a, b)` hold what was observed (durable by now, or the verify
    /// would have failed), unless something still in flight or unflushed may change them.
    fn pin(&mut self, a: u64, b: u64, val: &SectorVal) {
        self.split(a);
        self.split(b);
        for (_, r) in self.runs.range_mut(a..b) {
            let st = &mut r.st;
            if st.pending.is_empty() && st.maybe.is_empty() && !st.unsure {
                st.stable = smallvec![val.clone()];
            }
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
        // Ranges of ambiguous sectors observed holding one value, consecutive ones merged.
        let mut pins: Vec<(u64, u64, SectorVal)> = Vec::new();
        let mut pinned = 0;
        for (a, b, st) in self.overlapping(first, end) {
            if st.current().len() < 2 {
                continue;
            }
            for s in a..b {
                let Some(v) = st
                    .current()
                    .iter()
                    .find(|v| v.matches(s, sector_bytes(first, data, s)))
                else {
                    continue;
                };
                pinned += 1;
                match pins.last_mut() {
                    Some((_, to, last)) if *to == s && last == v => *to = s + 1,
                    _ => pins.push((s, s + 1, v.clone())),
                }
            }
        }
        for (a, b, v) in pins {
            self.pin(a, b, &v);
        }
        Ok(pinned)
    }

    /// Sectors the model knows anything about (others are zero).
    pub fn touched(&self) -> usize {
        self.runs.iter().map(|(&s, r)| (r.end - s) as usize).sum()
    }
}

/// The bytes of sector `s` in `data` (whole sectors from `first` on; the last may be short).
fn sector_bytes(first: u64, data: &[u8], s: u64) -> &[u8] {
    let at = ((s - first) * SECTOR) as usize;
    &data[at..(at + SECTOR as usize).min(data.len())]
}

/// The first sector of `[a, b)` (within `data`, whole sectors from `first` on) that holds none
/// of `vals`. A single zero or fill value is checked over the whole range at once, and only
/// when that fails sector by sector to name the first bad one.
fn run_mismatch(vals: &[SectorVal], first: u64, data: &[u8], a: u64, b: u64) -> Option<u64> {
    if a >= b {
        return None;
    }
    let span =
        &data[((a - first) * SECTOR) as usize..(((b - first) * SECTOR) as usize).min(data.len())];
    let uniform_ok = match vals {
        [SectorVal::Zero] => is_zero(span),
        [SectorVal::Fill(v)] => is_fill(span, *v),
        _ => false,
    };
    if uniform_ok {
        return None;
    }
    (a..b).find(|&s| {
        let bytes = sector_bytes(first, data, s);
        !vals.iter().any(|v| v.matches(s, bytes))
    })
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

    #[test]
    fn a_write_inside_a_run_splits_it_and_each_part_keeps_its_own_history() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(0, 64 * SECTOR, &WriteData::Gen(1));
        m.complete_write(t, true);
        m.flush_done(m.flush_start());
        let t = m.begin_write(10 * SECTOR, 2 * SECTOR, &WriteData::Gen(2));
        assert_eq!(
            m.possible_after_crash(10),
            vec![SectorVal::Gen(1), SectorVal::Gen(2)]
        );
        m.complete_write(t, true);
        assert_eq!(m.expected(9), vec![SectorVal::Gen(1)]);
        assert_eq!(m.expected(10), vec![SectorVal::Gen(2)]);
        assert_eq!(m.expected(12), vec![SectorVal::Gen(1)]);
        assert_eq!(m.touched(), 64);
        m.crash();
        assert_eq!(m.expected(11), vec![SectorVal::Gen(1), SectorVal::Gen(2)]);
        assert_eq!(m.expected(20), vec![SectorVal::Gen(1)]);
        // A verify sees the old write in sector 10 and the new one in 11: each is pinned alone.
        let mut data = vec![0u8; 64 * SECTOR as usize];
        fill_gen(1, 0, &mut data);
        fill_gen(
            2,
            11 * SECTOR,
            &mut data[11 * SECTOR as usize..12 * SECTOR as usize],
        );
        assert_eq!(m.verify_and_pin(0, &data), Ok(2));
        assert_eq!(m.expected(10), vec![SectorVal::Gen(1)]);
        assert_eq!(m.expected(11), vec![SectorVal::Gen(2)]);
    }

    #[test]
    fn lost_and_misplaced_workload_writes_are_caught() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(4 * SECTOR, 16 * SECTOR, &WriteData::Gen(3));
        m.complete_write(t, true);
        let mut good = vec![0u8; 32 * SECTOR as usize];
        fill_gen(
            3,
            4 * SECTOR,
            &mut good[4 * SECTOR as usize..20 * SECTOR as usize],
        );
        assert_eq!(m.mismatch(0, &good), None);
        // Lost: the range still reads as zeroes.
        let lost = vec![0u8; 32 * SECTOR as usize];
        assert_eq!(m.mismatch(0, &lost), Some((4, vec![SectorVal::Gen(3)])));
        // Misplaced by one sector: every byte is the write's, at the wrong place.
        let mut shifted = vec![0u8; 32 * SECTOR as usize];
        shifted[5 * SECTOR as usize..21 * SECTOR as usize]
            .copy_from_slice(&good[4 * SECTOR as usize..20 * SECTOR as usize]);
        assert_eq!(m.mismatch(0, &shifted), Some((4, vec![SectorVal::Gen(3)])));
        // Another write's content in the right place.
        let mut other = good.clone();
        fill_gen(
            4,
            9 * SECTOR,
            &mut other[9 * SECTOR as usize..10 * SECTOR as usize],
        );
        assert_eq!(m.mismatch(0, &other), Some((9, vec![SectorVal::Gen(3)])));
        // A torn sector: one word of it wrong.
        let mut torn = good.clone();
        torn[19 * SECTOR as usize + 504] ^= 1;
        assert_eq!(m.mismatch(0, &torn), Some((19, vec![SectorVal::Gen(3)])));
    }

    #[test]
    fn one_wrong_byte_in_a_pattern_run_is_found_wherever_it_is() {
        let mut m = DeviceModel::new();
        let t = m.begin_write(0, 8 * SECTOR, &WriteData::Fill(0xa5));
        m.complete_write(t, true);
        let good = vec![0xa5u8; 8 * SECTOR as usize];
        assert_eq!(m.mismatch(0, &good), None);
        for at in [0, 7, 8, 1000, 8 * SECTOR as usize - 1] {
            let mut bad = good.clone();
            bad[at] = 0xa4;
            let sector = at as u64 / SECTOR;
            assert_eq!(
                m.mismatch(0, &bad),
                Some((sector, vec![SectorVal::Fill(0xa5)])),
                "byte {at}"
            );
        }
        assert!(is_fill(&good[..13], 0xa5) && !is_fill(&[0xa5, 0xa5, 0, 0xa5], 0xa5));
    }
}
