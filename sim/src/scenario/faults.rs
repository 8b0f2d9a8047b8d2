//! `fault inject NAME KIND key=value...`: scenario syntax onto the virtual disk's `FaultSpec`.
//!
//! Kinds: `eio`, `enospc quota=SIZE`, `latent`, `lost-write`, `misdirected`, `bitrot`,
//! `flush-drops-dirty`, `discard-no-zero`, `slow extra=DUR[..DUR]`. Targeting: `path=`,
//! `ops=read,write,flush,discard,zeroes`, `range=START..END`, `skip=N`; trigger: `once`,
//! `times=N`, `sticky` (default), `prob=P`.

use engine::util::parse_size;

use super::parse::{Arg, parse_duration};
use crate::{FaultKind, FaultSpec, Latency, OpKind, Trigger};

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

/// Build a fault from a scenario line's kind and arguments.
pub fn fault_spec(kind: &str, args: &[Arg]) -> Result<FaultSpec, String> {
    let value = |key: &str| {
        args.iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
    };
    let kind = match kind {
        "eio" => FaultKind::Eio,
        "enospc" => {
            let q = value("quota").ok_or("enospc needs quota=SIZE")?;
            FaultKind::NoSpace {
                quota_bytes: parse_size(&q).ok_or(format!("bad quota '{q}'"))?,
            }
        }
        "latent" => FaultKind::LatentSector,
        "lost-write" => FaultKind::LostWrite,
        "misdirected" => FaultKind::MisdirectedWrite,
        "bitrot" => FaultKind::BitRot,
        "flush-drops-dirty" => FaultKind::FlushDropsDirty,
        "discard-no-zero" => FaultKind::DiscardNoZero,
        "slow" => FaultKind::Slow {
            extra: duration_range(&value("extra").ok_or("slow needs extra=DURATION")?)?,
        },
        other => return Err(format!("unknown fault kind '{other}'")),
    };
    let mut spec = FaultSpec::new(kind);
    for a in args {
        match (a.key.as_str(), a.value.as_deref()) {
            ("quota" | "extra", _) => {}
            ("path", Some(p)) => spec = spec.path(p),
            ("ops", Some(list)) => {
                let ops = list
                    .split(',')
                    .map(|o| match o {
                        "read" => Ok(OpKind::Read),
                        "write" => Ok(OpKind::Write),
                        "flush" => Ok(OpKind::Flush),
                        "discard" => Ok(OpKind::Discard),
                        "zeroes" => Ok(OpKind::WriteZeroes),
                        other => Err(format!("unknown operation '{other}'")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                spec = spec.ops(&ops);
            }
            ("range", Some(r)) => {
                let (s, e) = r
                    .split_once("..")
                    .ok_or(format!("bad range '{r}' (START..END)"))?;
                let (s, e) = (parse_size(s), parse_size(e));
                match (s, e) {
                    (Some(s), Some(e)) if s < e => spec = spec.range(s, e - s),
                    _ => return Err(format!("bad range '{r}'")),
                }
            }
            ("skip", Some(n)) => {
                spec = spec.skip(n.parse().map_err(|_| format!("bad skip '{n}'"))?)
            }
            ("once", None) => spec = spec.trigger(Trigger::Once),
            ("sticky", None) => spec = spec.trigger(Trigger::Sticky),
            ("times", Some(n)) => {
                spec = spec.trigger(Trigger::Times(
                    n.parse().map_err(|_| format!("bad times '{n}'"))?,
                ))
            }
            ("prob", Some(p)) => {
                let p: f64 = p.parse().map_err(|_| format!("bad probability '{p}'"))?;
                spec = spec.trigger(Trigger::Probability(p));
            }
            (k, _) => return Err(format!("unknown fault argument '{k}'")),
        }
    }
    spec.validate()?;
    Ok(spec)
}
