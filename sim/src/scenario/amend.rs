//! `amend PATH KEY=VALUE...`: `qemu-img amend` of an image file while the engine is shut down,
//! as an administrator runs it between two runs of a VM. A separate engine opens the file
//! read-write (with its backing chain), amends it through the format (`FormatOps::amend`) and
//! closes it; the `restart` that follows reopens the amended image. A family of steps (see
//! `step`).

use engine::Engine;
use engine::driver::AmendOptions;
use engine::graph::open_node;
use engine::util::Options;
use serde_json::json;

use super::outcome::{Failure, fail};
use super::world::World;

/// The amend options of the directive's `KEY=VALUE` pairs (the parser let only these through).
fn options(pairs: &[(String, String)]) -> Result<AmendOptions, String> {
    let mut o = AmendOptions::default();
    for (k, v) in pairs {
        match k.as_str() {
            "compat" => o.compat = Some(v.clone()),
            "refcount_bits" => {
                o.refcount_bits = Some(v.parse().map_err(|_| format!("bad refcount_bits '{v}'"))?)
            }
            "lazy_refcounts" => {
                o.lazy_refcounts =
                    Some(engine::util::parse_on_off(k, v).map_err(|e| e.to_string())?)
            }
            _ => return Err(format!("unknown amend option '{k}'")),
        }
    }
    Ok(o)
}

impl World<'_> {
    pub(super) async fn amend_file(
        &mut self,
        line: usize,
        path: &str,
        pairs: &[(String, String)],
    ) -> Result<(), Failure> {
        let opts = options(pairs).map_err(|e| fail("amend", line, e))?;
        let tool = Engine::new(self.env.clone());
        let spec = Options::new(json!({"driver": "qcow2",
            "file": {"driver": "file", "filename": path}}))
        .map_err(|e| fail("setup", line, e.to_string()))?;
        let node = open_node(tool.graph(), spec)
            .await
            .map_err(|e| fail("amend", line, format!("{path}: {e}")))?;
        let no_resize = |_n: u64| -> engine::env::LocalBoxFuture<'_, engine::Result<()>> {
            Box::pin(async { Err(engine::Error::generic("amend in a scenario: no size")) })
        };
        let amended = match node.driver().format_ops() {
            Some(ops) => ops.amend(&opts, &no_resize, &|_| {}).await,
            None => Err(engine::Error::generic("not an image format")),
        };
        let info = node.driver().specific_info();
        engine::graph::close_unused(&node).await;
        drop(node);
        let closed = tool.shutdown().await;
        amended
            .and(closed)
            .map_err(|e| fail("amend", line, format!("{path}: {e}")))?;
        let what: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.note(&format!(
            "amend {path}: {} (now compat {}, refcount bits {})",
            what.join(","),
            info["compat"].as_str().unwrap_or("?"),
            info["refcount-bits"]
        ));
        Ok(())
    }
}
