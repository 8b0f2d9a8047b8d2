//! `reopen [-r|-w] [-c cache] [-o options]`: the device's image reopened with another access
//! mode or cache mode, with qemu-io's checks and messages. A child of `exec`.
//!
//! What blk can change at reopen: read-only/read-write (a real two-phase reopen of the node
//! and the storage below it, see `Engine::reopen_device`) and the device's writeback or
//! writethrough cache. `driver` and `node-name` may be given only with their current values;
//! every other option (`cache.direct`, `discard`, driver options) is refused with QEMU's
//! "Cannot change the option" message, where QEMU can change some of them.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::util::Options;

use super::super::open::CacheMode;
use super::Session;

/// What a `reopen` asks for, once its options are checked.
struct Request {
    read_only: Option<bool>,
    /// `read-only` came from `-o` (QEMU then checks the device's permissions as they are).
    read_only_from_opts: bool,
    write_cache: Option<bool>,
}

impl Session {
    pub(super) async fn reopen(
        &mut self,
        read_only: Option<bool>,
        cache: Option<&str>,
        options: Option<&str>,
    ) -> bool {
        let req = match self.reopen_request(read_only, cache, options) {
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
        match opts.into_value() {
            Value::Object(rest) => match rest.iter().next() {
                Some((key, v)) => Err(cannot_change(&first_leaf(key, v))),
                None => Ok(req),
            },
            _ => Ok(req),
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
