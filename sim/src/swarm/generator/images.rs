//! Images and the graph: the top image (raw or qcow2 with drawn cluster size, refcount width,
//! compat level, lazy refcounts and extended L2 entries), a backing chain of 0–4 layers each holding drawn data,
//! optional blkdebug filter, discard mode, and the guest device with its error policies and
//! cache mode.

use serde_json::{Value, json};

/// Whether seeds draw qcow2 images with extended L2 entries (see the draw).
const DRAW_EXTENDED_L2: bool = false;

use super::{Gen, Layer};
use crate::rng::{below, chance};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A whole-MiB offset below `size`.
/// The `cluster_size=Nk` of qcow2 `image create` options.
fn cluster_size_of(opts: &str) -> Option<u64> {
    let v = opts
        .split(' ')
        .find_map(|o| o.strip_prefix("cluster_size="))?;
    Some(v.strip_suffix('k')?.parse::<u64>().ok()? * KIB)
}

fn below_mib(r: &mut rand_chacha::ChaCha8Rng, size: u64) -> u64 {
    below(r, size / MIB) * MIB
}

impl Gen {
    /// Note a qcow2 image for the end-of-run `check-file`, unless it uses lazy refcounts: an
    /// open lazy image is dirty by design (its refcounts reach the disk at close), so an
    /// offline check of it sees stale refcounts, exactly as `qemu-img check` does on a live
    /// one. Such images are judged through `verify` and the repair after a crash instead.
    fn checkable(&mut self, path: &str, opts: &str) {
        if !opts.contains("lazy_refcounts=on") {
            self.qcow2_paths.push(path.to_string());
        }
    }

    /// `image create` options for a qcow2 image.
    fn qcow2_options(&mut self, backing: Option<&Layer>, backing_fmt: &str) -> String {
        let r = &mut self.r.images;
        let mut o = Vec::new();
        let cluster = [4 * KIB, 16 * KIB, 64 * KIB, 128 * KIB][below(r, 4) as usize];
        o.push(format!("cluster_size={}k", cluster / KIB));
        // The model treats a discard as "zeroes or the old value"; a v2 image over a backing
        // file shows the backing data instead (no zero clusters), so v2 goes with no discard.
        let v2 = !self.f.discard && chance(r, 0.25);
        if v2 {
            o.push("compat=0.10".into());
        } else {
            if chance(r, 0.4) {
                o.push(format!(
                    "refcount_bits={}",
                    [1, 2, 4, 8, 16, 32, 64][below(r, 7) as usize]
                ));
            }
            if chance(r, 0.3) {
                o.push("lazy_refcounts=on".into());
            }
            // Subclusters need clusters of 16 KiB or more. The draw is made but not used while
            // the subcluster write path has an open data bug the swarm found (seeds 76 and 77:
            // a write lost under concurrent subcluster writes, and after a power loss; see
            // `seeds_draw_and_pass_extended_l2_images`): the stream stays as it is, so every
            // other draw of every seed is unchanged when it comes back.
            if cluster >= 16 * KIB && chance(&mut self.r.extended_l2, 0.3) && DRAW_EXTENDED_L2 {
                o.push("extended_l2=on".into());
            }
        }
        if let Some(b) = backing {
            o.push(format!("backing_file={}", b.path));
            o.push(format!("backing_fmt={backing_fmt}"));
        }
        o.join(" ")
    }

    /// Options moving the top image's guest clusters into `top.data`. A v2 image cannot have a
    /// data file, so it becomes v3; a raw data file (every cluster mapped to its own offset
    /// from the start) only where no backing file is (QEMU refuses the two together).
    fn with_data_file(&mut self, opts: String, no_backing: bool) -> String {
        let mut o: Vec<&str> = opts.split(' ').filter(|w| *w != "compat=0.10").collect();
        o.push("data_file=top.data");
        if no_backing && chance(&mut self.r.images, 0.5) {
            o.push("data_file_raw=on");
        }
        o.join(" ")
    }

    /// A node's `blockdev-add` arguments on top of `file`.
    fn node_args(&self, node: &str, driver: &str, file: Value, backing: Option<Value>) -> Value {
        let mut a = json!({"node-name": node, "driver": driver, "file": file});
        if self.f.discard {
            a["discard"] = json!("unmap");
        }
        if let Some(b) = backing {
            a["backing"] = b;
        }
        a
    }

    fn file_spec(&self, node: &str, path: &str) -> Value {
        let mut f =
            json!({"driver": "file", "node-name": format!("{node}-file"), "filename": path});
        if self.f.discard {
            f["discard"] = json!("unmap");
        }
        f
    }

    /// Images, chain, nodes and the guest device `drive0`.
    pub(super) fn build_images(&mut self) {
        self.size = [4 * MIB, 8 * MIB, 16 * MIB][below(&mut self.r.images, 3) as usize];
        let depth = if self.f.backing {
            1 + below(&mut self.r.images, 4) as usize
        } else {
            0
        };
        let base_raw = depth > 0 && chance(&mut self.r.images, 0.3);
        self.comment(&format!(
            "images: chain of {} layer(s) under the top",
            depth
        ));
        // Lower layers, base first: each created with its content (`fill=`), written through
        // the format driver when the image is made.
        let mut fills: Vec<(u8, u64, u64)> = Vec::new();
        let mut layers: Vec<(Layer, &'static str)> = Vec::new();
        for i in 0..depth {
            let (layer, format, fill) = self.lower_layer(i, i == 0 && base_raw, layers.last());
            fills.push(fill);
            layers.push((layer, format));
        }
        let path = self.top_image(layers.last());
        self.device_line();
        for (pat, off, len) in fills {
            self.step(format!("model drive0 fill 0x{pat:02x} {off} {len}"));
        }
        self.chain = vec![Layer {
            node: "top".into(),
            path: path.into(),
        }];
        self.chain
            .extend(layers.into_iter().rev().map(|(layer, _)| layer));
        self.verify();
    }

    /// Lower layer `i` (`raw`: the raw base) over `under`: its image with its drawn content,
    /// then its node. Returns the layer, its format and the content (pattern, offset, length).
    fn lower_layer(
        &mut self,
        i: usize,
        raw: bool,
        under: Option<&(Layer, &'static str)>,
    ) -> (Layer, &'static str, (u8, u64, u64)) {
        let node = format!("l{i}");
        let path = format!("l{i}.{}", if raw { "img" } else { "qcow2" });
        let opts = if raw {
            String::new()
        } else {
            self.qcow2_options(under.map(|(l, _)| l), under.map_or("qcow2", |(_, f)| f))
        };
        let pat = 0x10 + i as u8;
        let off = below_mib(&mut self.r.images, self.size);
        let len = ((1 + below(&mut self.r.images, 4)) * MIB / 2).min(self.size - off);
        let fill = format!("fill=0x{pat:02x}:{off}:{len}");
        let (format, opts) = if raw {
            ("raw", fill)
        } else {
            self.checkable(&path, &opts);
            ("qcow2", format!("{opts} {fill}"))
        };
        self.step(format!("image create {path} {format} {} {opts}", self.size));
        // A raw base has no backing; a qcow2 base must not follow its header.
        let backing = match (under, raw) {
            (_, true) => None,
            (None, false) => Some(Value::Null),
            (Some((b, _)), false) => Some(json!(b.node)),
        };
        let args = self.node_args(&node, format, self.file_spec(&node, &path), backing);
        self.qmp(&json!({"execute": "blockdev-add", "arguments": args}));
        (Layer { node, path }, format, (pat, off, len))
    }

    /// The top image over `under` (with a data file, a blkdebug filter as drawn) and its node
    /// `top`. Returns its path.
    fn top_image(&mut self, under: Option<&(Layer, &'static str)>) -> &'static str {
        let qcow2 = self.f.qcow2;
        let path = if qcow2 { "top.qcow2" } else { "top.img" };
        if qcow2 {
            let below_fmt = under.map_or("qcow2", |(_, f)| f);
            let mut opts = self.qcow2_options(under.map(|(l, _)| l), below_fmt);
            // Snapshots add references: narrow refcounts would refuse them (see `snapshots`).
            self.top_refcount_bits = opts
                .split(' ')
                .find_map(|o| o.strip_prefix("refcount_bits="))
                .map_or(16, |v| v.parse().unwrap_or(0));
            if self.f.data_file {
                opts = self.with_data_file(opts, under.is_none());
            } else {
                self.top_compress_cluster = cluster_size_of(&opts);
            }
            self.step(format!("image create {path} qcow2 {} {opts}", self.size));
            self.checkable(path, &opts);
            self.top_persistent_ok = !opts.contains("compat=0.10");
        } else {
            self.step(format!("image create {path} raw {}", self.size));
        }
        let file = self.file_spec("top", path);
        let file = if self.f.blkdebug {
            self.blkdebug_live = true;
            let mut d = json!({"driver": "blkdebug", "node-name": "dbg", "image": file});
            // A 4k request alignment makes sub-4k writes read-modify-write cycles.
            if chance(&mut self.r.images, 0.5) {
                d["align"] = json!(4096);
            }
            d
        } else {
            file
        };
        let backing = qcow2.then(|| under.map_or(Value::Null, |(b, _)| json!(b.node)));
        let args = self.node_args("top", if qcow2 { "qcow2" } else { "raw" }, file, backing);
        self.qmp(&json!({"execute": "blockdev-add", "arguments": args}));
        path
    }

    /// `device add drive0` with drawn error policies and cache mode.
    fn device_line(&mut self) {
        let r = &mut self.r.faults;
        let policies = ["report", "ignore", "enospc", "stop"];
        let mut line = "device add drive0 node=top".to_string();
        if self.f.faults {
            // `ignore` would hide a failed write from the guest; the model cannot follow it.
            let w = policies[[0, 2, 3][below(r, 3) as usize]];
            let rd = policies[[0, 3][below(r, 2) as usize]];
            self.werror_stop = matches!(w, "stop" | "enospc");
            self.rerror_stop = rd == "stop";
            line.push_str(&format!(" werror={w} rerror={rd}"));
        }
        if chance(&mut self.r.images, 0.3) {
            line.push_str(" cache=writethrough");
        }
        if self.f.copy_on_read {
            line.push_str(" copy-on-read");
        }
        self.step(line);
    }
}
