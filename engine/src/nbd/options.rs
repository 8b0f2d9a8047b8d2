//! Parsing of negotiation option payloads (`NBD_OPT_INFO`/`GO`, `LIST`/`SET_META_CONTEXT`) and
//! matching of metadata context queries. Pure functions: the fuzz target calls them directly.

use super::proto::{CTX_ALLOCATION_DEPTH, CTX_BASE_ALLOCATION, CTX_DIRTY_BITMAP, Cursor};

/// An `NBD_OPT_INFO` or `NBD_OPT_GO` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export asked for.
    pub name: String,
    /// The information types asked for.
    pub infos: Vec<u16>,
}

/// Why an option payload is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Parse `NBD_OPT_INFO`/`GO`: u32 name length, name, u16 count, that many u16 types, and
/// nothing more.
pub fn parse_info(payload: &[u8]) -> Result<InfoRequest, Malformed> {
    let mut c = Cursor::new(payload);
    let name = c.string().ok_or(Malformed("bad export name"))?;
    let n = c.u16().ok_or(Malformed("missing information count"))?;
    let mut infos = Vec::with_capacity(usize::from(n).min(64));
    for _ in 0..n {
        infos.push(c.u16().ok_or(Malformed("information list too short"))?);
    }
    if !c.at_end() {
        return Err(Malformed("trailing bytes after information list"));
    }
    Ok(InfoRequest { name, infos })
}

/// An `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRequest {
    /// The export the contexts are for.
    pub export: String,
    /// The queries (empty: every context, for a list).
    pub queries: Vec<String>,
}

/// Most queries one request may carry.
const MAX_QUERIES: u32 = 256;

/// Parse a meta context request: u32 export name length, name, u32 count, that many
/// (u32 length, string) queries.
pub fn parse_meta(payload: &[u8]) -> Result<MetaRequest, Malformed> {
    let mut c = Cursor::new(payload);
    let export = c.string().ok_or(Malformed("bad export name"))?;
    let n = c.u32().ok_or(Malformed("missing query count"))?;
    if n > MAX_QUERIES {
        return Err(Malformed("too many queries"));
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        queries.push(c.string().ok_or(Malformed("bad query"))?);
    }
    if !c.at_end() {
        return Err(Malformed("trailing bytes after queries"));
    }
    Ok(MetaRequest { export, queries })
}

/// Which of `offered` (context names, indexed by context id) the queries select. A list with no
/// query selects everything; `qemu:` selects every QEMU context and `qemu:dirty-bitmap:` every
/// bitmap (in a list only: a set names contexts exactly). Ids come out sorted, once each.
pub fn match_contexts(offered: &[String], queries: &[String], list: bool) -> Vec<u32> {
    let mut picked = vec![false; offered.len()];
    if queries.is_empty() && list {
        picked.iter_mut().for_each(|p| *p = true);
    }
    for q in queries {
        for (i, name) in offered.iter().enumerate() {
            let hit = name == q
                || (list && q == "base:" && name == CTX_BASE_ALLOCATION)
                || (list && q == "qemu:" && name.starts_with("qemu:"))
                || (list && q == CTX_DIRTY_BITMAP && name.starts_with(CTX_DIRTY_BITMAP))
                || (list && q == "qemu:allocation-depth" && name == CTX_ALLOCATION_DEPTH);
            picked[i] |= hit;
        }
    }
    picked
        .iter()
        .enumerate()
        .filter(|(_, p)| **p)
        .map(|(i, _)| i as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    #[test]
    fn info_requests_parse_and_refuse_bad_lengths() {
        assert_eq!(
            parse_info(&info("exp", &[3, 1])).unwrap(),
            InfoRequest {
                name: "exp".into(),
                infos: vec![3, 1]
            }
        );
        let mut long = info("exp", &[3]);
        long.push(0);
        assert!(parse_info(&long).is_err());
        let mut lie = info("exp", &[]);
        lie[3] = 200; // name length past the payload
        assert!(parse_info(&lie).is_err());
        assert!(parse_info(&[]).is_err());
    }

    #[test]
    fn contexts_match_exactly_on_set_and_by_prefix_on_list() {
        let offered: Vec<String> = [
            "base:allocation",
            "qemu:allocation-depth",
            "qemu:dirty-bitmap:b0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(match_contexts(&offered, &[], true), vec![0, 1, 2]);
        assert!(match_contexts(&offered, &[], false).is_empty());
        let q = |s: &str| vec![s.to_string()];
        assert_eq!(match_contexts(&offered, &q("qemu:"), true), vec![1, 2]);
        assert!(match_contexts(&offered, &q("qemu:"), false).is_empty());
        assert_eq!(
            match_contexts(&offered, &q("qemu:dirty-bitmap:b0"), false),
            vec![2]
        );
        assert!(match_contexts(&offered, &q("nope:x"), true).is_empty());
    }
}
