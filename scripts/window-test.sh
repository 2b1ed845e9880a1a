#!/usr/bin/env bash
# Opens the real studio window under Xvfb on a software GPU (Mesa lavapipe/llvmpipe), lets it
# render, takes screenshots into target/screenshots/ and checks them:
#   1. the window is not blank;
#   2. the canvas draws the sample image through the WGSL shader (the red disc at its centre);
#   3. the mouse wheel over the canvas zooms (the second screenshot differs from the first);
#   4. "Add noise" in the inspector runs a job on the engine thread and the canvas shows it.
# Usage: scripts/window-test.sh [BINARY]
set -euo pipefail
BIN=${1:-target/release/diffusion-studio}
OUT=target/screenshots
mkdir -p "$OUT"
rm -f "$OUT"/studio*.png

fail() { echo "window-test: FAIL: $*" >&2; exit 1; }
pixel() { # pixel FILE X Y → "R G B" in 0..255
  convert "$1" -format "%[fx:int(255*p{$2,$3}.r)] %[fx:int(255*p{$2,$3}.g)] %[fx:int(255*p{$2,$3}.b)]" info:
}

runtime=$(mktemp -d)
chmod 700 "$runtime"
exec 3< <(Xvfb -displayfd 1 -screen 0 1400x900x24 -nolisten tcp 2>"$runtime/xvfb.log")
xvfb_pid=$!
read -r -t 30 display_number <&3 || fail "Xvfb did not start: $(cat "$runtime/xvfb.log")"
app_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
  kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$runtime"
}
trap cleanup EXIT
export DISPLAY=":$display_number" XDG_RUNTIME_DIR="$runtime"

"$BIN" assets/samples/shapes.png >"$OUT/studio.log" 2>&1 &
app_pid=$!
window=""
for _ in $(seq 1 120); do
  window=$(xdotool search --name '^diffusion-studio$' 2>/dev/null | head -1 || true)
  [ -n "$window" ] && break
  kill -0 "$app_pid" 2>/dev/null || fail "the studio exited: $(cat "$OUT/studio.log")"
  sleep 0.5
done
[ -n "$window" ] || fail "no window appeared in 60 s"
sleep 4 # first frames, the image loaded and fitted

import -window "$window" "$OUT/studio.png"
read -r width height <<<"$(identify -format "%w %h" "$OUT/studio.png")"
spread=$(convert "$OUT/studio.png" -colorspace Gray -format "%[fx:standard_deviation]" info:)
echo "window-test: ${width}×${height} window, grey-level spread $spread"
awk -v s="$spread" 'BEGIN { exit !(s > 0.05) }' || fail "the window looks blank (spread $spread)"

# The canvas lies between the tool panel (left) and the inspector (right); the sample's red disc
# covers the canvas centre once fitted. Look for it around the window's middle.
read -r r g b <<<"$(pixel "$OUT/studio.png" $((width / 2)) $((height / 2)))"
echo "window-test: centre pixel $r $g $b"
[ "$r" -gt 150 ] && [ "$g" -lt 90 ] && [ "$b" -lt 90 ] \
  || fail "the canvas does not show the sample's red disc at its centre (got $r $g $b)"

# Zoom out with the wheel over the canvas: the image shrinks, the screenshot changes.
xdotool mousemove --window "$window" $((width / 2)) $((height / 2))
for _ in 1 2 3 4 5 6; do xdotool click 5; sleep 0.1; done
sleep 1.5
import -window "$window" "$OUT/studio-zoomed.png"
changed=$(compare -metric AE "$OUT/studio.png" "$OUT/studio-zoomed.png" null: 2>&1 || true)
echo "window-test: $changed pixels changed after zooming"
awk -v c="${changed%% *}" 'BEGIN { exit !(c > 1000) }' || fail "the wheel did not zoom the canvas"

# Press "Add noise" (inspector, top right) and let the engine noise the image.
xdotool mousemove --window "$window" $((width - 195)) 157 click 1
sleep 4
import -window "$window" "$OUT/studio-noised.png"
read -r r g b <<<"$(pixel "$OUT/studio-noised.png" $((width / 2)) $((height / 2)))"
noised=$(compare -metric AE -fuzz 10% "$OUT/studio-zoomed.png" "$OUT/studio-noised.png" null: 2>&1 || true)
echo "window-test: $noised pixels changed after Add noise; centre pixel now $r $g $b"
awk -v c="${noised%% *}" 'BEGIN { exit !(c > 5000) }' || fail "Add noise did not change the canvas"

kill -0 "$app_pid" 2>/dev/null || fail "the studio died: $(cat "$OUT/studio.log")"
echo "window-test: ok — screenshots in $OUT/"
