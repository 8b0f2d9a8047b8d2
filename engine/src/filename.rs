//! Image names as users type them, turned into `blockdev-add` options: the one translation the
//! image tools, qemu-io's `open` and the QMP front end share.
//!
//! A name is one of
//! - `json:{...}`: the whole option tree as JSON; nested objects and dotted keys
//!   (`"file.filename"`) may be mixed, they are merged into one tree;
//! - `PROTOCOL:REST` (a colon before any slash): `file:PATH`, `blkdebug:CONFIG:IMAGE`; other
//!   protocols are refused as QEMU refuses protocols it does not have;
//! - a plain host path.
//!
//! With `--image-opts` the name is a `key=value,...` string instead (a leading bare value is the
//! `file` key, a node reference, as in QEMU). The result names the top node's `driver` when it is
//! known (from `-f`, the JSON or the options); without one the format is to be probed on the
//! `file` child (see [`probe_target`]).

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::util::Options;

/// Drivers that are protocols: with `-f` naming one, the name opens that driver directly.
const PROTOCOL_DRIVERS: [&str; 5] = ["file", "host_device", "blkdebug", "null-co", "null-aio"];

/// The `blockdev-add` options for the image `name` (a file name, or with `image_opts` an option
/// string), opened as `format` when given (it overrides a `driver` in the name, as `-f` does in
/// QEMU). The top `driver` is absent when the format must be probed.
pub fn image_options(
    name: &str,
    format: Option<&str>,
    image_opts: bool,
) -> Result<Map<String, Value>> {
    if image_opts {
        let mut top = keyval_options(name)?;
        if let Some(f) = format {
            top.entry("driver").or_insert(json!(f));
        }
        if !top.contains_key("driver") && !top.contains_key("file") {
            return Err(Error::generic("Must specify either driver or file"));
        }
        return Ok(top);
    }
    if let Some(text) = name.strip_prefix("json:") {
        let mut top = json_options(text)?;
        if let Some(f) = format {
            top.insert("driver".into(), json!(f));
        }
        if !top.contains_key("driver") && !top.contains_key("file") {
            return Err(Error::generic("Must specify either driver or file"));
        }
        return Ok(top);
    }
    // The null drivers are the only ones without a file name.
    if name.is_empty() && !format.is_some_and(|f| f.starts_with("null-")) {
        return Err(Error::generic(
            "The 'file' block driver requires a file name",
        ));
    }
    let protocol = protocol_options(name)?;
    match format {
        Some(f) if PROTOCOL_DRIVERS.contains(&f) && protocol["driver"] == f => Ok(protocol),
        Some(f) if PROTOCOL_DRIVERS.contains(&f) => {
            let mut top = Map::new();
            top.insert("driver".into(), json!(f));
            // The null drivers have no file name.
            if !f.starts_with("null-") {
                top.insert("filename".into(), json!(name));
            }
            Ok(top)
        }
        Some(f) => {
            let mut top = Map::new();
            top.insert("driver".into(), json!(f));
            top.insert("file".into(), Value::Object(protocol));
            Ok(top)
        }
        None => {
            let mut top = Map::new();
            top.insert("file".into(), Value::Object(protocol));
            Ok(top)
        }
    }
}

/// The protocol node for a plain (non-JSON) name.
fn protocol_options(name: &str) -> Result<Map<String, Value>> {
    let mut node = Map::new();
    match protocol_prefix(name) {
        Some("file") => {
            node.insert("driver".into(), json!("file"));
            node.insert("filename".into(), json!(&name["file:".len()..]));
        }
        Some("blkdebug") => {
            node.insert("driver".into(), json!("blkdebug"));
            node.insert("filename".into(), json!(name));
        }
        Some("nbd" | "nbd+tcp" | "nbd+unix") => return nbd_options(name),
        Some(other) => return Err(Error::generic(format!("Unknown protocol '{other}'"))),
        None => {
            node.insert("driver".into(), json!("file"));
            node.insert("filename".into(), json!(name));
        }
    }
    Ok(node)
}

/// An NBD name: the URIs `nbd://HOST[:PORT]/EXPORT`, `nbd+tcp://...` and
/// `nbd+unix:///EXPORT?socket=PATH`, or the legacy `nbd:unix:PATH[:exportname=E]` and
/// `nbd:HOST:PORT[:exportname=E]`.
fn nbd_options(name: &str) -> Result<Map<String, Value>> {
    let invalid = || Error::generic(format!("Invalid NBD file name '{name}'"));
    let (server, export) = if let Some(rest) = name.strip_prefix("nbd+unix://") {
        let (path, query) = rest.split_once('?').ok_or_else(invalid)?;
        let socket = query.strip_prefix("socket=").filter(|s| !s.is_empty());
        let socket = socket.ok_or_else(invalid)?;
        let export = path.strip_prefix('/').unwrap_or(path);
        (json!({"type": "unix", "path": socket}), export.to_string())
    } else if let Some(rest) = name
        .strip_prefix("nbd://")
        .or_else(|| name.strip_prefix("nbd+tcp://"))
    {
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, p),
            _ => (hostport, "10809"),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid());
        }
        (
            json!({"type": "inet", "host": host, "port": port}),
            export.to_string(),
        )
    } else {
        let rest = &name["nbd:".len()..];
        let (rest, export) = match rest.split_once(":exportname=") {
            Some((r, e)) => (r, e.to_string()),
            None => (rest, String::new()),
        };
        if let Some(path) = rest.strip_prefix("unix:") {
            (json!({"type": "unix", "path": path}), export)
        } else {
            let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
            port.parse::<u16>().map_err(|_| invalid())?;
            (json!({"type": "inet", "host": host, "port": port}), export)
        }
    };
    let mut node = Map::new();
    node.insert("driver".into(), json!("nbd"));
    node.insert("server".into(), server);
    node.insert("export".into(), json!(export));
    Ok(node)
}

/// The `PROTOCOL` of `PROTOCOL:REST`: a colon before any slash, as QEMU decides (`./a:b` is a
/// path).
fn protocol_prefix(name: &str) -> Option<&str> {
    let colon = name.find(':')?;
    let slash = name.find('/').unwrap_or(usize::MAX);
    (colon < slash).then(|| &name[..colon])
}

/// `--image-opts`: `key=value,...` with dotted keys; a bare first item is `file=ITEM`.
fn keyval_options(text: &str) -> Result<Map<String, Value>> {
    match Options::from_keyval_implied(text, "file")?.into_value() {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

/// Parse the text after `json:` into a nested option tree (dotted keys and nested objects
/// merged), with QEMU's messages for malformed JSON.
fn json_options(text: &str) -> Result<Map<String, Value>> {
    let parse_error =
        |msg: String| Error::generic(format!("Could not parse the JSON options: {msg}"));
    if text.trim().is_empty() {
        return Err(parse_error("Expecting a JSON value".into()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| parse_error(json_error(text, &e)))?;
    let Value::Object(obj) = value else {
        return Err(Error::generic("Invalid JSON object given"));
    };
    let mut flat = Map::new();
    flatten("", obj, &mut flat)?;
    match Options::new(Value::Object(flat))?.into_value() {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}

/// QEMU's wording for a JSON syntax error.
fn json_error(text: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    if e.classify() == Category::Eof {
        return "JSON parse error, premature EOI".into();
    }
    if e.to_string().starts_with("trailing characters") {
        return "Expecting at most one JSON value".into();
    }
    // The word at the error, if the parser stopped on a bare word (QEMU: "invalid keyword").
    let line_start: usize = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    let at = (line_start + e.column()).saturating_sub(1).min(text.len());
    let start = text[..at]
        .rfind(|c: char| !c.is_ascii_alphanumeric())
        .map_or(0, |i| i + 1);
    let word: String = text[start..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    if word.is_empty() || word.chars().all(|c| c.is_ascii_digit()) {
        "JSON parse error, expecting value".into()
    } else {
        format!("JSON parse error, invalid keyword '{word}'")
    }
}

/// Flatten nested objects into dotted keys (so `{"file": {...}}` and `"file.x"` merge).
fn flatten(prefix: &str, obj: Map<String, Value>, out: &mut Map<String, Value>) -> Result<()> {
    for (k, v) in obj {
        let key = format!("{prefix}{k}");
        match v {
            Value::Object(inner) if !inner.is_empty() => flatten(&format!("{key}."), inner, out)?,
            other => {
                if out.insert(key.clone(), other).is_some() {
                    return Err(Error::generic(format!("Duplicate key '{key}'")));
                }
            }
        }
    }
    Ok(())
}

/// The file a backing name stored in (or given for) the image `image` refers to, as QEMU
/// resolves it: an absolute name stays; a relative one is relative to the image's directory,
/// not to the working directory.
pub fn backing_path(image: &str, name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    match image.rfind('/') {
        Some(i) => format!("{}{}", &image[..=i], name),
        None => name.to_string(),
    }
}

/// True when the user's backing name `name` designates `file`, the image below `above` in a
/// chain: named as written, or relative to `above`'s directory (QEMU's backing image lookup).
pub fn names_backing(file: &str, above: &str, name: &str) -> bool {
    file == name || file == backing_path(above, name)
}

/// The host file whose first bytes decide the format when the top `driver` is absent: the
/// `file` child's file name, through a blkdebug filter (its `image` or legacy file name).
pub fn probe_target(options: &Map<String, Value>) -> Option<String> {
    let mut node = options.get("file")?.as_object()?;
    loop {
        match node.get("driver").and_then(Value::as_str) {
            Some("blkdebug") => {
                if let Some(image) = node.get("image").and_then(Value::as_object) {
                    node = image;
                    continue;
                }
                let legacy = node.get("filename")?.as_str()?;
                let rest = legacy.strip_prefix("blkdebug:")?;
                return rest.split_once(':').map(|(_, image)| image.to_string());
            }
            None | Some("file") | Some("host_device") => {
                return node.get("filename")?.as_str().map(str::to_string);
            }
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_are_relative_to_the_image_directory() {
        assert_eq!(backing_path("/d/top.qcow2", "base.img"), "/d/base.img");
        assert_eq!(backing_path("top.qcow2", "base.img"), "base.img");
        assert_eq!(backing_path("/d/top.qcow2", "/e/base.img"), "/e/base.img");
        assert_eq!(backing_path("d/top.qcow2", "../b.img"), "d/../b.img");
        assert!(names_backing("/d/base.img", "/d/top.qcow2", "base.img"));
        assert!(names_backing("base.img", "/d/top.qcow2", "base.img"));
        assert!(!names_backing("/e/base.img", "/d/top.qcow2", "base.img"));
    }

    #[test]
    fn plain_and_prefixed_names() {
        let m = image_options("a.img", Some("qcow2"), false).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"driver": "qcow2", "file": {"driver": "file", "filename": "a.img"}})
        );
        let m = image_options("file:a.img", None, false).unwrap();
        assert_eq!(m["file"]["filename"], "a.img");
        assert_eq!(probe_target(&m).as_deref(), Some("a.img"));
        let m = image_options("blkdebug:c.conf:dir/a.img", Some("raw"), false).unwrap();
        assert_eq!(m["file"]["driver"], "blkdebug");
        assert_eq!(probe_target(&m).as_deref(), Some("dir/a.img"));
        let m = image_options("nbd+unix:///exp?socket=/run/s.sock", None, false).unwrap();
        assert_eq!(
            m["file"],
            json!({"driver": "nbd", "server": {"type": "unix", "path": "/run/s.sock"}, "export": "exp"})
        );
        let m = image_options("nbd://127.0.0.1:10810/e", Some("raw"), false).unwrap();
        assert_eq!(
            m["file"]["server"],
            json!({"type": "inet", "host": "127.0.0.1", "port": "10810"})
        );
        let m = image_options("nbd://h", None, false).unwrap();
        assert_eq!(
            (
                m["file"]["server"]["port"].as_str(),
                m["file"]["export"].as_str()
            ),
            (Some("10809"), Some(""))
        );
        let m = image_options("nbd:unix:/s.sock:exportname=x", None, false).unwrap();
        assert_eq!(
            (
                m["file"]["server"]["path"].as_str(),
                m["file"]["export"].as_str()
            ),
            (Some("/s.sock"), Some("x"))
        );
        let m = image_options("nbd:h:1234", None, false).unwrap();
        assert_eq!(m["file"]["server"]["port"], "1234");
        assert!(image_options("nbd+unix:///exp", None, false).is_err());
        assert!(image_options("nbd://h:x/e", None, false).is_err());
        let e = image_options("raw:a.img", None, false).unwrap_err();
        assert_eq!(e.message(), "Unknown protocol 'raw'");
        let m = image_options("./raw:a.img", None, false).unwrap();
        assert_eq!(m["file"]["filename"], "./raw:a.img");
        let m = image_options("a.img", Some("file"), false).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"driver": "file", "filename": "a.img"})
        );
    }

    #[test]
    fn json_names_merge_dotted_and_nested_keys() {
        let m = image_options(
            r#"json:{"driver":"qcow2","file.filename":"b","file":{"driver":"file"}}"#,
            None,
            false,
        )
        .unwrap();
        assert_eq!(m["file"], json!({"driver": "file", "filename": "b"}));
        let m = image_options(
            r#"json:{"driver":"qcow2","file.filename":"b"}"#,
            Some("raw"),
            false,
        )
        .unwrap();
        assert_eq!(m["driver"], "raw");
        let msg = |s: &str| {
            image_options(s, None, false)
                .unwrap_err()
                .message()
                .to_string()
        };
        assert_eq!(msg("json:{}"), "Must specify either driver or file");
        assert_eq!(msg(""), "The 'file' block driver requires a file name");
        let opts_err = image_options("", None, true).unwrap_err();
        assert_eq!(opts_err.message(), "Must specify either driver or file");
        assert_eq!(msg("json:[1]"), "Invalid JSON object given");
        let p = "Could not parse the JSON options: ";
        assert_eq!(msg("json:"), format!("{p}Expecting a JSON value"));
        assert_eq!(
            msg(r#"json:{"a":"#),
            format!("{p}JSON parse error, premature EOI")
        );
        assert_eq!(
            msg("json:{bad}"),
            format!("{p}JSON parse error, invalid keyword 'bad'")
        );
        assert_eq!(
            msg(r#"json:{"a":}"#),
            format!("{p}JSON parse error, expecting value")
        );
        assert_eq!(
            msg("json:{} x"),
            format!("{p}Expecting at most one JSON value")
        );
    }

    #[test]
    fn image_opts_strings() {
        let m = image_options("driver=qcow2,file.filename=x,,y", None, true).unwrap();
        assert_eq!(m["file"]["filename"], "x,y");
        let m = image_options("node0", None, true).unwrap();
        assert_eq!(m["file"], "node0");
    }
}
