//! The structure of [`Error`]: kinds, option paths, locations, wrapping, and that the text a
//! user sees is composed from them.

use std::error::Error as _;

use super::*;

#[test]
fn io_error_from_a_node_carries_where_it_happened() {
    let e = Error::io(Errno::EIO)
        .at("disk0")
        .range(4096, 512)
        .during(Op::Write);
    assert_eq!(e.to_string(), "Input/output error");
    assert_eq!(e.node(), Some("disk0"));
    assert_eq!(e.offset_len(), Some((4096, 512)));
    assert_eq!(e.op(), Some(Op::Write));
    assert_eq!(
        e.kind(),
        Kind {
            class: ErrorClass::GenericError,
            errno: Some(Errno::EIO)
        }
    );
}

#[test]
fn locate_keeps_the_innermost_node() {
    let e = Error::io(Errno::ENOSPC)
        .locate("file0", Op::Write, 0, 65536)
        .locate("qcow0", Op::Write, 1 << 20, 4096);
    assert_eq!(e.node(), Some("file0"));
    assert_eq!(e.offset_len(), Some((0, 65536)));
    let wrapped = Error::io(Errno::EIO)
        .locate("file0", Op::Read, 512, 512)
        .context("Could not read");
    let e = wrapped.locate("top", Op::Read, 0, 4096);
    assert_eq!(e.node(), Some("file0"), "a wrapped error's node is found");
    assert_eq!(e.op(), Some(Op::Read));
}

#[test]
fn context_wraps_and_keeps_the_kind() {
    let inner = Error::io_msg(Errno::ENOENT, "No such file or directory");
    let e = inner.clone().context("Could not open 'x.img'");
    assert_eq!(
        e.to_string(),
        "Could not open 'x.img': No such file or directory"
    );
    assert_eq!(e.errno(), Some(Errno::ENOENT));
    assert_eq!(e.cause(), Some(&inner));
    let source = e.source().expect("a source");
    assert_eq!(source.to_string(), "No such file or directory");
    assert!(source.source().is_none());
    let twice = e.context("outer");
    assert_eq!(
        twice.to_string(),
        "outer: Could not open 'x.img': No such file or directory"
    );
    assert_eq!(
        twice.source().unwrap().source().unwrap().to_string(),
        inner.to_string()
    );
}

#[test]
fn option_errors_compose_their_path() {
    let e = Error::param_missing("filename");
    assert_eq!(e.to_string(), "Parameter 'filename' is missing");
    let e = e.under_option("file").under_option("image");
    assert_eq!(e.to_string(), "Parameter 'image.file.filename' is missing");
    assert_eq!(
        e.param_problem(),
        Some(("image.file.filename", &ParamProblem::Missing))
    );
    let e = Error::param("x", ParamProblem::Unexpected);
    assert_eq!(e.to_string(), "Parameter 'x' is unexpected");
    let e = Error::param_invalid("cache-size", "expects a size, got 'big'");
    assert_eq!(
        e.to_string(),
        "Parameter 'cache-size' expects a size, got 'big'"
    );
    assert_eq!(e.option_path(), Some("cache-size"));
}

#[test]
fn errors_without_an_option_ignore_under_option() {
    let e = Error::generic("Could not open 'x'").under_option("file");
    assert_eq!(e.to_string(), "Could not open 'x'");
    assert_eq!(e.option_path(), None);
    // A recorded option path does not change the text, but follows the nesting.
    let e = Error::generic("bad value")
        .option("cache-size")
        .under_option("file");
    assert_eq!(e.to_string(), "bad value");
    assert_eq!(e.option_path(), Some("file.cache-size"));
}

#[test]
fn host_offset_is_part_of_the_text() {
    let e = Error::io_msg(Errno::EIO, "qcow2: cannot decompress cluster").host_offset(0x50000);
    assert_eq!(
        e.to_string(),
        "qcow2: cannot decompress cluster (host offset 0x50000)"
    );
    assert_eq!(e.errno(), Some(Errno::EIO));
    let wrapped = e.context("read failed");
    assert_eq!(
        wrapped.to_string(),
        "read failed: qcow2: cannot decompress cluster (host offset 0x50000)"
    );
}

#[test]
fn classes_and_errnos() {
    assert_eq!(Error::not_found("x").class(), ErrorClass::DeviceNotFound);
    assert_eq!(Error::invalid("x").errno(), Some(Errno::EINVAL));
    assert_eq!(
        Error::io(Errno::ENOSPC).to_string(),
        "No space left on device"
    );
    assert_eq!(Error::param_missing("x").errno(), None);
    assert_eq!(Errno::from_code(Errno::ECANCELED.code()), Errno::ECANCELED);
    assert_eq!(Errno::from_code(4242), Errno::Other(4242));
    // An error stays one pointer wide, so every Result stays small.
    assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
}
