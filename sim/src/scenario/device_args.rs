//! `device add NAME node=NODE [read-only] [share-rw] [copy-on-read] [rerror=] [werror=]
//! [cache=]`: the arguments onto the node name and the engine's
//! backend options. The parser runs it too, so a misspelt option is refused before a run.

use engine::backend::BackendOptions;
use engine::types::OnError;

use super::syntax::Arg;

/// `device add` arguments onto the node name and backend options (also run at parse time, so a
/// misspelt option is refused before the run starts).
pub(super) fn device_options(args: &[Arg]) -> Result<(String, BackendOptions), String> {
    let mut node = None;
    let (mut read_only, mut share_rw, mut copy_on_read) = (false, false, false);
    let (mut rerror, mut werror, mut cache) = (OnError::Report, OnError::Enospc, true);
    for a in args {
        match (a.key.as_str(), a.value.as_deref()) {
            ("node", Some(v)) => node = Some(v.to_string()),
            ("read-only", None) => read_only = true,
            ("share-rw", None) => share_rw = true,
            ("copy-on-read", None) => copy_on_read = true,
            ("rerror", Some(v)) => rerror = OnError::parse(v, "read").map_err(|e| e.to_string())?,
            ("werror", Some(v)) => {
                werror = OnError::parse(v, "write").map_err(|e| e.to_string())?
            }
            ("cache", Some("writeback")) => cache = true,
            ("cache", Some("writethrough")) => cache = false,
            (k, v) => {
                return Err(format!(
                    "unknown device argument '{k}{}'",
                    v.map(|v| format!("={v}")).unwrap_or_default()
                ));
            }
        }
    }
    let node = node.ok_or("device add needs node=NODE")?;
    if copy_on_read && read_only {
        // QEMU's refusal: copy-on-read writes into the device's own image.
        return Err("Can't use copy-on-read on read-only device".into());
    }
    let mut opts = BackendOptions::guest_device(read_only, share_rw);
    opts.rerror = rerror;
    opts.werror = werror;
    opts.write_cache = cache;
    opts.copy_on_read = copy_on_read;
    Ok((node, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::lex::args_of;

    fn args(words: &[&str]) -> Vec<Arg> {
        let ws: Vec<(usize, String)> = words.iter().map(|w| (1, w.to_string())).collect();
        args_of(&ws)
    }

    #[test]
    fn copy_on_read_is_an_option_and_refused_on_a_read_only_device() {
        let (_, o) = device_options(&args(&["node=top", "copy-on-read"])).unwrap();
        assert!(o.copy_on_read);
        let e = device_options(&args(&["node=top", "copy-on-read", "read-only"])).unwrap_err();
        assert_eq!(e, "Can't use copy-on-read on read-only device");
    }
}
