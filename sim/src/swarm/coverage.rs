//! What a batch exercised, read from the scenario texts and the traced transcripts: blkdebug
//! events, fault classes (injected, by the fault table's names), job statuses, job verbs and
//! QMP commands, error classes of replies.
//!
//! Every blkdebug event the engine declares and every fault class of the table is listed from
//! the start with a count of 0, so what a batch never reached shows in the table and the JSON
//! ([`Coverage::gaps`]).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::oracles::transcript_events;

/// Counts per category and name.
#[derive(Clone, Debug)]
pub struct Coverage {
    /// category -> name -> count.
    pub counts: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

/// Category of the blkdebug events.
pub const BLKDEBUG_EVENTS: &str = "blkdebug events";
/// Category of the fault classes.
pub const FAULT_CLASSES: &str = "fault classes";

/// The categories [`Coverage::add`] fills.
const CATEGORIES: &[&str] = &[
    BLKDEBUG_EVENTS,
    FAULT_CLASSES,
    "fault ops",
    "qmp commands",
    "error classes",
    "events",
    "job states",
];

/// The static name of a category read from JSON (one leaked string per unknown category: a
/// merge meets a handful at most).
fn category_name(cat: &str) -> &'static str {
    CATEGORIES
        .iter()
        .find(|c| **c == cat)
        .copied()
        .unwrap_or_else(|| Box::leak(cat.to_string().into_boxed_str()))
}

impl Default for Coverage {
    fn default() -> Coverage {
        let mut c = Coverage {
            counts: BTreeMap::new(),
        };
        let events = engine::event::DebugEvent::ALL
            .iter()
            .filter(|e| **e != engine::event::DebugEvent::None)
            .map(|e| e.name().to_string());
        let faults = crate::fault::FAULT_KINDS.iter().map(|k| k.name.to_string());
        for (cat, names) in [
            (BLKDEBUG_EVENTS, events.collect::<Vec<_>>()),
            (FAULT_CLASSES, faults.collect()),
        ] {
            c.counts
                .insert(cat, names.into_iter().map(|n| (n, 0)).collect());
        }
        c
    }
}

impl Coverage {
    /// Names of `cat` never exercised.
    pub fn gaps(&self, cat: &str) -> Vec<String> {
        self.counts.get(cat).map_or(Vec::new(), |m| {
            m.iter()
                .filter(|(_, n)| **n == 0)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    fn bump(&mut self, cat: &'static str, name: &str) {
        *self
            .counts
            .entry(cat)
            .or_default()
            .entry(name.to_string())
            .or_default() += 1;
    }

    /// Fold one run: its scenario text and its (traced) transcript.
    pub fn add(&mut self, text: &str, transcript: &str) {
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("fault inject ") {
                let mut w = rest.split_whitespace().skip(1);
                let kind = w.next().unwrap_or("");
                self.bump(FAULT_CLASSES, kind);
                if let Some(ops) = w.find_map(|a| a.strip_prefix("ops=")) {
                    self.bump("fault ops", &format!("{kind} {ops}"));
                }
            }
        }
        for l in transcript.lines() {
            // Lines are `[   0.000050] what`: the text after the timestamp.
            let body = l.split_once("] ").map_or(l, |(_, b)| b);
            if let Some(rest) = body.strip_prefix("trace ") {
                if let Some((_, ev)) = rest.split_once(' ') {
                    self.bump(BLKDEBUG_EVENTS, ev);
                }
            } else if let Some(cmd) = body.strip_prefix("qmp ") {
                if let Ok(v) = serde_json::from_str::<Value>(cmd) {
                    self.bump("qmp commands", v["execute"].as_str().unwrap_or("?"));
                }
            } else if let Some(reply) = body.strip_prefix("<- ")
                && let Ok(v) = serde_json::from_str::<Value>(reply)
                && let Some(c) = v["error"]["class"].as_str()
            {
                self.bump("error classes", c);
            }
        }
        for (name, data) in transcript_events(transcript) {
            self.bump("events", &name);
            if name == "JOB_STATUS_CHANGE" {
                self.bump("job states", data["status"].as_str().unwrap_or("?"));
            }
        }
    }

    /// As a table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        for (cat, names) in &self.counts {
            let hit = names.values().filter(|n| **n > 0).count();
            s.push_str(&format!("{cat} ({hit} of {} hit)\n", names.len()));
            for (n, c) in names {
                s.push_str(&format!("  {n:<40} {c:>8}\n"));
            }
        }
        s
    }

    /// Sum `other` into this one (shards of a batch).
    pub fn merge(&mut self, other: &Coverage) {
        for (cat, names) in &other.counts {
            let mine = self.counts.entry(cat).or_default();
            for (n, c) in names {
                *mine.entry(n.clone()).or_default() += c;
            }
        }
    }

    /// Read back what [`Coverage::to_json`] wrote. Categories this build does not know are
    /// kept under their own names; a malformed document is an error naming what is wrong.
    pub fn from_json(v: &Value) -> Result<Coverage, String> {
        let mut c = Coverage::default();
        let cats = v
            .as_object()
            .ok_or("coverage JSON must be an object of categories")?;
        for (cat, names) in cats {
            let names = names.as_object().ok_or(format!(
                "coverage category '{cat}' must be an object of counts"
            ))?;
            let key = category_name(cat);
            let mine = c.counts.entry(key).or_default();
            for (n, count) in names {
                let count = count.as_u64().ok_or(format!(
                    "coverage count of '{cat}' / '{n}' must be a whole number"
                ))?;
                *mine.entry(n.clone()).or_default() += count;
            }
        }
        Ok(c)
    }

    /// As JSON: {category: {name: count}}.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (cat, names) in &self.counts {
            m.insert(cat.to_string(), json!(names));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_by_summing_counts() {
        let mut a = Coverage::default();
        a.add("fault inject f1 eio path=x ops=write once\n", "");
        let mut b = Coverage::from_json(&a.to_json()).unwrap();
        b.merge(&a);
        assert_eq!(b.counts[FAULT_CLASSES]["eio"], 2);
        assert_eq!(b.counts["fault ops"]["eio write"], 2);
        assert_eq!(b.gaps(FAULT_CLASSES).len(), a.gaps(FAULT_CLASSES).len());
    }

    #[test]
    fn malformed_coverage_json_names_what_is_wrong() {
        let e = Coverage::from_json(&json!({"fault classes": {"eio": "x"}})).unwrap_err();
        assert!(e.contains("'fault classes' / 'eio'"), "{e}");
        assert!(Coverage::from_json(&json!([1])).is_err());
    }
}
