//! Option dictionaries as QMP's `blockdev-add` passes them: a JSON object from which each layer
//! takes the keys it knows; whatever is left at the end is an error naming the unexpected key.
//!
//! Keys may also arrive flattened with dots ("cache.direct": true, "file.filename": "x"), as from
//! qemu-img style `-o`/`--image-opts` strings; `Options::new` folds those into nested objects.

use serde_json::{Map, Value};

use crate::error::{Error, ParamProblem, Result};
use crate::util::size::parse_size;

/// A set of options being consumed.
#[derive(Clone, Debug, Default)]
pub struct Options {
    map: Map<String, Value>,
    /// Dotted prefix of this dictionary within the user's options, for error messages.
    prefix: String,
}

fn expected(key: &str, what: &str) -> Error {
    Error::generic(format!(
        "Invalid parameter type for '{key}', expected: {what}"
    ))
}

impl Options {
    /// Options from a JSON object; dotted keys are folded into nested objects.
    pub fn new(value: Value) -> Result<Options> {
        Options::with_prefix(value, String::new())
    }

    fn with_prefix(value: Value, prefix: String) -> Result<Options> {
        let Value::Object(flat) = value else {
            return Err(Error::generic(format!(
                "Invalid parameter type for '{}', expected: object",
                prefix.trim_end_matches('.')
            )));
        };
        let mut map = Map::new();
        for (key, val) in flat {
            insert_dotted(&mut map, &key, val)?;
        }
        Ok(Options { map, prefix })
    }

    /// Parse a qemu-img style `key=value,key2=value2` string (",," escapes a comma).
    pub fn from_keyval(text: &str) -> Result<Options> {
        let mut map = Map::new();
        for item in split_options(text) {
            let (key, val) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    return Err(Error::generic(format!(
                        "Expected '=' after parameter '{item}'"
                    )));
                }
            };
            insert_dotted(&mut map, &key, Value::String(val))?;
        }
        Ok(Options {
            map,
            prefix: String::new(),
        })
    }

    /// `from_keyval` where a bare first item (no `=`) is the value of `implied` (QEMU's
    /// "implied key": `secret,id=x` is `qom-type=secret,id=x`).
    pub fn from_keyval_implied(text: &str, implied: &str) -> Result<Options> {
        let bare = text
            .split(',')
            .next()
            .is_some_and(|f| !f.is_empty() && !f.contains('='));
        if bare {
            Options::from_keyval(&format!("{implied}={text}"))
        } else {
            Options::from_keyval(text)
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// True when `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// A raw value, left in place.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// The top-level keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Take a raw value.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Take a string.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(expected(&self.full(key), "string")),
        }
    }

    /// Take a required string.
    pub fn require_str(&mut self, key: &str) -> Result<String> {
        self.take_str(key)?
            .ok_or_else(|| Error::param_missing(self.full(key)))
    }

    /// Take a boolean (JSON bool, or "on"/"off"/"true"/"false" from a key=value string).
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(Value::String(s)) => parse_on_off(&self.full(key), &s).map(Some),
            Some(_) => Err(expected(&self.full(key), "boolean")),
        }
    }

    /// Take an unsigned integer (JSON number or decimal string; sizes accept k/M/G/T suffixes).
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                Error::param_invalid(self.full(key), "expects a non-negative integer")
            }),
            Some(Value::String(s)) => parse_size(&s).map(Some).ok_or_else(|| {
                Error::param_invalid(self.full(key), format!("expects a size, got '{s}'"))
            }),
            Some(_) => Err(expected(&self.full(key), "integer")),
        }
    }

    /// Take a signed integer (a JSON number; QMP's `int` arguments such as `speed`).
    pub fn take_i64(&mut self, key: &str) -> Result<Option<i64>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| expected(&self.full(key), "integer")),
            Some(_) => Err(expected(&self.full(key), "integer")),
        }
    }

    /// Take a nested dictionary.
    pub fn take_dict(&mut self, key: &str) -> Result<Option<Options>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(v) => Options::with_prefix(v, format!("{}.", self.full(key))).map(Some),
        }
    }

    /// Fail if anything was not consumed, naming the first leftover key.
    pub fn finish(self) -> Result<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(key) => Err(Error::param(self.full(key), ParamProblem::Unexpected)),
        }
    }

    /// The dotted prefix of this dictionary ("file." for a child's options).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The remaining options as JSON.
    pub fn into_value(self) -> Value {
        Value::Object(self.map)
    }
}

fn insert_dotted(map: &mut Map<String, Value>, key: &str, val: Value) -> Result<()> {
    match key.split_once('.') {
        None => {
            if map.contains_key(key) {
                return Err(Error::generic(format!("Duplicate parameter '{key}'")));
            }
            map.insert(key.to_string(), val);
            Ok(())
        }
        Some((head, rest)) => {
            let slot = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(inner) => insert_dotted(inner, rest, val),
                _ => Err(Error::param_invalid(
                    head,
                    "is given both as a value and as a dictionary",
                )),
            }
        }
    }
}

/// The items of a QEMU option string `a=b,c=d` (",," is a literal comma; a trailing comma adds
/// no item): the one splitter behind `-o`, `--image-opts`, `--object` and qemu-io's `-o`.
pub fn split_options(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    items
}

/// A boolean option's text as QEMU reads it ("on"/"true"/"yes", "off"/"false"/"no"); otherwise
/// QEMU's error naming the parameter `key`.
pub fn parse_on_off(key: &str, value: &str) -> Result<bool> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(Error::param_invalid(key, "expects 'on' or 'off'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_keys_fold_and_leftovers_are_named() {
        let mut o = Options::new(json!({"driver": "raw", "file.driver": "file",
            "file.filename": "/x", "bogus": 1}))
        .unwrap();
        assert_eq!(o.require_str("driver").unwrap(), "raw");
        let mut file = o.take_dict("file").unwrap().unwrap();
        assert_eq!(file.require_str("filename").unwrap(), "/x");
        assert_eq!(file.prefix(), "file.");
        let err = file.require_str("node-name").unwrap_err();
        assert_eq!(err.message(), "Parameter 'file.node-name' is missing");
        assert_eq!(
            o.finish().unwrap_err().message(),
            "Parameter 'bogus' is unexpected"
        );
    }

    #[test]
    fn keyval_strings() {
        let mut o = Options::from_keyval("driver=file,filename=a,,b,cache.direct=on").unwrap();
        assert_eq!(o.require_str("filename").unwrap(), "a,b");
        let mut cache = o.take_dict("cache").unwrap().unwrap();
        assert_eq!(cache.take_bool("direct").unwrap(), Some(true));
        assert!(Options::from_keyval("novalue").is_err());
    }
}
