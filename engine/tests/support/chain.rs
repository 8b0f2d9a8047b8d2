//! A three-image qcow2 chain on the simulator for the stream and commit tests:
//! `base.qcow2 <- mid.qcow2 <- top.qcow2`, each layer holding its own pattern, opened as nodes
//! `base`, `mid`, `top` (backing given by reference, every node read-write) with the guest
//! device `drive0` on `top`.
#![allow(dead_code)]

use std::rc::Rc;

use engine::Engine;
use engine::backend::BackendOptions;
use engine::drivers::qcow2::{CreateOptions, create};
use engine::io::{IoBuf, ReqFlags};
use serde_json::{Value, json};

/// Virtual size of every image.
pub const SIZE: u64 = 4 << 20;

/// (offset, len, pattern) written into each layer, bottom first.
pub const LAYERS: [(&str, u64, u64, u8); 3] = [
    ("base", 0, 2 << 20, 0x11),
    ("mid", 1 << 20, 2 << 20, 0x22),
    ("top", (5 << 20) / 2, 512 << 10, 0x33),
];

/// Create `file` as qcow2 on the engine's host files, optionally with a qcow2 backing file.
pub async fn mkimg(engine: &Engine, file: &str, backing: Option<&str>) {
    mkimg_over(engine, file, backing.map(|b| (b, "qcow2"))).await
}

/// Create `file` as qcow2, optionally with a backing file `(name, format)`.
pub async fn mkimg_over(engine: &Engine, file: &str, backing: Option<(&str, &str)>) {
    let opts = CreateOptions {
        size: SIZE,
        backing_file: backing.map(|(b, _)| b.to_string()),
        backing_fmt: backing.map(|(_, f)| f.to_string()),
        ..CreateOptions::default()
    };
    mkimg_with(engine, file, &opts).await
}

/// Create `file` as qcow2 with `opts`.
pub async fn mkimg_with(engine: &Engine, file: &str, opts: &CreateOptions) {
    let open = engine::env::OpenOptions {
        write: true,
        create: true,
        ..Default::default()
    };
    drop(engine.env().fs().open(file, open).unwrap());
    let tmp = format!("mk-{}", file.replace('.', "-"));
    engine
        .blockdev_add(json!({"driver": "file", "node-name": tmp, "filename": file}))
        .await
        .unwrap();
    let bb = engine
        .device_add("mk", &tmp, BackendOptions::tool(false))
        .unwrap();
    create(&bb.root().unwrap(), opts).await.unwrap();
    engine.device_del("mk").await.unwrap();
    engine.blockdev_del(&tmp).await.unwrap();
}

/// Add node `name` on `name.qcow2`, with `backing` as its backing node (by reference).
pub async fn add_layer(engine: &Engine, name: &str, backing: Option<&str>) {
    let mut opts = json!({"driver": "qcow2", "node-name": name,
                          "file": {"driver": "file", "filename": format!("{name}.qcow2")}});
    if let Some(b) = backing {
        opts["backing"] = json!(b);
    } else {
        opts["backing"] = Value::Null;
    }
    engine.blockdev_add(opts).await.unwrap();
}

pub async fn fill(engine: &Engine, node: &str, off: u64, len: u64, pat: u8) {
    let bb = engine
        .device_add("fill", node, BackendOptions::tool(false))
        .unwrap();
    let (_, r) = bb
        .write(off, IoBuf::filled(len as usize, pat), ReqFlags::NONE)
        .await;
    r.unwrap();
    bb.flush().await.unwrap();
    engine.device_del("fill").await.unwrap();
}

/// Build the chain, fill each layer and attach `drive0` to `top`. Returns the guest view.
pub async fn build(engine: &Rc<Engine>) -> Vec<u8> {
    mkimg(engine, "base.qcow2", None).await;
    mkimg(engine, "mid.qcow2", Some("base.qcow2")).await;
    mkimg(engine, "top.qcow2", Some("mid.qcow2")).await;
    let mut view = vec![0u8; SIZE as usize];
    let mut below: Option<&str> = None;
    for (name, off, len, pat) in LAYERS {
        add_layer(engine, name, below).await;
        fill(engine, name, off, len, pat).await;
        view[off as usize..(off + len) as usize].fill(pat);
        below = Some(name);
    }
    engine
        .device_add("drive0", "top", BackendOptions::guest_device(false, false))
        .unwrap();
    view
}

/// The guest view of a chain made of the named layers only.
pub fn view_of(layers: &[&str]) -> Vec<u8> {
    let mut view = vec![0u8; SIZE as usize];
    for (name, off, len, pat) in LAYERS {
        if layers.contains(&name) {
            view[off as usize..(off + len) as usize].fill(pat);
        }
    }
    view
}

/// Read the whole device `dev`.
pub async fn read_dev(engine: &Engine, dev: &str) -> Vec<u8> {
    let bb = engine.backend(dev).unwrap();
    let (buf, r) = bb.read(0, IoBuf::new(SIZE as usize)).await;
    r.unwrap();
    buf.as_slice().to_vec()
}

/// The node names of the chain below `node`, as the graph has it now.
pub fn chain_names(engine: &Engine, node: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = Some(engine.node(node).unwrap());
    while let Some(x) = n {
        out.push(x.name().to_string());
        n = x.backing().map(|e| e.child_node());
    }
    out
}

/// The backing file name recorded in the header of the image `file` (null when none).
pub async fn header_backing(engine: &Engine, file: &str) -> Value {
    let f = engine
        .env()
        .fs()
        .open(file, engine::env::OpenOptions::default())
        .unwrap();
    let (buf, r) = f.read_at(IoBuf::new(65536), 0).await;
    r.unwrap();
    let h = engine::drivers::qcow2::Header::parse(buf.as_slice(), f.len().unwrap()).unwrap();
    match h.backing_file {
        Some(name) => json!(name),
        None => Value::Null,
    }
}
