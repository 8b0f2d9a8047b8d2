//! What `blk io FILE` and the `open` command open: qemu-io's image options turned into
//! `blockdev-add` options, with QEMU's cache modes and qemu-io's defaults (writethrough,
//! discard=unmap).

use serde_json::{Map, Value, json};

use std::rc::Rc;

use crate::engine::Engine;
use crate::error::{Error, ParamProblem, Result};
use crate::filename::image_options;
use crate::graph::Node;
use crate::util::Options;

/// QEMU's cache modes (`-t`), as (direct, no-flush, write cache) triples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Host page cache, every write durable on completion (qemu-io's default).
    #[default]
    Writethrough,
    /// Host page cache, flushes when asked.
    Writeback,
    /// `O_DIRECT`, flushes when asked (`none`, also `off`; `-n`).
    None,
    /// `O_DIRECT` and writethrough.
    Directsync,
    /// Flushes ignored.
    Unsafe,
}

impl CacheMode {
    /// Parse a `-t` value; the error is qemu-io's message without its program prefix.
    pub fn parse(mode: &str) -> Result<CacheMode> {
        Ok(match mode {
            "writethrough" => CacheMode::Writethrough,
            "writeback" => CacheMode::Writeback,
            "none" | "off" => CacheMode::None,
            "directsync" => CacheMode::Directsync,
            "unsafe" => CacheMode::Unsafe,
            _ => return Err(Error::generic(format!("Invalid cache option: {mode}"))),
        })
    }

    /// `cache.direct`.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    /// `cache.no-flush`.
    pub fn no_flush(self) -> bool {
        self == CacheMode::Unsafe
    }

    /// The BlockBackend's write cache (false: every write is FUA).
    pub fn write_cache(self) -> bool {
        !matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
}

/// Parse a `-d` value (true for unmap); the error is qemu-io's message without its prefix.
pub fn parse_discard(mode: &str) -> Result<bool> {
    crate::types::discard_unmap(mode)
        .ok_or_else(|| Error::generic(format!("Invalid discard option: {mode}")))
}

/// Drivers that talk to storage themselves (no `file` child to create).
const PROTOCOLS: [&str; 4] = ["file", "host_device", "null-co", "null-aio"];

/// An image to open, as qemu-io's command line or `open` command describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSpec {
    /// The file name, or with `image_opts` a `key=value,...` option string.
    pub filename: Option<String>,
    /// `-f FMT` (or the probed format); without it the image is opened as raw.
    pub format: Option<String>,
    /// `--image-opts`: `filename` is an option string.
    pub image_opts: bool,
    /// `-o` options of the `open` command, merged into the top node's options.
    pub options: Option<String>,
    /// `-r`.
    pub read_only: bool,
    /// `-t` / `-n`.
    pub cache: CacheMode,
    /// `-d`: discard requests unmap (qemu-io's default) or are ignored.
    pub discard_unmap: bool,
    /// `-U`: share every permission (read-only images only).
    pub force_share: bool,
    /// `-i MODE` / `-k`: the file driver's `aio` option.
    pub aio: Option<String>,
    /// Node name of the top node when the options do not name it.
    pub node_name: String,
    /// The format was probed as raw (set by [`OpenSpec::probed`]): the raw node gets
    /// `x-probed`, which refuses writes that would put a format signature into block 0.
    pub probed_raw: bool,
    /// Open the image without its backing file (`backing: null`, QEMU's BDRV_O_NO_BACKING):
    /// `qemu-img info` reads an image whose backing file is missing or loops, and an
    /// encrypted one without its key (`x-no-io`).
    pub no_backing: bool,
    /// `-C`: the device copies on read (refused on a read-only image).
    pub copy_on_read: bool,
    /// `-s`: the image is opened read-only under a temporary overlay that takes the writes.
    pub snapshot: bool,
}

impl Default for OpenSpec {
    fn default() -> OpenSpec {
        OpenSpec {
            filename: None,
            format: None,
            image_opts: false,
            options: None,
            read_only: false,
            cache: CacheMode::default(),
            discard_unmap: true,
            force_share: false,
            aio: None,
            node_name: "disk".to_string(),
            probed_raw: false,
            no_backing: false,
            copy_on_read: false,
            snapshot: false,
        }
    }
}

/// Set `key` unless the user's options already have it.
fn default_key(obj: &mut Map<String, Value>, key: &str, val: Value) {
    obj.entry(key.to_string()).or_insert(val);
}

impl OpenSpec {
    /// The generic options every node gets, as QEMU lets children inherit them.
    fn common(&self, obj: &mut Map<String, Value>) {
        if self.read_only {
            default_key(obj, "read-only", json!(true));
        }
        if self.force_share {
            default_key(obj, "force-share", json!(true));
        }
        default_key(
            obj,
            "cache",
            json!({"direct": self.cache.direct(), "no-flush": self.cache.no_flush()}),
        );
        default_key(
            obj,
            "discard",
            json!(if self.discard_unmap {
                "unmap"
            } else {
                "ignore"
            }),
        );
    }

    /// The generic options for a node given inline and its inline `file`/`image` children, and
    /// `-i`/`-k`'s `aio` for host files.
    pub(crate) fn inherit(&self, node: &mut Map<String, Value>) {
        if let Some(aio) = &self.aio
            && matches!(
                node.get("driver").and_then(Value::as_str),
                Some("file" | "host_device")
            )
        {
            default_key(node, "aio", json!(aio));
        }
        self.common(node);
        for child in ["file", "image"] {
            if let Some(Value::Object(c)) = node.get_mut(child) {
                // A child given by file name alone is a host file (blk's only protocol).
                if c.contains_key("filename") {
                    default_key(c, "driver", json!("file"));
                }
                self.inherit(c);
            }
        }
    }

    /// The `blockdev-add` options for this image (the name translated by
    /// [`crate::filename::image_options`]). Without `-f` or a driver in the name the image is
    /// opened as raw: callers probe the format first and set `format`.
    pub fn blockdev_options(&self) -> Result<Value> {
        let mut top = match &self.filename {
            Some(name) => image_options(name, self.format.as_deref(), self.image_opts)?,
            None => Map::new(),
        };
        let extra = self
            .options
            .as_deref()
            .map(Options::from_keyval)
            .transpose()?;
        if let Some(Value::Object(m)) = extra.map(Options::into_value) {
            for (k, v) in m {
                top.insert(k, v);
            }
        }
        default_key(&mut top, "driver", json!("raw"));
        if self.probed_raw && top["driver"] == "raw" {
            top.insert("x-probed".into(), json!(true));
        }
        let driver = top["driver"].as_str().unwrap_or_default().to_string();
        if !PROTOCOLS.contains(&driver.as_str())
            && driver != "blkdebug"
            && !top.contains_key("file")
        {
            return Err(Error::generic(
                "A block device must be specified for \"file\"",
            ));
        }
        default_key(&mut top, "node-name", json!(self.node_name));
        if self.no_backing && driver == "qcow2" {
            default_key(&mut top, "backing", Value::Null);
        }
        if self.no_backing && matches!(driver.as_str(), "qcow2" | "luks") {
            // qemu-img info reads an encrypted image's header without its key (BDRV_O_NO_IO).
            default_key(&mut top, "x-no-io", json!(true));
        }
        self.inherit(&mut top);
        Ok(Value::Object(top))
    }
}

impl OpenSpec {
    /// This spec with its format settled: given (`-f`, or a driver in the name) it is kept;
    /// otherwise the image file is probed (`crate::probe`), as QEMU does for a name without a
    /// format. A file that cannot be opened is left to the open itself, whose error names it.
    pub async fn probed(&self, engine: &Engine) -> Result<OpenSpec> {
        let mut spec = self.clone();
        let Some(name) = self.filename.as_deref() else {
            return Ok(spec);
        };
        if self.format.is_some() {
            return Ok(spec);
        }
        let named = image_options(name, None, self.image_opts)?;
        if named.contains_key("driver") {
            return Ok(spec);
        }
        let Some(host) = crate::filename::probe_target(&named) else {
            // A network export is probed by what it holds, read through a node of its own.
            if let Some(Value::Object(file)) = named.get("file")
                && file.get("driver").and_then(Value::as_str) == Some("nbd")
                && let Ok(format) = probe_node(engine, file).await
            {
                spec.format = Some(format.to_string());
                spec.probed_raw = format == "raw";
            }
            return Ok(spec);
        };
        if let Ok(format) = crate::probe::probe_file(&**engine.env(), &host).await {
            spec.format = Some(format.to_string());
            spec.probed_raw = format == "raw";
        }
        Ok(spec)
    }

    /// `blockdev-add` this image (probing its format first when none is given); an option no
    /// driver took is reported as QEMU reports options given with an image name (naming the
    /// node's driver) rather than as QMP does.
    pub async fn add_to(&self, engine: &Engine) -> Result<Rc<Node>> {
        let opts = self.probed(engine).await?.blockdev_options()?;
        engine
            .blockdev_add(opts.clone())
            .await
            .map_err(|e| unsupported_option(&opts, e))
    }
}

/// The format of what the protocol node `file` (options, no node name) holds, from its first
/// bytes; the node is removed again.
async fn probe_node(engine: &Engine, file: &Map<String, Value>) -> Result<&'static str> {
    const NODE: &str = "probe-nbd";
    let mut opts = file.clone();
    opts.insert("node-name".into(), json!(NODE));
    let node = engine.blockdev_add(Value::Object(opts)).await?;
    let head = {
        let len = node.len().min(crate::probe::PROBE_BYTES as u64) as usize;
        let bb = crate::backend::BlockBackend::new(
            "",
            &node,
            engine.machine(),
            crate::backend::BackendOptions::tool(true),
        );
        match bb {
            Ok(bb) => {
                let (buf, r) = bb.read(0, crate::io::IoBuf::new(len)).await;
                let _ = bb.detach().await;
                r.map(|()| buf)
            }
            Err(e) => Err(e),
        }
    };
    engine.blockdev_del(NODE).await?;
    Ok(crate::probe::format_of(head?.as_slice()).unwrap_or("raw"))
}

/// "Parameter 'file.x' is unexpected" as "Block protocol 'file' doesn't support the option
/// 'x'" (or "Block format 'qcow2' does not support ..."), when `file` is a node in `opts`.
fn unsupported_option(opts: &Value, e: Error) -> Error {
    let Some((key, ParamProblem::Unexpected)) = e.param_problem() else {
        return e;
    };
    let key = key.to_string();
    let (path, option) = match key.rsplit_once('.') {
        Some((p, o)) => (Some(p), o),
        None => (None, key.as_str()),
    };
    let mut node = opts;
    for seg in path.into_iter().flat_map(|p| p.split('.')) {
        node = &node[seg];
    }
    let driver = match (node.get("driver"), node.get("filename")) {
        (Some(Value::String(d)), _) => d.as_str(),
        (None, Some(_)) => "file",
        _ => return e,
    };
    let msg = if PROTOCOLS.contains(&driver) || driver == "blkdebug" {
        format!("Block protocol '{driver}' doesn't support the option '{option}'")
    } else {
        format!("Block format '{driver}' does not support the option '{option}'")
    };
    Error::generic(msg).option(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes() {
        let m = CacheMode::parse("none").unwrap();
        assert!(m.direct() && m.write_cache() && !m.no_flush());
        assert!(!CacheMode::default().write_cache());
        assert!(CacheMode::parse("directsync").unwrap().direct());
        assert!(CacheMode::parse("unsafe").unwrap().no_flush());
        assert_eq!(
            CacheMode::parse("bogus").unwrap_err().to_string(),
            "Invalid cache option: bogus"
        );
        assert_eq!(
            parse_discard("bogus").unwrap_err().to_string(),
            "Invalid discard option: bogus"
        );
    }

    #[test]
    fn raw_over_file() {
        let spec = OpenSpec {
            filename: Some("/x.img".into()),
            format: Some("raw".into()),
            cache: CacheMode::None,
            ..OpenSpec::default()
        };
        let v = spec.blockdev_options().unwrap();
        assert_eq!(v["driver"], "raw");
        assert_eq!(v["node-name"], "disk");
        assert_eq!(v["file"]["driver"], "file");
        assert_eq!(v["file"]["filename"], "/x.img");
        assert_eq!(v["file"]["cache"]["direct"], true);
        assert_eq!(v["discard"], "unmap");
        let file = OpenSpec {
            format: Some("file".into()),
            ..spec.clone()
        };
        let v = file.blockdev_options().unwrap();
        assert_eq!(v["driver"], "file");
        assert_eq!(v["filename"], "/x.img");
        assert!(v.get("file").is_none());
    }

    #[test]
    fn image_opts_keep_user_keys() {
        let spec = OpenSpec {
            filename: Some("driver=raw,file.driver=file,file.filename=/y,node-name=n".into()),
            image_opts: true,
            read_only: true,
            ..OpenSpec::default()
        };
        let v = spec.blockdev_options().unwrap();
        assert_eq!(v["node-name"], "n");
        assert_eq!(v["file"]["filename"], "/y");
        assert_eq!(v["file"]["read-only"], true);
        assert_eq!(v["read-only"], true);
        let bare = OpenSpec {
            filename: Some("driver=raw,file.filename=/z".into()),
            image_opts: true,
            ..OpenSpec::default()
        };
        assert_eq!(bare.blockdev_options().unwrap()["file"]["driver"], "file");
    }
}
