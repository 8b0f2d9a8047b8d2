//! `image create PATH FORMAT SIZE [options]`: make an image on the virtual disk, the way
//! `qemu-img create` would, through the engine's own drivers.

use std::rc::{Rc, Weak};

use engine::Engine;
use engine::drivers::qcow2::{self, Compat, CreateOptions};
use engine::env::{Env, OpenOptions};
use engine::graph::{ParentOps, attach_external, detach, open_node};
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
            other => return Err(format!("unknown qcow2 option '{other}'")),
        }
    }
    Ok(o)
}

/// Create `path` as a `format` image of `size` bytes.
pub async fn create_image(
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
