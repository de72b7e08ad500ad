#!/usr/bin/env bash
# Short fuzz pass for CI, with nothing but stable cargo: the seed corpora (and any saved
# regressions) plus a bounded number of deterministic mutated inputs per target, run
# through the very target functions AFL++ fuzzes (src/targets/), by the plain `replay`
# binary. No cargo-afl: installing it and building the instrumented targets cold takes
# longer than a CI pass should (see README.md); run.sh is the real fuzzer.
#
# Environment:
#   FUZZ_CI_MUTATIONS=N   mutated inputs per target (default 200000)
#   FUZZ_CI_SEED=S        mutation seed (default fixed, so a failure reproduces)
#   CARGO_TARGET_DIR      where to build (default fuzz/target; the workspace's target/
#                         would not help: its dependencies are built with other features)
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ_DIR/target}"
mutations="${FUZZ_CI_MUTATIONS:-200000}"
seed="${FUZZ_CI_SEED:-24301}"

cd "$FUZZ_DIR"
start=$(date +%s)

echo "== fuzz: format of the fuzz crate"
cargo fmt -- --check

echo "== fuzz: building the replay driver (plain stable build, no cargo-afl)"
cargo build --locked --profile fuzz-ci --bin replay

echo "== fuzz: corpus + $mutations mutated inputs per target (seed $seed)"
"$CARGO_TARGET_DIR/fuzz-ci/replay" --mutations "$mutations" --seed "$seed" all

echo "== fuzz: passed in $(($(date +%s) - start)) s"
