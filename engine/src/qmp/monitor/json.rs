//! The JSON dialect of a QMP monitor: QEMU's parser accepts single-quoted strings (and `\'`)
//! besides standard JSON, and its writer puts a space after `:` and `,` and escapes every
//! non-ASCII character. Parse errors carry QEMU's words ("JSON parse error, ...").
//!
//! Input here is one complete message cut out of the byte stream by `stream`.

use serde_json::{Map, Number, Value};

/// Deepest nesting accepted (QEMU's limit), so hostile input cannot exhaust the stack.
pub const MAX_NESTING: usize = 1024;

/// Parse one message. The error is the text of a QMP `GenericError`.
pub fn parse(text: &[u8]) -> Result<Value, String> {
    let mut p = Parser { s: text, pos: 0 };
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(perr("expecting end of input"));
    }
    Ok(v)
}

fn perr(what: &str) -> String {
    format!("JSON parse error, {what}")
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t' | b'\r' | b'\n') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_NESTING {
            return Err(perr("nesting too deep"));
        }
        match self.peek() {
            None => Err(perr("expecting value")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                self.string(q).map(Value::String)
            }
            Some(_) => self.bare(),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, String> {
        self.pos += 1;
        let mut map = Map::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            let key = match self.peek() {
                Some(q @ (b'"' | b'\'')) => {
                    self.pos += 1;
                    self.string(q)?
                }
                _ => {
                    // A bare word is reported as the lexer sees it first: a bad keyword.
                    self.bare()?;
                    return Err(perr("key is not a string in object"));
                }
            };
            if self.peek() != Some(b':') {
                return Err(perr("missing : in object pair"));
            }
            self.pos += 1;
            let v = self.value(depth + 1)?;
            map.insert(key, v);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(perr("expected separator in dict")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, String> {
        self.pos += 1;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(perr("expected separator in list")),
            }
        }
    }

    /// The rest of a string opened by `quote` (already consumed).
    fn string(&mut self, quote: u8) -> Result<String, String> {
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err(perr("missing end of string"));
            };
            self.pos += 1;
            match c {
                c if c == quote => break,
                b'\\' => self.escape(&mut out)?,
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| perr("invalid UTF-8 sequence in string"))
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let Some(&c) = self.s.get(self.pos) else {
            return Err(perr("missing end of string"));
        };
        self.pos += 1;
        let simple = match c {
            b'"' | b'\'' | b'\\' | b'/' => c,
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let ch = self.unicode_escape()?;
                let mut b = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                return Ok(());
            }
            _ => return Err(perr("invalid escape sequence in string")),
        };
        out.push(simple);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| perr("invalid hex escape sequence in string"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&hi) {
            if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(perr("missing second half of surrogate pair"));
            }
            self.pos += 2;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Err(perr("invalid second half of surrogate pair"));
            }
            0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| perr("invalid \\u escape (unpaired surrogate)"))
    }

    /// A keyword or a number.
    fn bare(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            self.pos += 1;
        }
        let word = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        match word.as_str() {
            "" => Err(perr("expecting value")),
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            w => number(w).ok_or_else(|| perr(&format!("invalid keyword '{w}'"))),
        }
    }
}

/// A JSON number (integers stay integers while they fit).
fn number(w: &str) -> Option<Value> {
    let first = w.as_bytes()[0];
    if !(first.is_ascii_digit() || first == b'-') {
        return None;
    }
    if let Ok(i) = w.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    if let Ok(u) = w.parse::<u64>() {
        return Some(Value::Number(u.into()));
    }
    w.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .and_then(Number::from_f64)
        .map(Value::Number)
}

/// `v` as a QMP monitor writes it: `{"a": 1, "b": [1, 2]}`, non-ASCII escaped.
pub fn to_wire(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
