//! Turning blkdebug's options into rules and permissions: QAPI's `BlkdebugInjectErrorOptions`
//! and `BlkdebugSetStateOptions` (from `blockdev-add` JSON, `inject-error.0.event=...` key=value
//! strings, or config-file sections), and the `take-child-perms` / `unshare-child-perms` lists.
//!
//! Every bad value is refused with a message naming the option and the value. Must not import
//! `job`, `qmp`, `engine`, `backend` or other drivers.

use serde_json::{Map, Value, json};

use crate::error::{Error, ParamProblem, Result};
use crate::event::DebugEvent;
use crate::types::Perms;
use crate::util::Options;

use super::rules::{Action, Inject, IoType, Rule};

/// Which rule list an options object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RuleKind {
    /// `inject-error`.
    InjectError,
    /// `set-state`.
    SetState,
}

impl RuleKind {
    /// The option (and config section) name.
    pub(super) fn name(self) -> &'static str {
        match self {
            RuleKind::InjectError => "inject-error",
            RuleKind::SetState => "set-state",
        }
    }
}

/// The elements of a list option: a JSON array, or the object `{"0": .., "1": ..}` that dotted
/// key=value strings (`inject-error.0.event=...`) fold into.
pub(super) fn list_items(key: &str, value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Object(map) => {
            let mut items = Vec::with_capacity(map.len());
            for (index, item) in map {
                let i: usize = index.parse().map_err(|_| {
                    Error::param(format!("{key}.{index}"), ParamProblem::Unexpected)
                })?;
                items.push((i, item));
            }
            items.sort_by_key(|(i, _)| *i);
            for (expect, (i, _)) in items.iter().enumerate() {
                if *i != expect {
                    return Err(Error::param_missing(format!("{key}.{expect}")));
                }
            }
            Ok(items.into_iter().map(|(_, v)| v).collect())
        }
        _ => Err(Error::generic(format!(
            "Invalid parameter type for '{key}', expected: array"
        ))),
    }
}

/// An element of a list option as an options dictionary whose errors name `key.index.`.
fn element(key: &str, index: usize, value: Value) -> Result<Options> {
    let index = index.to_string();
    let mut outer = Options::new(json!({ key: { index.clone(): value } }))?;
    let mut list = outer.take_dict(key)?.expect("built above");
    Ok(list.take_dict(&index)?.expect("built above"))
}

/// Parse the rules of one list option.
pub(super) fn rule_list(kind: RuleKind, value: Value) -> Result<Vec<Rule>> {
    list_items(kind.name(), value)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| rule(kind, element(kind.name(), i, item)?))
        .collect()
}

/// Parse one section of a config file (string values).
pub(super) fn config_rule(kind: RuleKind, keys: Map<String, Value>) -> Result<Rule> {
    rule(kind, Options::new(Value::Object(keys))?)
}

fn invalid(value: &str, key: String) -> Error {
    Error::generic(format!("Invalid parameter '{value}' for '{key}'"))
}

fn rule(kind: RuleKind, mut opts: Options) -> Result<Rule> {
    let prefix = opts.prefix().to_string();
    let key = |k: &str| format!("{prefix}{k}");
    let event_key = key("event");
    let name = opts
        .take_str("event")?
        .ok_or_else(|| Error::generic(format!("Missing event name for rule ('{event_key}')")))?;
    let event = DebugEvent::from_name(&name).ok_or_else(|| invalid(&name, event_key))?;
    let state = opts.take_u64("state")?.unwrap_or(0);
    let action = match kind {
        RuleKind::SetState => {
            let new_state = opts
                .take_u64("new_state")?
                .ok_or_else(|| Error::param_missing(key("new_state")))?;
            Action::SetState { new_state }
        }
        RuleKind::InjectError => {
            let errno = match opts.take_u64("errno")? {
                None => crate::error::Errno::EIO.code(),
                Some(n) => i32::try_from(n).map_err(|_| invalid(&n.to_string(), key("errno")))?,
            };
            let offset = match opts.take_u64("sector")? {
                None => None,
                Some(s) => Some(
                    s.checked_mul(512)
                        .ok_or_else(|| invalid(&s.to_string(), key("sector")))?,
                ),
            };
            let iotype_mask = match opts.take_str("iotype")? {
                None => IoType::DEFAULT_MASK,
                Some(t) => IoType::NAMES
                    .iter()
                    .find(|(n, _)| *n == t)
                    .map(|(_, ty)| ty.bit())
                    .ok_or_else(|| invalid(&t, key("iotype")))?,
            };
            Action::InjectError(Inject {
                errno,
                offset,
                once: opts.take_bool("once")?.unwrap_or(false),
                immediately: opts.take_bool("immediately")?.unwrap_or(false),
                iotype_mask,
            })
        }
    };
    opts.finish()?;
    Ok(Rule {
        event,
        state,
        action,
    })
}

/// QAPI's `BlockPermission` names.
const PERM_NAMES: [(&str, Perms); 5] = [
    ("consistent-read", Perms::CONSISTENT_READ),
    ("write", Perms::WRITE),
    ("write-unchanged", Perms::WRITE_UNCHANGED),
    ("resize", Perms::RESIZE),
    ("graph-mod", Perms::GRAPH_MOD),
];

/// Parse a `take-child-perms` / `unshare-child-perms` list.
pub(super) fn perm_list(key: &str, value: Option<Value>) -> Result<Perms> {
    let Some(value) = value else {
        return Ok(Perms::NONE);
    };
    let mut perms = Perms::NONE;
    for (i, item) in list_items(key, value)?.into_iter().enumerate() {
        let Value::String(name) = item else {
            return Err(Error::generic(format!(
                "Invalid parameter type for '{key}.{i}', expected: string"
            )));
        };
        let perm = PERM_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .ok_or_else(|| invalid(&name, format!("{key}.{i}")))?;
        perms |= perm;
    }
    Ok(perms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_from_json_and_keyval_forms() {
        let json = json!([{"event": "read_aio", "errno": 28, "sector": 2, "once": true,
                           "iotype": "flush"}]);
        let rules = rule_list(RuleKind::InjectError, json).unwrap();
        assert_eq!(rules[0].event, DebugEvent::ReadAio);
        let Action::InjectError(i) = &rules[0].action else {
            panic!("not an inject rule")
        };
        assert_eq!(
            (i.errno, i.offset, i.once, i.immediately),
            (28, Some(1024), true, false)
        );
        assert_eq!(i.iotype_mask, IoType::Flush.bit());
        let keyval = json!({"1": {"event": "l2_load", "new_state": "3"},
                            "0": {"event": "none", "state": "2", "new_state": "1"}});
        let rules = rule_list(RuleKind::SetState, keyval).unwrap();
        assert_eq!(rules[0].event, DebugEvent::None);
        assert_eq!(rules[0].state, 2);
        assert_eq!(rules[1].action, Action::SetState { new_state: 3 });
    }

    #[test]
    fn bad_values_are_named() {
        let err = |kind, v| rule_list(kind, v).unwrap_err().message().to_string();
        assert_eq!(
            err(RuleKind::InjectError, json!([{"event": "xyz"}])),
            "Invalid parameter 'xyz' for 'inject-error.0.event'"
        );
        assert_eq!(
            err(
                RuleKind::InjectError,
                json!([{"event": "none", "iotype": "x"}])
            ),
            "Invalid parameter 'x' for 'inject-error.0.iotype'"
        );
        assert_eq!(
            err(RuleKind::SetState, json!([{"event": "none"}])),
            "Parameter 'set-state.0.new_state' is missing"
        );
        assert_eq!(
            err(
                RuleKind::SetState,
                json!([{"event": "none", "new_state": 1, "x": 1}])
            ),
            "Parameter 'set-state.0.x' is unexpected"
        );
        assert!(err(RuleKind::SetState, json!({"1": {}})).contains("'set-state.0' is missing"));
        assert_eq!(
            perm_list("take-child-perms", Some(json!(["write", "bogus"])))
                .unwrap_err()
                .message(),
            "Invalid parameter 'bogus' for 'take-child-perms.1'"
        );
    }
}
