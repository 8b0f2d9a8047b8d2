//! The swarm generator: one seed draws a whole scenario, as text in the scenario language.
//!
//! Swarm, not uniform: the seed first draws which feature families are on ([`Features`]), then
//! each family draws its steps from its own ChaCha stream, so turning one family off does not
//! change what the others draw. The generator tracks the graph and job state it produces (the
//! backing chain under the guest device, the running job, the background workload, whether a
//! blkdebug node is still in the path) so every step it writes is legal when it runs: a failure
//! is an engine bug or an oracle's finding, not generator noise.
//!
//! Families live in their own files: [`images`] (images, chains, nodes, the device), [`guest`]
//! (workloads, qemu-io commands, blkdebug breakpoints, drains, resize), [`jobs`] (stream,
//! commit, active commit, mirror and their verbs), [`faults`] (virtual-disk faults and error
//! policies), [`canary`] (silent corruption and lost flushes on a raw image), [`bitmaps`]
//! (named dirty bitmaps and their oracle checks), [`transactions`] (QMP transactions and
//! external snapshots, all or nothing), [`snapshots`] (qcow2 internal snapshots), [`nbd`]
//! (an export and a client under network faults), [`throttle`] (I/O limits on a device or a
//! throttle node, and the rate oracle) and crashes (here: power loss, restart,
//! recovery checks).

mod amend;
mod backup;
mod bitmaps;
mod canary;
mod faults;
mod guest;
mod images;
mod jobs;
mod nbd;
mod snapshots;
mod throttle;
mod transactions;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::rng::{below, chance};
use crate::scenario::transcript::fnv1a;

/// The feature families a seed switched on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Images are qcow2 (else the top is raw and there is no chain).
    pub qcow2: bool,
    /// A backing chain under the top image.
    pub backing: bool,
    /// A blkdebug filter between the top image and its file (breakpoints).
    pub blkdebug: bool,
    /// Virtual-disk faults with error policies.
    pub faults: bool,
    /// Power loss and restart.
    pub crashes: bool,
    /// Mirror jobs.
    pub mirror: bool,
    /// block-stream.
    pub stream: bool,
    /// block-commit of an intermediate layer.
    pub commit: bool,
    /// Active commit.
    pub active_commit: bool,
    /// Job verbs (pause, resume, set-speed, cancel) at drawn points.
    pub verbs: bool,
    /// Drained sections (nested, subtree).
    pub drains: bool,
    /// Guest discards (`discard=unmap` nodes).
    pub discard: bool,
    /// qemu-io commands (unaligned writes, write-zeroes, discards).
    pub io: bool,
    /// Growing the device.
    pub resize: bool,
    /// QMP blockdev-reopen of backing layers (read-write and back) under guest load.
    pub reopen: bool,
    /// The top qcow2 image keeps its guest clusters in an external data file (raw or not).
    pub data_file: bool,
    /// The guest device copies what it reads from the backing chain into the top image.
    pub copy_on_read: bool,
    /// Named dirty bitmaps on the device's node (add, enable, disable, clear, merge, remove).
    pub bitmaps: bool,
    /// Backup jobs (full, top, none) checked against the view at their start.
    pub backup: bool,
    /// QMP transactions (external snapshots, bitmap verbs, a failing action) and their
    /// all-or-nothing oracle.
    pub transactions: bool,
    /// qcow2 internal snapshots of the top image (create, apply, delete).
    pub isnap: bool,
    /// An NBD export and client on the simulated network, under network faults.
    pub nbd: bool,
    /// I/O limits (a device's, or a throttle node's group) under a workload, and the rate
    /// oracle.
    pub throttle: bool,
}

impl Features {
    /// The names of the families that are on, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.qcow2, "qcow2"),
            (self.backing, "backing"),
            (self.blkdebug, "blkdebug"),
            (self.faults, "faults"),
            (self.crashes, "crashes"),
            (self.mirror, "mirror"),
            (self.stream, "stream"),
            (self.commit, "commit"),
            (self.active_commit, "active-commit"),
            (self.verbs, "verbs"),
            (self.drains, "drains"),
            (self.discard, "discard"),
            (self.io, "io"),
            (self.resize, "resize"),
            (self.reopen, "reopen"),
            (self.data_file, "data-file"),
            (self.copy_on_read, "copy-on-read"),
            (self.bitmaps, "bitmaps"),
            (self.backup, "backup"),
            (self.transactions, "transactions"),
            (self.isnap, "isnap"),
            (self.nbd, "nbd"),
            (self.throttle, "throttle"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }

    fn draw(rng: &mut ChaCha8Rng) -> Features {
        let mut f = Features {
            qcow2: chance(rng, 0.8),
            backing: chance(rng, 0.5),
            blkdebug: chance(rng, 0.3),
            faults: chance(rng, 0.4),
            crashes: chance(rng, 0.5),
            mirror: chance(rng, 0.4),
            stream: chance(rng, 0.3),
            commit: chance(rng, 0.3),
            active_commit: chance(rng, 0.3),
            verbs: chance(rng, 0.5),
            drains: chance(rng, 0.4),
            discard: chance(rng, 0.4),
            io: chance(rng, 0.5),
            resize: chance(rng, 0.15),
            reopen: false,
            data_file: false,
            copy_on_read: false,
            bitmaps: false,
            backup: false,
            transactions: false,
            isnap: false,
            nbd: false,
            throttle: false,
        };
        // Drawn last, so that the other families of every seed stay as they were.
        f.reopen = chance(rng, 0.3);
        f.data_file = chance(rng, 0.25) && f.qcow2;
        f.copy_on_read = chance(rng, 0.3);
        f.bitmaps = chance(rng, 0.35);
        f.backup = chance(rng, 0.4);
        f.transactions = chance(rng, 0.35);
        f.isnap = chance(rng, 0.35);
        f.nbd = chance(rng, 0.3);
        f.throttle = chance(rng, 0.3);
        if f.data_file {
            // Guest data then goes to the data file, beside the blkdebug filter over the
            // metadata file: a breakpoint on guest writes would wait for a write that never
            // passes there.
            f.blkdebug = false;
        }
        if !f.qcow2 {
            f.backing = false;
        }
        if !f.qcow2 || f.data_file || f.faults || f.resize {
            f.isnap = false;
        }
        if !f.backing {
            f.copy_on_read = false;
            f.stream = false;
            f.commit = false;
            f.active_commit = false;
        }
        f
    }
}

/// One image of the chain under the guest device.
#[derive(Clone, Debug)]
pub(super) struct Layer {
    pub(super) node: String,
    pub(super) path: String,
}

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The scenario text (replays standalone with `blk sim replay`).
    pub text: String,
    /// The families that were on.
    pub features: Features,
    /// Number of steps.
    pub steps: usize,
}

/// The family streams of one seed.
pub(super) struct Streams {
    pub(super) images: ChaCha8Rng,
    /// Extended L2 entries of qcow2 images: a stream of its own, so that the other image
    /// draws of a seed stay what they were before the option existed.
    pub(super) extended_l2: ChaCha8Rng,
    pub(super) guest: ChaCha8Rng,
    pub(super) jobs: ChaCha8Rng,
    pub(super) faults: ChaCha8Rng,
    pub(super) crash: ChaCha8Rng,
    pub(super) plan: ChaCha8Rng,
    /// qemu-io's VM state commands (`write -b`/`read -b`), in a stream of their own so that
    /// the other families draw what they drew before these existed.
    pub(super) vmstate: ChaCha8Rng,
    /// qemu-io `reopen -o` of the top's driver options (its own stream, as `vmstate`).
    pub(super) reopen_opts: ChaCha8Rng,
    /// qemu-io compressed writes (`write -c`; its own stream, as `vmstate`).
    pub(super) compress: ChaCha8Rng,
    /// Dirty bitmap verbs (its own stream, as `vmstate`).
    pub(super) bitmaps: ChaCha8Rng,
    /// Backup rounds (their own stream, as `vmstate`).
    pub(super) backup: ChaCha8Rng,
    /// Transaction rounds (their own stream, as `vmstate`).
    pub(super) transactions: ChaCha8Rng,
    /// Internal snapshot rounds (their own stream, as `vmstate`).
    pub(super) isnap: ChaCha8Rng,
    /// NBD rounds and network faults (their own stream, as `vmstate`).
    pub(super) nbd: ChaCha8Rng,
    /// Internal-snapshot actions inside transactions (their own stream, as `vmstate`).
    pub(super) txn_isnap: ChaCha8Rng,
    /// Offline amends between a shutdown and a restart (their own stream, as `vmstate`).
    pub(super) amend: ChaCha8Rng,
    /// Throttling rounds (their own stream, as `vmstate`).
    pub(super) throttle: ChaCha8Rng,
}

fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(fnv1a(seed, name.as_bytes()))
}

/// The generator's state: what it wrote so far and what the graph looks like after it.
pub(super) struct Gen {
    pub(super) f: Features,
    pub(super) r: Streams,
    pub(super) out: Vec<String>,
    pub(super) steps: usize,
    /// Device size in bytes.
    pub(super) size: u64,
    /// The chain under `drive0`, top first; trustworthy only while `chain_known`.
    pub(super) chain: Vec<Layer>,
    /// False after a crash during a job that may have moved the device or edited the chain.
    pub(super) chain_known: bool,
    /// Every qcow2 image file written (checked after restarts and at the end).
    pub(super) qcow2_paths: Vec<String>,
    /// The top still sits on the blkdebug node (breakpoints reach it).
    pub(super) blkdebug_live: bool,
    /// The background workload running, if any.
    pub(super) bg: Option<String>,
    /// A resize happened (crashes are off afterwards: the size after a power loss is open).
    pub(super) resized: bool,
    pub(super) counter: u64,
    /// The top runs with lazy refcounts switched on by a `reopen -o` (its file is dirty until
    /// a reopen without them).
    pub(super) lazy_top: bool,
    pub(super) werror_stop: bool,
    pub(super) rerror_stop: bool,
    /// The cluster size of `top.qcow2` when it can take compressed writes (no data file).
    pub(super) top_compress_cluster: Option<u64>,
    /// A VM state write happened: growing the device would expose it to the guest.
    pub(super) vmstate_written: bool,
    /// Dirty bitmaps alive on the device's node, oldest first.
    pub(super) bitmaps: Vec<String>,
    /// The device's node can store persistent bitmaps (a qcow2 v3 top).
    pub(super) top_persistent_ok: bool,
    /// Persistent bitmaps among `bitmaps`, and whether a clean restart stored each.
    pub(super) persistent: Vec<(String, bool)>,
    /// Internal snapshots of the top image, oldest first.
    pub(super) isnaps: Vec<String>,
    /// The chain's node names when the first of `isnaps` was taken: a snapshot keeps no
    /// backing file of its own, so once a stream or commit changes the chain under the top,
    /// applying an older snapshot reads other backing data (as in QEMU) and is not drawn.
    pub(super) isnap_chain: Vec<String>,
    /// The refcount width of the top image (qcow2).
    pub(super) top_refcount_bits: u32,
    /// The NBD server, once an NBD round started it.
    pub(super) nbd: Option<nbd::NbdServer>,
}

impl Gen {
    /// A step line (one scenario step).
    pub(super) fn step(&mut self, line: impl Into<String>) {
        self.out.push(line.into());
        self.steps += 1;
    }

    /// A comment line (not a step).
    pub(super) fn comment(&mut self, text: &str) {
        self.out.push(format!("# {text}"));
    }

    /// A fresh name with `prefix`.
    pub(super) fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    pub(super) fn qmp(&mut self, cmd: &serde_json::Value) {
        self.step(format!("qmp {cmd}"));
    }

    /// Stop the background workload, if one runs.
    pub(super) fn stop_bg(&mut self) {
        if let Some(w) = self.bg.take() {
            self.step(format!("workload stop {w}"));
        }
    }

    /// A crash at the current point: power loss, restart, then every recovery oracle.
    pub(super) fn crash_here(&mut self, during_job: bool) {
        let ms = 1 + below(&mut self.r.crash, 20);
        self.step(format!("advance {ms}ms"));
        // Size growth that was never flushed may be lost too (drawn from the fault stream, so
        // seeds without faults draw their crashes as before).
        let truncate = (self.f.faults && chance(&mut self.r.faults, 0.3)).then(|| {
            let name = self.fresh("t");
            let path = if self.chain_known {
                let i = below(&mut self.r.faults, self.chain.len() as u64) as usize;
                format!(" path={}", self.chain[i].path)
            } else {
                String::new()
            };
            self.step(format!("fault inject {name} truncate-on-crash{path} once"));
            name
        });
        self.step("crash");
        if let Some(name) = truncate {
            self.step(format!("fault clear {name}"));
        }
        self.step("restart");
        self.bg = None;
        self.bitmaps_after_crash(during_job);
        // The restart reopened the images with their default options (and repaired them).
        self.lazy_top = false;
        if during_job {
            self.chain_known = false;
            self.blkdebug_live = false;
        }
        self.checks();
    }

    /// `verify drive0`, after stopping the background workload (a verify reads the device
    /// while nothing writes it).
    pub(super) fn verify(&mut self) {
        self.stop_bg();
        self.step("verify drive0");
    }

    /// `check-file` on every qcow2 image, then `verify drive0`.
    pub(super) fn checks(&mut self) {
        if self.lazy_top {
            // A dirty lazy-refcounts image has stale refcounts on disk by design: mark it clean
            // (a reopen without the option) before its file is checked on its own.
            self.stop_bg();
            self.step("io drive0 reopen -o lazy-refcounts=off");
            self.lazy_top = false;
        }
        for p in self.qcow2_paths.clone() {
            self.step(format!("check-file {p}"));
        }
        self.verify();
    }
}

/// What a round does.
#[derive(Clone, Copy, Debug)]
enum Round {
    Workload,
    Faults,
    Job,
    Drain,
    Io,
    Breakpoint,
    Crash,
    Resize,
    Reopen,
    Canary,
    Bitmaps,
    Transaction,
    Snapshots,
    Nbd,
    Throttle,
}

/// Draw the scenario of `seed`.
pub fn generate(seed: u64) -> Generated {
    let mut feat = stream(seed, "features");
    let f = Features::draw(&mut feat);
    let r = Streams {
        images: stream(seed, "images"),
        extended_l2: stream(seed, "extended_l2"),
        guest: stream(seed, "guest"),
        jobs: stream(seed, "jobs"),
        faults: stream(seed, "faults"),
        crash: stream(seed, "crash"),
        plan: stream(seed, "plan"),
        vmstate: stream(seed, "vmstate"),
        reopen_opts: stream(seed, "reopen-opts"),
        compress: stream(seed, "compress"),
        bitmaps: stream(seed, "bitmaps"),
        backup: stream(seed, "backup"),
        transactions: stream(seed, "transactions"),
        isnap: stream(seed, "isnap"),
        nbd: stream(seed, "nbd"),
        txn_isnap: stream(seed, "txn_isnap"),
        amend: stream(seed, "amend"),
        throttle: stream(seed, "throttle"),
    };
    let mut g = Gen {
        f,
        r,
        out: Vec::new(),
        steps: 0,
        size: 0,
        chain: Vec::new(),
        chain_known: true,
        qcow2_paths: Vec::new(),
        blkdebug_live: false,
        bg: None,
        resized: false,
        lazy_top: false,
        counter: 0,
        werror_stop: false,
        rerror_stop: false,
        top_compress_cluster: None,
        bitmaps: Vec::new(),
        top_persistent_ok: false,
        persistent: Vec::new(),
        isnaps: Vec::new(),
        isnap_chain: Vec::new(),
        top_refcount_bits: 16,
        vmstate_written: false,
        nbd: None,
    };
    g.out.push(format!(
        "# swarm seed {seed}: {}",
        if g.f.names().is_empty() {
            "no optional features".to_string()
        } else {
            g.f.names().join(", ")
        }
    ));
    g.out.push(format!("seed {seed}"));
    // A run that needs more is stuck: fail it early as a livelock (the default is 5M steps).
    g.out.push("limit steps 2000000".into());
    g.build_images();
    let rounds = 2 + below(&mut g.r.plan, 6);
    for _ in 0..rounds {
        let round = g.pick_round();
        g.play(round);
    }
    // After the planned rounds, so that every seed draws its other rounds as it did before
    // transactions existed (the planted-bug searches keep their findings).
    if g.f.transactions && g.chain_known {
        for _ in 0..1 + below(&mut g.r.transactions, 3) {
            g.play(Round::Transaction);
        }
    }
    g.stop_bg();
    g.check_bitmaps();
    g.comment("end: every image checks, the guest sees what the model allows");
    g.checks();
    let mut text = g.out.join("\n");
    text.push('\n');
    Generated {
        text,
        features: g.f.clone(),
        steps: g.steps,
    }
}

impl Gen {
    fn pick_round(&mut self) -> Round {
        let mut menu = vec![Round::Workload];
        let f = &self.f;
        if f.faults {
            menu.push(Round::Faults);
        }
        if f.mirror || (self.chain_known && (f.stream || f.commit || f.active_commit)) {
            menu.push(Round::Job);
        }
        if f.drains && self.chain_known {
            menu.push(Round::Drain);
        }
        if f.io {
            menu.push(Round::Io);
        }
        if f.blkdebug && self.blkdebug_live {
            menu.push(Round::Breakpoint);
        }
        if f.crashes && !self.resized {
            menu.push(Round::Crash);
        }
        if f.resize && !self.resized && !f.crashes && !self.vmstate_written {
            menu.push(Round::Resize);
        }
        if f.reopen && self.chain_known && self.chain.len() > 1 {
            menu.push(Round::Reopen);
        }
        if self.canary_possible() {
            menu.push(Round::Canary);
        }
        if self.f.bitmaps && self.chain_known {
            menu.push(Round::Bitmaps);
        }
        if self.isnap_possible() {
            menu.push(Round::Snapshots);
        }
        if self.f.nbd {
            menu.push(Round::Nbd);
        }
        if self.f.throttle {
            menu.push(Round::Throttle);
        }
        menu[below(&mut self.r.plan, menu.len() as u64) as usize]
    }

    fn play(&mut self, round: Round) {
        match round {
            Round::Workload => self.workload_round(),
            Round::Faults => self.fault_round(),
            Round::Job => self.job_round(),
            Round::Drain => self.drain_round(),
            Round::Io => self.io_round(),
            Round::Breakpoint => self.breakpoint_round(),
            // With bitmaps on, some restarts are clean (the bitmaps' own stream: seeds
            // without bitmaps draw as before).
            Round::Crash if self.f.bitmaps && chance(&mut self.r.bitmaps, 0.4) => {
                self.clean_restart()
            }
            Round::Crash => {
                self.comment("power loss under guest load");
                self.start_bg();
                self.crash_here(false);
            }
            Round::Resize => self.resize_round(),
            Round::Reopen => self.reopen_round(),
            Round::Canary => self.canary_round(),
            Round::Bitmaps => self.bitmap_round(),
            Round::Transaction => self.transaction_round(),
            Round::Snapshots => self.isnap_round(),
            Round::Nbd => self.nbd_round(),
            Round::Throttle => self.throttle_round(),
        }
        if chance(&mut self.r.plan, 0.5) {
            self.verify();
        }
    }
}
