//! `blk map [-f fmt] [--output=human|json] [--start-offset=N] [--max-length=N] FILE`:
//! qemu-img map. Block status through the whole backing chain (`Child::chain_status`), adjacent
//! equal runs merged as qemu-img merges them, printed as its JSON lines or its human table.
//!
//! `compressed` is reported for qcow2 data without a host offset (blk's drivers give no host
//! offset only for compressed clusters, and for every cluster of an encrypted image, where
//! nothing is reported compressed).

use engine::{Error, Result};

use crate::cli::stdout::c_stdio::{self, print};

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

    /// qemu-img's JSON object for the entry, with its spacing: `{ "k": v, "k": v}`. Built by
    /// hand: a 4k-cluster image has a line per cluster, and `format!` cost more than the map.
    fn json(&self, out: &mut String) {
        let fields = [
            ("{ \"start\": ", self.start),
            (", \"length\": ", self.length),
            (", \"depth\": ", u64::from(self.depth)),
        ];
        for (key, v) in fields {
            out.push_str(key);
            push_u64(out, v);
        }
        for (key, v) in [
            (", \"present\": ", self.present),
            (", \"zero\": ", self.zero),
            (", \"data\": ", self.data),
            (", \"compressed\": ", self.compressed),
        ] {
            out.push_str(key);
            out.push_str(if v { "true" } else { "false" });
        }
        if let Some(o) = self.offset {
            out.push_str(", \"offset\": ");
            push_u64(out, o);
        }
        out.push('}');
    }
}

/// Append the decimal digits of `v`.
fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

/// The map of `[start, end)` of an open image, each merged run handed to `sink` as soon as the
/// next one shows it cannot grow, so the map streams in constant memory (as qemu-img prints it).
pub(crate) async fn map_entries(
    root: &engine::graph::Child,
    (start, end): (u64, u64),
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<()> {
    let mut cur: Option<Entry> = None;
    let mut pos = start;
    while pos < end {
        let st = root
            .chain_status_want_zero(pos, end - pos, None)
            .await
            .map_err(|e| e.context("Could not read file metadata"))?;
        let len = st.len.min(end - pos);
        let e = entry(&st, pos, len);
        pos += len;
        match cur.as_mut() {
            Some(last) if last.mergeable(&e) => last.length += e.length,
            _ => {
                if let Some(done) = cur.replace(e) {
                    sink(&done)?;
                }
            }
        }
    }
    cur.map_or(Ok(()), |last| sink(&last))
}

/// The map entry of one block-status answer for `[pos, pos+len)`.
fn entry(st: &engine::request::ChainStatus, pos: u64, len: u64) -> Entry {
    let node = st.node.as_ref();
    let data = matches!(
        st.mapping,
        engine::io::Mapping::Data { .. } | engine::io::Mapping::DataZero { .. }
    );
    Entry {
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
                n.driver_name() == "qcow2" && n.driver().specific_info().get("encrypt").is_none()
            }),
        offset: st.mapping.host(),
        // Host offsets of a qcow2 image with an external data file are in that file.
        filename: node.map(|n| match n.child("data-file") {
            Some(e) => e.child_node().driver().filename(),
            None => n.driver().filename(),
        }),
    }
}

/// Prints the map as it streams: qemu-img's JSON list, or its human table (which stops with
/// qemu-img's error at data it cannot locate, after printing what comes before).
struct Printer {
    output: Output,
    first: bool,
    line: String,
}

impl Printer {
    fn new(output: Output) -> Printer {
        let p = Printer {
            output,
            first: true,
            line: String::new(),
        };
        match output {
            Output::Json => print("["),
            Output::Human => p.row("Offset", "Length", "Mapped to", "File"),
        }
        p
    }

    fn row(&self, a: &str, b: &str, c: &str, d: &str) {
        print(&format!("{a:<16}{b:<16}{c:<16}{d}\n"));
    }

    fn entry(&mut self, e: &Entry) -> Result<()> {
        match self.output {
            Output::Json => {
                self.line.clear();
                if !std::mem::take(&mut self.first) {
                    self.line.push_str(",\n");
                }
                e.json(&mut self.line);
                print(&self.line);
            }
            Output::Human => {
                if e.data && e.offset.is_none() {
                    return Err(Error::generic(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                }
                if e.data && !e.zero {
                    let file = e.filename.as_deref().unwrap_or("");
                    self.row(
                        &hex(e.start),
                        &hex(e.length),
                        &hex(e.offset.unwrap_or(0)),
                        file,
                    );
                }
            }
        }
        Ok(())
    }

    /// The end of a complete map.
    fn finish(&self) {
        if self.output == Output::Json {
            print("]\n");
        }
    }
}

/// qemu-img's `%#x`, which prints zero without the prefix.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
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
    let result: Result<()> = tool.block_on(async {
        let img = tool.open(path, fmt.as_deref(), true, share).await?;
        let len = img.len();
        let end = max_len.map_or(len, |m| start.saturating_add(m).min(len));
        let mut printer = Printer::new(output);
        map_entries(&img.root(), (start.min(len), end), &mut |e| {
            printer.entry(e)
        })
        .await?;
        printer.finish();
        Ok(())
    });
    let _ = tool.finish();
    let code = match result {
        Ok(()) => 0,
        Err(e) => fail(e),
    };
    c_stdio::flush();
    code
}
