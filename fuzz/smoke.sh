#!/usr/bin/env bash
# Smoke test of the fuzz targets (STYLE.md §25): build them with cargo-fuzz and run each
# one briefly on a throw-away copy of its seed corpus plus its kept crash inputs
# (regressions/<target>/). Exits non-zero if a build fails or a target crashes.
#
#   fuzz/smoke.sh [SECONDS]     seconds per target (default 20, or $FUZZ_SMOKE_SECONDS)
#
# Environment:
#   FUZZ_TOOLCHAIN=stable|nightly  use this toolchain instead of trying stable, then nightly
#   FUZZ_SMOKE_TESTS=1             also run the stable replay test (`cargo test`: unit tests,
#                                  seed freshness, corpus and regression replay); a second
#                                  (non-instrumented) build, so off by default
#
# cargo-fuzz works on stable Rust with `--sanitizer none` (no -Z flags are needed then);
# nightly is only a fallback. If neither can build the targets, the script says so, runs
# the stable replay test instead (same target bodies, no libFuzzer) and exits with its
# status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:-${FUZZ_SMOKE_SECONDS:-20}}
targets=(frame_decode handshake_server handshake_client session_open)
t0=$(date +%s)
say() { echo "fuzz-smoke: $*"; }
elapsed() { echo "$(($(date +%s) - t0))s"; }

replay_test() {
    say "running the stable replay test: cargo +stable test (in fuzz/)"
    cargo +stable test
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo-fuzz is missing; installing it: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi
say "$(cargo fuzz --version)"

if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    candidates=("$FUZZ_TOOLCHAIN")
else
    candidates=(stable nightly)
fi
toolchain=""
for tc in "${candidates[@]}"; do
    if ! rustup run "$tc" rustc --version >/dev/null 2>&1; then
        say "toolchain '$tc' is not installed"
        continue
    fi
    say "building all targets: cargo +$tc fuzz build --sanitizer none ($(rustup run "$tc" rustc --version))"
    if cargo "+$tc" fuzz build --sanitizer none; then
        toolchain=$tc
        break
    fi
    say "cargo-fuzz could not build the targets with '$tc'"
done

if [[ -z "$toolchain" ]]; then
    say "NOT FUZZING: cargo-fuzz could not build on any of: ${candidates[*]}."
    say "If stable cannot do it on this machine, install a nightly toolchain"
    say "(rustup toolchain install nightly) to get the libFuzzer runs."
    replay_test
    say "replay test passed; libFuzzer runs skipped ($(elapsed))"
    exit 0
fi
say "using toolchain: $toolchain (built in $(elapsed))"

if [[ "${FUZZ_SMOKE_TESTS:-0}" == 1 ]]; then
    replay_test
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    if [[ -d "corpus/$t" ]]; then
        cp -R "corpus/$t/." "$work/corpus/$t/"
    fi
    # The first directory receives new inputs; the others are only read.
    inputs=("$work/corpus/$t")
    if [[ -d "regressions/$t" ]]; then
        inputs+=("regressions/$t")
    fi
    log="$work/$t.log"
    say "running $t for ${secs}s"
    if cargo "+$toolchain" fuzz run --sanitizer none "$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        say "$t ok: $(grep -m1 '^Done' "$log" || echo 'no summary'), $(grep -m1 'new_units_added' "$log" | tr -s ' ' || true)"
    else
        failed+=("$t")
        say "$t FAILED; last lines of its log:"
        tail -n 80 "$log"
        say "crash input: fuzz/artifacts/$t/ (keep it in fuzz/regressions/$t/ once fixed)"
    fi
done

if ((${#failed[@]})); then
    say "FAILED: ${failed[*]} ($(elapsed))"
    exit 1
fi
say "all ${#targets[@]} targets ran ${secs}s each without a crash on $toolchain ($(elapsed) in total)"
