//! `reopen [-r|-w] [-c cache] [-o options]`: the device's image reopened with another access
//! mode or cache mode, with qemu-io's checks and messages. A child of `exec`.
//!
//! What blk can change at reopen: read-only/read-write (a real two-phase reopen of the node
//! and the storage below it, see `Engine::reopen_device`), the device's writeback or
//! writethrough cache, the node's `discard`, `detect-zeroes` and `cache.no-flush`, and the
//! driver's runtime options (qcow2's cache sizes, lazy refcounts, discard pass-through,
//! overlap checks, cache cleaning; `graph::reopen_options`), which every reopen sets anew as
//! QEMU's does: what it does not give goes back to its default. `driver`, `node-name` and the file's `filename` may be given only with their current
//! values; anything else (`cache.direct`, `force-share`, child options) is refused with QEMU's
//! "Cannot change the option" message.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::{GenericChanges, reopen_options};
use crate::types::DetectZeroes;
use crate::util::Options;

use super::super::open::CacheMode;
use super::Session;

/// What a `reopen` asks for, once its options are checked.
struct Request {
    read_only: Option<bool>,
    /// `read-only` came from `-o` (QEMU then checks the device's permissions as they are).
    read_only_from_opts: bool,
    write_cache: Option<bool>,
    /// The node's generic options to change.
    generic: GenericChanges,
    /// The driver's own options (none given: every one at its default).
    driver: Option<Options>,
}

impl Session {
    pub(super) async fn reopen(
        &mut self,
        read_only: Option<bool>,
        cache: Option<&str>,
        options: Option<&str>,
    ) -> bool {
        let mut req = match self.reopen_request(read_only, cache, options) {
            Ok(r) => r,
            Err(e) => {
                self.report_err(e.message());
                return false;
            }
        };
        let dev = self.dev();
        let Some(node) = dev.root_node() else {
            return false;
        };
        // As in QEMU, every reopen sets the driver's options anew: those not given go back
        // to their defaults.
        let changes = req.driver.take().unwrap_or_default();
        if let Err(e) = reopen_options(&node, changes, req.generic).await {
            self.report_err(e.message());
            return false;
        }
        if let Some(ro) = req.read_only.filter(|ro| *ro != node.is_read_only()) {
            let writer = dev.options().perm.contains(crate::types::Perms::WRITE);
            if ro && req.read_only_from_opts && writer {
                self.report_err(format!(
                    "Read-only block node '{}' cannot support read-write users",
                    node.name()
                ));
                return false;
            }
            if let Err(e) = self.engine.reopen_device(&dev, ro).await {
                self.report_err(e.message());
                return false;
            }
        }
        if let Some(wc) = req.write_cache {
            dev.set_write_cache(wc);
        }
        true
    }

    /// qemu-io's checks of the options, in its order.
    fn reopen_request(
        &self,
        read_only: Option<bool>,
        cache: Option<&str>,
        options: Option<&str>,
    ) -> Result<Request> {
        let mut req = Request {
            read_only,
            read_only_from_opts: false,
            write_cache: cache.map(|m| CacheMode::parse(m).map_or(true, CacheMode::write_cache)),
            generic: GenericChanges::default(),
            driver: None,
        };
        let Some(text) = options else {
            return Ok(req);
        };
        let mut opts = Options::from_keyval(text)?;
        if opts.has("read-only") {
            if read_only.is_some() {
                return Err(Error::generic("Cannot set both -r/-w and 'read-only'"));
            }
            req.read_only = opts.take_bool("read-only")?;
            req.read_only_from_opts = true;
        }
        if opts.has("cache") && cache.is_some() {
            return Err(Error::generic("Cannot set both -c and the cache options"));
        }
        let node = self.dev().root_node();
        let current = |key: &str| -> Option<String> {
            let n = node.as_ref()?;
            Some(match key {
                "driver" => n.driver_name().to_string(),
                _ => n.name().to_string(),
            })
        };
        for key in ["driver", "node-name"] {
            if let Some(v) = opts.take(key)
                && v.as_str().map(str::to_string) != current(key)
            {
                return Err(cannot_change(key));
            }
        }
        req.generic = self.generic_changes(&mut opts)?;
        if opts.has("force-share") {
            return Err(cannot_change("force-share"));
        }
        // Accepted as QEMU accepts it; blk never switches an image's mode by itself.
        opts.take_bool("auto-read-only")?;
        if let Some(file) = opts.take_dict("file")? {
            self.check_file_options(file)?;
        }
        let children = opts
            .keys()
            .find(|k| matches!(opts.get(k), Some(Value::Object(_))));
        if let Some(key) = children.map(str::to_string) {
            let v = opts.take(&key).unwrap_or(Value::Null);
            return Err(cannot_change(&first_leaf(&key, &v)));
        }
        let any = opts.keys().next().is_some();
        req.driver = any.then_some(opts);
        Ok(req)
    }

    /// `discard`, `detect-zeroes` and `cache.*`, taken from `opts`.
    fn generic_changes(&self, opts: &mut Options) -> Result<GenericChanges> {
        let mut generic = GenericChanges::default();
        if let Some(mode) = opts.take_str("discard")? {
            generic.discard_unmap = Some(match mode.as_str() {
                "unmap" | "on" => true,
                "ignore" | "off" => false,
                _ => return Err(Error::generic("Invalid discard option")),
            });
        }
        if let Some(mode) = opts.take_str("detect-zeroes")? {
            // A reopen words this refusal differently from an open.
            let parsed = DetectZeroes::parse(&mode)
                .map_err(|_| Error::generic(format!("invalid parameter value: {mode}")));
            generic.detect_zeroes = Some(parsed?);
        }
        if let Some(mut cache) = opts.take_dict("cache")? {
            generic.no_flush = cache.take_bool("no-flush")?;
            let direct = self.dev().root_node().map(|n| n.options().direct);
            if let Some(d) = cache.take_bool("direct")?
                && Some(d) != direct
            {
                // The file would have to be opened again with or without O_DIRECT.
                return Err(cannot_change("cache.direct"));
            }
            if let Some(key) = cache.keys().next() {
                return Err(cannot_change(&format!("cache.{key}")));
            }
        }
        Ok(generic)
    }

    /// The image file's options: its name may be repeated; nothing else can change.
    fn check_file_options(&self, mut file: Options) -> Result<()> {
        let current = self
            .dev()
            .root_node()
            .and_then(|n| n.children().into_iter().find(|e| e.name() == "file"))
            .map(|e| e.child_node().driver().filename());
        if let Some(name) = file.take_str("filename")?
            && Some(name) != current
        {
            return Err(cannot_change("filename"));
        }
        match file.keys().next() {
            Some(key) => Err(cannot_change(key)),
            None => Ok(()),
        }
    }
}

fn cannot_change(key: &str) -> Error {
    Error::generic(format!("Cannot change the option '{key}'"))
}

/// The dotted name of the first option under `key` (`cache.direct` for `{"cache": {...}}`).
fn first_leaf(key: &str, v: &Value) -> String {
    match v {
        Value::Object(m) => match m.iter().next() {
            Some((k, inner)) => first_leaf(&format!("{key}.{k}"), inner),
            None => key.to_string(),
        },
        _ => key.to_string(),
    }
}
