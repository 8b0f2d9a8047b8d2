//! What a batch exercised, read from the scenario texts and the traced transcripts: blkdebug
//! events, fault classes, job statuses, job verbs and QMP commands, error classes of replies.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::oracles::transcript_events;

/// Counts per category and name.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// category -> name -> count.
    pub counts: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

impl Coverage {
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
                let ops = w.find_map(|a| a.strip_prefix("ops=")).unwrap_or("all");
                self.bump("fault classes", &format!("{kind} {ops}"));
            }
        }
        for l in transcript.lines() {
            let body = l.split_once(' ').map_or(l, |(_, b)| b);
            if let Some(rest) = body.strip_prefix("trace ") {
                if let Some((_, ev)) = rest.split_once(' ') {
                    self.bump("blkdebug events", ev);
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
            s.push_str(&format!("{cat} ({} distinct)\n", names.len()));
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
