//! `image create PATH FORMAT SIZE [options] [fill=PATTERN:OFFSET:LEN ...]`: make an image on
//! the virtual disk, the way `qemu-img create` would, through the engine's own drivers; each
//! `fill=` then writes a pattern through the format driver and flushes it, as `qemu-io -c
//! 'write -P'` on the new file would (a backing layer's content in one step, which keeps
//! generated and shrunk scenarios short). The model is not told: a `model DEV fill` declares
//! what a device above the image shows.

use std::rc::{Rc, Weak};

use engine::Engine;
use engine::backend::BackendOptions;
use engine::drivers::qcow2::{self, Compat, CreateOptions};
use engine::env::{Env, OpenOptions};
use engine::graph::{ParentOps, attach_external, detach, open_node};
use engine::io::{IoBuf, ReqFlags};
use engine::types::Perms;
use engine::util::{Options, parse_size};
use serde_json::json;

use super::syntax::Arg;

/// The short-lived user that writes a new image's metadata.
struct Creator;

impl ParentOps for Creator {
    fn describe(&self) -> String {
        "image create".into()
    }
}

fn qcow2_options(size: u64, args: &[Arg]) -> Result<CreateOptions, String> {
    let mut o = CreateOptions {
        size,
        ..CreateOptions::default()
    };
    for a in args {
        let v = a
            .value
            .as_deref()
            .ok_or_else(|| format!("'{}' needs a value", a.key))?;
        let flag = || match v {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            _ => Err(format!("'{}' expects on or off, not '{v}'", a.key)),
        };
        match a.key.as_str() {
            "cluster_size" => {
                o.cluster_size = parse_size(v).ok_or_else(|| format!("bad cluster_size '{v}'"))?
            }
            "compat" => {
                o.compat = match v {
                    "0.10" | "v2" => Compat::V2,
                    "1.1" | "v3" => Compat::V3,
                    _ => return Err(format!("bad compat '{v}' (0.10 or 1.1)")),
                }
            }
            "refcount_bits" => {
                o.refcount_bits = v.parse().map_err(|_| format!("bad refcount_bits '{v}'"))?
            }
            "backing_file" => o.backing_file = Some(v.to_string()),
            "backing_fmt" => o.backing_fmt = Some(v.to_string()),
            "lazy_refcounts" => o.lazy_refcounts = flag()?,
            "extended_l2" => o.extended_l2 = flag()?,
            "data_file" => o.data_file = Some(v.to_string()),
            "data_file_raw" => o.data_file_raw = flag()?,
            other => return Err(format!("unknown qcow2 option '{other}'")),
        }
    }
    Ok(o)
}

/// One `fill=PATTERN:OFFSET:LEN` of an `image create`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fill {
    pattern: u8,
    offset: u64,
    len: u64,
}

fn parse_fill(v: &str) -> Result<Fill, String> {
    let bad = || format!("bad fill '{v}' (PATTERN:OFFSET:LEN, e.g. 0x11:0:1M)");
    let mut parts = v.split(':');
    let (Some(p), Some(o), Some(l), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let pattern = match p.strip_prefix("0x") {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => p.parse(),
    }
    .map_err(|_| bad())?;
    let offset = parse_size(o).ok_or_else(bad)?;
    let len = parse_size(l).ok_or_else(bad)?;
    if offset % 512 != 0 || len % 512 != 0 || len == 0 {
        return Err(format!("fill '{v}' must cover whole 512-byte sectors"));
    }
    Ok(Fill {
        pattern,
        offset,
        len,
    })
}

/// Write the fills through a short-lived node of `format` on `path` (no backing), then close it.
async fn fill_image(
    engine: &Engine,
    path: &str,
    format: &str,
    fills: &[Fill],
) -> Result<(), String> {
    const NODE: &str = "image-fill";
    const DEVICE: &str = "image-fill-dev";
    let mut spec = json!({"node-name": NODE, "driver": format,
        "file": {"driver": "file", "filename": path}});
    if format == "qcow2" {
        spec["backing"] = serde_json::Value::Null;
    }
    engine.blockdev_add(spec).await.map_err(|e| e.to_string())?;
    let written = async {
        let dev = engine
            .device_add(DEVICE, NODE, BackendOptions::guest_device(false, false))
            .map_err(|e| e.to_string());
        let dev = match dev {
            Ok(d) => d,
            Err(e) => return Err(e),
        };
        let mut result = Ok(());
        for f in fills {
            let buf = IoBuf::filled(f.len as usize, f.pattern);
            let (_, r) = dev.write(f.offset, buf, ReqFlags::NONE).await;
            result =
                result.and(r.map_err(|e| format!("fill {:#04x} at {}: {e}", f.pattern, f.offset)));
        }
        let flushed = dev.flush().await.map_err(|e| e.to_string());
        let deleted = engine.device_del(DEVICE).await.map_err(|e| e.to_string());
        result.and(flushed).and(deleted)
    }
    .await;
    let closed = engine.blockdev_del(NODE).await.map_err(|e| e.to_string());
    written.and(closed)
}

/// Create `path` as a `format` image of `size` bytes, then write its fills.
pub async fn create_image(
    engine: &Rc<Engine>,
    env: &Rc<dyn Env>,
    path: &str,
    format: &str,
    size: u64,
    args: &[Arg],
) -> Result<(), String> {
    let fills = args
        .iter()
        .filter(|a| a.key == "fill")
        .map(|a| parse_fill(a.value.as_deref().unwrap_or("")))
        .collect::<Result<Vec<Fill>, String>>()?;
    let format_args: Vec<Arg> = args.iter().filter(|a| a.key != "fill").cloned().collect();
    create_empty(engine, env, path, format, size, &format_args).await?;
    if fills.is_empty() {
        return Ok(());
    }
    fill_image(engine, path, format, &fills).await
}

/// Create `path` as an empty `format` image of `size` bytes.
async fn create_empty(
    engine: &Rc<Engine>,
    env: &Rc<dyn Env>,
    path: &str,
    format: &str,
    size: u64,
    args: &[Arg],
) -> Result<(), String> {
    let opts = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..Default::default()
    };
    let file = env.fs().open(path, opts).map_err(|e| e.to_string())?;
    match format {
        "raw" => {
            if let Some(a) = args.first() {
                return Err(format!("raw images take no options ('{}')", a.key));
            }
            file.set_len(size).await.map_err(|e| e.to_string())?;
            file.flush().await.map_err(|e| e.to_string())
        }
        "qcow2" => {
            drop(file);
            let o = qcow2_options(size, args)?;
            if let Some(data) = &o.data_file {
                // As `qemu-img create` does: the external data file is a raw file of the
                // virtual size, made before the image that names it.
                let data = env.fs().open(data, opts).map_err(|e| e.to_string())?;
                data.set_len(size).await.map_err(|e| e.to_string())?;
                data.flush().await.map_err(|e| e.to_string())?;
            }
            let spec = Options::new(json!({"driver": "file", "filename": path}))
                .map_err(|e| e.to_string())?;
            let node = open_node(engine.graph(), spec)
                .await
                .map_err(|e| e.to_string())?;
            let creator: Rc<dyn ParentOps> = Rc::new(Creator);
            let weak: Weak<dyn ParentOps> = Rc::downgrade(&creator);
            let all = Perms::CONSISTENT_READ | Perms::WRITE | Perms::RESIZE;
            let child = attach_external(weak, &node, "create", all, Perms::ALL)
                .map_err(|e| e.to_string())?;
            let created = qcow2::create(&child, &o).await.map_err(|e| e.to_string());
            let flushed = child.flush().await.map_err(|e| e.to_string());
            detach(child.edge()).await.map_err(|e| e.to_string())?;
            created.and(flushed)
        }
        other => Err(format!("unsupported image format '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_parse_and_refuse_partial_sectors() {
        assert_eq!(
            parse_fill("0x11:1M:512k"),
            Ok(Fill {
                pattern: 0x11,
                offset: 1 << 20,
                len: 512 << 10
            })
        );
        assert!(
            parse_fill("0x11:100:512")
                .unwrap_err()
                .contains("whole 512-byte sectors")
        );
        assert!(
            parse_fill("0x11:0")
                .unwrap_err()
                .contains("PATTERN:OFFSET:LEN")
        );
        assert!(parse_fill("zz:0:512").is_err());
    }
}
