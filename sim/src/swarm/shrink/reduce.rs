//! The reductions of a shrink, pure rewrites of a scenario's text: per-line variants (halved
//! counts, dropped optional arguments and QMP members, a node opening the chain its header
//! names), chain cuts with the declarations of the data cut off, whole-entity drops, and a
//! mirror to a fresh image folded into one `drive-mirror`. None of them runs anything.

use serde_json::Value;

use super::Split;

/// Keys whose numbers are halved and optional arguments that are dropped.
const HALVE: &[&str] = &["count=", "iodepth=", "skip=", "times="];
const OPTIONAL: &[&str] = &[
    "think=",
    "range=",
    "cluster_size=",
    "refcount_bits=",
    "lazy_refcounts=",
    "compat=",
    "werror=",
    "rerror=",
    "cache=",
    "copy-on-read",
    "subtree",
];

/// Candidate rewrites of one single-line step.
pub(super) fn variants(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<String> = backing_from_header(line).into_iter().collect();
    out.extend(without_optional_members(line));
    for (i, w) in words.iter().enumerate() {
        let mut with = |nw: Option<String>| {
            let mut v: Vec<String> = words.iter().map(|s| s.to_string()).collect();
            match nw {
                Some(n) => v[i] = n,
                None => {
                    v.remove(i);
                }
            }
            out.push(v.join(" "));
        };
        if let Some(k) = HALVE.iter().find(|k| w.starts_with(*k)) {
            if let Ok(n) = w[k.len()..].parse::<u64>()
                && n > 1
            {
                with(Some(format!("{k}{}", n / 2)));
            }
        } else if OPTIONAL.iter().any(|k| w.starts_with(k)) && !line.starts_with("qmp") {
            with(None);
        } else if i == 1 && words[0] == "advance" {
            let digits: String = w.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<u64>()
                && n > 1
            {
                with(Some(format!("{}{}", n / 2, &w[digits.len()..])));
            }
        }
    }
    out
}

/// A `blockdev-add` without its `backing` member: the node opens the chain its image header
/// names, so the `blockdev-add`s of the layers below become droppable.
fn backing_from_header(line: &str) -> Option<String> {
    if !line.starts_with("qmp ") {
        return None;
    }
    let key = ",\"backing\":";
    let at = line.find(key)?;
    let value = &line[at + key.len()..];
    let len = if value.starts_with("null") {
        return None;
    } else {
        value[1..].find('"')? + 2
    };
    Some(format!("{}{}", &line[..at], &value[len..]))
}

/// Data a step writes or declares, as the scenario spells it: pattern, offset, length.
pub(super) type Data<'a> = (&'a str, &'a str, &'a str);

/// An `image create` step: the path, its backing file, and the data its `fill=`s write.
struct Image<'a> {
    path: &'a str,
    backing: Option<&'a str>,
    fills: Vec<Data<'a>>,
}

/// The `image create` steps.
fn images(cur: &Split) -> Vec<Image<'_>> {
    cur.steps
        .iter()
        .filter(|st| st[0].starts_with("image create "))
        .filter_map(|st| {
            let w: Vec<&str> = st[0].split_whitespace().collect();
            let backing = w.iter().find_map(|a| a.strip_prefix("backing_file="));
            let fills = w
                .iter()
                .filter_map(|a| a.strip_prefix("fill="))
                .filter_map(|f| {
                    let mut p = f.split(':');
                    Some((p.next()?, p.next()?, p.next()?))
                })
                .collect();
            Some(Image {
                path: w.get(2)?,
                backing,
                fills,
            })
        })
        .collect()
}

/// The fills of `path` and of every image below it by backing file.
fn fills_from<'a>(imgs: &[Image<'a>], path: &str) -> Vec<Data<'a>> {
    let mut out = Vec::new();
    let mut at = Some(path);
    let mut hops = 0;
    while let Some(p) = at
        && hops <= imgs.len()
    {
        hops += 1;
        let Some(img) = imgs.iter().find(|i| i.path == p) else {
            break;
        };
        out.extend(img.fills.iter().copied());
        at = img.backing;
    }
    out
}

/// Drop the `model ... fill` declarations of data in `gone`.
fn drop_declarations(t: &mut Split, gone: &[(String, String, String)]) {
    t.steps.retain(|st| {
        !matches!(st[0].split_whitespace().collect::<Vec<_>>()[..],
            ["model", _, "fill", p, off, len]
                if gone.iter().any(|(gp, go, gl)| (gp.as_str(), go.as_str(), gl.as_str()) == (p, off, len)))
    });
}

fn owned(v: Vec<Data<'_>>) -> Vec<(String, String, String)> {
    v.into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// QMP arguments a command cannot do without (names, targets, what to do); every other
/// member of `arguments` is a candidate to drop (speeds, modes, sizes of buffers, ...).
const REQUIRED_MEMBERS: &[&str] = &[
    "job-id",
    "id",
    "device",
    "target",
    "sync",
    "node-name",
    "driver",
    "file",
    "filename",
    "image",
    "size",
    "base",
    "base-node",
    "top",
    "top-node",
    "format",
    "backing",
    "options",
];

/// The `qmp` line without one of its optional `arguments` members, for each such member.
fn without_optional_members(line: &str) -> Vec<String> {
    let Some(json) = line.strip_prefix("qmp ") else {
        return Vec::new();
    };
    let Ok(cmd) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let Some(args) = cmd["arguments"].as_object() else {
        return Vec::new();
    };
    args.keys()
        .filter(|k| !REQUIRED_MEMBERS.contains(&k.as_str()))
        .map(|k| {
            let mut c = cmd.clone();
            c["arguments"].as_object_mut().expect("an object").remove(k);
            format!("qmp {c}")
        })
        .collect()
}

/// Chain cut in a header: step `i`, an image created with a backing file, is created without
/// one, and the declarations of the data in the layers below go with it.
pub(super) fn cut_header_backing(cur: &Split, i: usize) -> Option<Split> {
    let words: Vec<&str> = cur.steps[i][0].split_whitespace().collect();
    if !words.starts_with(&["image", "create"]) {
        return None;
    }
    let below = words.iter().find_map(|w| w.strip_prefix("backing_file="))?;
    let gone = owned(fills_from(&images(cur), below));
    let kept: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| !w.starts_with("backing_file=") && !w.starts_with("backing_fmt="))
        .collect();
    let mut t = cur.clone();
    t.steps[i][0] = kept.join(" ");
    drop_declarations(&mut t, &gone);
    Some(t)
}

/// Step `i`, a `blockdev-mirror` to a node that a plain `image create` (no backing file, no
/// content; its format options give way to the defaults) and `blockdev-add` made just for it,
/// becomes the one `drive-mirror` that creates a like target itself: three steps in one.
pub(super) fn mirror_creates_target(cur: &Split, i: usize) -> Option<Split> {
    let qmp = |st: &Vec<String>| -> Option<Value> {
        serde_json::from_str(st.join(" ").strip_prefix("qmp ")?).ok()
    };
    let mut cmd = qmp(&cur.steps[i])?;
    if cmd["execute"] != "blockdev-mirror" {
        return None;
    }
    let target = cmd["arguments"]["target"].as_str()?.to_string();
    let add = cur.steps.iter().position(|st| {
        qmp(st).is_some_and(|c| {
            c["execute"] == "blockdev-add" && c["arguments"]["node-name"] == target.as_str()
        })
    })?;
    let node = qmp(&cur.steps[add])?["arguments"].clone();
    let file = node["file"].as_object()?;
    let path = file.get("filename")?.as_str()?;
    let plain_node = node
        .as_object()?
        .keys()
        .all(|k| matches!(k.as_str(), "node-name" | "driver" | "file" | "backing"))
        && node.get("backing").is_none_or(Value::is_null)
        && file.get("driver")? == "file"
        && file
            .keys()
            .all(|k| matches!(k.as_str(), "driver" | "filename"));
    let create = cur.steps.iter().position(|st| {
        let w: Vec<&str> = st[0].split_whitespace().collect();
        w.len() >= 5
            && w[..3] == ["image", "create", path]
            && !w
                .iter()
                .any(|a| a.starts_with("backing_file=") || a.starts_with("fill="))
    })?;
    if !plain_node || create > add || add > i {
        return None;
    }
    let args = cmd["arguments"].as_object_mut()?;
    args.insert("target".into(), Value::from(path));
    args.insert("format".into(), node["driver"].clone());
    cmd["execute"] = Value::from("drive-mirror");
    let mut t = cur.clone();
    t.steps[i] = vec![format!("qmp {cmd}")];
    t.steps.remove(add);
    t.steps.remove(create);
    Some(t)
}

/// The names a scenario gives to things: workloads, jobs, nodes, image files, breakpoints.
pub(super) fn entities(cur: &Split) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for st in &cur.steps {
        let line = &st[0];
        let w: Vec<&str> = line.split_whitespace().collect();
        let name = match w.as_slice() {
            ["workload", "start", name, ..] | ["image", "create", name, ..] => {
                Some(name.to_string())
            }
            _ if line.starts_with("qmp ") => quoted_after(line, "\"job-id\":")
                .or_else(|| quoted_after(line, "\"node-name\":"))
                .map(str::to_string),
            _ => None,
        };
        if let Some(n) = name
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

/// Whether `line` names `name` as a whole word, a `key=name` value or a JSON string.
fn mentions(line: &str, name: &str) -> bool {
    line.split(|c: char| c.is_whitespace() || matches!(c, '"' | '=' | ',' | ':' | '{' | '}'))
        .any(|w| w == name)
}

/// Every step that names `name` dropped at once (a workload's start and stop, a job's start,
/// verbs and events, a target's creation, node and mirror), with the declarations of what an
/// image of that name held.
pub(super) fn drop_entity(cur: &Split, name: &str) -> Split {
    let gone = owned(
        images(cur)
            .into_iter()
            .filter(|i| i.path == name)
            .flat_map(|i| i.fills)
            .collect(),
    );
    let mut t = cur.clone();
    t.steps.retain(|st| !st.iter().any(|l| mentions(l, name)));
    drop_declarations(&mut t, &gone);
    t
}

/// Chain cut in the graph: step `i`, a `blockdev-add` naming its backing node, adds the node
/// with `"backing":null` instead, and the `model ... fill` declarations of the devices on that
/// node go with it (what they declared lived in the layers now cut off). With the layers below
/// cut off, chunk dropping can then remove their steps.
pub(super) fn cut_graph_backing(cur: &Split, i: usize) -> Option<Split> {
    let line = &cur.steps[i][0];
    if cur.steps[i].len() != 1 || !line.starts_with("qmp ") {
        return None;
    }
    let value = line.find("\"backing\":\"")? + "\"backing\":".len();
    let len = line[value + 1..].find('"')?;
    let node = quoted_after(line, "\"node-name\":")?;
    let devices: Vec<&str> = cur
        .steps
        .iter()
        .filter_map(
            |st| match st[0].split_whitespace().collect::<Vec<_>>()[..] {
                ["device", "add", dev, on, ..] if on == format!("node={node}") => Some(dev),
                _ => None,
            },
        )
        .collect();
    let mut t = cur.clone();
    t.steps[i][0] = format!("{}null{}", &line[..value], &line[value + len + 2..]);
    t.steps.retain(|st| {
        !matches!(st[0].split_whitespace().collect::<Vec<_>>()[..],
            ["model", dev, "fill", ..] if devices.contains(&dev))
    });
    Some(t)
}

/// The JSON string that follows `key` in `line`.
fn quoted_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len() + 1;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn variants_halve_and_drop() {
        let v = variants("workload start w device=d count=40 think=1ms");
        assert!(v.contains(&"workload start w device=d count=20 think=1ms".to_string()));
        assert!(v.contains(&"workload start w device=d count=40".to_string()));
        assert_eq!(variants("advance 9ms"), vec!["advance 4ms".to_string()]);
    }

    #[test]
    fn variants_cut_backing_chains() {
        let s = Split::parse(
            "# p\nimage create l0.img raw 4M fill=0x10:0:512\n\
             image create top.qcow2 qcow2 4M backing_file=l0.img backing_fmt=raw fill=0x11:0:512\n\
             model d0 fill 0x10 0 512\nmodel d0 fill 0x11 0 512\n",
        );
        let t = cut_header_backing(&s, 1).unwrap();
        assert_eq!(
            t.steps[1][0],
            "image create top.qcow2 qcow2 4M fill=0x11:0:512"
        );
        assert_eq!(t.steps.len(), 3, "the declaration of l0's data goes");
        let add =
            r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top","backing":"l1"}}"#;
        let cut =
            r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top","backing":null}}"#;
        let s = Split::parse(&format!(
            "# p\n{add}\ndevice add d0 node=top\nmodel d0 fill 0x11 0 4096\nmodel d9 fill 1 0 512\nverify d0\n"
        ));
        let t = cut_graph_backing(&s, 0).unwrap();
        assert_eq!(t.steps[0][0], cut);
        assert_eq!(t.steps.len(), 4, "d0's declaration goes, d9's stays");
        assert!(cut_graph_backing(&t, 0).is_none());
        let from_header = r#"qmp {"execute":"blockdev-add","arguments":{"node-name":"top"}}"#;
        assert_eq!(variants(add), vec![from_header.to_string()]);
        assert!(variants(cut).is_empty());
    }

    #[test]
    fn an_entity_goes_with_every_step_that_names_it() {
        let s = Split::parse(
            "# p\nworkload start w1 device=d\nworkload start w10 device=d\nworkload stop w1\n\
             qmp {\"execute\":\"blockdev-mirror\",\"arguments\":{\"job-id\":\"j1\"}}\n\
             wait event BLOCK_JOB_READY device=j1\n",
        );
        assert_eq!(entities(&s), ["w1", "w10", "j1"]);
        assert_eq!(drop_entity(&s, "w1").steps.len(), 3, "w10 stays");
        assert_eq!(drop_entity(&s, "j1").steps.len(), 3);
    }

    #[test]
    fn a_mirror_to_a_plain_new_image_becomes_drive_mirror() {
        let s = Split::parse(
            "# p\nimage create t.img raw 4M\n\
             qmp {\"execute\":\"blockdev-add\",\"arguments\":{\"node-name\":\"t\",\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"t.img\"}}}\n\
             qmp {\"execute\":\"blockdev-mirror\",\"arguments\":{\"job-id\":\"j\",\"device\":\"d\",\"target\":\"t\",\"sync\":\"full\"}}\n",
        );
        let t = mirror_creates_target(&s, 2).unwrap();
        assert_eq!(t.steps.len(), 1);
        let cmd: Value = serde_json::from_str(&t.steps[0][0][4..]).unwrap();
        assert_eq!(cmd["execute"], "drive-mirror");
        assert_eq!(cmd["arguments"]["target"], "t.img");
        assert_eq!(cmd["arguments"]["format"], "raw");
        assert_eq!(cmd["arguments"]["job-id"], "j");
    }

    #[test]
    fn optional_qmp_members_are_dropped_one_at_a_time() {
        let line = r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","speed":5,"copy-mode":"write-blocking"}}"#;
        assert_eq!(
            without_optional_members(line),
            [
                r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","copy-mode":"write-blocking"}}"#,
                r#"qmp {"execute":"drive-mirror","arguments":{"job-id":"j","device":"d","speed":5}}"#,
            ]
        );
        assert!(without_optional_members("verify d").is_empty());
    }
}
