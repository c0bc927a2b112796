#!/usr/bin/env bash
# CI smoke test of the benchmark harness: builds xtmp-bench, runs every scenario for about a
# second against every peer with small sizes, and checks that each run reports (a JSON
# object per scenario with an `ok` XTMP row and the ratio fields). Never asserts a time.
# About 2 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
cargo build --release -p xtmp-bench
bin=target/release/xtmp-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export XTMP_BENCH_CACHE="$tmp/cache"

fail=0
run() {
  local name=$1; shift
  local out="$tmp/$name.json"
  local st=0
  "$bin" "$@" --json --duration 1 --warmup 0.2 >"$out" 2>"$tmp/$name.err" || st=$?
  if [ "$st" -ne 0 ]; then
    echo "FAIL $name: exit status $st ($(tail -n 3 "$tmp/$name.err" | tr '\n' ' '))"
    fail=$((fail + 1)); return
  fi
  if ! python3 - "$out" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
assert lines, "no output"
for l in lines:
    j = json.loads(l)
    rows = {r["peer"]: r for r in j["results"]}
    x = rows.get("xtmp")
    assert x is not None, "no xtmp row"
    assert x["status"] in ("ok", "skipped"), f"xtmp {x['status']}: {x.get('note')}"
    if j["scenario"] == "idle-sessions" and x["status"] == "ok":
        assert x.get("sessions_alive") == j["concurrency"], f"idle sessions alive: {x.get('sessions_alive')} of {j['concurrency']}"
    for p, r in rows.items():
        assert r["status"] in ("ok", "skipped"), f"{p} {r['status']}: {r.get('note')}"
        if r["status"] == "ok" and p != "xtmp" and x["status"] == "ok":
            assert "ratio_vs_" + p.replace("-", "_") in j, f"no ratio_vs_{p}"
    print(f"ok {j['scenario']} size={j['size']} c={j['concurrency']}: " + ", ".join(
        f"{p}={r['throughput']:.0f}" if r["status"] == "ok" else f"{p}=skipped" for p, r in rows.items()))
PY
  then
    echo "FAIL $name: bad report"; fail=$((fail + 1))
  fi
}

run handshake        handshake --concurrency 4
run wallet-auth      wallet-auth --concurrency 4
run bundle-submit    bundle-submit --concurrency 4
run live-updates     live-updates --size 64
run metrics-stream   metrics-stream --size 32
run request-response request-response --size 64
run bulk             bulk --size 1024
run idle-sessions    idle-sessions --concurrency 200
run idle-udp         idle-sessions --transport udp --concurrency 200 --compare none
run rr-udp           request-response --transport udp --compare quinn,plain-udp
run rr-hybrid        request-response --transport hybrid --compare none
run rr-ws            request-response --transport ws --compare none
run rr-crypto-off    request-response --crypto-off --compare plain-tcp
run rr-in-process    request-response --in-process --compare plain-tcp
# The scaling and chart commands, one tiny point each.
"$bin" scale handshake --points 2 --duration 0.5 --warmup 0.1 --compare rustls >"$tmp/scale.txt" 2>&1 \
  && grep -q '^| 2 |' "$tmp/scale.txt" && echo "ok scale" || { echo "FAIL scale"; cat "$tmp/scale.txt"; fail=$((fail + 1)); }
"$bin" chart --rates 500 --duration 0.5 --warmup 0.1 --compare plain-tcp --svg "$tmp/c.svg" >"$tmp/chart.txt" 2>&1 \
  && grep -q '<svg' "$tmp/c.svg" && echo "ok chart" || { echo "FAIL chart"; cat "$tmp/chart.txt"; fail=$((fail + 1)); }
# Bad arguments are refused with a message, not a panic.
if "$bin" handshake --duration -1 >"$tmp/bad.txt" 2>&1 || grep -q panicked "$tmp/bad.txt"; then
  echo "FAIL bad arguments accepted or panicked"; fail=$((fail + 1))
else
  echo "ok bad arguments refused"
fi

echo "bench smoke: $((17 - fail)) passed, $fail failed ($(( $(date +%s) - start )) s)"
[ "$fail" -eq 0 ]
