//! `fault inject NAME KIND key=value...`: scenario syntax onto the virtual disk's `FaultSpec`.
//!
//! Kinds and their own arguments come from the fault table (`sim::fault::FAULT_KINDS`: `eio`,
//! `enospc quota=SIZE`, `slow extra=DUR[..DUR]`, `hang delay=DUR[..DUR]`, `short-read`, ...).
//! Targeting: `path=`, `ops=read,write,flush,discard,zeroes,setlen,prealloc,crash`,
//! `range=START..END`, `skip=N`; trigger: `once`, `times=N`, `sticky` (default), `prob=P`.

use engine::util::parse_size;

use super::syntax::Arg;
use crate::fault::class_named;
use crate::{FaultSpec, OpKind, Trigger};

/// Build a fault from a scenario line's kind and arguments.
pub fn fault_spec(kind: &str, args: &[Arg]) -> Result<FaultSpec, String> {
    let value = |key: &str| {
        args.iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
    };
    let class = class_named(kind).ok_or_else(|| format!("unknown fault kind '{kind}'"))?;
    let kind = class.build(&value)?;
    let mut spec = FaultSpec::new(kind);
    for a in args {
        match (a.key.as_str(), a.value.as_deref()) {
            (k, _) if class.arg_keys().any(|c| c == k) => {}
            ("path", Some(p)) => spec = spec.path(p),
            ("ops", Some(list)) => {
                let ops = list
                    .split(',')
                    .map(|o| OpKind::from_name(o).ok_or(format!("unknown operation '{o}'")))
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
