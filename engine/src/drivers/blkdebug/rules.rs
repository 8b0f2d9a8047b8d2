//! blkdebug's rule engine: the rule list, the state integer, the list of armed error rules, and
//! the two steps of QEMU's `block/blkdebug.c` — processing an event (`blkdebug_debug_event`) and
//! checking an I/O request against the armed rules (`rule_check`).
//!
//! Pure bookkeeping with no I/O and no waiting: the caller (`mod.rs`) turns the outcomes into
//! errors, yields and suspensions. Must not import `job`, `qmp`, `engine`, `backend` or other
//! drivers.
//!
//! Ordering is QEMU's, kept in `Vec`s for determinism: QEMU inserts each rule at the *head* of its
//! event's list, so rules are stored in insertion order and walked newest first; armed rules are
//! inserted at the head of the active list as they are processed, so the first armed rule checked
//! by a request is the oldest matching one.

use crate::event::DebugEvent;

/// Bit of each I/O type in an inject-error rule's mask (QEMU's `BlkdebugIOType` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IoType {
    /// Reads.
    Read = 0,
    /// Writes.
    Write = 1,
    /// Write-zeroes.
    WriteZeroes = 2,
    /// Discards.
    Discard = 3,
    /// Flushes (only sector-less rules can match them).
    Flush = 4,
    /// Block-status queries (not in the default mask).
    BlockStatus = 5,
}

impl IoType {
    /// QAPI names, by bit.
    pub(super) const NAMES: [(&'static str, IoType); 6] = [
        ("read", IoType::Read),
        ("write", IoType::Write),
        ("write-zeroes", IoType::WriteZeroes),
        ("discard", IoType::Discard),
        ("flush", IoType::Flush),
        ("block-status", IoType::BlockStatus),
    ];

    /// This type's bit in a mask.
    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The mask a rule without `iotype` has: everything but block-status.
    pub(super) const DEFAULT_MASK: u8 = 0b01_1111;
}

/// What an `inject-error` rule does once armed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Inject {
    /// Errno returned (0 means "matches but injects nothing", as in QEMU).
    pub errno: i32,
    /// Byte offset (`sector * 512`) a request must contain; `None` matches any request.
    pub offset: Option<u64>,
    /// Remove the rule after it fired once.
    pub once: bool,
    /// Fail without yielding first.
    pub immediately: bool,
    /// I/O types it applies to ([`IoType::bit`]s).
    pub iotype_mask: u8,
}

/// A rule's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Arm an error for the next matching request.
    InjectError(Inject),
    /// Move to `new_state` once the event's rules are processed.
    SetState {
        /// The state to move to.
        new_state: u64,
    },
    /// Suspend the raising request under `tag` (breakpoints; one-shot).
    Suspend {
        /// The breakpoint's tag.
        tag: String,
    },
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Rule {
    /// The event that triggers it.
    pub event: DebugEvent,
    /// State it applies in; 0 means any state.
    pub state: u64,
    /// What it does.
    pub action: Action,
}

/// A rule plus its identity (so the active list can refer to it after removals).
#[derive(Debug)]
struct Stored {
    id: u64,
    rule: Rule,
}

/// What processing one event decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct EventOutcome {
    /// Tags of matched breakpoints: the raising request is suspended once for each, in order.
    pub suspend: Vec<String>,
    /// The state set by matching `set-state` rules (the last processed wins), to apply after
    /// any suspension; `None` when no set-state rule matched.
    pub new_state: Option<u64>,
}

/// An armed error that hit a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hit {
    /// The errno to fail with.
    pub errno: i32,
    /// Fail at once instead of after one yield.
    pub immediately: bool,
}

/// The rules of one blkdebug node and its state machine.
#[derive(Debug)]
pub(super) struct RuleSet {
    /// All rules in insertion order; processing walks them newest first.
    rules: Vec<Stored>,
    /// Ids of armed inject-error rules, head (checked first) at index 0.
    active: Vec<u64>,
    /// The current state (starts at 1).
    state: u64,
    next_id: u64,
}

impl RuleSet {
    /// An empty rule set in state 1.
    pub(super) fn new() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            active: Vec::new(),
            state: 1,
            next_id: 0,
        }
    }

    /// Set the state (after an event's suspensions are over).
    pub(super) fn set_state(&mut self, state: u64) {
        self.state = state;
    }

    /// Add a rule at the head of its event's list.
    pub(super) fn add(&mut self, rule: Rule) {
        self.next_id += 1;
        self.rules.push(Stored {
            id: self.next_id,
            rule,
        });
    }

    /// Number of rules (for tests and diagnostics).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }

    fn remove_id(&mut self, id: u64) {
        self.rules.retain(|s| s.id != id);
        self.active.retain(|a| *a != id);
    }

    /// Process `event`: every rule for it whose state matches the state at the start of the
    /// event acts. Inject-error rules are armed (the first one clears the active list),
    /// set-state rules record the new state (applied by the caller afterwards), breakpoint
    /// rules are deleted and reported for suspension.
    pub(super) fn process_event(&mut self, event: DebugEvent) -> EventOutcome {
        let state = self.state;
        let mut outcome = EventOutcome::default();
        let mut injected = false;
        let mut consumed = Vec::new();
        for stored in self.rules.iter().rev() {
            let rule = &stored.rule;
            if rule.event != event || (rule.state != 0 && rule.state != state) {
                continue;
            }
            match &rule.action {
                Action::InjectError(_) => {
                    if !injected {
                        self.active.clear();
                        injected = true;
                    }
                    self.active.insert(0, stored.id);
                }
                Action::SetState { new_state } => outcome.new_state = Some(*new_state),
                Action::Suspend { tag } => {
                    outcome.suspend.push(tag.clone());
                    consumed.push(stored.id);
                }
            }
        }
        for id in consumed {
            self.remove_id(id);
        }
        outcome
    }

    /// Check a request of `iotype` over `[offset, offset+bytes)` against the armed rules: the
    /// first armed rule whose mask has the type and whose offset lies in the range (or that has
    /// none) decides. A `once` rule is removed when it fires; errno 0 fires nothing.
    pub(super) fn check_io(&mut self, offset: u64, bytes: u64, iotype: IoType) -> Option<Hit> {
        let found = self.active.iter().find_map(|id| {
            let stored = self.rules.iter().find(|s| s.id == *id)?;
            let Action::InjectError(inject) = &stored.rule.action else {
                return None;
            };
            let in_range = match inject.offset {
                None => true,
                Some(at) => bytes != 0 && at >= offset && at < offset + bytes,
            };
            (in_range && inject.iotype_mask & iotype.bit() != 0).then(|| (*id, inject.clone()))
        })?;
        let (id, inject) = found;
        if inject.errno == 0 {
            return None;
        }
        if inject.once {
            self.remove_id(id);
        }
        Some(Hit {
            errno: inject.errno,
            immediately: inject.immediately,
        })
    }

    /// Delete every breakpoint rule with `tag`; true when there was one.
    pub(super) fn remove_breakpoints(&mut self, tag: &str) -> bool {
        let before = self.rules.len();
        self.rules
            .retain(|s| !matches!(&s.rule.action, Action::Suspend { tag: t } if t == tag));
        self.rules.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(event: DebugEvent, state: u64, errno: i32, offset: Option<u64>, once: bool) -> Rule {
        Rule {
            event,
            state,
            action: Action::InjectError(Inject {
                errno,
                offset,
                once,
                immediately: true,
                iotype_mask: IoType::DEFAULT_MASK,
            }),
        }
    }

    fn set_state(event: DebugEvent, state: u64, new_state: u64) -> Rule {
        Rule {
            event,
            state,
            action: Action::SetState { new_state },
        }
    }

    #[test]
    fn first_defined_set_state_wins_and_all_rules_see_the_old_state() {
        let mut rs = RuleSet::new();
        rs.add(set_state(DebugEvent::L2Load, 1, 2));
        rs.add(set_state(DebugEvent::L2Load, 1, 3));
        rs.add(inject(DebugEvent::L2Load, 1, 5, None, false));
        let out = rs.process_event(DebugEvent::L2Load);
        assert_eq!(out.new_state, Some(2));
        assert!(out.suspend.is_empty());
        rs.set_state(2);
        assert_eq!(rs.check_io(0, 512, IoType::Read).map(|h| h.errno), Some(5));
    }

    #[test]
    fn the_oldest_armed_rule_is_checked_first_and_a_new_arming_replaces_the_list() {
        let mut rs = RuleSet::new();
        rs.add(inject(DebugEvent::ReadAio, 0, 5, None, false));
        rs.add(inject(DebugEvent::ReadAio, 0, 28, None, false));
        rs.add(inject(DebugEvent::WriteAio, 0, 22, None, false));
        rs.process_event(DebugEvent::ReadAio);
        assert_eq!(rs.check_io(0, 512, IoType::Read).unwrap().errno, 5);
        rs.process_event(DebugEvent::WriteAio);
        assert_eq!(rs.check_io(0, 512, IoType::Read).unwrap().errno, 22);
        // An event that arms nothing leaves the active list alone.
        rs.process_event(DebugEvent::L1Update);
        assert_eq!(rs.check_io(0, 512, IoType::Read).unwrap().errno, 22);
    }

    #[test]
    fn once_removes_the_rule_and_errno_zero_fires_nothing() {
        let mut rs = RuleSet::new();
        rs.add(inject(DebugEvent::ReadAio, 0, 5, Some(1024), true));
        rs.add(inject(DebugEvent::WriteAio, 0, 0, None, true));
        rs.process_event(DebugEvent::ReadAio);
        assert_eq!(rs.check_io(0, 1024, IoType::Read), None, "sector outside");
        assert_eq!(rs.check_io(0, 0, IoType::Flush), None, "flush has no range");
        assert!(rs.check_io(512, 1024, IoType::Write).is_some());
        assert_eq!(
            rs.check_io(512, 1024, IoType::Write),
            None,
            "gone after once"
        );
        assert_eq!(rs.len(), 1);
        rs.process_event(DebugEvent::WriteAio);
        assert_eq!(rs.check_io(0, 512, IoType::Write), None);
        assert_eq!(rs.len(), 1, "an errno-0 rule is not consumed");
    }

    #[test]
    fn breakpoints_are_one_shot_and_removable() {
        let mut rs = RuleSet::new();
        let bp = |tag: &str| Rule {
            event: DebugEvent::Pwritev,
            state: 0,
            action: Action::Suspend { tag: tag.into() },
        };
        rs.add(bp("A"));
        rs.add(bp("B"));
        rs.add(bp("C"));
        assert!(rs.remove_breakpoints("C"));
        assert!(!rs.remove_breakpoints("C"));
        let out = rs.process_event(DebugEvent::Pwritev);
        assert_eq!(out.suspend, vec!["B".to_string(), "A".to_string()]);
        assert_eq!(
            rs.process_event(DebugEvent::Pwritev),
            EventOutcome::default()
        );
    }
}
