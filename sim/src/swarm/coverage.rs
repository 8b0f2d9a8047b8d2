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

    /// As JSON: {category: {name: count}}.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (cat, names) in &self.counts {
            m.insert(cat.to_string(), json!(names));
        }
        Value::Object(m)
    }
}
