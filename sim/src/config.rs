//! Plain-data configuration of a simulation: scheduler mode, run limits, disk latency, crash model.
//!
//! Everything here is data (no behaviour beyond sampling a [`Latency`] and reading a duration
//! as scenario files and fault specs write it), so a scenario parser can build it from text and
//! a swarm runner can draw it from the seed.

use rand_chacha::ChaCha8Rng;

use crate::rng::in_range;

/// Sector size of the virtual disk: the unit of crash resolution, torn writes and latent
/// errors.
pub(crate) const SECTOR: u64 = 512;

/// Parse a duration: `10ns`, `5us`, `10ms`, `2s`, `1m`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// How the executor picks the next task among the ready ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedulerMode {
    /// Uniformly at random, from the scheduler stream of the seed.
    #[default]
    Random,
    /// First woken, first run.
    Fifo,
}

/// A latency distribution in virtual nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// Always this many nanoseconds (draws nothing from the RNG).
    Fixed(u64),
    /// Uniform in `min_ns..=max_ns`.
    Uniform {
        /// Lower bound, inclusive.
        min_ns: u64,
        /// Upper bound, inclusive.
        max_ns: u64,
    },
}

impl Latency {
    /// Draw one latency.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> u64 {
        match *self {
            Latency::Fixed(ns) => ns,
            Latency::Uniform { min_ns, max_ns } if min_ns >= max_ns => min_ns,
            Latency::Uniform { min_ns, max_ns } => in_range(rng, min_ns, max_ns),
        }
    }

    /// The largest latency it can draw.
    pub fn max_ns(&self) -> u64 {
        match *self {
            Latency::Fixed(ns) => ns,
            Latency::Uniform { min_ns, max_ns } => min_ns.max(max_ns),
        }
    }
}

/// How a power loss resolves each completed-but-unflushed write (see `SimFs::crash`).
///
/// Per write, the fate is drawn with weights `keep : lose : torn`; a torn write keeps each of its
/// 512-byte sectors independently with probability 1/2. Size changes and preallocations are kept or
/// lost as a whole (a torn one is a coin flip). With probability `clean`, the crash keeps every
/// unflushed write (a "clean" power loss where the cache happened to drain).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrashModel {
    /// Probability that the whole cache survives.
    pub clean: f64,
    /// Weight of "every sector kept".
    pub keep: u32,
    /// Weight of "every sector lost".
    pub lose: u32,
    /// Weight of "each sector kept or lost independently".
    pub torn: u32,
}

impl Default for CrashModel {
    fn default() -> CrashModel {
        CrashModel {
            clean: 0.1,
            keep: 1,
            lose: 1,
            torn: 1,
        }
    }
}

/// Configuration of the virtual disk.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// Latency of reads, writes, discards, write-zeroes, size changes and allocation queries.
    pub latency: Latency,
    /// Latency of flushes.
    pub flush_latency: Latency,
    /// Alignment `O_DIRECT` handles require of offsets, lengths and buffers.
    pub direct_align: u32,
    /// The crash model used by `Sim::crash`.
    pub crash: CrashModel,
}

impl Default for DiskConfig {
    fn default() -> DiskConfig {
        DiskConfig {
            latency: Latency::Uniform {
                min_ns: 10_000,
                max_ns: 100_000,
            },
            flush_latency: Latency::Uniform {
                min_ns: 10_000,
                max_ns: 100_000,
            },
            direct_align: 512,
            crash: CrashModel::default(),
        }
    }
}

/// Configuration of a whole simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Scheduling policy.
    pub scheduler: SchedulerMode,
    /// Livelock limit: the run fails when the virtual clock would pass this many nanoseconds.
    pub max_virtual_ns: u64,
    /// Livelock limit: the run fails after this many task polls in total.
    pub max_steps: u64,
    /// The virtual disk.
    pub disk: DiskConfig,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            scheduler: SchedulerMode::Random,
            max_virtual_ns: 24 * 3600 * 1_000_000_000,
            max_steps: 100_000_000,
            disk: DiskConfig::default(),
        }
    }
}
