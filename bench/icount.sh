#!/usr/bin/env bash
# Instruction counts (callgrind) of one full XTMP handshake (both sides), of sealing 1,000
# 100-byte messages and of opening them — deterministic work (fixed seeds,
# InsecureDeterministicRngForTestingOnly), stable enough to compare between commits.
# Only the `measured_*` functions of src/bin/xtmp-icount.rs are counted.
#
#   bash bench/icount.sh            # prints "<name> <instructions>" lines
#   ICOUNT_OUT=dir bash bench/icount.sh   # also keeps the callgrind files there
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -p xtmp-bench --bin xtmp-icount >&2
bin=target/release/xtmp-icount
out=${ICOUNT_OUT:-$(mktemp -d)}
mkdir -p "$out"
for what in handshake seal open; do
  f="$out/callgrind.$what.out"
  valgrind --tool=callgrind --callgrind-out-file="$f" \
    --toggle-collect="*measured_$what*" "$bin" "$what" >/dev/null 2>"$out/valgrind.$what.log"
  n=$(awk '/^summary:|^totals:/ {print $2; exit}' "$f")
  echo "$what $n"
done
