#!/usr/bin/env bash
# Opens the real studio window under Xvfb on a software GPU (Mesa lavapipe/llvmpipe), lets it
# render, takes screenshots into target/screenshots/ and checks them:
#   1. the window is not blank;
#   2. the canvas draws the sample image through the WGSL shader (the red disc at its centre);
#   3. the mouse wheel over the canvas zooms (the second screenshot differs from the first);
#   4. a brush stroke paints the mask (its tint shows where the stroke went, nowhere else);
#   5. "Inpaint" repaints the painted region with the bundled model on the engine thread, and
#      the canvas shows the result there;
#   6. the word editor: prompt-to-prompt chosen in the inspector, its word swap ("red" to
#      "green") runs on the bundled model and lands on the canvas; hovering the swapped word's
#      chip draws its attention map over the canvas;
#   7. the autosave holds the results and the mask; after the studio is killed (a crash) and
#      started again, it offers to restore them;
#   8. given a WAV file, the studio opens in the audio room and draws its spectrogram in colour
#      (the WGSL colormap) with the waveform below.
# Usage: scripts/window-test.sh [BINARY]
set -euo pipefail
BIN=${1:-target/release/diffusion-studio}
OUT=target/screenshots
mkdir -p "$OUT"
rm -f "$OUT"/studio*.png

fail() {
  echo "window-test: FAIL: $*" >&2
  # what the window showed then, to look at
  [ -n "${window:-}" ] && import -window "$window" "$OUT/studio-failed.png" 2>/dev/null && echo "window-test: the window at the failure: $OUT/studio-failed.png" >&2
  exit 1
}
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
# the studio's autosave and settings go to a scratch folder, not the person's own
export DIFFUSION_STUDIO_AUTOSAVE="$runtime/autosave" DIFFUSION_STUDIO_CONFIG="$runtime/settings.json"

# start_studio LOG [FILE]: opens the studio on FILE (the sample image) and waits (60 s at most)
# for its window; sets app_pid and window.
start_studio() {
  "$BIN" "${2:-assets/samples/shapes.png}" >"$1" 2>&1 &
  app_pid=$!
  window=""
  for _ in $(seq 1 120); do
    window=$(xdotool search --name '^diffusion-studio$' 2>/dev/null | head -1 || true)
    [ -n "$window" ] && break
    kill -0 "$app_pid" 2>/dev/null || fail "the studio exited: $(cat "$1")"
    sleep 0.5
  done
  [ -n "$window" ] || fail "no window appeared in 60 s: $(cat "$1")"
  sleep 4 # first frames, the image loaded and fitted
}

start_studio "$OUT/studio.log"

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

# Paint a stroke across the middle with the brush (the studio opens on it), then move the
# pointer off the canvas so that the marching edge stops.
cx=$((width / 2)); cy=$((height / 2))
xdotool mousemove --window "$window" $((cx - 40)) "$cy" mousedown 1
for dx in -20 0 20 40; do xdotool mousemove --window "$window" $((cx + dx)) "$cy"; sleep 0.05; done
xdotool mouseup 1
xdotool mousemove --window "$window" "$cx" $((height - 5))
sleep 1.5
import -window "$window" "$OUT/studio-mask.png"
painted=$(compare -metric AE -fuzz 5% "$OUT/studio-zoomed.png" "$OUT/studio-mask.png" null: 2>&1 || true)
read -r r g b <<<"$(pixel "$OUT/studio-mask.png" "$cx" "$cy")"
read -r r0 g0 b0 <<<"$(pixel "$OUT/studio-zoomed.png" "$cx" "$cy")"
read -r fr fg fb <<<"$(pixel "$OUT/studio-mask.png" 260 $((height - 120)))"
read -r fr0 fg0 fb0 <<<"$(pixel "$OUT/studio-zoomed.png" 260 $((height - 120)))"
echo "window-test: $painted pixels changed by the stroke; under it $r0 $g0 $b0 → $r $g $b"
awk -v c="${painted%% *}" 'BEGIN { exit !(c > 500 && c < 60000) }' || fail "the stroke did not paint a mask-sized region"
[ "$b" -gt $((b0 + 5)) ] || fail "no mask tint under the stroke ($r0 $g0 $b0 → $r $g $b)"
[ "$fr $fg $fb" = "$fr0 $fg0 $fb0" ] || fail "the canvas changed far from the stroke"

# "Inpaint" repaints the painted region with the bundled model (at 512 × 512 on the CPU). The
# result is done when the autosave (every 5 s while the document changes) holds it as the first
# history entry.
region() { convert "$1" -crop 240x140+$((cx - 120))+$((cy - 70)) +repage "$2"; }
# run_and_wait N WHAT [retry]: clicks the inspector's run button (top), moves the pointer off the
# canvas and waits (240 s at most) for the autosave's history entry N. A click right after
# choosing from the method list was now and then lost under Xvfb (the job never queued): with
# "retry", for a job that takes seconds, no result after 30 s is said and clicked once more.
run_and_wait() {
  local entry
  entry="$DIFFUSION_STUDIO_AUTOSAVE/history/$(printf %04d "$1").png"
  xdotool mousemove --window "$window" $((width - 180)) 73 click 1
  xdotool mousemove --window "$window" "$cx" $((height - 5))
  for second in $(seq 1 240); do
    [ -s "$entry" ] && break
    kill -0 "$app_pid" 2>/dev/null || fail "the studio died: $(cat "$OUT/studio.log")"
    if [ "$second" = 30 ] && [ "${3:-}" = retry ]; then
      echo "window-test: no $2 result 30 s after the click; clicking the run button again"
      import -window "$window" "$OUT/studio-click-lost.png"
      xdotool mousemove --window "$window" $((width - 180)) 73 click 1
      xdotool mousemove --window "$window" "$cx" $((height - 5))
    fi
    sleep 1
  done
  [ -s "$entry" ] || fail "no $2 result within 240 s: $(tail -5 "$OUT/studio.log")"
  sleep 1
}
region "$OUT/studio-mask.png" "$runtime/before.png"
run_and_wait 1 inpainting # "Inpaint"
import -window "$window" "$OUT/studio-inpainted.png"
region "$OUT/studio-inpainted.png" "$runtime/after.png"
changed=$(compare -metric AE -fuzz 10% "$runtime/before.png" "$runtime/after.png" null: 2>&1 || true)
echo "window-test: $changed pixels changed around the stroke after inpainting"
awk -v c="${changed%% *}" 'BEGIN { exit !(c > 300) }' || fail "inpainting did not change the canvas"

# The word editor: choose prompt-to-prompt in the inspector's method list, apply its default
# word swap ("a big red circle ..." to "a big green circle ..."), wait for the second result.
xdotool mousemove --window "$window" $((width - 135)) 117 click 1 # the method list
sleep 1
xdotool mousemove --window "$window" $((width - 153)) 236 click 1 # "Prompt-to-prompt (word editor)"
sleep 1
import -window "$window" "$OUT/studio-word-editor.png"
run_and_wait 2 word-swap retry # "Apply edit" (128 × 128: seconds)
import -window "$window" "$OUT/studio-word-swap.png"
region "$OUT/studio-inpainted.png" "$runtime/before.png"
region "$OUT/studio-word-swap.png" "$runtime/after.png"
changed=$(compare -metric AE -fuzz 10% "$runtime/before.png" "$runtime/after.png" null: 2>&1 || true)
echo "window-test: $changed pixels changed on the canvas after the word swap"
awk -v c="${changed%% *}" 'BEGIN { exit !(c > 1000) }' || fail "the word swap's result is not on the canvas"
# the swapped word's chip ("green", the target's third word) shows its attention map on hover
xdotool mousemove --window "$window" $((width - 123)) 449
sleep 1.5
import -window "$window" "$OUT/studio-attention.png"
region "$OUT/studio-attention.png" "$runtime/heat.png"
heat=$(compare -metric AE -fuzz 10% "$runtime/after.png" "$runtime/heat.png" null: 2>&1 || true)
echo "window-test: $heat pixels changed on the canvas with the attention map of \"green\""
awk -v c="${heat%% *}" 'BEGIN { exit !(c > 5000) }' || fail "hovering the word did not draw its attention map"
xdotool mousemove --window "$window" "$cx" $((height - 5))

# The autosave holds the results and the mask; kill the studio as a crash would and start it
# again: it offers to restore them, over the canvas.
for f in project.json image.png mask.png history/0001.png history/0002.png; do
  [ -s "$DIFFUSION_STUDIO_AUTOSAVE/$f" ] || fail "the autosave has no $f"
done
grep -q '"clean_exit": false' "$DIFFUSION_STUDIO_AUTOSAVE/project.json" || fail "the running studio's autosave says it exited"
kill -9 "$app_pid"
wait "$app_pid" 2>/dev/null || true
start_studio "$OUT/studio-restart.log"
import -window "$window" "$OUT/studio-restore-offer.png"
offer=$(compare -metric AE -fuzz 10% "$OUT/studio.png" "$OUT/studio-restore-offer.png" null: 2>&1 || true)
echo "window-test: after a crash and a restart, $offer pixels differ from a fresh start"
awk -v c="${offer%% *}" 'BEGIN { exit !(c > 5000) }' || fail "no restore offer after the restart"

kill -0 "$app_pid" 2>/dev/null || fail "the studio died: $(cat "$OUT/studio.log")"

# The audio room: the sample clip (a fast drum beat with an arpeggio) opens there, its
# spectrogram coloured by the shader: the middle of the window is saturated colour, not grey.
kill "$app_pid"
wait "$app_pid" 2>/dev/null || true
rm -rf "$DIFFUSION_STUDIO_AUTOSAVE"
start_studio "$OUT/studio-audio.log" assets/samples/music.wav
sleep 3 # the engine makes the spectrogram
import -window "$window" "$OUT/studio-audio.png"
saturation=$(convert "$OUT/studio-audio.png" -crop 600x300+$((width / 2 - 400))+$((height / 2 - 200)) +repage \
  -colorspace HSL -channel G -separate -format "%[fx:mean]" info:)
echo "window-test: the audio room's spectrogram, mean saturation $saturation"
awk -v s="$saturation" 'BEGIN { exit !(s > 0.3) }' || fail "the audio room shows no coloured spectrogram"
echo "window-test: ok — screenshots in $OUT/"
