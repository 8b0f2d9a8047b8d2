#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made by the project itself at run time (nothing binary is
# checked in): small qcow2 images written by blk and, when installed, by qemu-img/qemu-io
# (v2/v3, several cluster sizes and refcount widths, data, zero and compressed clusters, an
# internal snapshot, a persistent bitmap, a backing file), their first 4 KiB for the header
# target, the shipped scenario files, qemu-io lines and QMP commands. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
c=corpus
mkdir -p $c/qcow2_header $c/qcow2_image $c/scenario_parse $c/qemu_io_parse $c/qmp_dispatch $c/nbd_server \
    $c/qcow2_structured $c/qcow2_io
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# blk's own images (the debug build of the CLI that `cargo test` already made).
blk=(cargo run -q --manifest-path "$root/Cargo.toml" --)
"${blk[@]}" create -f qcow2 -o cluster_size=512 "$work/blk-512.qcow2" 256k >/dev/null
"${blk[@]}" io -f qcow2 -c 'write -P 0x11 0 4k' -c 'write -z 8k 1k' -c 'write -P 0x22 100k 512' \
    "$work/blk-512.qcow2" >/dev/null
"${blk[@]}" create -f qcow2 -o cluster_size=4k,refcount_bits=1 "$work/blk-4k-rc1.qcow2" 1M >/dev/null
"${blk[@]}" io -f qcow2 -c 'write -P 0x33 0 12k' -c 'write -P 0x44 64k 4k' \
    "$work/blk-4k-rc1.qcow2" >/dev/null
"${blk[@]}" create -f qcow2 -o compat=0.10,cluster_size=1k "$work/blk-v2.qcow2" 128k >/dev/null
# Persistent bitmaps written by blk (directory, tables; one with data clusters after a merge).
"${blk[@]}" create -f qcow2 -o cluster_size=4k "$work/blk-bitmaps.qcow2" 1M >/dev/null
"${blk[@]}" bitmap --add "$work/blk-bitmaps.qcow2" b0
"${blk[@]}" bitmap --add -g 512 --disable "$work/blk-bitmaps.qcow2" b1

if command -v qemu-img >/dev/null && command -v qemu-io >/dev/null; then
    q() { qemu-img "$@" >/dev/null; }
    q create -f qcow2 -o cluster_size=512 "$work/q-512.qcow2" 256k
    qemu-io -f qcow2 -c 'write -P 1 0 2k' -c 'write -z 4k 512' -c 'write -c -P 2 64k 512' \
        "$work/q-512.qcow2" >/dev/null
    q snapshot -c snap1 "$work/q-512.qcow2"
    qemu-io -f qcow2 -c 'write -P 3 0 512' "$work/q-512.qcow2" >/dev/null
    q create -f qcow2 -o cluster_size=4k,refcount_bits=8 "$work/q-bitmap.qcow2" 1M
    qemu-io -f qcow2 -c 'write -P 4 8k 4k' "$work/q-bitmap.qcow2" >/dev/null
    q bitmap --add "$work/q-bitmap.qcow2" b0
    # qemu-io's writes mark the enabled bitmap: its table points at a data cluster.
    qemu-io -f qcow2 -c 'write -P 5 64k 8k' "$work/q-bitmap.qcow2" >/dev/null
    q create -f qcow2 -o compat=0.10,cluster_size=2k "$work/q-v2.qcow2" 64k
    printf 'base' >"$work/base.raw"
    q create -f qcow2 -o cluster_size=1k -b base.raw -F raw "$work/q-backing.qcow2" 64k
    q create -f qcow2 -o cluster_size=4k,lazy_refcounts=on "$work/q-lazy.qcow2" 64k
    # Encrypted: qcow2 with the LUKS extension, and a LUKS volume's header for the header
    # target's LUKS path.
    sec=(--object secret,id=s0,data=fuzz)
    q create -f qcow2 "${sec[@]}" -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=1 \
        "$work/q-luks.qcow2" 64k
    q create -f luks "${sec[@]}" -o key-secret=s0,iter-time=1 "$work/luks.img" 64k
    head -c 4096 "$work/luks.img" >"$c/qcow2_header/luks-header"
fi

for f in "$work"/*.qcow2; do
    n=$(basename "$f" .qcow2)
    cp "$f" "$c/qcow2_image/$n"
    head -c 4096 "$f" >"$c/qcow2_header/$n"
done
cp "$root"/scenarios/*.scn $c/scenario_parse/
grep -ho "^ *io?\? [^ ]* .*" "$root"/scenarios/*.scn | sed 's/^ *io?\? [^ ]* //' |
    sort -u | split -l 8 - $c/qemu_io_parse/scn-
cat >$c/qmp_dispatch/basic <<'JSON'
{"execute":"qmp_capabilities"}
{"execute":"blockdev-add","arguments":{"driver":"qcow2","node-name":"q","file":{"driver":"file","filename":"img.qcow2"}}}
{"execute":"query-named-block-nodes","arguments":{"flat":true}}
{"execute":"block_resize","arguments":{"node-name":"q","size":2097152}}
{"execute":"block-set-write-threshold","arguments":{"node-name":"q","write-threshold":65536}}
{"execute":"blockdev-del","arguments":{"node-name":"q"}}
JSON
cat >$c/qmp_dispatch/nodes <<'JSON'
{"execute":"blockdev-add","arguments":{"driver":"raw","node-name":"r","file":{"driver":"file","filename":"raw.img"}}}
{"execute":"blockdev-add","arguments":{"driver":"null-co","node-name":"n","size":1048576}}
{"execute":"blockdev-add","arguments":{"driver":"blkdebug","node-name":"b","image":"r"}}
{"execute":"x-debug-query-block-graph"}
{"execute":"query-block","id":7}
{"execute":"stop"}
{"execute":"cont"}
{"execute":"blockdev-del","arguments":{"node-name":"b"}}
JSON

# NBD client streams: flags, GO on "exp", a read, a 4-byte write, a flush, a disconnect; and
# one with structured replies and a meta context before GO, then block status.
opt='IHAVEOPT'
printf '\0\0\0\3%s\0\0\0\7\0\0\0\11\0\0\0\3exp\0\0' "$opt" >$c/nbd_server/go-read-write
printf '\x25\x60\x95\x13\0\0\0\0\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\0\0\0\2\0' >>$c/nbd_server/go-read-write
printf '\x25\x60\x95\x13\0\0\0\1\0\0\0\0\0\0\0\2\0\0\0\0\0\0\2\0\0\0\0\4abcd' >>$c/nbd_server/go-read-write
printf '\x25\x60\x95\x13\0\0\0\3\0\0\0\0\0\0\0\3\0\0\0\0\0\0\0\0\0\0\0\0' >>$c/nbd_server/go-read-write
printf '\x25\x60\x95\x13\0\0\0\2\0\0\0\0\0\0\0\4\0\0\0\0\0\0\0\0\0\0\0\0' >>$c/nbd_server/go-read-write
printf '\0\0\0\1%s\0\0\0\10\0\0\0\0' "$opt" >$c/nbd_server/meta-status
printf '%s\0\0\0\12\0\0\0\36\0\0\0\3exp\0\0\0\1\0\0\0\17base:allocation' "$opt" >>$c/nbd_server/meta-status
printf '%s\0\0\0\7\0\0\0\11\0\0\0\3exp\0\0' "$opt" >>$c/nbd_server/meta-status
printf '\x25\x60\x95\x13\0\0\0\7\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\0\0\1\0\0' >>$c/nbd_server/meta-status
