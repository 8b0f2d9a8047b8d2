//! Small value types shared across layers: ids, permissions, child roles, node options.
//!
//! Importable from anywhere; imports nothing else from the engine but `error`.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign, Not};

use crate::error::{Error, Result};

/// Stable identity of a node, unique for the life of an engine (creation order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// Stable identity of an edge (a parent's use of a child), unique for the life of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EdgeId(pub u64);

/// Permissions a user of a node takes (`perm`) or lets others take (`shared`): QEMU's
/// `BLK_PERM_*`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Perms(u8);

impl Perms {
    /// No permission.
    pub const NONE: Perms = Perms(0);
    /// Reads return consistent, meaningful data.
    pub const CONSISTENT_READ: Perms = Perms(1 << 0);
    /// May change what readers see.
    pub const WRITE: Perms = Perms(1 << 1);
    /// May write data that does not change what readers see.
    pub const WRITE_UNCHANGED: Perms = Perms(1 << 2);
    /// May change the size.
    pub const RESIZE: Perms = Perms(1 << 3);
    /// May change the graph below (QEMU's "change children").
    pub const GRAPH_MOD: Perms = Perms(1 << 4);
    /// Every permission.
    pub const ALL: Perms = Perms(0x1f);

    const NAMES: [(Perms, &'static str); 5] = [
        (Perms::CONSISTENT_READ, "consistent read"),
        (Perms::WRITE, "write"),
        (Perms::WRITE_UNCHANGED, "write unchanged"),
        (Perms::RESIZE, "resize"),
        (Perms::GRAPH_MOD, "change children"),
    ];

    /// True when every permission of `other` is included.
    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any permission of `other` is included.
    pub fn intersects(self, other: Perms) -> bool {
        self.0 & other.0 != 0
    }

    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names QEMU uses, comma separated ("write, resize").
    pub fn names(self) -> String {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, n)| *n)
            .collect();
        names.join(", ")
    }

    /// The names as a list, for JSON output.
    pub fn name_list(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl BitOr for Perms {
    type Output = Perms;
    fn bitor(self, rhs: Perms) -> Perms {
        Perms(self.0 | rhs.0)
    }
}
impl BitOrAssign for Perms {
    fn bitor_assign(&mut self, rhs: Perms) {
        self.0 |= rhs.0;
    }
}
impl BitAnd for Perms {
    type Output = Perms;
    fn bitand(self, rhs: Perms) -> Perms {
        Perms(self.0 & rhs.0)
    }
}
impl Not for Perms {
    type Output = Perms;
    fn not(self) -> Perms {
        Perms(!self.0 & Perms::ALL.0)
    }
}
impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perms({})", self.names())
    }
}

/// What a child is to its parent (QEMU's `BdrvChildRole`): a bit set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildRole(u8);

impl ChildRole {
    /// Holds guest data.
    pub const DATA: ChildRole = ChildRole(1 << 0);
    /// Holds metadata of the parent's format.
    pub const METADATA: ChildRole = ChildRole(1 << 1);
    /// The parent is a filter over this child: it reads and writes the same data.
    pub const FILTERED: ChildRole = ChildRole(1 << 2);
    /// A backing child: unallocated parts of the parent read from it.
    pub const COW: ChildRole = ChildRole(1 << 3);
    /// The parent's primary child (its `file`, or the filtered child).
    pub const PRIMARY: ChildRole = ChildRole(1 << 4);

    /// True when every role bit of `other` is set.
    pub fn contains(self, other: ChildRole) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for ChildRole {
    type Output = ChildRole;
    fn bitor(self, rhs: ChildRole) -> ChildRole {
        ChildRole(self.0 | rhs.0)
    }
}

impl fmt::Debug for ChildRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (ChildRole::DATA, "data"),
            (ChildRole::METADATA, "metadata"),
            (ChildRole::FILTERED, "filtered"),
            (ChildRole::COW, "cow"),
            (ChildRole::PRIMARY, "primary"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "ChildRole({})", set.join("|"))
    }
}

/// `detect-zeroes`: turn all-zero writes into write-zeroes requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    /// Never (the default).
    #[default]
    Off,
    /// Zero writes become write-zeroes requests.
    On,
    /// ...that may also unmap, when the node has `discard=unmap`.
    Unmap,
}

impl DetectZeroes {
    /// Parse QMP's value.
    pub fn parse(s: &str) -> Result<DetectZeroes> {
        match s {
            "off" => Ok(DetectZeroes::Off),
            "on" => Ok(DetectZeroes::On),
            "unmap" => Ok(DetectZeroes::Unmap),
            _ => Err(Error::param_invalid(
                "detect-zeroes",
                format!("does not accept value '{s}' (expected off, on or unmap)"),
            )),
        }
    }
}

/// A `discard` option's value: true for "unmap" (or "on"), false for "ignore" (or "off"), `None`
/// for anything else (each front end words that error its own way).
pub fn discard_unmap(mode: &str) -> Option<bool> {
    match mode {
        "ignore" | "off" => Some(false),
        "unmap" | "on" => Some(true),
        _ => None,
    }
}

/// A device's reaction to an I/O error (QEMU's `BlockdevOnError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Fail the request to the guest.
    Report,
    /// Pretend success.
    Ignore,
    /// Stop the machine; the request is retried on `cont`.
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
}

impl OnError {
    /// Parse a value for the option named `what` ("rerror", "werror", "on-error").
    pub fn parse(s: &str, what: &str) -> Result<OnError> {
        match s {
            "report" => Ok(OnError::Report),
            "ignore" => Ok(OnError::Ignore),
            "stop" => Ok(OnError::Stop),
            "enospc" => Ok(OnError::Enospc),
            _ => Err(Error::generic(format!("'{s}' invalid {what} error action"))),
        }
    }

    /// The QMP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Report => "report",
            OnError::Ignore => "ignore",
            OnError::Stop => "stop",
            OnError::Enospc => "enospc",
        }
    }
}

/// Validate a user-given node name as QEMU does: letters, digits, `-`, `_`, `.`, starting with
/// a letter, at most 31 characters.
pub fn validate_node_name(name: &str) -> Result<()> {
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok {
        return Err(Error::generic(format!(
            "Invalid node-name: '{name}' (use letters, digits, '-', '_' and '.', starting with a letter)"
        )));
    }
    if name.len() > 31 {
        return Err(Error::generic(format!(
            "Node name too long: '{name}' (at most 31 characters)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_validated_like_qemu() {
        for ok in ["a", "disk0", "a-b_c.d", "x234567890123456789012345678901"] {
            validate_node_name(ok).unwrap();
        }
        for bad in [
            "",
            "0disk",
            "-a",
            "a b",
            "a/b",
            "#block1",
            "é",
            "x2345678901234567890123456789012",
        ] {
            let err = validate_node_name(bad).unwrap_err();
            assert!(err.message().contains(bad), "{err}");
        }
    }

    #[test]
    fn perm_names() {
        assert_eq!((Perms::WRITE | Perms::RESIZE).names(), "write, resize");
        assert_eq!(!Perms::NONE, Perms::ALL);
    }
}
