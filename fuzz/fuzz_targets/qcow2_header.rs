//! qcow2 header and header extensions: `Header::parse` of arbitrary bytes must return a value
//! or an error, never panic; a header it accepts serialises to one it accepts again with the
//! same fields. The bytes after the header's first 72 are also decoded as a snapshot table of
//! the header's entry count (strict and repair): never a panic, and a table that decodes
//! encodes to one that decodes to the same entries. The same bytes are also a LUKS1 header
//! (qcow2's `encrypt.format=luks` area, the `luks` driver's start): `LuksHeader::parse` never
//! panics, an accepted header serialises to itself, and its key slots are tried (material
//! from the input) when their PBKDF2 counts are small enough to fuzz.
#![no_main]

use engine::crypto::LuksHeader;
use engine::drivers::qcow2::{Header, ReadMode, TableError, decode_table, encode_table};
use libfuzzer_sys::fuzz_target;

/// Most PBKDF2 rounds a fuzzed key slot may ask for (hostile counts go up to 2^32).
const MAX_FUZZ_ITERS: u32 = 4;

/// The LUKS path: parse, round-trip, and unlock attempts on small iteration counts.
fn luks_header(data: &[u8]) {
    let Ok(h) = LuksHeader::parse(data) else {
        return;
    };
    let again = LuksHeader::parse(&h.to_bytes()).expect("a serialised LUKS header parses");
    assert_eq!(again.to_bytes(), h.to_bytes());
    if h.mk_iters > MAX_FUZZ_ITERS {
        return;
    }
    for (i, slot) in h.slots.iter().enumerate() {
        if !slot.active || slot.iterations > MAX_FUZZ_ITERS {
            continue;
        }
        let (off, len) = h.material_range(i);
        let mut material = vec![0u8; len];
        let start = (off as usize).min(data.len());
        let have = &data[start..(start + len).min(data.len())];
        material[..have.len()].copy_from_slice(have);
        let _ = h.try_slot(i, &material, b"fuzz");
    }
}

/// Decode `table` as `nb` snapshot entries; re-encode what decodes and decode it again.
fn snapshot_table(table: &[u8], nb: u32) {
    for mode in [ReadMode::Strict, ReadMode::Repair] {
        let Ok((entries, _)) = decode_table(table, nb, mode, &mut Vec::new()) else {
            continue;
        };
        let raw = encode_table(&entries, 0);
        match decode_table(&raw, nb, ReadMode::Strict, &mut Vec::new()) {
            Ok((again, len)) => {
                assert_eq!(len as usize, raw.len());
                for (a, b) in entries.iter().zip(&again) {
                    assert_eq!(
                        (&a.id, &a.name, a.l1_offset, a.l1_size),
                        (&b.id, &b.name, b.l1_offset, b.l1_size)
                    );
                    assert_eq!(
                        (a.vm_state_size, a.icount, &a.unknown_extra),
                        (b.vm_state_size, b.icount, &b.unknown_extra)
                    );
                }
            }
            // Only a table over QEMU's size limit may fail to decode again.
            Err(TableError::Invalid(e)) => assert!(e.to_string().contains("too big"), "{e}"),
            Err(TableError::Short(n)) => panic!("re-encoded table short by {n}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    luks_header(data);
    if data.len() >= 72 {
        let nb = u32::from_be_bytes(data[60..64].try_into().expect("4 bytes")).min(4096);
        snapshot_table(&data[72..], nb);
    }
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
    assert_eq!(
        (h.crypt_method, h.crypto_area),
        (h2.crypt_method, h2.crypto_area)
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
