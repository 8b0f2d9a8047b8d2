//! blkdebug's `config` file: QEMU's `-readconfig` `.ini` syntax with `[inject-error]` and
//! `[set-state]` sections of `key = "value"` lines, read through the env's host file system (so
//! the simulator's virtual files work too).
//!
//! Must not import `job`, `qmp`, `engine`, `backend` or other drivers.

use std::rc::Rc;

use serde_json::{Map, Value};

use crate::env::{Env, OpenOptions};
use crate::error::{Error, Result, ResultExt};
use crate::io::IoBuf;

use super::parse::{RuleKind, config_rule};
use super::rules::Rule;

/// Read the whole file at `path` as text.
async fn read_text(env: &Rc<dyn Env>, path: &str) -> Result<String> {
    // QEMU's wording names no path (the file name is in the caller's "Could not open").
    let what = || "Could not read blkdebug config file".to_string();
    let file = env
        .fs()
        .open(path, OpenOptions::default())
        .context_with(what)?;
    let len = file.len().context_with(what)?;
    let len = usize::try_from(len).map_err(|_| Error::generic(format!("{}: too large", what())))?;
    if len == 0 {
        return Ok(String::new());
    }
    let (buf, r) = file.read_at(IoBuf::new(len), 0).await;
    r.context_with(what)?;
    String::from_utf8(buf.as_slice().to_vec())
        .map_err(|_| Error::generic(format!("{}: not UTF-8 text", what())))
}

/// One `[section]` with its keys and the line it starts on.
struct Section {
    kind: RuleKind,
    line: usize,
    keys: Map<String, Value>,
}

/// Split `text` into sections, as QEMU's `qemu_config_parse` reads it: blank lines and lines
/// starting with `#` are skipped, `[group]` (or `[group "id"]`) starts a section, and every other
/// line must be `key = "value"` (quotes may be left out here).
fn sections(path: &str, text: &str) -> Result<Vec<Section>> {
    let mut out: Vec<Section> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let at = |msg: String| Error::generic(format!("{path}:{line_no}: {msg}"));
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(inner) = line.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| at("parse error".into()))?;
            // `[group "id"]`: the id names the section; blkdebug has no use for it.
            let group = inner.split_whitespace().next().unwrap_or("");
            let kind = match group {
                "inject-error" => RuleKind::InjectError,
                "set-state" => RuleKind::SetState,
                _ => return Err(at(format!("There is no option group '{group}'"))),
            };
            out.push(Section {
                kind,
                line: line_no,
                keys: Map::new(),
            });
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| at("parse error".into()))?;
        let key = key.trim();
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(v) => v
                .strip_suffix('"')
                .ok_or_else(|| at("parse error".into()))?,
            None => value,
        };
        if key.is_empty() || key.contains(char::is_whitespace) || value.contains('"') {
            return Err(at("parse error".into()));
        }
        let section = out
            .last_mut()
            .ok_or_else(|| at("no group defined".into()))?;
        // As with QemuOpts, a key given twice takes the later value.
        section
            .keys
            .insert(key.to_string(), Value::String(value.to_string()));
    }
    Ok(out)
}

/// The rules of the config file at `path`: inject-error rules first, then set-state rules, each
/// in file order (the order in which QEMU adds them).
pub(super) async fn read_rules(env: &Rc<dyn Env>, path: &str) -> Result<(Vec<Rule>, Vec<Rule>)> {
    let text = read_text(env, path).await?;
    parse_rules(path, &text)
}

/// [`read_rules`] on text already read.
fn parse_rules(path: &str, text: &str) -> Result<(Vec<Rule>, Vec<Rule>)> {
    let mut inject = Vec::new();
    let mut set_state = Vec::new();
    for section in sections(path, text)? {
        let rule = config_rule(section.kind, section.keys).context_with(|| {
            format!("{path}:{}: [{}] section", section.line, section.kind.name())
        })?;
        match section.kind {
            RuleKind::InjectError => inject.push(rule),
            RuleKind::SetState => set_state.push(rule),
        }
    }
    Ok((inject, set_state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DebugEvent;

    #[test]
    fn sections_and_errors() {
        let text = "# comment\n\n[set-state]\nevent = \"l2_alloc_write\"\nstate = \"1\"\n\
                    new_state = \"2\"\n[inject-error \"x\"]\n  event = write_aio\nerrno = \"28\"\n";
        let (inject, set) = parse_rules("c.ini", text).unwrap();
        assert_eq!(inject.len(), 1);
        assert_eq!(inject[0].event, DebugEvent::WriteAio);
        assert_eq!(set[0].state, 1);
        let err = |t: &str| parse_rules("c.ini", t).unwrap_err().message().to_string();
        assert_eq!(err("event = \"none\"\n"), "c.ini:1: no group defined");
        assert_eq!(
            err("[bogus]\n"),
            "c.ini:1: There is no option group 'bogus'"
        );
        assert_eq!(err("[set-state]\nwhat\n"), "c.ini:2: parse error");
        assert_eq!(
            err("\n[inject-error]\nevent = \"nope\"\n"),
            "c.ini:2: [inject-error] section: Invalid parameter 'nope' for 'event'"
        );
    }
}
