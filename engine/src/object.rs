//! User-creatable objects (`--object` on the command line, QMP's `object-add`), kept by id.
//!
//! `secret`: bytes given inline (`data=`) or read from a host file (`file=`),
//! as raw text or base64 (`format=`). Drivers that need a key (LUKS) look secrets up by id with
//! [`ObjectRegistry::secret`]. Parsing and validation follow QEMU's order and messages; object
//! types QEMU has but blk does not are refused by name. `throttle-group`: limits shared by the
//! throttle filter nodes and devices naming the group (see [`crate::throttle`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::Value;

use crate::env::{Env, OpenOptions};
use crate::error::{Error, Result};
use crate::io::IoBuf;
use crate::throttle::{ThrottleGroup, take_config};
use crate::util::Options;

/// Object types blk can create.
pub const OBJECT_TYPES: [&str; 2] = ["secret", "throttle-group"];

/// Object types QEMU has that blk does not (refused as unsupported rather than unknown).
const QEMU_ONLY_TYPES: [&str; 10] = [
    "authz-list",
    "authz-list-file",
    "authz-simple",
    "main-loop",
    "pr-manager-helper",
    "secret_keyring",
    "thread-context",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
];

/// A created object.
#[derive(Clone)]
pub enum Object {
    /// A secret's decoded bytes.
    Secret(Vec<u8>),
    /// A throttle group.
    ThrottleGroup(Rc<ThrottleGroup>),
}

/// The engine's objects by id.
#[derive(Default)]
pub struct ObjectRegistry {
    objects: RefCell<BTreeMap<String, Object>>,
    /// Throttle groups made implicitly by `block_set_io_throttle` (named by its `group` or
    /// the device), not objects: they go when their last member leaves.
    implicit_groups: RefCell<BTreeMap<String, Rc<ThrottleGroup>>>,
}

/// Parse an `--object` string (`TYPE,id=ID,key=value,...`; the leading bare item is
/// `qom-type`) into `object-add` arguments.
pub fn parse_object_arg(text: &str) -> Result<Value> {
    Ok(Options::from_keyval_implied(text, "qom-type")?.into_value())
}

/// QEMU's identifier rule: letters, digits, '-', '.', '_', starting with a letter.
fn valid_id(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl ObjectRegistry {
    /// `object-add`: validate `args` (`qom-type`, `id` and the type's properties) and create the
    /// object; a `file=` secret is read through `env`'s host file system.
    pub async fn add(&self, env: &Rc<dyn Env>, args: Value) -> Result<()> {
        let mut opts = Options::new(args)?;
        let qom_type = opts.require_str("qom-type")?;
        if QEMU_ONLY_TYPES.contains(&qom_type.as_str()) {
            return Err(Error::generic(format!(
                "Object type '{qom_type}' is not supported by blk"
            )));
        }
        if !OBJECT_TYPES.contains(&qom_type.as_str()) {
            return Err(Error::param_invalid(
                "qom-type",
                format!("does not accept value '{qom_type}'"),
            ));
        }
        let id = opts.require_str("id")?;
        if !valid_id(&id) {
            return Err(Error::param_invalid(
                "id",
                "expects an identifier\nIdentifiers consist of letters, digits, \
                 '-', '.', '_', starting with a letter.",
            ));
        }
        let object = if qom_type == "throttle-group" {
            throttle_group_from(env, opts)?
        } else {
            self.secret_from(env, opts).await?
        };
        let mut objects = self.objects.borrow_mut();
        if objects.contains_key(&id) {
            return Err(Error::generic(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            )));
        }
        objects.insert(id, object);
        Ok(())
    }

    /// A `secret`'s properties, in QEMU's order of checks.
    async fn secret_from(&self, env: &Rc<dyn Env>, mut opts: Options) -> Result<Object> {
        let data = opts.take_str("data")?;
        let file = opts.take_str("file")?;
        let format = opts.take_str("format")?;
        let keyid = opts.take_str("keyid")?;
        let _iv = opts.take_str("iv")?;
        opts.finish()?;
        let base64 = match format.as_deref() {
            None | Some("raw") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Error::param_invalid(
                    "format",
                    format!("does not accept value '{other}'"),
                ));
            }
        };
        let raw = match (data, file) {
            (Some(_), Some(_)) => {
                return Err(Error::generic("'file' and 'data' are mutually exclusive"));
            }
            (None, None) => {
                return Err(Error::generic("Either 'file' or 'data' must be provided"));
            }
            (Some(d), None) => d.into_bytes(),
            (None, Some(path)) => read_file(env, &path).await?,
        };
        let bytes = if base64 { decode_base64(&raw)? } else { raw };
        if let Some(key) = keyid {
            return Err(match self.objects.borrow().get(&key) {
                None => Error::generic(format!("No secret with id '{key}'")),
                Some(_) => Error::generic("Encrypted secrets ('keyid') are not supported by blk"),
            });
        }
        Ok(Object::Secret(bytes))
    }

    /// The bytes of the secret `id` (QEMU's message when there is none).
    pub fn secret(&self, id: &str) -> Result<Vec<u8>> {
        match self.objects.borrow().get(id) {
            Some(Object::Secret(bytes)) => Ok(bytes.clone()),
            _ => Err(Error::generic(format!("No secret with id '{id}'"))),
        }
    }

    /// The throttle group `id` (QEMU's message when there is none).
    pub fn throttle_group(&self, id: &str) -> Result<Rc<ThrottleGroup>> {
        match self.objects.borrow().get(id) {
            Some(Object::ThrottleGroup(g)) => Ok(Rc::clone(g)),
            _ => Err(Error::generic(format!("Throttle group '{id}' not found"))),
        }
    }

    /// The group named `name`: a `throttle-group` object, or an implicit group (made now, with
    /// no limits, if there is none).
    pub fn group_by_name(&self, env: &Rc<dyn Env>, name: &str) -> Rc<ThrottleGroup> {
        if let Ok(g) = self.throttle_group(name) {
            return g;
        }
        let mut implicit = self.implicit_groups.borrow_mut();
        let group = implicit.entry(name.to_string()).or_insert_with(|| {
            ThrottleGroup::new(Rc::clone(env), crate::throttle::ThrottleConfig::default())
        });
        Rc::clone(group)
    }

    /// The group named `name` (a `throttle-group` object or an implicit group), if any; unlike
    /// [`ObjectRegistry::group_by_name`] it makes none.
    pub fn find_group(&self, name: &str) -> Option<Rc<ThrottleGroup>> {
        self.throttle_group(name)
            .ok()
            .or_else(|| self.implicit_groups.borrow().get(name).cloned())
    }

    /// Drop the implicit group `name` once no member uses it.
    pub fn forget_unused_group(&self, name: &str) {
        let mut implicit = self.implicit_groups.borrow_mut();
        if implicit.get(name).is_some_and(|g| !g.in_use()) {
            implicit.remove(name);
        }
    }

    /// `object-del`.
    pub fn remove(&self, id: &str) -> Result<()> {
        if let Some(Object::ThrottleGroup(g)) = self.objects.borrow().get(id)
            && g.in_use()
        {
            return Err(Error::generic(format!(
                "object '{id}' is in use, can not be deleted"
            )));
        }
        self.objects
            .borrow_mut()
            .remove(id)
            .map(drop)
            .ok_or_else(|| Error::generic(format!("object '{id}' not found")))
    }

    /// The QOM type of object `id` ("secret", "throttle-group"), if there is one.
    pub fn type_name(&self, id: &str) -> Option<&'static str> {
        self.objects.borrow().get(id).map(|o| match o {
            Object::Secret(_) => "secret",
            Object::ThrottleGroup(_) => "throttle-group",
        })
    }

    /// The ids of every object, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.objects.borrow().keys().cloned().collect()
    }
}

/// A `throttle-group`'s limits, validated.
fn throttle_group_from(env: &Rc<dyn Env>, mut opts: Options) -> Result<Object> {
    let config = take_config(&mut opts)?;
    opts.finish()?;
    config.validate()?;
    Ok(Object::ThrottleGroup(ThrottleGroup::new(
        Rc::clone(env),
        config,
    )))
}

/// The whole host file at `path` (QEMU's message when it cannot be read).
async fn read_file(env: &Rc<dyn Env>, path: &str) -> Result<Vec<u8>> {
    let fail = |e: Error| {
        e.context(format_args!(
            "Unable to read {path}: Failed to open file \u{201c}{path}\u{201d}"
        ))
    };
    let file = env.fs().open(path, OpenOptions::default()).map_err(fail)?;
    let len = file.len().map_err(fail)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let (buf, r) = file.read_at(IoBuf::new(len as usize), 0).await;
    r.map_err(fail)?;
    Ok(buf.as_slice().to_vec())
}

/// Standard base64, as leniently as QEMU (a trailing partial group is dropped) but refusing
/// characters outside the alphabet and padding in the middle.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>> {
    let invalid = || Error::generic("Base64 data contains invalid characters");
    let body_len = text.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in &text[..body_len] {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(invalid()),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64(b"YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64(b"YWI=").unwrap(), b"ab");
        assert!(decode_base64(b"a!b").is_err());
    }

    #[test]
    fn object_strings() {
        let v = parse_object_arg("secret,id=s,data=a,,b").unwrap();
        assert_eq!(v["qom-type"], "secret");
        assert_eq!(v["data"], "a,b");
        assert!(valid_id("a-1._") && !valid_id("1a") && !valid_id(""));
    }
}
