#!/usr/bin/env bash
# Takes one screenshot per tab of the real p2p-gui window under Xvfb, into docs/gui/.
#
#   cargo build -p p2p-transfer -p p2p-gui && p2p-gui/scripts/screenshots.sh
#
# Needs: xvfb, xdotool, imagemagick (apt-get install xvfb xdotool imagemagick).
# Everything runs on 127.0.0.1 with temporary folders; the user's settings are not read.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug}
OUT=docs/gui
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

Xvfb -displayfd 1 -screen 0 1024x768x24 -nolisten tcp -noreset >"$work/display" 2>"${XVFB_LOG:-/dev/null}" &
pids+=($!)
until [ -s "$work/display" ]; do sleep 0.1; done
export DISPLAY=":$(cat "$work/display")"
unset WAYLAND_DISPLAY
export P2P_TRANSFER_CONFIG_DIR="$work/config" P2P_TRANSFER_DATA_DIR="$work/data"
# Discovery beacons stay on this machine, on a port of their own.
export P2P_DISCOVERY_TARGETS=127.255.255.255 P2P_DISCOVERY_PORT=$((20000 + RANDOM % 20000))

# Waits until FILE has a line matching PATTERN (at most 60 s).
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 600); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in $file:" >&2
    cat "$file" >&2
    return 1
}

# Starts the window with the given flags; its stderr goes to $work/NAME.err.
gui() {
    local name=$1
    shift
    "$BIN/p2p-gui" "$@" 2>"$work/$name.err" &
    pids+=($!)
    gui_pid=$!
}

# Saves the window (after a moment to draw) as docs/gui/NAME.png, then closes it.
shot() {
    local name=$1
    local id
    id=$(xdotool search --sync --onlyvisible --name 'p2p-transfer' | head -1)
    sleep "${2:-1}"
    import -window "$id" -strip -define png:compression-level=9 "$OUT/$name.png"
    kill "$gui_pid"
    echo "$OUT/$name.png"
}

# A CLI receiver (a device of its own) on a free port, waiting for the one-time code $2;
# prints its address.
cli_receiver() {
    P2P_TRANSFER_DATA_DIR="$work/data-$3" "$BIN/p2p-transfer" receive --bind 127.0.0.1 \
        --port 0 --code "$2" --name "$3" --output "$1" >/dev/null 2>"$work/receiver.err" &
    pids+=($!)
    wait_for "$work/receiver.err" "listening on" >/dev/null
    sed -n 's/^listening on //p' "$work/receiver.err"
}

# The device id of the data folder data-NAME (created on first use).
device_id() {
    P2P_TRANSFER_DATA_DIR="$work/data-$1" "$BIN/p2p-transfer" id 2>/dev/null
}

mkdir -p "$work/photos/2024" "$work/in-cli" "$work/in-gui"
for n in 1 2 3; do head -c $((3 << 20)) /dev/urandom >"$work/photos/2024/IMG_000$n.jpg"; done
head -c $((1 << 20)) /dev/urandom >"$work/photos/cover.jpg"
head -c $((1 << 30)) /dev/urandom >"$work/film.mkv"
printf 'minutes of the meeting\n' >"$work/notes.txt"

# The window's own device (its key in $work/data), and a device it trusts.
window_id=$(P2P_TRANSFER_DATA_DIR="$work/data" "$BIN/p2p-transfer" id 2>/dev/null)
"$BIN/p2p-transfer" trust add "$(device_id laptop)" --name laptop 2>/dev/null

# Connection: the window waits with a new one-time code (--code ''), and has found a
# receiver waiting on this network (a CLI, a device of its own, announcing itself).
mkdir -p "$work/in-announced"
P2P_TRANSFER_DATA_DIR="$work/data-living-room" "$BIN/p2p-transfer" receive --bind 127.0.0.1 \
    --port 0 --name living-room --output "$work/in-announced" >/dev/null 2>"$work/announced.err" &
pids+=($!)
wait_for "$work/announced.err" "listening on"
gui connection --bind 127.0.0.1 --port 0 --code ''
wait_for "$work/connection.err" "^code: "
sleep 1.5
shot connection

# Send: paired by a one-time code with a CLI receiver, sending a folder and a large file
# (caught mid-way), over QUIC as chosen in Settings (automatic would take TCP to this
# same machine).
mkdir -p "$work/config"
printf '{"transport": "quic"}\n' >"$work/config/settings.json"
addr=$(cli_receiver "$work/in-cli" 5-cobalt-harbor desk)
gui send --peer "$addr" --code 5-cobalt-harbor --send "$work/photos" "$work/film.mkv"
wait_for "$work/send.err" "connected to .* over QUIC"
shot send 0.7
rm "$work/config/settings.json"

# Receive: listening, asking first; a device the window does not know (no code, not
# trusted; it pins the window's id) offers a folder, which waits for an answer.
gui receive --bind 127.0.0.1 --port 0 --tab receive --output "$work/in-gui"
wait_for "$work/receive.err" "listening on"
addr=$(sed -n 's/^listening on //p' "$work/receive.err")
P2P_TRANSFER_DATA_DIR="$work/data-phone" "$BIN/p2p-transfer" send "$work/photos" \
    --peer "$addr" --name phone --peer-id "$window_id" >/dev/null 2>&1 &
pids+=($!)
wait_for "$work/receive.err" "offer from"
shot receive

# The same offer in the smallest window (720×480, its minimum) and dark: Accept and
# Decline stay on screen. A file of the offer is in the folder already, so the offer
# asks first (replace, another folder, decline).
mkdir -p "$work/in-small/photos"
cp "$work/photos/cover.jpg" "$work/in-small/photos/cover.jpg"
gui small --bind 127.0.0.1 --port 0 --tab receive --output "$work/in-small" --theme dark
wait_for "$work/small.err" "listening on"
addr=$(sed -n 's/^listening on //p' "$work/small.err")
P2P_TRANSFER_DATA_DIR="$work/data-phone" "$BIN/p2p-transfer" send "$work/photos" \
    --peer "$addr" --name phone --peer-id "$window_id" >/dev/null 2>&1 &
pids+=($!)
wait_for "$work/small.err" "offer from"
id=$(xdotool search --sync --onlyvisible --name 'p2p-transfer' | head -1)
xdotool windowsize "$id" 720 480
shot receive-small-dark

# Send, nothing connected: files picked, a receiver found on this network, one click.
gui send-here --tab send --send "$work/photos" "$work/notes.txt"
sleep 2.5
shot send-here

# Settings, scrolled to the trusted devices at its end.
gui settings --tab settings
id=$(xdotool search --sync --onlyvisible --name 'p2p-transfer' | head -1)
sleep 0.5
xdotool mousemove --window "$id" 380 360 click --repeat 15 --delay 30 5
shot settings

# History: two transfers (one over QUIC), and one declined (the file is already there).
rm -rf "$work/in-gui"
gui history --bind 127.0.0.1 --port 0 --auto-accept --tab history --output "$work/in-gui"
wait_for "$work/history.err" "listening on"
addr=$(sed -n 's/^listening on //p' "$work/history.err")
"$BIN/p2p-transfer" send "$work/photos" --peer "$addr" --name laptop --transport quic >/dev/null
"$BIN/p2p-transfer" send "$work/notes.txt" --peer "$addr" --name phone >/dev/null
# The same file again: it exists, so even with auto-accept the window asks; Esc
# declines it.
"$BIN/p2p-transfer" send "$work/notes.txt" --peer "$addr" --name phone >/dev/null 2>&1 &
again=$!
wait_for "$work/history.err" "offer from"
id=$(xdotool search --sync --onlyvisible --name 'p2p-transfer' | head -1)
xdotool windowfocus --sync "$id" key Escape
wait "$again" || true
sleep 0.5
xdotool mousemove --window "$id" 381 31 click 1
shot history
