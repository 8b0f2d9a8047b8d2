#!/usr/bin/env bash
# blk beside QEMU's own tools, case by case (issue #17's table): the same data, the same
# command line for both (blk's subcommands take qemu-img's and qemu-io's), run interleaved
# A B A B so that a loaded machine disturbs both alike, and the table of blk/QEMU ratios:
# the median of the per-pair ratios of wall time (< 1: blk is faster), and of peak RSS where
# the case asks for it. Wall time comes from bash's EPOCHREALTIME, peak RSS from /usr/bin/time.
#
#   benches/vs-qemu.sh [--quick] [--pairs N] [--no-backup] [--keep]
#
# --quick: 64 MiB images and a tenth of the requests (a smoke run of a few minutes);
# --pairs N: N blk/QEMU pairs per case (default 5); --no-backup: skip the backup case (it runs
# `cargo bench --bench backup`, whose own A/B pass times qemu-storage-daemon over QMP);
# --keep: leave the scratch directory. BLK=path picks the blk binary (default: a release
# build in $CARGO_TARGET_DIR or target/, built first). Needs qemu-img, qemu-io,
# qemu-storage-daemon (Debian's qemu-utils, qemu-system-common) and /usr/bin/time (time).
set -euo pipefail

quick=0 pairs=5 backup=1 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --pairs) pairs=$2; shift ;;
    --no-backup) backup=0 ;;
    --keep) keep=1 ;;
    *) echo "usage: $0 [--quick] [--pairs N] [--no-backup] [--keep]" >&2; exit 2 ;;
    esac
    shift
done

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BLK:-}" ]; then
    (cd "$repo" && cargo build --release --quiet --bin blk)
    BLK=${CARGO_TARGET_DIR:-$repo/target}/release/blk
fi
for tool in qemu-img qemu-io /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is not installed" >&2; exit 1; }
done

# Sizes: issue #17's (512 MiB images), or a tenth for --quick.
if [ $quick = 1 ]; then
    mib=64 n4k=2000 n64k=500 nrand=2000 nbench=20000
else
    mib=512 n4k=20000 n64k=4000 nrand=20000 nbench=200000
fi
size=$((mib << 20))

W=$(mktemp -d "${TMPDIR:-/var/tmp}/blk-vs-qemu.XXXXXX")
[ $keep = 1 ] || trap 'rm -rf "$W"' EXIT
cd "$W"

# ---- the data, built once ----
echo "building the data in $W ($mib MiB images)..." >&2
qemu-img create -q -f raw data.raw "$size"
# Three MiB of every four hold data (a pattern byte per run), the fourth is a hole.
awk -v n=$((mib / 4)) 'BEGIN { for (i = 0; i < n; i++) printf "write -P %d %d 3M\n", i % 255 + 1, i * 4194304 }' \
    | qemu-io -f raw data.raw >/dev/null
qemu-img convert -f raw -O qcow2 data.raw data.qcow2
# A 4k-cluster image with every other cluster allocated, written backwards so that no two
# neighbours are contiguous on the host: one map entry per cluster, data and zero.
qemu-img create -q -f qcow2 -o cluster_size=4096 map4k.qcow2 "$size"
awk -v n=$((size / 8192)) 'BEGIN { for (i = n - 1; i >= 0; i--) printf "write -P 51 %d 4k\n", i * 8192 }' \
    | qemu-io -f qcow2 map4k.qcow2 >/dev/null
# Preallocated qcow2 for overwrites.
qemu-img create -q -f qcow2 -o preallocation=falloc ow.qcow2 "$size"
# qemu-io scripts: allocating 4 KiB writes spread over the image (about 2.5 per 64 KiB
# cluster, so most allocate), allocating 64 KiB writes a cluster apart, 1 MiB sequential reads,
# 4 KiB reads at offsets from a fixed linear congruential sequence.
awk -v n=$n4k -v s=$size 'BEGIN { st = int(s / 4096 / n) * 4096; for (i = 0; i < n; i++) printf "write -P 171 %d 4k\n", i * st }' >w4k.script
awk -v n=$n64k -v s=$size 'BEGIN { st = int(s / 65536 / n) * 65536; if (st < 131072) st = 131072; for (i = 0; i < n; i++) printf "write -P 205 %d 64k\n", (i * st) % s }' >w64k.script
awk -v n=$mib 'BEGIN { for (i = 0; i < n; i++) printf "read %d 1M\n", i * 1048576 }' >seqread.script
awk -v n=$nrand -v s=$((size / 4096)) 'BEGIN { x = 12345; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "read %d 4k\n", (x % s) * 4096 } }' >randread.script

# ---- measuring ----
# One run of `sh -c "exec CMD"` in $W: prints "wall_seconds peak_rss_kib".
measure() {
    local t0 t1
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -f %M -o rss.txt sh -c "exec $1" >/dev/null 2>err.txt; then
        echo "$0: failed: $1" >&2
        cat err.txt >&2
        exit 1
    fi
    t1=$EPOCHREALTIME
    echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }') $(tail -n 1 rss.txt)"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

rows=()
# case LABEL RSS(0|1) PREP BLK_CMD QEMU_CMD: PREP (untimed) runs before every measurement.
case_() {
    local label=$1 rss=$2 prep=$3 bcmd=$4 qcmd=$5 i b q
    echo "  $label" >&2
    : >pairs.txt
    for ((i = 0; i < pairs; i++)); do
        sh -c "$prep"
        b=$(measure "$bcmd")
        sh -c "$prep"
        q=$(measure "$qcmd")
        echo "$b $q" >>pairs.txt
    done
    local bt qt ratio rb rq rr=""
    bt=$(awk '{ print $1 }' pairs.txt | median)
    qt=$(awk '{ print $3 }' pairs.txt | median)
    ratio=$(awk '{ print $1 / $3 }' pairs.txt | median)
    if [ "$rss" = 1 ]; then
        rb=$(awk '{ print $2 }' pairs.txt | median)
        rq=$(awk '{ print $4 }' pairs.txt | median)
        rr=$(awk -v b="$rb" -v q="$rq" 'BEGIN { printf "%.1f vs %.1f MiB (%.2f)", b / 1024, q / 1024, b / q }')
    fi
    rows+=("$(printf '| %s | %.3f s | %.3f s | **%.2f** | %s |' "$label" "$bt" "$qt" "$ratio" "$rr")")
}

B=$BLK
fresh="rm -f w.qcow2 c.qcow2 && sync && qemu-img create -q -f qcow2 w.qcow2 $size"
echo "measuring, $pairs pairs per case..." >&2
case_ "$n4k allocating 4 KiB writes into an empty 64k-cluster qcow2, cache=writeback (qemu-io script)" 0 \
    "$fresh" "$B io -f qcow2 -t writeback w.qcow2 <w4k.script" "qemu-io -f qcow2 -t writeback w.qcow2 <w4k.script"
case_ "$n64k allocating 64 KiB writes, cache=none (qemu-io script)" 0 \
    "$fresh" "$B io -f qcow2 -t none w.qcow2 <w64k.script" "qemu-io -f qcow2 -t none w.qcow2 <w64k.script"
case_ "compare raw vs qcow2 (same data)" 0 \
    true "$B compare -f raw -F qcow2 data.raw data.qcow2" "qemu-img compare -f raw -F qcow2 data.raw data.qcow2"
case_ "map --output=json of a 4k-cluster image" 1 \
    true "$B map --output=json map4k.qcow2" "qemu-img map --output=json map4k.qcow2"
case_ "convert raw → qcow2" 0 \
    "rm -f c.qcow2 && sync" "$B convert -f raw -O qcow2 data.raw c.qcow2" "qemu-img convert -f raw -O qcow2 data.raw c.qcow2"
case_ "sequential read of a $mib MiB qcow2 (1 MiB reads, qemu-io script)" 0 \
    true "$B io -r -f qcow2 data.qcow2 <seqread.script" "qemu-io -r -f qcow2 data.qcow2 <seqread.script"
case_ "$nrand random 4 KiB reads of a qcow2, page cache (qemu-io script)" 0 \
    true "$B io -r -f qcow2 data.qcow2 <randread.script" "qemu-io -r -f qcow2 data.qcow2 <randread.script"
case_ "check of a 4k-cluster image" 1 \
    true "$B check map4k.qcow2" "qemu-img check map4k.qcow2"
for rw in read write; do
    for qd in 1 32; do
        if [ $rw = read ]; then img=data.qcow2 w=""; else img=ow.qcow2 w=-w; fi
        args="-f qcow2 $w -c $nbench -d $qd -s 4k $img"
        case_ "bench $rw 4 KiB QD$qd ($nbench requests, qcow2, page cache)" 0 \
            true "$B bench $args" "qemu-img bench $args"
    done
done

backup_line=""
if [ $backup = 1 ]; then
    echo "  backup (cargo bench --bench backup)" >&2
    q=""
    [ $quick = 1 ] && q=1
    out=$(cd "$repo" && BLK_BENCH_QUICK=$q cargo bench --quiet --bench backup 2>/dev/null | grep -A3 '^backup sync=full')
    backup_line=$(echo "$out" | awk '/blk\/QEMU/ { print $2 }')
    bt=$(echo "$out" | awk '$1 == "blk" { print $2 }')
    qt=$(echo "$out" | awk '$1 == "qemu-storage-daemon" { print $2 }')
    rows+=("| backup sync=full of a $([ $quick = 1 ] && echo 128 || echo 1024) MiB qcow2 (benches/backup.rs, QMP, median of runs) | $bt ms | $qt ms | **${backup_line%x}** | |")
fi

echo
echo "blk/QEMU on $(nproc) cores, $(date -u +%Y-%m-%d), $pairs interleaved pairs per case (median of the per-pair ratios; < 1: blk is faster):"
echo
echo "| case | blk | QEMU | blk/QEMU | peak RSS blk vs QEMU (ratio) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
