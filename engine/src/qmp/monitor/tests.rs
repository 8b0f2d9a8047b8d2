//! The stream cutter and the JSON dialect: messages split anywhere, concatenated, garbage,
//! QEMU's quoting and output format.

use serde_json::json;

use super::json::{parse, to_wire};
use super::stream::JsonStream;

fn feed_all(chunks: &[&[u8]]) -> Vec<Result<serde_json::Value, String>> {
    let mut s = JsonStream::new();
    chunks.iter().flat_map(|c| s.feed(c)).collect()
}

#[test]
fn a_message_split_at_every_byte_is_one_message() {
    let text = br#" {"execute": "x", "arguments": {"a": ["}", "\"{", 'q\'s']}, "id": -1.5e3}"#;
    let whole = feed_all(&[text]);
    assert_eq!(whole.len(), 1);
    let bytes: Vec<&[u8]> = text.chunks(1).collect();
    assert_eq!(feed_all(&bytes), whole);
    assert_eq!(
        whole[0].as_ref().unwrap(),
        &json!({"execute": "x", "arguments": {"a": ["}", "\"{", "q's"]}, "id": -1500.0})
    );
}

#[test]
fn concatenated_messages_and_garbage_as_qemu() {
    let out = feed_all(&[b"{}{\"a\":1}garbage [1]} 1", b"\"s\"\x00"]);
    let errs: Vec<String> = out
        .iter()
        .map(|r| match r {
            Ok(v) => to_wire(v),
            Err(e) => format!("ERR {e}"),
        })
        .collect();
    assert_eq!(
        errs,
        [
            "{}",
            "{\"a\": 1}",
            "ERR JSON parse error, invalid keyword 'garbage'",
            "[1]",
            "ERR JSON parse error, expecting value",
            "1",
            "\"s\"",
            "ERR JSON parse error, stray ''",
        ]
    );
}

#[test]
fn hostile_nesting_is_an_error_not_a_crash() {
    let deep = vec![b'['; 100_000];
    // One error per 1025 brackets: the cutter resets and goes on with the next byte.
    let out = feed_all(&[&deep]);
    assert_eq!(out.len(), 100_000 / 1025);
    assert!(
        out.iter()
            .all(|r| r == &Err("JSON nesting depth limit exceeded".to_string()))
    );
    assert!(parse(b"{\"a\" 1}").is_err());
    assert!(parse(b"\"\\ud800\"").is_err());
}

#[test]
fn output_is_qemus_format() {
    let v = json!({"return": {"a": [1, 2], "s": "é\n\"x\""}, "id": null});
    assert_eq!(
        to_wire(&v),
        r#"{"return": {"a": [1, 2], "s": "\u00E9\n\"x\""}, "id": null}"#
    );
    assert_eq!(parse(to_wire(&v).as_bytes()).unwrap(), v);
}
