#!/usr/bin/env bash
# Build every fuzz target, then run them one after the other: `fuzz/run.sh SECONDS [TARGET...]`
# (default: all, 30 s each). Seeds the corpora first (seeds.sh), uses the dictionaries in
# fuzz/dict, and fails on the first finding (libFuzzer leaves the input in
# fuzz/artifacts/TARGET/). Fuzz builds go to fuzz/target (or $FUZZ_TARGET_DIR), never to the
# workspace's target dir: their compiler flags differ.
# Needs nightly and cargo-fuzz. Limits: 2 GiB RSS, no single allocation over 512 MiB,
# 10 s per input. libFuzzer's random stream is seeded from $FUZZ_SEED (default 1), so a run
# on the same corpus and machine explores the same inputs first: a CI finding replays with the
# printed command; set FUZZ_SEED=0 for a fresh seed each run.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(qcow2_header qcow2_image qcow2_structured qcow2_io scenario_parse qemu_io_parse qmp_dispatch nbd_server)
fi
tdir=${FUZZ_TARGET_DIR:-$PWD/target}
seed=${FUZZ_SEED:-1}
cargo +nightly fuzz build -a --target-dir "$tdir"
./seeds.sh
for t in "${targets[@]}"; do
    extra=()
    # Structured (`arbitrary`) inputs need room from the start: no slow length ramp-up.
    case $t in
        qcow2_structured | qcow2_io) extra=(-max_len=2048 -len_control=0) ;;
    esac
    case $t in
        qcow2_*) extra+=(-dict=dict/qcow2.dict) ;;
        scenario_parse) extra=(-dict=dict/scenario.dict) ;;
        qemu_io_parse) extra=(-dict=dict/qemu_io.dict) ;;
        qmp_dispatch) extra=(-dict=dict/qmp.dict) ;;
    esac
    mkdir -p "corpus/$t"
    echo "== fuzz $t for ${secs}s (seed $seed)"
    cargo +nightly fuzz run -a --target-dir "$tdir" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1 -seed="$seed" "${extra[@]}"
done
