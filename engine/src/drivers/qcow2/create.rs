//! qcow2 image creation: header (+ extensions, backing name), refcount table, refcount blocks
//! covering the metadata, and an empty L1 table, laid out as consecutive clusters. With
//! preallocation, every L2 table follows the L1 table and every data cluster follows them (in
//! guest order), all mapped and counted; the data area is only extended in the file.
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use crate::driver::Prealloc;
use crate::error::{Error, Result};
use crate::graph::Child;
use crate::io::{IoBuf, ReqFlags};

use super::entry::L1Entry;
use super::entry::L2Entry;
use super::header::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, Header, INCOMPAT_COMPRESSION,
    INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, MAX_L1_BYTES, MAX_REFTABLE_BYTES,
};
use super::refcount::rb_set;
use super::units::HostOffset;

/// Largest metadata area `create` builds in memory.
const MAX_CREATE_METADATA: u64 = 1 << 30;

/// qcow2 compatibility level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// "0.10": version 2.
    V2,
    /// "1.1": version 3.
    V3,
}

/// What `create` makes.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// Cluster size: a power of two from 512 to 2 MiB.
    pub cluster_size: u64,
    /// Version.
    pub compat: Compat,
    /// Refcount width: 1, 2, 4, ..., 64 (v2: 16 only).
    pub refcount_bits: u32,
    /// Backing file name stored in the header.
    pub backing_file: Option<String>,
    /// Backing format stored in the header extension.
    pub backing_fmt: Option<String>,
    /// Set the lazy-refcounts compatible feature (v3 only).
    pub lazy_refcounts: bool,
    /// Preallocation: `Off` leaves every cluster unallocated; `Metadata` maps every guest
    /// cluster to a host cluster (L2 tables and data clusters, the file extended sparsely);
    /// `Falloc` and `Full` also reserve or zero-fill the data clusters in the file.
    pub preallocation: Prealloc,
    /// Compression type of compressed clusters: 0 zlib (deflate), 1 zstd (v3 only).
    pub compression_type: u8,
    /// External data file name stored in the header (v3 only). The caller creates the file
    /// itself (this function only writes the image); guest clusters go there at their guest
    /// offsets.
    pub data_file: Option<String>,
    /// The data file is kept a raw image of the guest disk. As QEMU does, every guest
    /// cluster is then mapped (to its own offset in the data file) from the start.
    pub data_file_raw: bool,
    /// Extended L2 entries (v3, clusters of 16 KiB or more): 32 subclusters per cluster.
    /// Preallocated clusters then have no allocated subcluster (a backing file shows through
    /// them, which is why preallocation and a backing file go together only with these).
    pub extended_l2: bool,
    /// A LUKS header built for the new image (`crypto::LuksCreate::build`): qcow2 stores it
    /// in clusters after the L1 table (`encrypt.format=luks`); the `luks` format's create
    /// writes it at the start of the file.
    pub encrypt: Option<crate::crypto::luks::Built>,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            compat: Compat::V3,
            refcount_bits: 16,
            backing_file: None,
            backing_fmt: None,
            lazy_refcounts: false,
            preallocation: Prealloc::Off,
            compression_type: 0,
            data_file: None,
            data_file_raw: false,
            extended_l2: false,
            encrypt: None,
        }
    }
}

/// Write a new, empty qcow2 image to `file` (which is truncated first).
pub async fn create(file: &Child, o: &CreateOptions) -> Result<()> {
    check_geometry(o)?;
    check_features(o)?;
    let plan = Plan::new(o)?;
    let h = plan.header(o);
    let hdr = h.serialize();
    if hdr.len() as u64 > plan.cs {
        return Err(Error::generic("Header does not fit in the first cluster"));
    }
    let img = plan.metadata(&hdr, o);
    write_image(file, o, &plan, &img).await
}

/// Cluster size, virtual size and refcount width: the numbers the layout is computed from.
fn check_geometry(o: &CreateOptions) -> Result<()> {
    let cs = o.cluster_size;
    // (QEMU refuses extended L2 entries on a v2 image before looking at the cluster size.)
    if o.extended_l2 && o.compat == Compat::V2 {
        return Err(Error::generic(
            "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(Error::generic(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if o.extended_l2 && cs < 16384 {
        return Err(Error::generic(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if !o.size.is_multiple_of(512) {
        return Err(Error::generic("Image size must be a multiple of 512 bytes"));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(Error::generic(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if o.compat == Compat::V2 && o.refcount_bits != 16 {
        return Err(Error::generic(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
        ));
    }
    if o.compat == Compat::V2 && o.lazy_refcounts {
        return Err(Error::generic(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
        ));
    }
    if o.compression_type > 1 {
        return Err(Error::generic(format!(
            "Unknown compression type {}",
            o.compression_type
        )));
    }
    if o.compat == Compat::V2 && o.compression_type != 0 {
        return Err(Error::generic(
            "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    Ok(())
}

/// Backing file, external data file and preallocation: which combinations are allowed.
/// (Checked after the geometry, in the order QEMU reports the first problem.)
fn check_features(o: &CreateOptions) -> Result<()> {
    if o.data_file.is_some() && o.compat == Compat::V2 {
        return Err(Error::generic(
            "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    // A preallocated or raw-data-file image maps every cluster itself: the backing file
    // would never be read (QEMU allows it only with extended L2 entries, whose preallocated
    // subclusters stay unallocated).
    if o.backing_file.is_some() && o.preallocation != Prealloc::Off && !o.extended_l2 {
        return Err(Error::generic(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    if o.backing_file.is_some() && o.data_file_raw {
        return Err(Error::generic(
            "Backing file and data-file-raw cannot be used at the same time",
        ));
    }
    if o.data_file_raw && o.data_file.is_none() {
        return Err(Error::generic("data-file-raw requires data-file"));
    }
    if o.data_file
        .as_ref()
        .is_some_and(|d| d.is_empty() || d.len() > 1023)
    {
        return Err(Error::generic("Data file name is empty or too long"));
    }
    if o.backing_fmt.is_some() && o.backing_file.is_none() {
        return Err(Error::generic(
            "Backing format cannot be used without backing file",
        ));
    }
    if o.backing_file.as_ref().is_some_and(|b| b.len() > 1023) {
        return Err(Error::generic("Backing file name too long"));
    }
    Ok(())
}

/// Where every metadata structure of the new image goes, in clusters from the start of the
/// file: header (cluster 0), refcount table, refcount blocks, L1 table, L2 tables (with
/// preallocation), then the data clusters.
struct Plan {
    /// Cluster size in bytes.
    cs: u64,
    /// Entries of the L1 table.
    l1_size: u64,
    /// Clusters of the L1 table (0 for a zero-size image).
    l1_clusters: u64,
    /// Clusters of the refcount table.
    rt: u64,
    /// Refcount blocks.
    rb: u64,
    /// Refcount entries per refcount block.
    rb_entries: u64,
    /// log2 of the refcount width.
    order: u32,
    /// Preallocated L2 tables (all of them, or none).
    l2_tables: u64,
    /// Preallocated guest clusters (all of them, or none).
    data_clusters: u64,
    /// Every guest cluster is mapped from the start (preallocation or a raw data file).
    prealloc: bool,
    /// Guest clusters live in an external data file, not counted here.
    external: bool,
    /// Clusters of the LUKS header area (`encrypt.format=luks`), right after the L1 table
    /// as QEMU places it.
    crypto_clusters: u64,
    /// Every cluster counted: header, reftable, refblocks, L1, L2 tables, local data.
    total: u64,
    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    entry_bytes: u64,
}

impl Plan {
    /// Size every structure, so that the refcount blocks also cover themselves.
    fn new(o: &CreateOptions) -> Result<Plan> {
        let cs = o.cluster_size;
        let entry_bytes = if o.extended_l2 { 16 } else { 8 };
        let per_l1 = cs * (cs / entry_bytes);
        let l1_size = o.size.div_ceil(per_l1);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::generic(
                "Image size is too large for this cluster size",
            ));
        }
        // A zero-size image has no L1 table at all (offset 0), as QEMU creates it: a cluster
        // reserved for an empty table would be counted but never referenced, a leak.
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let rb_entries = cs * 8 / o.refcount_bits as u64;
        let prealloc = o.preallocation != Prealloc::Off || o.data_file_raw;
        let external = o.data_file.is_some();
        let l2_tables = if prealloc { l1_size } else { 0 };
        let data_clusters = if prealloc { o.size.div_ceil(cs) } else { 0 };
        // Clusters of an external data file are not refcounted (nor in this file).
        let local_data = if external { 0 } else { data_clusters };
        let crypto_clusters = o
            .encrypt
            .as_ref()
            .map_or(0, |b| b.header.payload_bytes().div_ceil(cs));
        let mapped = l1_clusters + crypto_clusters + l2_tables + local_data;
        // Header, reftable, refblocks, L1 (, L2 tables, data): find sizes that cover themselves.
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = 1 + rt + rb + mapped;
            let nrb = total.div_ceil(rb_entries);
            let nrt = (nrb * 8).div_ceil(cs);
            if nrb == rb && nrt == rt {
                break;
            }
            (rt, rb) = (nrt.max(1), nrb.max(1));
        }
        if rt * cs > MAX_REFTABLE_BYTES {
            return Err(Error::generic(
                "Image size is too large for this cluster size and preallocation",
            ));
        }
        // The metadata is built in memory and written at once.
        if (1 + rt + rb + l1_clusters + crypto_clusters + l2_tables) * cs > MAX_CREATE_METADATA {
            return Err(Error::generic(
                "qcow2: metadata preallocation of this size is not supported (over 1 GiB of tables)",
            ));
        }
        Ok(Plan {
            cs,
            l1_size,
            l1_clusters,
            rt,
            rb,
            rb_entries,
            order: o.refcount_bits.trailing_zeros(),
            l2_tables,
            data_clusters,
            prealloc,
            external,
            crypto_clusters,
            total: 1 + rt + rb + mapped,
            entry_bytes,
        })
    }

    /// Byte offset of the L1 table (0 when there is none).
    fn l1_offset(&self) -> u64 {
        if self.l1_size == 0 {
            0
        } else {
            (1 + self.rt + self.rb) * self.cs
        }
    }

    /// First cluster of the LUKS header area.
    fn crypto_base(&self) -> u64 {
        1 + self.rt + self.rb + self.l1_clusters
    }

    /// First cluster of the preallocated L2 tables.
    fn l2_base(&self) -> u64 {
        self.crypto_base() + self.crypto_clusters
    }

    /// First cluster of the preallocated local data clusters.
    fn data_base(&self) -> u64 {
        self.l2_base() + self.l2_tables
    }

    /// The header of the new image.
    fn header(&self, o: &CreateOptions) -> Header {
        let v3 = o.compat == Compat::V3;
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        Header {
            version: if v3 { 3 } else { 2 },
            backing_offset: 0,
            backing_size: 0,
            cluster_bits: self.cs.trailing_zeros(),
            size: o.size,
            l1_size: self.l1_size as u32,
            l1_offset: self.l1_offset(),
            reftable_offset: self.cs,
            reftable_clusters: self.rt as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            crypt_method: if o.encrypt.is_some() {
                super::header::CRYPT_LUKS
            } else {
                0
            },
            crypto_area: o
                .encrypt
                .as_ref()
                .map(|b| (self.crypto_base() * self.cs, b.header.payload_bytes())),
            incompat: flag(o.compression_type != 0, INCOMPAT_COMPRESSION)
                | flag(self.external, INCOMPAT_DATA_FILE)
                | flag(o.extended_l2, INCOMPAT_EXTL2),
            compat: flag(o.lazy_refcounts, COMPAT_LAZY_REFCOUNTS),
            autoclear: flag(o.data_file_raw, AUTOCLEAR_DATA_FILE_RAW),
            refcount_order: self.order,
            header_length: if v3 { 112 } else { 72 },
            compression_type: o.compression_type,
            backing_file: o.backing_file.clone(),
            backing_fmt: o.backing_fmt.clone(),
            data_file: o.data_file.clone(),
            feature_names: Vec::new(),
            unknown_exts: Vec::new(),
        }
    }

    /// Every metadata cluster (up to the data area) in memory: the serialized header `hdr`,
    /// the refcount table and blocks counting every planned cluster once, and the L1 and
    /// L2 tables mapping every preallocated cluster.
    fn metadata(&self, hdr: &[u8], o: &CreateOptions) -> Vec<u8> {
        let cs = self.cs;
        let mut img = vec![0u8; (self.data_base() * cs) as usize];
        img[..hdr.len()].copy_from_slice(hdr);
        if let Some(b) = &o.encrypt {
            let at = (self.crypto_base() * cs) as usize;
            img[at..at + b.area.len()].copy_from_slice(&b.area);
        }
        let put = |img: &mut [u8], at: u64, v: u64| {
            img[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes())
        };
        for b in 0..self.rb {
            put(&mut img, cs + b * 8, (1 + self.rt + b) * cs);
        }
        for c in 0..self.total {
            let off = ((1 + self.rt + c / self.rb_entries) * cs) as usize;
            let idx = (c % self.rb_entries) as usize;
            rb_set(&mut img[off..off + cs as usize], self.order, idx, 1);
        }
        let l2_base = self.l2_base();
        for t in 0..self.l2_tables {
            put(
                &mut img,
                self.l1_offset() + t * 8,
                L1Entry::table(HostOffset::new((l2_base + t) * cs)).raw(),
            );
        }
        // (An extended entry's bitmap stays 0: no subcluster allocated.)
        let l2_entries = cs / self.entry_bytes;
        for g in 0..self.data_clusters {
            let at = (l2_base + g / l2_entries) * cs + (g % l2_entries) * self.entry_bytes;
            let host = if self.external {
                g
            } else {
                self.data_base() + g
            };
            put(
                &mut img,
                at,
                L2Entry::normal(HostOffset::new(host * cs)).raw(),
            );
        }
        img
    }
}

/// Truncate `file`, write the metadata `img` and extend the file over the preallocated data
/// clusters.
async fn write_image(file: &Child, o: &CreateOptions, plan: &Plan, img: &[u8]) -> Result<()> {
    // Without L2 tables the file ends where the L1 table's entries end, as QEMU writes it
    // (the rest of the L1 cluster is allocated but never written): `qemu-img info` then
    // shows the same file length and disk size for images of either tool.
    let written = if plan.l2_tables == 0 && plan.crypto_clusters == 0 {
        ((1 + plan.rt + plan.rb) * plan.cs + plan.l1_size * 8) as usize
    } else {
        img.len()
    };
    file.truncate(0, true, Prealloc::Off).await?;
    file.write(0, IoBuf::from_slice(&img[..written]), ReqFlags::NONE)
        .await
        .1?;
    if plan.prealloc && !plan.external {
        // The data clusters: the file's own preallocation (sparse for "metadata").
        let mode = match o.preallocation {
            Prealloc::Metadata => Prealloc::Off,
            m => m,
        };
        file.truncate(plan.total * plan.cs, false, mode).await?;
    }
    file.flush().await
}
