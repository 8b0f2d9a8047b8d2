//! `blk info [-f fmt] [--output=human|json] [--backing-chain] [-U] FILE`: qemu-img info.
//!
//! Field names, order and the human layout are qemu-img 10's. `actual-size` is the host
//! file's allocation (`st_blocks * 512`), as QEMU's file driver reports it. qcow2 header
//! fields (cluster size, feature bits, backing format) are read from the image's header.

use std::rc::Rc;

use engine::drivers::qcow2::Header;
use engine::graph::Node;
use engine::{Error, Result};
use serde_json::{Map, Value, json};

use super::human::size_to_str;
use super::open::{Tool, allocated_bytes, file_length};
use super::{Output, fail, parse_output, split_or_fail, to_json_pretty};

const USAGE: &str = "\
Usage: blk info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename
Show information about a raw or qcow2 image, as qemu-img info does.";

/// qcow2 feature bits (docs/interop/qcow2.rst).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Bit 4 of the incompatible features: extended L2 entries.
const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Bit 2 of the incompatible features: external data file.
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Bit 1 of the autoclear features: the data file is a raw image.
const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// The qcow2 header of the file at `path`.
pub(crate) fn read_qcow2_header(path: &str) -> Result<Header> {
    use std::io::Read;
    let len = file_length(path).unwrap_or(0);
    // The engine opened this file a moment ago; these errors only show a race, in Rust's words.
    let host = |e: std::io::Error| Error::generic(e.to_string());
    let mut f = std::fs::File::open(path).map_err(host)?;
    let mut head = vec![0u8; 4096.min(len as usize)];
    f.read_exact(&mut head).map_err(host)?;
    let bits = head
        .get(20..24)
        .map_or(16, |b| u32::from_be_bytes(b.try_into().unwrap()));
    let cs = 1usize << bits.clamp(9, 21);
    let mut buf = head;
    if cs > buf.len() && (buf.len() as u64) < len {
        let more = cs.min(len as usize) - buf.len();
        let mut rest = vec![0u8; more];
        f.read_exact(&mut rest).map_err(host)?;
        buf.extend_from_slice(&rest);
    }
    Header::parse(&buf, len)
}

/// The host file under `node`: itself for the file driver, else through its `file`/`image`
/// children (a blkdebug filter between a format and its file).
fn host_path(node: &Rc<Node>) -> Option<String> {
    if matches!(node.driver_name(), "file" | "host_device") {
        return Some(node.driver().filename());
    }
    let child = node.child("file").or_else(|| node.child("image"))?;
    host_path(&child.child_node())
}

/// The host allocation under `node` (QEMU's `actual-size`): a host file's, or a format's file's;
/// filters (blkdebug) report none.
fn actual_size(node: &Rc<Node>) -> Option<u64> {
    match node.driver_name() {
        "file" | "host_device" => allocated_bytes(&node.driver().filename()),
        "qcow2" | "raw" | "luks" => actual_size(&node.child("file")?.child_node()),
        _ => None,
    }
}

/// The info object of a node that is not a format: a host file, or a filter with its children.
fn other_info(node: &Rc<Node>) -> Result<Value> {
    let filename = node.driver().filename();
    let mut m = Map::new();
    let host = matches!(node.driver_name(), "file" | "host_device");
    let children = if host {
        Vec::new()
    } else {
        child_infos(node, &[])?
    };
    m.insert("children".into(), Value::Array(children));
    // A host file's length as QEMU counts it: whole 512-byte sectors (the file driver's len).
    m.insert("virtual-size".into(), json!(node.len()));
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(node.driver_name()));
    if let Some(a) = actual_size(node) {
        m.insert("actual-size".into(), json!(a));
    }
    if host {
        m.insert(
            "format-specific".into(),
            json!({"type": "file", "data": {}}),
        );
    }
    if node.driver_name() != "nbd" {
        m.insert("dirty-flag".into(), json!(false));
    }
    Ok(Value::Object(m))
}

/// `{name, info}` of each child of `node` but the backing file and those in `skip`.
fn child_infos(node: &Rc<Node>, skip: &[&str]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for edge in node.children() {
        let name = edge.name().to_string();
        if name == "backing" || skip.contains(&name.as_str()) {
            continue;
        }
        let info = node_info(&edge.child_node())?;
        out.push(json!({"name": name, "info": info}));
    }
    Ok(out)
}

/// Any node's info object.
fn node_info(node: &Rc<Node>) -> Result<Value> {
    match node.driver_name() {
        "qcow2" | "raw" | "luks" => image_info(node),
        _ => other_info(node),
    }
}

/// One image's info object, in qemu-img's field order.
fn image_info(node: &Rc<Node>) -> Result<Value> {
    let filename = node.driver().filename();
    let format = node.driver_name().to_string();
    let actual = actual_size(node);
    let file = match node.child("file") {
        Some(edge) => node_info(&edge.child_node())?,
        None => Value::Null,
    };
    let mut m = Map::new();
    m.insert("children".into(), json!([{"name": "file", "info": file}]));
    let header = match (format.as_str(), host_path(node)) {
        ("qcow2", Some(host)) => Some(read_qcow2_header(&host)?),
        _ => None,
    };
    let backing = node.backing().map(|e| e.child_node().driver().filename());
    if let Some(f) = header.as_ref().and_then(|h| h.backing_fmt.clone()) {
        m.insert("backing-filename-format".into(), json!(f));
    }
    let snapshots = node
        .driver()
        .format_ops()
        .map(|o| o.snapshots())
        .unwrap_or_default();
    if !snapshots.is_empty() {
        m.insert("snapshots".into(), super::snapshot::json_list(&snapshots));
    }
    m.insert("virtual-size".into(), json!(node.len()));
    m.insert("filename".into(), json!(filename));
    if let Some(h) = &header {
        m.insert("cluster-size".into(), json!(h.cluster_size()));
    }
    m.insert("format".into(), json!(format));
    if let Some(a) = actual {
        m.insert("actual-size".into(), json!(a));
    }
    if let Some(h) = &header {
        let mut data = qcow2_specific(h);
        if let Some(e) = node.driver().specific_info().get("encrypt") {
            // QEMU lists the encryption right after refcount-bits.
            let old = std::mem::take(&mut data);
            for (k, v) in old {
                let after = k == "refcount-bits";
                data.insert(k, v);
                if after {
                    data.insert("encrypt".into(), e.clone());
                }
            }
        }
        m.insert(
            "format-specific".into(),
            json!({"type": "qcow2", "data": data}),
        );
    }
    if format == "luks" {
        m.insert("format-specific".into(), node.driver().specific_info());
    }
    if format == "luks" || header.as_ref().is_some_and(|h| h.crypt_method != 0) {
        m.insert("encrypted".into(), json!(true));
    }
    if let Some(h) = &header
        && let Some(name) = &h.backing_file
    {
        let full = backing
            .clone()
            .unwrap_or_else(|| engine::filename::backing_path(&node.driver().filename(), name));
        m.insert("full-backing-filename".into(), json!(full));
        m.insert("backing-filename".into(), json!(name));
    }
    let dirty = header
        .as_ref()
        .is_some_and(|h| h.incompat & INCOMPAT_DIRTY != 0);
    // QEMU has no dirty flag to report for a raw image on a protocol without image info.
    let on_nbd = node
        .child("file")
        .is_some_and(|f| f.child_node().driver_name() == "nbd");
    if !(on_nbd && header.is_none()) {
        m.insert("dirty-flag".into(), json!(dirty));
    }
    Ok(Value::Object(m))
}

/// The `format-specific` data of a qcow2 image, from its header.
fn qcow2_specific(h: &Header) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert(
        "compat".into(),
        json!(if h.version == 3 { "1.1" } else { "0.10" }),
    );
    let ct = if h.compression_type == 1 {
        "zstd"
    } else {
        "zlib"
    };
    data.insert("compression-type".into(), json!(ct));
    if h.version == 3 {
        data.insert(
            "lazy-refcounts".into(),
            json!(h.compat & COMPAT_LAZY_REFCOUNTS != 0),
        );
    }
    data.insert("refcount-bits".into(), json!(1u64 << h.refcount_order));
    if let Some(d) = &h.data_file {
        data.insert("data-file".into(), json!(d));
    }
    if h.version == 3 && h.incompat & INCOMPAT_DATA_FILE != 0 {
        data.insert(
            "data-file-raw".into(),
            json!(h.autoclear & AUTOCLEAR_DATA_FILE_RAW != 0),
        );
    }
    if h.version == 3 {
        data.insert("corrupt".into(), json!(h.incompat & INCOMPAT_CORRUPT != 0));
        data.insert(
            "extended-l2".into(),
            json!(h.incompat & INCOMPAT_EXTL2 != 0),
        );
    }
    data
}

fn human_bool(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One `key: value` line of the format-specific block at indentation `depth`; lists and
/// objects (qcow2's bitmaps) nest below their key, list items as `[i]:`, as qemu-img prints
/// them.
fn human_field(key: &str, v: &Value, depth: usize, s: &mut String) {
    let pad = "    ".repeat(depth);
    match v {
        Value::Array(items) => {
            *s += &format!("{pad}{key}:\n");
            for (i, item) in items.iter().enumerate() {
                human_field(&format!("[{i}]"), item, depth + 1, s);
            }
        }
        Value::Object(map) => {
            *s += &format!("{pad}{key}:\n");
            for (k, v) in map {
                human_field(&k.replace('-', " "), v, depth + 1, s);
            }
        }
        other => *s += &format!("{pad}{key}: {}\n", human_bool(other)),
    }
}

/// Put the persistent bitmaps of `node` (a qcow2 image that stores some) into the
/// format-specific data of its `info`, after `lazy-refcounts` as qemu-img orders them.
async fn add_bitmaps(node: &Rc<Node>, info: &mut Value) -> Result<()> {
    let Some(ops) = node.driver().format_ops() else {
        return Ok(());
    };
    let list = ops.stored_bitmaps().await?;
    let Some(Value::Object(data)) = info
        .get_mut("format-specific")
        .and_then(|f| f.get_mut("data"))
    else {
        return Ok(());
    };
    if list.is_empty() {
        return Ok(());
    }
    let bitmaps: Vec<Value> = list
        .iter()
        .map(|b| {
            let mut flags = Vec::new();
            if b.in_use {
                flags.push("in-use");
            }
            if b.auto {
                flags.push("auto");
            }
            json!({"flags": flags, "name": b.name, "granularity": b.granularity})
        })
        .collect();
    let old = std::mem::take(data);
    for (k, v) in old {
        let after = k == "lazy-refcounts";
        data.insert(k, v);
        if after {
            data.insert("bitmaps".into(), Value::Array(bitmaps.clone()));
        }
    }
    Ok(())
}

/// qemu-img's human layout of one info object.
fn human(info: &Value) -> String {
    let mut s = String::new();
    let size = |v: &Value| v.as_u64().unwrap_or(0);
    s += &format!("image: {}\n", info["filename"].as_str().unwrap_or(""));
    s += &format!("file format: {}\n", info["format"].as_str().unwrap_or(""));
    let vs = size(&info["virtual-size"]);
    s += &format!("virtual size: {} ({vs} bytes)\n", size_to_str(vs));
    match info["actual-size"].as_u64() {
        Some(a) => s += &format!("disk size: {}\n", size_to_str(a)),
        None => s += "disk size: unavailable\n",
    }
    if info["encrypted"] == json!(true) {
        s += "encrypted: yes\n";
    }
    if let Some(cs) = info["cluster-size"].as_u64() {
        s += &format!("cluster_size: {cs}\n");
    }
    if info["dirty-flag"] == json!(true) {
        s += "cleanly shut down: no\n";
    }
    if let Some(b) = info["backing-filename"].as_str() {
        s += &format!("backing file: {b}");
        match info["full-backing-filename"].as_str() {
            Some(full) if full != b => s += &format!(" (actual path: {full})\n"),
            _ => s += "\n",
        }
    }
    if let Some(f) = info["backing-filename-format"].as_str() {
        s += &format!("backing file format: {f}\n");
    }
    if let Some(list) = info.get("snapshots") {
        s += "Snapshot list:\n";
        s += &super::snapshot::table_text(&super::snapshot::from_json(list));
    }
    if let Some(Value::Object(data)) = info["format-specific"].get("data")
        && !data.is_empty()
    {
        s += "Format specific information:\n";
        for (k, v) in data {
            human_field(&k.replace('-', " "), v, 1, &mut s);
        }
    }
    children_human(info, "", 1, &mut s);
    s
}

/// The `Child node '/PATH':` sections of `info`'s children, indented `depth` levels: host
/// files in qemu-img's protocol layout, other nodes in the image layout.
fn children_human(info: &Value, path: &str, depth: usize, s: &mut String) {
    let pad = "    ".repeat(depth);
    let size = |v: &Value| v.as_u64().unwrap_or(0);
    for child in info["children"].as_array().into_iter().flatten() {
        let c = &child["info"];
        let path = format!("{path}/{}", child["name"].as_str().unwrap_or(""));
        *s += &format!("{}Child node '{path}':\n", "    ".repeat(depth - 1));
        let disk = match c["actual-size"].as_u64() {
            Some(a) => size_to_str(a),
            None => "unavailable".to_string(),
        };
        let len = size(&c["virtual-size"]);
        // Protocol nodes (host files, NBD) in qemu-img's protocol layout.
        if let Some(proto @ ("file" | "nbd")) = c["format"].as_str() {
            *s += &format!("{pad}filename: {}\n", c["filename"].as_str().unwrap_or(""));
            *s += &format!("{pad}protocol type: {proto}\n");
            *s += &format!("{pad}file length: {} ({len} bytes)\n", size_to_str(len));
            *s += &format!("{pad}disk size: {disk}\n");
        } else {
            *s += &format!("{pad}image: {}\n", c["filename"].as_str().unwrap_or(""));
            *s += &format!("{pad}file format: {}\n", c["format"].as_str().unwrap_or(""));
            *s += &format!("{pad}virtual size: {} ({len} bytes)\n", size_to_str(len));
            *s += &format!("{pad}disk size: {disk}\n");
        }
        children_human(c, &path, depth + 1, s);
    }
}

/// Entry point of `blk info`.
pub fn run(args: &[String]) -> i32 {
    // qemu-img 10's long options, in its order where they share a prefix.
    let long = [
        ("help", 'h', false),
        ("format", 'f', true),
        ("force-share", 'U', false),
        ("backing-chain", 'B', false),
        ("output", 'O', true),
        super::OBJECT,
    ];
    let (opts, operands) = match split_or_fail("info", args, "f:hU", &long, USAGE) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let (mut fmt, mut output, mut chain, mut share) = (None, Output::Human, false, false);
    for (c, v) in opts {
        match c {
            'f' => fmt = Some(v),
            'O' => match parse_output(&v) {
                Ok(o) => output = o,
                Err(e) => return fail(e),
            },
            'B' => chain = true,
            'U' => share = true,
            _ => unreachable!("option {c} is in the option table"),
        }
    }
    let [path] = operands.as_slice() else {
        return crate::cli::prog::usage_error("info", "Expecting one image file name");
    };
    let tool = Tool::new();
    tool.no_backing.set(true);
    let result = tool.block_on(chain_infos(&tool, path, fmt.as_deref(), share, chain));
    let _ = tool.finish();
    let infos = match result {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    match (output, chain) {
        (Output::Json, true) => println!("{}", to_json_pretty(&Value::Array(infos))),
        (Output::Json, false) => println!("{}", to_json_pretty(&infos[0])),
        (Output::Human, _) => {
            let texts: Vec<String> = infos.iter().map(human).collect();
            print!("{}", texts.join("\n"));
        }
    }
    0
}

/// The info of `path` and, with `chain`, of every image below it. Each image is opened without
/// its backing file and the walk follows the header's backing file name, as qemu-img's does:
/// a missing backing file fails only the walk, and a file met twice is a loop.
async fn chain_infos(
    tool: &Tool,
    path: &str,
    fmt: Option<&str>,
    share: bool,
    chain: bool,
) -> Result<Vec<Value>> {
    let mut infos = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut next = Some((path.to_string(), fmt.map(str::to_string)));
    while let Some((file, format)) = next {
        if !seen.insert(engine::graph::normalize_path(&file)) {
            return Err(Error::generic(format!(
                "Backing file '{file}' creates an infinite loop."
            )));
        }
        let img = tool.open(&file, format.as_deref(), true, share).await?;
        let mut info = node_info(&img.node)?;
        add_bitmaps(&img.node, &mut info).await?;
        next = info["full-backing-filename"]
            .as_str()
            .filter(|_| chain)
            .map(|b| {
                (
                    b.to_string(),
                    info["backing-filename-format"].as_str().map(str::to_string),
                )
            });
        infos.push(info);
        tool.image_opts.set(false);
    }
    Ok(infos)
}
