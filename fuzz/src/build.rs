//! Structure-aware qcow2 images: `ImageSpec` (from `arbitrary`) describes a valid image —
//! version, cluster size (and extended L2 entries), refcount width, size, backing file, data/zero/compressed clusters,
//! an internal snapshot, a persistent bitmap, an unknown header extension — which blk creates
//! and writes on the simulator; the bitmap directory is then laid out by hand and its
//! refcounts settled by blk's own repair. The valid image must open, read back what was
//! written and check clean. A snapshot table is added after that (blk cannot repair images
//! with snapshots, so that one is not required to check clean). Then `corruptions` overwrite
//! chosen fields (header
//! fields, L1/L2/refcount entries, snapshot and bitmap fields, any byte) with chosen values,
//! so the fuzzer reaches the code behind the header checks.

use arbitrary::Arbitrary;
use engine::driver::Prealloc;
use engine::drivers::qcow2::{
    Compat, CreateOptions, Header, RawExtension, Repair, check_node, create,
};
use engine::io::IoBuf;
use serde_json::json;

use crate::harness::{
    BACKING_RAW, BACKING_RAW_LEN, DATA_FILE, IMG, backing_byte, close, engine_of, open_qcow2, run,
    sim_with,
};
use crate::model::{Model, Op};

/// Bitmaps header extension.
const EXT_BITMAPS: u32 = 0x2385_2875;
/// Most guest bytes of a built image (the model keeps them all).
const MAX_SIZE: u64 = 1 << 20;

/// A valid image, then corruptions.
#[derive(Arbitrary, Debug)]
pub struct ImageSpec {
    /// log2 cluster size, reduced to 9..=16 (low three bits); bit 3: extended L2 entries
    /// (v3, clusters of 16 KiB or more). A bit of this field rather than a new field keeps
    /// the corpus decoding as before.
    pub cluster_bits: u8,
    /// Version 3 (else 2).
    pub v3: bool,
    /// log2 refcount width, reduced to 0..=6 (v2: always 4).
    pub refcount_order: u8,
    /// Virtual size in clusters (reduced to 1..=MAX_SIZE / cluster size).
    pub size_clusters: u16,
    /// Lazy refcounts (v3).
    pub lazy: bool,
    /// Use `backing.raw` as backing file (with the format extension when `Some(true)`).
    pub backing: Option<bool>,
    /// Guest data in an external data file (v3), kept raw or not.
    pub data_file: Option<bool>,
    /// Preallocate the metadata.
    pub prealloc: bool,
    /// zstd compression type (v3).
    pub zstd: bool,
    /// Writes, zero writes, compressed writes, discards (up to 16).
    pub ops: Vec<Op>,
    /// Add an internal snapshot of the active L1 table.
    pub snapshot: bool,
    /// Add a persistent dirty bitmap (v3): table entry kind per bitmap table entry.
    pub bitmap: Option<u8>,
    /// An unknown header extension (magic, payload up to 64 bytes).
    pub extension: Option<(u32, Vec<u8>)>,
    /// The corruptions applied after the valid image checked clean (up to 8).
    pub corruptions: Vec<Corruption>,
}

/// Where a corruption writes.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Field {
    /// A header field, by index into `HEADER_FIELDS`.
    Header(u8),
    /// Active L1 entry (index reduced into the table).
    L1(u16),
    /// Entry of the first L2 table found.
    L2(u16),
    /// Refcount table entry.
    Reftable(u16),
    /// 64-bit word of the first refcount block.
    Refblock(u16),
    /// Field of the snapshot table entry (byte offset reduced to its 40 fixed bytes).
    Snapshot(u8),
    /// Field of the bitmap directory entry / bitmaps extension.
    Bitmap(u8),
    /// Any byte of the file.
    Byte(u32),
}

/// What a corruption writes.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Value {
    /// Zero.
    Zero,
    /// All ones.
    Ones,
    /// One bit set.
    Bit(u8),
    /// The old value with one bit flipped.
    Flip(u8),
    /// The old value plus a small delta.
    Add(i8),
    /// The file length (plus a small multiple of 512).
    FileLen(u8),
    /// A multiple of the cluster size.
    Clusters(u16),
    /// Any value.
    Raw(u64),
}

/// A corruption: a field and a value.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Corruption {
    /// Where.
    pub field: Field,
    /// What.
    pub value: Value,
}

/// Header fields: (byte offset, width in bytes).
const HEADER_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // magic
    (4, 4),   // version
    (8, 8),   // backing file offset
    (16, 4),  // backing file size
    (20, 4),  // cluster bits
    (24, 8),  // size
    (32, 4),  // crypt method
    (36, 4),  // l1 size
    (40, 8),  // l1 offset
    (48, 8),  // refcount table offset
    (56, 4),  // refcount table clusters
    (60, 4),  // nb snapshots
    (64, 8),  // snapshots offset
    (72, 8),  // incompatible features
    (80, 8),  // compatible features
    (88, 8),  // autoclear features
    (96, 4),  // refcount order
    (100, 4), // header length
    (104, 1), // compression type
    (112, 4), // first extension magic
    (116, 4), // first extension length
];

/// Where the builder put things (for the corruptions).
#[derive(Default, Debug)]
struct Layout {
    cs: u64,
    l1: (u64, u64),
    reftable: (u64, u64),
    first_l2: Option<u64>,
    first_refblock: Option<u64>,
    snapshot_entry: Option<u64>,
    bitmap_dir_entry: Option<u64>,
    bitmap_ext: Option<u64>,
}

fn be64(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

fn put(b: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let end = off as usize + bytes.len();
    if b.len() < end {
        b.resize(end, 0);
    }
    b[off as usize..end].copy_from_slice(bytes);
}

/// Build the valid image of `spec`, check it, corrupt it. Returns the corrupted image and the
/// bytes of its external data file (`DATA_FILE`, empty when it has none), or `None` when the
/// spec asks for nothing blk can create (the input is skipped).
pub fn build(spec: &ImageSpec) -> Option<(Vec<u8>, Vec<u8>)> {
    let cluster_bits = 9 + (spec.cluster_bits as u32 % 8);
    let cs = 1u64 << cluster_bits;
    let refcount_bits = if spec.v3 {
        1u32 << (spec.refcount_order % 7)
    } else {
        16
    };
    let clusters = 1 + spec.size_clusters as u64 % (MAX_SIZE / cs);
    let size = clusters * cs;
    let opts = CreateOptions {
        size,
        cluster_size: cs,
        compat: if spec.v3 { Compat::V3 } else { Compat::V2 },
        refcount_bits,
        backing_file: spec.backing.map(|_| BACKING_RAW.to_string()),
        backing_fmt: match spec.backing {
            Some(true) => Some("raw".into()),
            _ => None,
        },
        lazy_refcounts: spec.v3 && spec.lazy,
        preallocation: if spec.prealloc {
            Prealloc::Metadata
        } else {
            Prealloc::Off
        },
        compression_type: u8::from(spec.v3 && spec.zstd),
        data_file: (spec.v3 && spec.data_file.is_some()).then(|| DATA_FILE.to_string()),
        data_file_raw: spec.v3 && spec.data_file == Some(true),
        extended_l2: spec.v3 && cs >= 16384 && spec.cluster_bits & 0x08 != 0,
        encrypt: None,
    };
    let backing: Option<Vec<u8>> = spec
        .backing
        .map(|_| (0..BACKING_RAW_LEN).map(backing_byte).collect());

    // 1. blk creates the image and writes the data.
    let sim = sim_with(&[(IMG, &[]), (DATA_FILE, &[])]);
    let engine = engine_of(&sim);
    let mut model = Model::new(size, cs, backing.clone());
    let created = run(&sim, async {
        engine
            .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": IMG}))
            .await
            .expect("add file node");
        let bb = engine
            .device_add("c", "f", engine::backend::BackendOptions::tool(false))
            .expect("device on file node");
        let r = create(&bb.root().expect("root"), &opts).await;
        engine.device_del("c").await.expect("device_del");
        engine.blockdev_del("f").await.expect("blockdev_del");
        if r.is_err() {
            // E.g. a backing file name that does not fit a 512-byte header cluster.
            return false;
        }
        let bb = open_qcow2(&engine, "q", "d", IMG, false)
            .await
            .expect("a freshly created image opens");
        for op in spec.ops.iter().take(16) {
            model.apply(&bb, op).await;
        }
        bb.flush().await.expect("flush");
        close(&engine, "q", "d").await.expect("close");
        true
    });
    if !created {
        return None;
    }
    let mut img = sim.fs().durable_bytes(IMG).expect("image bytes");
    let data = sim.fs().durable_bytes(DATA_FILE).expect("data file bytes");
    let h = Header::parse(&img[..img.len().min(cs as usize)], img.len() as u64)
        .expect("blk's own image parses");
    let mut lay = Layout {
        cs,
        ..Layout::default()
    };

    // 2. Structures blk cannot create: laid out by hand after the end of the file.
    let mut h2 = h.clone();
    let mut end = (img.len() as u64).next_multiple_of(cs);
    let mut header_changed = false;
    if let (Some(kind), true) = (spec.bitmap, spec.v3) {
        // One bitmap with 64 KiB granularity: each table entry covers cs * 8 * 64 KiB.
        let per_entry = cs * 8 * 65536;
        let entries = size.div_ceil(per_entry);
        let table = end;
        end += (entries * 8).next_multiple_of(cs);
        for i in 0..entries {
            let v = match (kind >> (i % 4)) % 3 {
                0 => 0,
                1 => 1,
                _ => {
                    let data = end;
                    end += cs;
                    put(&mut img, data + cs - 1, &[0xff]);
                    data
                }
            };
            put(&mut img, table + 8 * i, &v.to_be_bytes());
        }
        let dir = end;
        let mut d = Vec::new();
        d.extend_from_slice(&table.to_be_bytes());
        d.extend_from_slice(&(entries as u32).to_be_bytes());
        d.extend_from_slice(&0u32.to_be_bytes()); // flags
        d.push(1); // type: dirty tracking
        d.push(16); // granularity bits
        d.extend_from_slice(&2u16.to_be_bytes()); // name size
        d.extend_from_slice(&0u32.to_be_bytes()); // extra data size
        d.extend_from_slice(b"b0");
        d.resize(d.len().next_multiple_of(8), 0);
        put(&mut img, dir, &d);
        end += (d.len() as u64).next_multiple_of(cs);
        let mut x = Vec::new();
        x.extend_from_slice(&1u32.to_be_bytes());
        x.extend_from_slice(&0u32.to_be_bytes());
        x.extend_from_slice(&(d.len() as u64).to_be_bytes());
        x.extend_from_slice(&dir.to_be_bytes());
        h2.unknown_exts.push(RawExtension {
            magic: EXT_BITMAPS,
            data: x,
        });
        h2.autoclear |= 1;
        lay.bitmap_dir_entry = Some(dir);
        header_changed = true;
    }
    if let Some((magic, data)) = &spec.extension {
        let known = [0, EXT_BITMAPS, 0xe279_2aca, 0x6803_f857, 0x4441_5441];
        if !known.contains(magic) {
            h2.unknown_exts.push(RawExtension {
                magic: *magic,
                data: data.iter().take(64).copied().collect(),
            });
            header_changed = true;
        }
    }
    if header_changed {
        let bytes = h2.serialize();
        if bytes.len() as u64 > cs {
            return None;
        }
        lay.bitmap_ext = find_ext(&bytes, EXT_BITMAPS);
        // The whole first cluster is the header's.
        put(&mut img, 0, &vec![0u8; cs as usize]);
        put(&mut img, 0, &bytes);
        img.resize(end.max(img.len() as u64) as usize, 0);
    }

    // 3. The valid image: repaired (refcounts of the hand-made structures), then it must check
    // clean and read back what was written.
    let sim = sim_with(&[(IMG, &img), (DATA_FILE, &data)]);
    let engine = engine_of(&sim);
    run(&sim, async {
        let bb = open_qcow2(&engine, "q", "d", IMG, false)
            .await
            .unwrap_or_else(|e| panic!("the valid image does not open: {e}"));
        let node = engine.node("q").expect("node");
        if header_changed {
            let rep = check_node(&node, Some(Repair::All))
                .await
                .unwrap_or_else(|e| panic!("repair of the valid image failed: {e}"));
            assert!(
                rep.corruptions == 0 && rep.check_errors == 0,
                "repair left the valid image corrupt: {rep:?}"
            );
        }
        let rep = check_node(&node, None)
            .await
            .unwrap_or_else(|e| panic!("check of the valid image failed: {e}"));
        assert!(
            rep.corruptions == 0 && rep.check_errors == 0 && rep.leaks == 0,
            "the valid image does not check clean: {rep:?}"
        );
        model.verify_all(&bb, "valid image").await;
        let (_, r) = bb.read(0, IoBuf::new(512)).await;
        r.expect("read");
        close(&engine, "q", "d").await.expect("close");
    });
    let mut img = sim.fs().durable_bytes(IMG).expect("image bytes");
    let data = sim.fs().durable_bytes(DATA_FILE).expect("data file bytes");
    // The repair may have moved the refcount structures: the layout of what is there now.
    let h = Header::parse(&img[..img.len().min(cs as usize)], img.len() as u64)
        .expect("the valid image parses");
    lay.l1 = (h.l1_offset, h.l1_size as u64);
    lay.reftable = (h.reftable_offset, h.reftable_clusters as u64 * cs / 8);
    lay.first_l2 = (0..h.l1_size as u64)
        .map(|i| be64(&img, h.l1_offset + 8 * i) & 0x00ff_ffff_ffff_fe00)
        .find(|&o| o != 0);
    lay.first_refblock = Some(be64(&img, h.reftable_offset) & !0x1ff).filter(|&o| o != 0);

    // 4. An internal snapshot sharing the active L1 table's clusters. blk cannot repair the
    // refcounts of an image with snapshots, so they are left as they are (the check counts
    // the shared clusters as corrupt); the snapshot table is there to be parsed and corrupted.
    let mut end = (img.len() as u64).next_multiple_of(cs);
    if spec.snapshot {
        let l1_bytes = (h.l1_size as u64 * 8).max(8);
        let snap_l1 = end;
        for i in 0..h.l1_size as u64 {
            let e = be64(&img, h.l1_offset + 8 * i) & !(1 << 63);
            put(&mut img, snap_l1 + 8 * i, &e.to_be_bytes());
        }
        end += l1_bytes.next_multiple_of(cs);
        let table = end;
        let mut e = Vec::new();
        e.extend_from_slice(&snap_l1.to_be_bytes());
        e.extend_from_slice(&h.l1_size.to_be_bytes());
        e.extend_from_slice(&1u16.to_be_bytes()); // id length
        e.extend_from_slice(&4u16.to_be_bytes()); // name length
        e.extend_from_slice(&[0u8; 16]); // date, vm clock
        e.extend_from_slice(&0u32.to_be_bytes()); // vm state size
        e.extend_from_slice(&16u32.to_be_bytes()); // extra data size
        e.extend_from_slice(&0u64.to_be_bytes()); // vm state size (large)
        e.extend_from_slice(&size.to_be_bytes()); // disk size
        e.extend_from_slice(b"1snap");
        e.resize(e.len().next_multiple_of(8), 0);
        put(&mut img, table, &e);
        end += (e.len() as u64).next_multiple_of(cs);
        put(&mut img, 60, &1u32.to_be_bytes());
        put(&mut img, 64, &table.to_be_bytes());
        lay.snapshot_entry = Some(table);
        img.resize(end.max(img.len() as u64) as usize, 0);
    }

    // 5. The corruptions.
    for c in spec.corruptions.iter().take(8) {
        corrupt(&mut img, &lay, *c);
    }
    Some((img, data))
}

/// Offset of the payload of header extension `magic` in a serialised header.
fn find_ext(h: &[u8], magic: u32) -> Option<u64> {
    let mut off = 112usize;
    while off + 8 <= h.len() {
        let m = u32::from_be_bytes(h[off..off + 4].try_into().ok()?);
        let len = u32::from_be_bytes(h[off + 4..off + 8].try_into().ok()?) as usize;
        if m == 0 {
            return None;
        }
        if m == magic {
            return Some(off as u64 + 8);
        }
        off += 8 + len.next_multiple_of(8);
    }
    None
}

/// Apply one corruption (fields that do not exist in this image are left alone).
fn corrupt(img: &mut [u8], lay: &Layout, c: Corruption) {
    let (off, width) = match c.field {
        Field::Header(i) => HEADER_FIELDS[i as usize % HEADER_FIELDS.len()],
        Field::L1(i) if lay.l1.1 > 0 => ((lay.l1.0 + 8 * (i as u64 % lay.l1.1)) as usize, 8),
        Field::L2(i) => match lay.first_l2 {
            Some(l2) => ((l2 + 8 * (i as u64 % (lay.cs / 8))) as usize, 8),
            None => return,
        },
        Field::Reftable(i) if lay.reftable.1 > 0 => (
            (lay.reftable.0 + 8 * (i as u64 % lay.reftable.1)) as usize,
            8,
        ),
        Field::Refblock(i) => match lay.first_refblock {
            Some(rb) => ((rb + 8 * (i as u64 % (lay.cs / 8))) as usize, 8),
            None => return,
        },
        Field::Snapshot(i) => match lay.snapshot_entry {
            // Fixed fields: l1 offset, l1 size, id/name lengths, ..., extra data size.
            Some(t) => {
                let fields = [(0, 8), (8, 4), (12, 2), (14, 2), (32, 4), (36, 4), (40, 8)];
                let (o, w) = fields[i as usize % fields.len()];
                (t as usize + o, w)
            }
            None => return,
        },
        Field::Bitmap(i) => {
            let fields: Vec<(u64, usize)> = [
                lay.bitmap_ext.map(|x| (x, 4)),            // nb bitmaps
                lay.bitmap_ext.map(|x| (x + 8, 8)),        // directory size
                lay.bitmap_ext.map(|x| (x + 16, 8)),       // directory offset
                lay.bitmap_dir_entry.map(|d| (d, 8)),      // table offset
                lay.bitmap_dir_entry.map(|d| (d + 8, 4)),  // table size
                lay.bitmap_dir_entry.map(|d| (d + 12, 4)), // flags
                lay.bitmap_dir_entry.map(|d| (d + 17, 1)), // granularity
                lay.bitmap_dir_entry.map(|d| (d + 18, 2)), // name size
                lay.bitmap_dir_entry.map(|d| (d + 20, 4)), // extra data size
            ]
            .into_iter()
            .flatten()
            .collect();
            if fields.is_empty() {
                return;
            }
            let (o, w) = fields[i as usize % fields.len()];
            (o as usize, w)
        }
        Field::Byte(i) => {
            if img.is_empty() {
                return;
            }
            (i as usize % img.len(), 1)
        }
        _ => return,
    };
    if off + width > img.len() {
        return;
    }
    let mut old = [0u8; 8];
    old[8 - width..].copy_from_slice(&img[off..off + width]);
    let old = u64::from_be_bytes(old);
    let bits = (width * 8) as u32;
    let v: u64 = match c.value {
        Value::Zero => 0,
        Value::Ones => u64::MAX,
        Value::Bit(b) => 1u64 << (b as u32 % bits),
        Value::Flip(b) => old ^ (1u64 << (b as u32 % bits)),
        Value::Add(d) => old.wrapping_add(d as i64 as u64),
        Value::FileLen(k) => img.len() as u64 + 512 * k as u64,
        Value::Clusters(k) => k as u64 * lay.cs,
        Value::Raw(v) => v,
    };
    let bytes = v.to_be_bytes();
    img[off..off + width].copy_from_slice(&bytes[8 - width..]);
}
