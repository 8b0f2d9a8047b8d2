//! The scenario parser's lexical helpers: words with their columns, words as `key=value`
//! arguments, character columns to byte offsets, where a JSON text spanning lines ends, and the
//! check that an event step names a real event and its fields.

use super::syntax::{Arg, Cursor, ParseError};

/// Split a line into whitespace-separated words with their 1-based columns; `"..."` quotes.
pub(super) fn words(line: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut word = String::new();
        if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                word.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                word.push(chars[i]);
                i += 1;
            }
        }
        out.push((start + 1, word));
    }
    out
}

/// Byte index in `line` of the 1-based character column `col` (columns count characters, so
/// that messages point at the right place; slicing needs bytes).
pub(super) fn byte_at(line: &str, col: usize) -> usize {
    line.char_indices()
        .nth(col.saturating_sub(1))
        .map_or(line.len(), |(b, _)| b)
}

/// An event step names an event the engine emits and only keys its data has (plus the step's
/// own `extra` keys): a misspelt key would otherwise never match and the run would wait forever.
pub(super) fn check_event_keys(
    cur: &Cursor,
    (name, name_col): (&str, usize),
    fields: &[Arg],
    extra: &[&str],
    indent: usize,
) -> Result<(), ParseError> {
    let Some(keys) = engine::event::event_fields(name) else {
        let known: Vec<&str> = engine::event::EVENT_FIELDS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        return Err(cur.err(
            name_col,
            format!("unknown event '{name}' (events: {})", known.join(", ")),
        ));
    };
    for f in fields {
        if !keys.contains(&f.key.as_str()) && !extra.contains(&f.key.as_str()) {
            let has = if keys.is_empty() {
                "no fields".to_string()
            } else {
                keys.join(", ")
            };
            return Err(cur.err(
                f.column + indent,
                format!("event {name} has no field '{}' (its fields: {has})", f.key),
            ));
        }
    }
    Ok(())
}

/// `key=value` words (and bare words) as arguments, with their columns.
pub(super) fn args_of(ws: &[(usize, String)]) -> Vec<Arg> {
    ws.iter()
        .map(|(col, w)| match w.split_once('=') {
            Some((k, v)) => Arg {
                key: k.to_string(),
                value: Some(v.to_string()),
                column: *col,
            },
            None => Arg {
                key: w.clone(),
                value: None,
                column: *col,
            },
        })
        .collect()
}

/// True when the brackets of a JSON text are balanced (outside strings).
pub(super) fn json_complete(text: &str) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0i64, false, false);
    for c in text.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0
}
