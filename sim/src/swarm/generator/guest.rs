//! Guest activity: seeded workloads (mix, sizes, alignment, queue depth, think time), qemu-io
//! commands (unaligned writes, write-zeroes, discards), blkdebug breakpoints that park and
//! release requests, drained sections (nested, subtree) and growing the device.

use serde_json::json;

use rand_chacha::ChaCha8Rng;

use super::Gen;
use crate::rng::{below, chance};

impl Gen {
    /// A workload's arguments: mix, block sizes, queue depth, think time.
    pub(super) fn workload_args(&mut self, endless: bool) -> String {
        let r = &mut self.r.guest;
        let write = 30 + below(r, 60);
        let read = below(r, 40);
        let flush = 1 + below(r, 15);
        let mut mix = format!("write:{write},read:{read},flush:{flush}");
        if self.f.discard {
            mix.push_str(&format!(",discard:{}", 1 + below(r, 10)));
        }
        let (lo, hi) = [
            (512, 4096),
            (4096, 4096),
            (4096, 65536),
            (512, 65536),
            (65536, 262144),
        ][below(r, 5) as usize];
        let bs = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}..{hi}")
        };
        let iodepth = if endless {
            [1, 2, 4][below(r, 3) as usize]
        } else {
            [1, 2, 4, 8, 16][below(r, 5) as usize]
        };
        let mut a = format!("device=drive0 mix={mix} bs={bs} iodepth={iodepth}");
        if chance(r, 0.3) {
            let half = self.size / 2;
            a.push_str(&format!(" range=0..{half}"));
        }
        if endless {
            // A guest that leaves the disk some room, so jobs converge.
            a.push_str(&format!(" think={}us", 1000 + below(r, 3000)));
        } else {
            a.push_str(&format!(" count={}", 20 + below(r, 200)));
            if chance(r, 0.3) {
                a.push_str(&format!(" think={}us", 10 + below(r, 500)));
            }
        }
        a
    }

    /// Start the endless background workload (if none runs).
    pub(super) fn start_bg(&mut self) {
        if self.bg.is_some() {
            return;
        }
        let name = self.fresh("bg");
        let args = self.workload_args(true);
        self.step(format!("workload start {name} {args}"));
        self.bg = Some(name);
    }

    /// A bounded workload, waited for.
    pub(super) fn workload_round(&mut self) {
        self.stop_bg();
        let name = self.fresh("w");
        let args = self.workload_args(false);
        self.step(format!("workload start {name} {args}"));
        self.step(format!("workload wait {name}"));
    }

    /// qemu-io commands, some unaligned (read-modify-write), some overlapping in flight; on
    /// qcow2, now and then a VM state write that must read back after them (the oracle is
    /// qemu-io's pattern check, and the guest's reads and final verify show that the guest
    /// disk did not change).
    pub(super) fn io_round(&mut self) {
        self.stop_bg();
        self.reopen_driver_options();
        let vmstate = self.vmstate_write();
        let n = 1 + below(&mut self.r.guest, 5);
        for _ in 0..n {
            let r = &mut self.r.guest;
            let sectors = self.size / 512;
            let len = (1 + below(r, 64)) * 512;
            let off = below(r, sectors - len / 512) * 512;
            let pat = 0x40 + below(r, 0x80);
            let cmd = match below(r, if self.f.discard { 6 } else { 5 }) {
                0 | 1 => format!("write -P 0x{pat:02x} {off} {len}"),
                2 => format!("aio_write -P 0x{pat:02x} {off} {len}"),
                3 => format!("write -z {off} {len}"),
                4 => "flush".to_string(),
                _ => format!("discard {off} {len}"),
            };
            self.step(format!("io drive0 {cmd}"));
        }
        self.compressed_writes();
        self.step("io drive0 aio_flush");
        if let Some(read_back) = vmstate {
            self.step(read_back);
        }
    }

    /// Maybe qemu-io compressed writes of whole clusters (the last one may end with the disk)
    /// on the original qcow2 top. A cluster that already holds data refuses them (EIO, as in
    /// QEMU), and a filter above the top (a job's) does not take them: `io?`, and the model
    /// counts a failed write as "old or new". Not under `werror=stop`: a refused write would
    /// stop the guest until someone resumes it, as in QEMU.
    fn compressed_writes(&mut self) {
        let on_top = self.chain_known
            && !self.werror_stop
            && self.chain.first().is_some_and(|l| l.path == "top.qcow2");
        let Some(cs) = self.top_compress_cluster.filter(|_| on_top) else {
            return;
        };
        let r = &mut self.r.compress;
        if !chance(r, 0.35) {
            return;
        }
        let clusters = self.size.div_ceil(cs);
        let writes: Vec<String> = (0..1 + below(r, 3))
            .map(|_| {
                let off = below(r, clusters) * cs;
                let len = ((1 + below(r, 3)) * cs).min(self.size - off);
                let pat = 0x20 + below(r, 0xc0);
                format!("io? drive0 write -c -P 0x{pat:02x} {off} {len}")
            })
            .collect();
        for w in writes {
            self.step(w);
        }
    }

    /// Maybe a qemu-io `reopen -o` that sets the qcow2 top's runtime options anew (lazy
    /// refcounts on or off, cache sizes, overlap checks, discard pass-through): the data the
    /// guest reads, every later verify and the image checks must not change. `io?`: a v2
    /// image refuses lazy refcounts, as QEMU's does.
    fn reopen_driver_options(&mut self) {
        let top_qcow2 = self.chain_known
            && self
                .chain
                .first()
                .is_some_and(|l| l.path.ends_with(".qcow2"));
        let r = &mut self.r.reopen_opts;
        if !top_qcow2 || !chance(r, 0.25) {
            return;
        }
        const CHOICES: [&str; 8] = [
            "lazy-refcounts=on",
            "lazy-refcounts=off",
            "l2-cache-size=64k",
            "l2-cache-size=1M,refcount-cache-size=64k",
            "cache-size=256k",
            "overlap-check=none",
            "overlap-check=all",
            "pass-discard-request=off",
        ];
        // Lazy refcounts leave the top's file dirty until the end; a job that moves the device
        // off the top would leave it so (its file is checked on its own at the end).
        let moves_top = self.f.mirror || self.f.active_commit;
        let pick = |r: &mut ChaCha8Rng| match CHOICES[below(r, CHOICES.len() as u64) as usize] {
            "lazy-refcounts=on" if moves_top => "lazy-refcounts=off",
            o => o,
        };
        let a = pick(r);
        let opts = match below(r, 3) {
            0 => a.to_string(),
            _ => {
                let b = pick(r);
                if a.split('=').next() == b.split('=').next()
                    || a.contains("cache") && b.contains("cache")
                {
                    a.to_string()
                } else {
                    format!("{a},{b}")
                }
            }
        };
        // Every reopen sets the options anew: lazy refcounts are on only if this one says so.
        self.lazy_top = opts.contains("lazy-refcounts=on");
        self.step(format!("io? drive0 reopen -o {opts}"));
    }

    /// Maybe a `write -b` into the VM state area; the step that reads it back. Only while the
    /// device's top is known to be qcow2 (the only format with one; a mirror may have moved
    /// the device to a raw target), without faults (a failed write leaves it open), and not
    /// once the device was resized: the area starts after the disk, so it moves (and no resize
    /// follows one: the grown disk would cover it).
    fn vmstate_write(&mut self) -> Option<String> {
        let top_qcow2 = self.chain_known
            && self
                .chain
                .first()
                .is_some_and(|l| l.path.ends_with(".qcow2"));
        let r = &mut self.r.vmstate;
        if !top_qcow2 || self.f.faults || self.resized || !chance(r, 0.3) {
            return None;
        }
        let pos = below(r, 64) * 65536 + below(r, 128) * 512;
        let len = (1 + below(r, 256)) * 512;
        let pat = 0x10 + below(r, 0xe0);
        self.step(format!("io drive0 write -b -P 0x{pat:02x} {pos} {len}"));
        // Growing the disk now would show this data to the guest (QEMU's too).
        self.vmstate_written = true;
        Some(format!("io drive0 read -b -P 0x{pat:02x} {pos} {len}"))
    }

    /// A blkdebug breakpoint parks a write; another write runs meanwhile; then it resumes.
    pub(super) fn breakpoint_round(&mut self) {
        self.stop_bg();
        let r = &mut self.r.guest;
        let tag = format!("B{}", below(r, 100));
        let sectors = self.size / 512;
        let off = below(r, sectors - 16) * 512;
        // The second write overlaps the first, touches it, or lies elsewhere.
        let off2 = match below(r, 3) {
            0 => off,
            1 => off + 512 * below(r, 8),
            _ => below(r, sectors - 16) * 512,
        };
        let (a, b) = (0x50 + below(r, 0x20), 0x70 + below(r, 0x20));
        let len = [512, 4096][below(r, 2) as usize];
        let us = 10 + below(r, 2000);
        self.comment("a blkdebug breakpoint parks a write while another runs");
        self.step(format!("io drive0 break pwritev {tag}"));
        self.step(format!("io drive0 aio_write -P 0x{a:02x} {off} {len}"));
        self.step(format!("io drive0 wait_break {tag}"));
        self.step(format!("io drive0 aio_write -P 0x{b:02x} {off2} {len}"));
        self.step(format!("advance {us}us"));
        self.step(format!("io drive0 resume {tag}"));
        self.step("io drive0 aio_flush");
    }

    /// Drained sections under guest load: one or two nested, on the top or a whole subtree.
    pub(super) fn drain_round(&mut self) {
        self.start_bg();
        let r = &mut self.r.guest;
        let node = self.chain[below(r, self.chain.len() as u64) as usize]
            .node
            .clone();
        let nested = chance(r, 0.4);
        let subtree = if chance(r, 0.4) { " subtree" } else { "" };
        let ms = 1 + below(r, 5);
        self.step(format!("drain begin {node}{subtree}"));
        if nested {
            self.step(format!("drain begin {node}"));
        }
        self.step(format!("advance {ms}ms"));
        if nested {
            self.step(format!("drain end {node}"));
        }
        self.step(format!("drain end {node}"));
    }

    /// Grow the device (then no more crashes: the size after a power loss is open).
    pub(super) fn resize_round(&mut self) {
        self.stop_bg();
        let new = self.size + (1 + below(&mut self.r.guest, 4)) * (1 << 20);
        self.qmp(
            &json!({"execute": "block_resize", "arguments": {"device": "drive0", "size": new}}),
        );
        self.size = new;
        self.resized = true;
    }

    /// Reopen a backing layer read-write and back to read-only with QMP `blockdev-reopen`
    /// (what commit does to the base it writes), under guest load. Both must succeed, and
    /// the guest's data stays what the model says (the verify after the round).
    pub(super) fn reopen_round(&mut self) {
        let below_top = self.chain.len() as u64 - 1;
        let layer = self.chain[1 + below(&mut self.r.guest, below_top) as usize].clone();
        let driver = if layer.path.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        self.comment(&format!("reopen {} read-write and back", layer.node));
        if chance(&mut self.r.guest, 0.5) {
            self.start_bg();
        }
        for read_only in [false, true] {
            let mut options = json!([{"node-name": layer.node, "driver": driver,
                "file": format!("{}-file", layer.node), "read-only": read_only}]);
            // Now and then qcow2 options too, set anew by the same reopen (its own stream).
            // Lazy refcounts are left out: the layer's file is checked on its own at the end.
            let r = &mut self.r.reopen_opts;
            if driver == "qcow2" && chance(r, 0.4) {
                let extra = [
                    json!({"l2-cache-size": 65536}),
                    json!({"cache-size": 262144}),
                    json!({"overlap-check": "none"}),
                    json!({"pass-discard-other": true}),
                ][below(r, 4) as usize]
                    .clone();
                for (k, v) in extra.as_object().into_iter().flatten() {
                    options[0][k] = v.clone();
                }
            }
            self.qmp(&json!({"execute": "blockdev-reopen", "arguments": {"options": options}}));
            self.step("expect return {}");
        }
    }
}
