//! The fault classes: [`FaultKind`] (what goes wrong, as data) and [`FAULT_KINDS`], the one table
//! that names each class for the scenario language, says which operations it can act on,
//! documents it, builds it from a scenario line's arguments, and tells the swarm generator how
//! often to draw it and what its oracle may expect ([`Family`]). The scenario parser, the swarm
//! generator and the coverage report all read this table: adding a class is one row (plus its
//! effect in the virtual disk).

use engine::util::parse_size;

use super::OpKind;
use crate::config::Latency;
use crate::config::parse_duration;

/// What goes wrong.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// The operation fails with EIO and has no effect.
    Eio,
    /// The operation fails with ENOSPC if, once it completed, the total allocated bytes of the
    /// whole file system would exceed `quota_bytes`. Counts (once/N) are spent only when it fails.
    NoSpace {
        /// Allocation limit in bytes, over every file.
        quota_bytes: u64,
    },
    /// A sector inside the read (and the target range) goes bad: this read and every later read
    /// of it fail with EIO until the whole sector is rewritten.
    LatentSector,
    /// The write reports success but its data never lands anywhere.
    LostWrite,
    /// The write reports success but lands at another, seeded, sector-aligned offset (inside the
    /// spec's range when it has one, else anywhere in the file); the intended range keeps its
    /// old data.
    MisdirectedWrite,
    /// One seeded bit of the returned data is flipped (the stored data is intact).
    BitRot,
    /// The flush fails with EIO and the dirty data it covered is dropped from the cache: reads
    /// fall back to the durable bytes (Linux's "writeback error" behaviour).
    FlushDropsDirty,
    /// The discard reports success but does nothing: the old data stays readable.
    DiscardNoZero,
    /// Extra virtual latency, added to the drawn one (gray failure, slow disk).
    Slow {
        /// The extra latency distribution (drawn from the fault stream).
        extra: Latency,
    },
    /// One `pread` moves only a seeded prefix (at least one byte, or one `O_DIRECT` block).
    ShortRead,
    /// One `pwrite` lands only a seeded prefix (ending on a sector boundary of the file) and
    /// reports its length.
    ShortWrite,
    /// One `pread`/`pwrite` fails with EAGAIN and does nothing.
    Eagain,
    /// One `pread`/`pwrite` fails with EINTR and does nothing.
    Eintr,
    /// The file's queue hangs: this operation and every one submitted to the same file before
    /// the hang ends complete no earlier than a drawn delay from now.
    Hang {
        /// How long the hang lasts.
        delay: Latency,
    },
    /// The operation completes after every operation submitted after it within one maximum
    /// disk latency (it is held back past them).
    Reorder,
    /// The disk fills up in the middle of a write: a seeded prefix lands and is reported, and the
    /// write that continues it fails with ENOSPC.
    NoSpaceMidWrite,
    /// The flush fails with EIO and the writes it covered are marked clean without being written
    /// ("fsync-gate"): reads still see them, but no later flush makes them durable, a power loss
    /// loses them, and a cache eviction (`StaleRead`) makes reads see the old data.
    FlushLost,
    /// The page cache evicts what a `FlushLost` left clean-but-unwritten: this read and every
    /// later one see the data on the disk (stale after the lost flush).
    StaleRead,
    /// A power loss also loses the file size growth that was not flushed: the file is cut back
    /// to its durable length, even where unflushed data past it survived.
    TruncateOnCrash,
}

/// How the swarm treats a class: where it may be drawn and what the oracles may expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Requests fail with an error the guest sees (and its error policy acts on).
    Fails,
    /// The engine must hide it completely: the guest sees neither an error nor wrong data.
    Hidden,
    /// Changes timing or leaves data the model already allows: no error, no relaxation.
    Benign,
    /// Loses data the guest wrote but whose flush failed: drawn on raw images only, and the model
    /// widens the unflushed sectors when the guest sees the flush fail.
    LostFlush,
    /// Silent corruption the oracles must catch: drawn only as a canary on a raw image (the
    /// run checks that the guest sees the damage, then repairs it).
    Canary,
    /// Acts at a power loss.
    Crash,
}

/// Builds a kind from a scenario line's `key=value` arguments.
type Build = fn(&dyn Fn(&str) -> Option<String>) -> Result<FaultKind, String>;

/// One row of [`FAULT_KINDS`].
pub struct FaultClass {
    /// Name in the scenario language (`fault inject NAME <name> ...`).
    pub name: &'static str,
    /// Operations it can act on.
    pub ops: &'static [OpKind],
    /// Operations targeted when a spec lists none.
    pub default_ops: &'static [OpKind],
    /// Acts only on one partial transfer (`read_part`/`write_part`), which the engine completes.
    pub partial_only: bool,
    /// Its own arguments, for documentation (`quota=SIZE`).
    pub args: &'static str,
    /// One line saying what it does.
    pub doc: &'static str,
    /// How the swarm draws it.
    pub family: Family,
    /// Relative weight of the swarm drawing it within its family.
    pub weight: u32,
    build: Build,
}

impl FaultClass {
    /// Build the kind from a line's arguments.
    pub fn build(&self, value: &dyn Fn(&str) -> Option<String>) -> Result<FaultKind, String> {
        (self.build)(value)
    }

    /// The argument keys this class takes.
    pub fn arg_keys(&self) -> impl Iterator<Item = &'static str> {
        self.args
            .split_whitespace()
            .filter_map(|a| a.split('=').next())
    }
}

use OpKind::{Discard, Flush, Preallocate, Read, SetLen, Write, WriteZeroes};

const ALL: &[OpKind] = &[
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    SetLen,
    Preallocate,
];
const DATA: &[OpKind] = &[Read, Write, Flush, Discard, WriteZeroes];
const RW: &[OpKind] = &[Read, Write];
const CRASH: &[OpKind] = &[OpKind::Crash];

fn duration_range(v: &str) -> Result<Latency, String> {
    let (a, b) = v.split_once("..").unwrap_or((v, v));
    match (parse_duration(a), parse_duration(b)) {
        (Some(a), Some(b)) if a == b => Ok(Latency::Fixed(a)),
        (Some(a), Some(b)) if a < b => Ok(Latency::Uniform {
            min_ns: a,
            max_ns: b,
        }),
        _ => Err(format!("bad duration range '{v}'")),
    }
}

macro_rules! class {
    ($name:literal, $ops:expr, $default:expr, $partial:literal, $args:literal, $family:ident,
     $weight:literal, $doc:literal, $build:expr) => {
        FaultClass {
            name: $name,
            ops: $ops,
            default_ops: $default,
            partial_only: $partial,
            args: $args,
            doc: $doc,
            family: Family::$family,
            weight: $weight,
            build: $build,
        }
    };
}

/// Every fault class (name, operations, default operations, partial-transfer only, arguments,
/// swarm family, swarm weight, doc, builder).
pub const FAULT_KINDS: &[FaultClass] = &[
    class!(
        "eio",
        ALL,
        DATA,
        false,
        "",
        Fails,
        6,
        "the operation fails with EIO and has no effect",
        |_| Ok(FaultKind::Eio)
    ),
    class!(
        "enospc",
        &[Write, WriteZeroes, Preallocate],
        &[Write, WriteZeroes, Preallocate],
        false,
        "quota=SIZE",
        Fails,
        2,
        "ENOSPC when the file system's allocation would pass the quota",
        |v| {
            let q = v("quota").ok_or("enospc needs quota=SIZE")?;
            Ok(FaultKind::NoSpace {
                quota_bytes: parse_size(&q).ok_or(format!("bad quota '{q}'"))?,
            })
        }
    ),
    class!(
        "latent",
        &[Read],
        &[Read],
        false,
        "",
        Canary,
        1,
        "a sector goes bad: reads of it fail with EIO until it is rewritten",
        |_| Ok(FaultKind::LatentSector)
    ),
    class!(
        "lost-write",
        &[Write, WriteZeroes, Discard],
        &[Write],
        false,
        "",
        Canary,
        1,
        "the write reports success and never lands",
        |_| Ok(FaultKind::LostWrite)
    ),
    class!(
        "misdirected",
        &[Write],
        &[Write],
        false,
        "",
        Canary,
        1,
        "the write lands at another offset (inside range= if given)",
        |_| Ok(FaultKind::MisdirectedWrite)
    ),
    class!(
        "bitrot",
        &[Read],
        &[Read],
        false,
        "",
        Canary,
        1,
        "one bit of the returned data is flipped",
        |_| Ok(FaultKind::BitRot)
    ),
    class!(
        "flush-drops-dirty",
        &[Flush],
        &[Flush],
        false,
        "",
        LostFlush,
        1,
        "the flush fails with EIO and drops the dirty data it covered",
        |_| Ok(FaultKind::FlushDropsDirty)
    ),
    class!(
        "discard-no-zero",
        &[Discard],
        &[Discard],
        false,
        "",
        Benign,
        1,
        "the discard succeeds and does nothing",
        |_| Ok(FaultKind::DiscardNoZero)
    ),
    class!(
        "slow",
        ALL,
        ALL,
        false,
        "extra=DUR[..DUR]",
        Benign,
        2,
        "extra virtual latency",
        |v| Ok(FaultKind::Slow {
            extra: duration_range(&v("extra").ok_or("slow needs extra=DURATION")?)?
        })
    ),
    class!(
        "short-read",
        &[Read],
        &[Read],
        true,
        "",
        Hidden,
        2,
        "one pread moves only a prefix; the engine reads the rest",
        |_| Ok(FaultKind::ShortRead)
    ),
    class!(
        "short-write",
        &[Write],
        &[Write],
        true,
        "",
        Hidden,
        2,
        "one pwrite lands only a sector-aligned prefix; the engine writes the rest",
        |_| Ok(FaultKind::ShortWrite)
    ),
    class!(
        "eagain",
        RW,
        RW,
        true,
        "",
        Hidden,
        1,
        "one pread/pwrite fails with EAGAIN; the engine retries",
        |_| Ok(FaultKind::Eagain)
    ),
    class!(
        "eintr",
        RW,
        RW,
        true,
        "",
        Hidden,
        1,
        "one pread/pwrite fails with EINTR; the engine retries",
        |_| Ok(FaultKind::Eintr)
    ),
    class!(
        "hang",
        ALL,
        ALL,
        false,
        "delay=DUR[..DUR]",
        Benign,
        1,
        "the file's queue hangs: nothing submitted to it completes before the delay ends",
        |v| Ok(FaultKind::Hang {
            delay: duration_range(&v("delay").ok_or("hang needs delay=DURATION")?)?
        })
    ),
    class!(
        "reorder",
        ALL,
        DATA,
        false,
        "",
        Benign,
        1,
        "the operation completes after the ones submitted just after it",
        |_| Ok(FaultKind::Reorder)
    ),
    class!(
        "enospc-mid",
        &[Write],
        &[Write],
        true,
        "",
        Fails,
        1,
        "a prefix of the write lands, then the disk is full (ENOSPC)",
        |_| Ok(FaultKind::NoSpaceMidWrite)
    ),
    class!(
        "flush-lost",
        &[Flush],
        &[Flush],
        false,
        "",
        LostFlush,
        1,
        "fsync-gate: the flush fails with EIO, its writes stay readable but never become durable",
        |_| Ok(FaultKind::FlushLost)
    ),
    class!(
        "stale-read",
        &[Read],
        &[Read],
        false,
        "",
        LostFlush,
        1,
        "the cache evicts what a lost flush left unwritten: reads see the old data",
        |_| Ok(FaultKind::StaleRead)
    ),
    class!(
        "truncate-on-crash",
        CRASH,
        CRASH,
        false,
        "",
        Crash,
        1,
        "a power loss also cuts the file back to its durable length",
        |_| Ok(FaultKind::TruncateOnCrash)
    ),
];

/// The class named `name`.
pub fn class_named(name: &str) -> Option<&'static FaultClass> {
    FAULT_KINDS.iter().find(|c| c.name == name)
}

impl FaultKind {
    /// The scenario-language name of this kind's class.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Eio => "eio",
            FaultKind::NoSpace { .. } => "enospc",
            FaultKind::LatentSector => "latent",
            FaultKind::LostWrite => "lost-write",
            FaultKind::MisdirectedWrite => "misdirected",
            FaultKind::BitRot => "bitrot",
            FaultKind::FlushDropsDirty => "flush-drops-dirty",
            FaultKind::DiscardNoZero => "discard-no-zero",
            FaultKind::Slow { .. } => "slow",
            FaultKind::ShortRead => "short-read",
            FaultKind::ShortWrite => "short-write",
            FaultKind::Eagain => "eagain",
            FaultKind::Eintr => "eintr",
            FaultKind::Hang { .. } => "hang",
            FaultKind::Reorder => "reorder",
            FaultKind::NoSpaceMidWrite => "enospc-mid",
            FaultKind::FlushLost => "flush-lost",
            FaultKind::StaleRead => "stale-read",
            FaultKind::TruncateOnCrash => "truncate-on-crash",
        }
    }

    /// This kind's row of [`FAULT_KINDS`].
    pub fn class(&self) -> &'static FaultClass {
        class_named(self.name()).expect("every kind has a row")
    }

    /// Operations this kind can act on.
    pub fn applicable(&self) -> &'static [OpKind] {
        self.class().ops
    }

    /// Operations targeted when a spec lists none.
    pub fn default_ops(&self) -> &'static [OpKind] {
        self.class().default_ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_builds_its_own_kind_and_names_are_unique() {
        let args = |k: &str| match k {
            "quota" => Some("1M".to_string()),
            "extra" | "delay" => Some("1ms".to_string()),
            _ => None,
        };
        for (i, c) in FAULT_KINDS.iter().enumerate() {
            let kind = c.build(&args).unwrap();
            assert_eq!(kind.name(), c.name);
            assert!(FAULT_KINDS[..i].iter().all(|o| o.name != c.name));
            assert!(
                c.default_ops.iter().all(|o| c.ops.contains(o)),
                "{}",
                c.name
            );
        }
        assert!(FAULT_KINDS.len() >= 16);
    }
}
