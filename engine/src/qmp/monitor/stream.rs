//! Cutting a QMP byte stream into messages, as QEMU's JSON streamer does: a message ends where
//! its top-level value ends (a closing brace back at depth 0, or a string, number or keyword at
//! depth 0 once the next byte delimits it), however the bytes were split into reads. Garbage
//! gives an error message and the stream goes on with the next byte, so a client that sent
//! junk can still be answered.

use serde_json::Value;

use super::json::{self, MAX_NESTING};

/// Longest message accepted (QEMU's token size limit): a larger one is an error and is dropped.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Where the lexer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Between,
    /// Inside a string opened by this quote; `escaped` after a backslash.
    InString { quote: u8, escaped: bool },
    /// Inside a keyword or number.
    InBare,
}

/// The stream's parser state.
pub struct JsonStream {
    /// The bytes of the message being collected.
    text: Vec<u8>,
    /// Open braces and brackets.
    depth: usize,
    state: State,
}

impl Default for JsonStream {
    fn default() -> Self {
        JsonStream::new()
    }
}

fn is_bare(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')
}

impl JsonStream {
    /// An empty stream.
    pub fn new() -> JsonStream {
        JsonStream {
            text: Vec::new(),
            depth: 0,
            state: State::Between,
        }
    }

    /// Feed `bytes`; every message completed by them, in order: a value, or the text of a
    /// parse error.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Value, String>> {
        let mut out = Vec::new();
        for &c in bytes {
            self.byte(c, &mut out);
        }
        out
    }

    fn byte(&mut self, c: u8, out: &mut Vec<Result<Value, String>>) {
        match self.state {
            State::InString { quote, escaped } => {
                self.text.push(c);
                self.state = if escaped {
                    State::InString {
                        quote,
                        escaped: false,
                    }
                } else if c == b'\\' {
                    State::InString {
                        quote,
                        escaped: true,
                    }
                } else if c == quote {
                    State::Between
                } else {
                    self.state
                };
                if self.state == State::Between && self.depth == 0 {
                    self.emit(out);
                }
            }
            State::InBare if is_bare(c) => self.text.push(c),
            State::InBare => {
                self.state = State::Between;
                if self.depth == 0 {
                    self.emit(out);
                }
                self.between(c, out);
            }
            State::Between => self.between(c, out),
        }
        if self.text.len() > MAX_MESSAGE {
            self.reset();
            out.push(Err("JSON token size limit exceeded".into()));
        }
    }

    fn between(&mut self, c: u8, out: &mut Vec<Result<Value, String>>) {
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                if self.depth > 0 {
                    self.text.push(c);
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.text.push(c);
                if self.depth > MAX_NESTING {
                    self.reset();
                    out.push(Err("JSON nesting depth limit exceeded".into()));
                }
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    self.reset();
                    out.push(Err("JSON parse error, expecting value".into()));
                    return;
                }
                self.depth -= 1;
                self.text.push(c);
                if self.depth == 0 {
                    self.emit(out);
                }
            }
            b'"' | b'\'' => {
                self.text.push(c);
                self.state = State::InString {
                    quote: c,
                    escaped: false,
                };
            }
            b':' | b',' if self.depth > 0 => self.text.push(c),
            c if is_bare(c) => {
                self.text.push(c);
                self.state = State::InBare;
            }
            c => {
                self.reset();
                let shown = if c.is_ascii_graphic() {
                    (c as char).to_string()
                } else {
                    String::new()
                };
                out.push(Err(format!("JSON parse error, stray '{shown}'")));
            }
        }
    }

    /// The collected text is a whole message: parse it.
    fn emit(&mut self, out: &mut Vec<Result<Value, String>>) {
        let text = std::mem::take(&mut self.text);
        self.reset();
        out.push(json::parse(&text));
    }

    fn reset(&mut self) {
        self.text.clear();
        self.depth = 0;
        self.state = State::Between;
    }
}
