//! qcow2 header and header extensions: `Header::parse` of arbitrary bytes must return a value
//! or an error, never panic; a header it accepts serialises to one it accepts again with the
//! same fields.
#![no_main]

use engine::drivers::qcow2::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Once against the real length (tables must lie inside), once against a large file.
    let _ = Header::parse(data, data.len() as u64);
    let Ok(h) = Header::parse(data, 1 << 40) else {
        return;
    };
    let cs = h.cluster_size() as usize;
    let mut again = h.serialize();
    if again.len() > cs {
        // Too many extensions for a small cluster: nothing to compare.
        return;
    }
    again.resize(cs, 0);
    let h2 = Header::parse(&again, 1 << 40)
        .unwrap_or_else(|e| panic!("serialised header does not parse again: {e}\n{h:?}"));
    assert_eq!(
        (h.version, h.cluster_bits, h.size, h.l1_size, h.l1_offset),
        (
            h2.version,
            h2.cluster_bits,
            h2.size,
            h2.l1_size,
            h2.l1_offset
        )
    );
    assert_eq!(
        (
            h.reftable_offset,
            h.reftable_clusters,
            h.nb_snapshots,
            h.snapshots_offset
        ),
        (
            h2.reftable_offset,
            h2.reftable_clusters,
            h2.nb_snapshots,
            h2.snapshots_offset
        )
    );
    assert_eq!(
        (&h.backing_file, &h.backing_fmt, &h.unknown_exts),
        (&h2.backing_file, &h2.backing_fmt, &h2.unknown_exts)
    );
    if h.version == 3 {
        assert_eq!(
            (
                h.incompat,
                h.compat,
                h.autoclear,
                h.refcount_order,
                h.compression_type
            ),
            (
                h2.incompat,
                h2.compat,
                h2.autoclear,
                h2.refcount_order,
                h2.compression_type
            )
        );
    }
});
