//! Throttle limits: the six leaky buckets (bps and iops, each total/read/write) with their
//! average, burst (`_max`) and burst length (`_max_length`), plus `iops-size`; parsed from a
//! `throttle-group` object's properties (`limits.NAME` or the flat `x-NAME`) and validated in
//! QEMU's order with QEMU's messages.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::util::Options;

/// The largest average or burst rate QEMU accepts.
pub const VALUE_MAX: u64 = 1_000_000_000_000_000;

/// The bucket names in QEMU's order (validation reports the first bad one).
pub const BUCKET_NAMES: [&str; 6] = [
    "bps-total",
    "bps-read",
    "bps-write",
    "iops-total",
    "iops-read",
    "iops-write",
];

/// One bucket's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Units per second allowed on average (0: unlimited).
    pub avg: u64,
    /// Units per second allowed during a burst (0: none beyond the default slack).
    pub max: u64,
    /// Seconds a burst at `max` may last.
    pub burst_length: u64,
}

impl Default for BucketConfig {
    fn default() -> BucketConfig {
        BucketConfig {
            avg: 0,
            max: 0,
            burst_length: 1,
        }
    }
}

/// A whole throttle configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Indexed like [`BUCKET_NAMES`].
    pub buckets: [BucketConfig; 6],
    /// Requests larger than this count as several I/Os (0: every request is one).
    pub iops_size: u64,
}

/// Which bucket a [`ThrottleConfig`] index names.
pub const BPS_TOTAL: usize = 0;
/// See [`BPS_TOTAL`].
pub const IOPS_TOTAL: usize = 3;

impl ThrottleConfig {
    /// True if any bucket limits anything.
    pub fn enabled(&self) -> bool {
        self.buckets.iter().any(|b| b.avg > 0)
    }

    /// QEMU's validity checks, in its order.
    pub fn validate(&self) -> Result<()> {
        let b = &self.buckets;
        let conflict = |t: usize, f: fn(&BucketConfig) -> u64| {
            f(&b[t]) != 0 && (f(&b[t + 1]) != 0 || f(&b[t + 2]) != 0)
        };
        if conflict(BPS_TOTAL, |x| x.avg)
            || conflict(IOPS_TOTAL, |x| x.avg)
            || conflict(BPS_TOTAL, |x| x.max)
            || conflict(IOPS_TOTAL, |x| x.max)
        {
            return Err(Error::generic(
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ));
        }
        if self.iops_size != 0 && b[IOPS_TOTAL..].iter().all(|x| x.avg == 0) {
            return Err(Error::generic("iops size requires an iops value to be set"));
        }
        b.iter().try_for_each(BucketConfig::validate)
    }
}

impl BucketConfig {
    fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::generic(m));
        if self.avg > VALUE_MAX || self.max > VALUE_MAX {
            return Err(Error::generic(format!(
                "bps/iops/max values must be within [0, {VALUE_MAX}]"
            )));
        }
        if self.burst_length == 0 {
            return fail("the burst length cannot be 0");
        }
        if self.max != 0 && self.burst_length > VALUE_MAX / self.max {
            return fail("burst length too high for this burst rate");
        }
        if self.burst_length > 1 && self.max == 0 {
            return fail("burst length set without burst rate");
        }
        if self.max != 0 && self.avg == 0 {
            return fail("bps_max/iops_max require corresponding bps/iops values");
        }
        if self.max != 0 && self.max < self.avg {
            return fail("bps_max/iops_max cannot be lower than bps/iops");
        }
        Ok(())
    }

    /// The bucket's field named `suffix` ("", "-max", "-max-length").
    fn field(&mut self, suffix: &str) -> &mut u64 {
        match suffix {
            "" => &mut self.avg,
            "-max" => &mut self.max,
            _ => &mut self.burst_length,
        }
    }
}

const SUFFIXES: [&str; 3] = ["", "-max", "-max-length"];

impl ThrottleConfig {
    /// The limits as a `throttle-group`'s `limits` property reads (`qom-get`): every member,
    /// unset ones as 0 (burst lengths as 1).
    pub fn to_limits(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, b) in BUCKET_NAMES.iter().zip(self.buckets) {
            let mut b = b;
            for suffix in SUFFIXES {
                m.insert(format!("{name}{suffix}"), Value::from(*b.field(suffix)));
            }
        }
        m.insert("iops-size".into(), Value::from(self.iops_size));
        Value::Object(m)
    }

    /// A flat property's value (`x-bps-total`, `x-iops-read-max-length`, `x-iops-size`).
    pub fn flat_property(&self, name: &str) -> Option<u64> {
        let key = name.strip_prefix("x-")?;
        if key == "iops-size" {
            return Some(self.iops_size);
        }
        for (bucket, b) in BUCKET_NAMES.iter().zip(self.buckets) {
            let mut b = b;
            for suffix in SUFFIXES {
                if key.strip_prefix(bucket) == Some(suffix) {
                    return Some(*b.field(suffix));
                }
            }
        }
        None
    }

    /// These limits with the members of `limits` (a `qom-set` of `limits`) replacing theirs;
    /// not yet validated.
    pub fn merged(&self, mut limits: Options) -> Result<ThrottleConfig> {
        let mut cfg = *self;
        take_each(&mut limits, "", Spelling::Limits, &mut cfg)?;
        limits.finish()?;
        Ok(cfg)
    }
}

/// How a property was spelled: the nested `limits` dictionary (signed, range-checked by the
/// validation) or a flat `x-` property (unsigned, negative refused at once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spelling {
    Limits,
    Flat,
}

/// Take the throttle properties out of a `throttle-group` object's options: `limits.NAME`
/// first, then `x-NAME` (which wins when both are given).
pub fn take_config(opts: &mut Options) -> Result<ThrottleConfig> {
    let mut cfg = ThrottleConfig::default();
    if let Some(mut limits) = opts.take_dict("limits")? {
        take_each(&mut limits, "", Spelling::Limits, &mut cfg)?;
        limits.finish()?;
    }
    take_each(opts, "x-", Spelling::Flat, &mut cfg)?;
    Ok(cfg)
}

fn take_each(
    opts: &mut Options,
    prefix: &str,
    spelling: Spelling,
    cfg: &mut ThrottleConfig,
) -> Result<()> {
    for (i, name) in BUCKET_NAMES.iter().enumerate() {
        for suffix in SUFFIXES {
            let key = format!("{prefix}{name}{suffix}");
            let full = format!("{}{key}", opts.prefix());
            if let Some(v) = opts.take(&key) {
                let n = integer(&full, &v, spelling)?;
                if suffix == "-max-length" && n > u32::MAX as u64 {
                    return Err(Error::generic(format!(
                        "{key} value must be in therange [0, 4294967295]"
                    )));
                }
                *cfg.buckets[i].field(suffix) = n;
            }
        }
    }
    let key = format!("{prefix}iops-size");
    if let Some(v) = opts.take(&key) {
        cfg.iops_size = integer(&format!("{}{key}", opts.prefix()), &v, spelling)?;
    }
    Ok(())
}

/// A property's integer (a JSON number or a decimal string from `key=value`). A negative value
/// of a `limits` member becomes one past the range so the validation names the range, as QEMU
/// does; a negative `x-` value is refused here.
fn integer(full: &str, v: &Value, spelling: Spelling) -> Result<u64> {
    let n: Option<i128> = match v {
        Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
        Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    let n = n.ok_or_else(|| Error::generic(format!("Parameter '{full}' expects integer")))?;
    match (n < 0, spelling) {
        (true, Spelling::Flat) => Err(Error::generic("Property values cannot be negative")),
        (true, Spelling::Limits) => Ok(VALUE_MAX + 1),
        (false, _) => u64::try_from(n)
            .map_err(|_| Error::generic(format!("Parameter '{full}' expects integer"))),
    }
}
