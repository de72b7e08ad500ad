#!/usr/bin/env bash
# Coverage-guided fuzzing of p2p-core's decoders with AFL++ (cargo-afl, stable Rust).
#
#   fuzz/run.sh TARGET SECONDS     one target (frame, message, resume_state, beacon, stun, swarm)
#   fuzz/run.sh all SECONDS        every target, one after the other, SECONDS each
#
# Environment:
#   FUZZ_EXECS=N    also stop a target once it has run N executions (afl-fuzz -E);
#                   SECONDS is then only the upper bound
#   FUZZ_JOBS=N     cargo build jobs (default: cargo's own default)
#   FUZZ_RESUME=1   continue from the previous run's out/TARGET instead of starting anew
#   FUZZ_MAX_LEN=N  largest input AFL++ generates (afl-fuzz -G); default per target, a
#                   little above the largest input the decoder accepts or needs (without
#                   a cap the queue grows to 70 KB inputs that run 200 times slower)
#   FUZZ_BUILD_ONLY=1  install and build, then stop (no fuzzing)
#
# Installs what it needs, and says so: cargo-afl from crates.io (which builds its own
# AFL++ 4.40c; needs make and a C compiler, installed with apt-get when missing and root).
# Prints executions, crashes and hangs per target; exits 1 if any target crashed, and
# prints each crash's input (hex) and panic message.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR"

ALL_TARGETS=(frame message resume_state beacon stun swarm)
# Default -G per target: frames and payloads well past any header or varint (8 KiB),
# resume states with hundreds of ranges, beacon records (datagrams are at most 512 B),
# STUN datagrams just past MAX_MESSAGE_LEN (9000 B).
max_len_for() {
  case $1 in
    frame | message) echo 8192 ;;
    resume_state) echo 4096 ;;
    beacon) echo 4096 ;;
    stun) echo 9216 ;;
    swarm) echo 65536 ;;
  esac
}
CARGO_AFL_VERSION=0.18.2
AFL_TARGET_DIR="$FUZZ_DIR/target/afl"

usage() {
  echo "usage: $0 TARGET|all SECONDS   (targets: ${ALL_TARGETS[*]})" >&2
  exit 2
}

[ $# -eq 2 ] || usage
what=$1
seconds=$2
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
if [ "$what" = all ]; then
  targets=("${ALL_TARGETS[@]}")
else
  case " ${ALL_TARGETS[*]} " in
    *" $what "*) targets=("$what") ;;
    *) usage ;;
  esac
fi

# --- what this needs --------------------------------------------------------------------

if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo is not installed (stable Rust is enough)" >&2
  exit 2
fi

if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing make and gcc (apt-get) to build AFL++"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make gcc >/dev/null
  else
    echo "run.sh: AFL++ is built from source and needs make and a C compiler" >&2
    exit 2
  fi
fi

if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $CARGO_AFL_VERSION"; then
  echo "== installing cargo-afl $CARGO_AFL_VERSION from crates.io (it builds AFL++ as it installs)"
  cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked --force
fi

# cargo-afl keeps one AFL++ build per rustc version; build it for this one if missing.
afl_home="${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs"
rustc_version=$(rustc -V | cut -d' ' -f2)
if ! compgen -G "$afl_home/rustc-$rustc_version-*/afl.rs-$CARGO_AFL_VERSION/afl/bin/afl-fuzz" >/dev/null; then
  echo "== building AFL++ for rustc $rustc_version (cargo afl config --build)"
  cargo afl config --build
fi
echo "== $(cargo afl --version)"

# --- build ------------------------------------------------------------------------------

bins=()
for t in "${targets[@]}"; do bins+=(--bin "afl_$t"); done
jobs=()
[ -n "${FUZZ_JOBS:-}" ] && jobs=(-j "$FUZZ_JOBS")
echo "== building ${targets[*]} with AFL++ instrumentation"
cargo afl build --release --features afl --target-dir "$AFL_TARGET_DIR" "${jobs[@]}" "${bins[@]}"

if [ "${FUZZ_BUILD_ONLY:-}" = 1 ]; then
  echo "== built: $AFL_TARGET_DIR/release/afl_{$(IFS=,; echo "${targets[*]}")}"
  exit 0
fi

# --- fuzz -------------------------------------------------------------------------------

export AFL_NO_UI=1                              # plain log lines, no curses screen
export AFL_SKIP_CPUFREQ=1                       # VMs and containers have no governor
export AFL_NO_AFFINITY=1                        # share the cores with whatever else runs
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1  # core_pattern may pipe to a handler
export AFL_NO_WARN_INSTABILITY=1                # HashMap's random seeds; not a problem
[ "${FUZZ_RESUME:-}" = 1 ] && export AFL_AUTORESUME=1

mkdir -p out
summary=()
crashed=0
for t in "${targets[@]}"; do
  out="out/$t"
  if [ "${FUZZ_RESUME:-}" != 1 ]; then rm -rf "$out"; fi
  limit=(-V "$seconds" -G "${FUZZ_MAX_LEN:-$(max_len_for "$t")}")
  [ -n "${FUZZ_EXECS:-}" ] && limit+=(-E "$FUZZ_EXECS")
  cmd=(cargo afl fuzz -i "corpus/$t" -o "$out" "${limit[@]}" -- "$AFL_TARGET_DIR/release/afl_$t")
  echo "== fuzzing $t: ${cmd[*]}   (log: fuzz/out/$t.log)"
  start=$(date +%s)
  "${cmd[@]}" >"out/$t.log" 2>&1 || {
    echo "afl-fuzz failed for $t; the end of its log:" >&2
    tail -n 30 "out/$t.log" >&2
    exit 2
  }
  wall=$(($(date +%s) - start))
  stats="$out/default/fuzzer_stats"
  field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  execs=$(field execs_done)
  crashes=$(field saved_crashes)
  hangs=$(field saved_hangs)
  speed=$(field execs_per_sec)
  edges="$(field edges_found)/$(field total_edges)"
  echo "   $t: $execs executions in ${wall} s ($speed/s), $crashes crashes, $hangs hangs, edges $edges"
  summary+=("$(printf '%-13s %12s %8s %8s %8s' "$t" "$execs" "${wall}s" "$crashes" "$hangs")")
  if [ "$crashes" != 0 ]; then
    crashed=1
    for f in "$out"/default/crashes/id*; do
      echo "   crash $f"
      echo "     input (hex): $(od -An -v -tx1 "$f" | tr -d ' \n')"
      echo "     panic: $("$AFL_TARGET_DIR/release/afl_$t" <"$f" 2>&1 | grep -m1 -A2 'panicked' | tr '\n' ' ')"
    done
  fi
  if [ "$hangs" != 0 ]; then
    echo "   WARNING: $t has $hangs hang(s) in $out/default/hangs/ (inputs slower than the timeout)"
  fi
done

echo
echo "target          executions     wall  crashes    hangs"
printf '%s\n' "${summary[@]}"
if [ "$crashed" != 0 ]; then
  echo "FAILED: crashes found (inputs under fuzz/out/*/default/crashes/)"
  exit 1
fi
