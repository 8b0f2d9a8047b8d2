//! qemu-io's `-s` (snapshot): the image is opened read-only under a temporary qcow2 overlay in
//! `$TMPDIR` (default `/var/tmp`), which takes every write and is removed once open, so the
//! image itself never changes.

use super::Tool;
use super::create::{CreateSpec, create_image};

/// Create the overlay for `file` (format `format`, probed when `None`); returns its path.
pub(crate) fn snapshot_overlay(file: &str, format: Option<&str>) -> Result<String, String> {
    let backing = std::fs::canonicalize(file)
        .map_err(|e| {
            // The OS's words without Rust's " (os error N)" suffix, as QEMU prints them.
            let text = e.to_string();
            let text = text
                .split(" (os error")
                .next()
                .unwrap_or_default()
                .to_string();
            format!("Could not open '{file}': {text}")
        })?
        .to_string_lossy()
        .into_owned();
    let dir = std::env::var("TMPDIR").unwrap_or_else(|_| "/var/tmp".to_string());
    let overlay = (0u32..)
        .map(|n| format!("{dir}/vl.blk{}.{n}", std::process::id()))
        .find(|p| !std::path::Path::new(p).exists())
        .expect("a free name");
    let tool = Tool::new();
    let result = tool.block_on(async {
        let backing_fmt = match format {
            Some(f) => f.to_string(),
            None => tool.probe_format(&backing).await?,
        };
        let spec = CreateSpec {
            fmt: "qcow2".into(),
            backing: Some(backing),
            backing_fmt: Some(backing_fmt),
            quiet: true,
            ..CreateSpec::default()
        };
        create_image(&tool, &overlay, &spec).await
    });
    let fin = tool.finish();
    match result.and(fin) {
        Ok(()) => Ok(overlay),
        Err(e) => {
            let _ = std::fs::remove_file(&overlay);
            Err(e)
        }
    }
}
