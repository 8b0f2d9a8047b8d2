//! `blk map [-f fmt] [--output=human|json] [--start-offset=N] [--max-length=N] FILE`:
//! qemu-img map. Block status through the whole backing chain (`Child::chain_status`), adjacent
//! equal runs merged as qemu-img merges them, printed as its JSON lines or its human table.
//!
//! `compressed` is reported for qcow2 data without a host offset (blk's drivers give no host
//! offset only for compressed clusters, and for every cluster of an encrypted image, where
//! nothing is reported compressed).

use engine::{Error, Result};
use serde_json::{Map, Value, json};

use super::number::{in_range, strtosz};
use super::open::Tool;
use super::{Output, fail, parse_output, split_or_fail};

const USAGE: &str = "\
Usage: blk map [-f fmt] [--output=human|json] [--start-offset=N] [--max-length=N] filename
Dump the metadata of an image, as qemu-img map does.";

/// One run of the map.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
    pub filename: Option<String>,
}

impl Entry {
    /// qemu-img's `entry_mergeable`.
    fn mergeable(&self, next: &Entry) -> bool {
        self.length != 0
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.depth == next.depth
            && self.present == next.present
            && self.filename == next.filename
            && self.offset.is_some() == next.offset.is_some()
            && self
                .offset
                .is_none_or(|o| Some(o + self.length) == next.offset)
    }

    fn json(&self) -> String {
        let mut m = Map::new();
        m.insert("start".into(), json!(self.start));
        m.insert("length".into(), json!(self.length));
        m.insert("depth".into(), json!(self.depth));
        m.insert("present".into(), json!(self.present));
        m.insert("zero".into(), json!(self.zero));
        m.insert("data".into(), json!(self.data));
        m.insert("compressed".into(), json!(self.compressed));
        if let Some(o) = self.offset {
            m.insert("offset".into(), json!(o));
        }
        // qemu-img's spacing: "{ "k": v, "k": v}".
        let body: Vec<String> = m
            .iter()
            .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), v))
            .collect();
        format!("{{ {}}}", body.join(", "))
    }
}

/// The merged map of `[start, end)` of an open image.
pub(crate) async fn map_entries(
    root: &engine::graph::Child,
    start: u64,
    end: u64,
) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut pos = start;
    while pos < end {
        let st = root
            .chain_status_want_zero(pos, end - pos, None)
            .await
            .map_err(|e| e.context("Could not read file metadata"))?;
        let len = st.len.min(end - pos);
        let node = st.node.as_ref();
        let data = matches!(
            st.mapping,
            engine::io::Mapping::Data { .. } | engine::io::Mapping::DataZero { .. }
        );
        let e = Entry {
            start: pos,
            length: len,
            depth: st.depth,
            present: node.is_some(),
            zero: !data || st.mapping.is_zero(),
            data,
            // (An encrypted image gives no host offsets at all: there it means nothing.)
            compressed: data
                && st.mapping.host().is_none()
                && node.is_some_and(|n| {
                    n.driver_name() == "qcow2"
                        && n.driver().specific_info().get("encrypt").is_none()
                }),
            offset: st.mapping.host(),
            // Host offsets of a qcow2 image with an external data file are in that file.
            filename: node.map(|n| match n.child("data-file") {
                Some(e) => e.child_node().driver().filename(),
                None => n.driver().filename(),
            }),
        };
        pos += len;
        match out.last_mut() {
            Some(last) if last.mergeable(&e) => last.length += e.length,
            _ => out.push(e),
        }
    }
    Ok(out)
}

/// The human table; stops with qemu-img's error at data it cannot locate (after printing
/// what comes before, as qemu-img does).
fn human(entries: &[Entry]) -> Result<()> {
    let row = |a: &str, b: &str, c: &str, d: &str| println!("{a:<16}{b:<16}{c:<16}{d}");
    row("Offset", "Length", "Mapped to", "File");
    let hex = |v: u64| {
        if v == 0 {
            "0".to_string()
        } else {
            format!("{v:#x}")
        }
    };
    for e in entries {
        if e.data && e.offset.is_none() {
            return Err(Error::generic(
                "File contains external, encrypted or compressed clusters.",
            ));
        }
        if e.data && !e.zero {
            let file = e.filename.as_deref().unwrap_or("");
            row(
                &hex(e.start),
                &hex(e.length),
                &hex(e.offset.unwrap_or(0)),
                file,
            );
        }
    }
    Ok(())
}

/// Entry point of `blk map`.
pub fn run(args: &[String]) -> i32 {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("format", 'f', true),
        ("force-share", 'U', false),
        ("output", 'O', true),
        super::OBJECT,
        ("start-offset", 's', true),
        ("max-length", 'l', true),
    ];
    let (opts, operands) = match split_or_fail("map", args, "f:s:l:hU", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (mut fmt, mut output, mut share) = (None, Output::Human, false);
    let (mut start, mut max_len) = (0u64, None);
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'O' => match parse_output(&v) {
                Ok(o) => output = o,
                Err(e) => return fail(e),
            },
            // qemu-img 10 takes both as sizes between 0 and INT64_MAX, with its two messages.
            's' => match in_range("start offset", &v, strtosz(&v), 0, i64::MAX as u64) {
                Ok(n) => start = n,
                Err(e) => return fail(e),
            },
            'l' => match in_range("max length", &v, strtosz(&v), 0, i64::MAX as u64) {
                Ok(n) => max_len = Some(n),
                Err(e) => return fail(e),
            },
            'U' => share = true,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [path] = operands.as_slice() else {
        return crate::cli::prog::usage_error("map", "Expecting one image file name");
    };
    let tool = Tool::new();
    let result = tool.block_on(async {
        let img = tool.open(path, fmt.as_deref(), true, share).await?;
        let len = img.len();
        let end = max_len.map_or(len, |m| start.saturating_add(m).min(len));
        map_entries(&img.root(), start.min(len), end).await
    });
    let _ = tool.finish();
    let entries = match result {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    match output {
        Output::Json => {
            let lines: Vec<String> = entries.iter().map(Entry::json).collect();
            println!("[{}]", lines.join(",\n"));
        }
        Output::Human => {
            if let Err(e) = human(&entries) {
                return fail(e);
            }
        }
    }
    0
}
