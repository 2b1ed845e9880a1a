#!/usr/bin/env bash
# `make bench`: diffusion-studio and diffusers side by side on this machine, same work, same
# threads; writes the table into BENCHMARKS.md.
#   1. a 20-step 16×16 generation on the tiny fixture pipeline (DPM++ 2M Karras, CFG 7.5);
#   2. one forward pass of an SD 1.5-sized UNet (random weights, batch 2 as under CFG) at 64×64
#      latents (512×512 images);
#   3. the studio's CPU time per frame while painting on a 4096 × 4096 image (ours only).
set -euo pipefail
BIN=${1:-target/release/diffusion-studio}
PY=${PYTHON:-python}
MODEL=tests/fixtures/tiny_sd_pipeline
RUNS=${BENCH_RUNS:-10}
PASSES=${BENCH_PASSES:-3}

ours_generate=$("$BIN" --device cpu bench generate --model "$MODEL" --steps 20 --runs "$RUNS" | sed -E 's/.*: ([0-9.]+) s per image.*/\1/')
theirs_generate=$(HF_HUB_OFFLINE=1 "$PY" bench/diffusers_side.py generate "$MODEL" 20 "$RUNS" 2>/dev/null | tail -1)
ours_unet=$("$BIN" --device cpu bench unet --preset sd_v1_5 --latent 64 --passes "$PASSES" | sed -E 's/.*: ([0-9.]+) s per pass.*/\1/')
theirs_unet=$(HF_HUB_OFFLINE=1 "$PY" bench/diffusers_side.py unet 64 "$PASSES" 2>/dev/null | tail -1)

# editing: plain generation vs a prompt-to-prompt word swap, same steps (ours only: diffusers has
# no prompt-to-prompt pipeline)
edit_tiny=$("$BIN" --device cpu bench edit --model "$MODEL" --size 16 --steps 20 --runs "$RUNS")
edit_sd=$("$BIN" --device cpu bench edit --model sd_v1_5 --size 256 --steps 5 --runs 1)
field() { echo "$1" | sed -E "s/.* $2 ([0-9.]+).*/\1/"; }

# audio (issue 7): Griffin-Lim on one Riffusion image (512 frames, 5.11 s), 32 iterations,
# ours against torchaudio's GriffinLim with the same settings
gl_ours=$("$BIN" --device cpu bench griffin-lim --preset riffusion --iterations 32 --runs 3 | sed -E 's/.*: ([0-9.]+) s per run.*/\1/')
gl_theirs=$("$PY" bench/diffusers_side.py griffin-lim 32 3 2>/dev/null | tail -1)
gl_studio=$("$BIN" --device cpu bench griffin-lim --preset studio --iterations 32 --runs 5 | sed -E 's/.*: ([0-9.]+) s per run.*/\1/')

# the studio's UI: CPU time per frame while painting strokes on a 4096 × 4096 image (issue 6),
# tests/ui_bench.rs under egui_kittest
ui_bench=$(cargo test --release --test ui_bench -- --ignored --nocapture --test-threads 1 2>&1)
paint=$(echo "$ui_bench" | grep -o 'paint-frames:.*' || echo "paint-frames: failed")
preview=$(echo "$ui_bench" | grep -o 'preview-latency:.*' || echo "preview-latency: failed")

# the bundled shapes model: 20 DDIM steps at 128×128 with CFG, the studio's interactive case
SHAPES=assets/models/shapes
if [ -f "$SHAPES/model_index.json" ]; then
  ours_shapes=$("$BIN" --device cpu bench generate --model "$SHAPES" --size 128 --steps 20 --scheduler ddim --runs "$RUNS" | sed -E 's/.*: ([0-9.]+) s per image.*/\1/')
  theirs_shapes=$(HF_HUB_OFFLINE=1 "$PY" bench/diffusers_side.py generate "$SHAPES" 20 "$RUNS" 128 ddim 2>/dev/null | tail -1)
  # its UNet alone, batch 2 as under guidance: one batched pass, and the halves on two threads
  # (what the engine does for small UNets on the CPU: src/engine/models/branch_parallel.rs)
  unet_batched=$("$BIN" --device cpu bench unet --preset "$SHAPES/unet/config.json" --latent 16 --passes 200 | sed -E 's/.*: ([0-9.]+) s per pass.*/\1/')
  unet_split=$("$BIN" --device cpu bench unet --preset "$SHAPES/unet/config.json" --latent 16 --passes 200 --split-branches | sed -E 's/.*: ([0-9.]+) s per pass.*/\1/')
  # and what it can do: every metric of issue 5 on held-out captions and images
  shapes_eval=$("$BIN" --device cpu eval --model "$SHAPES" --captions 200 --edits 50 --inversions 20 2>&1 >/dev/null | grep -E '^(\||Generation took)')
else
  ours_shapes=missing theirs_shapes=missing shapes_eval="(no bundled model)" unet_batched=missing unet_split=missing
fi

# the bundled music model: a clip ready to play after Generate (issue 7: ≤ 1 s), and what it can
# do (the spectral classifier on generated clips)
MUSIC=assets/models/music
if [ -f "$MUSIC/model_index.json" ]; then
  clip_ready=$("$BIN" --device cpu bench audio-generate --model "$MUSIC" --steps 20 --runs "$RUNS")
  music_eval=$("$BIN" --device cpu audio eval --model "$MUSIC" --clips 100 2>&1 >/dev/null | grep -E '^(\||[0-9.]+ s per generated clip)')
else
  clip_ready="audio-generate missing: 0 s median, 0 s slowest" music_eval="(no bundled music model)"
fi
clip_median=$(echo "$clip_ready" | sed -E 's/.*: ([0-9.]+) s median.*/\1/')
clip_slowest=$(echo "$clip_ready" | sed -E 's/.* ([0-9.]+) s slowest.*/\1/')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "—" }'; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
table=$(cat <<TABLE
## Model core on the CPU ($(nproc) cores: $cpu), $(date -u +%Y-%m-%d)

| work | diffusion-studio | diffusers 0.42.1 | ratio (ours / diffusers) | target |
|---|---|---|---|---|
| tiny pipeline, 20 steps, 16×16, CFG (s per image) | $ours_generate | $theirs_generate | $(ratio "$ours_generate" "$theirs_generate") | ≤ 0.8 |
| SD 1.5-sized UNet, batch 2, 64×64 latents (s per pass) | $ours_unet | $theirs_unet | $(ratio "$ours_unet" "$theirs_unet") | ≤ 1.05 |
| bundled shapes model, 20 DDIM steps, 128×128, CFG (s per image) | $ours_shapes | $theirs_shapes | $(ratio "$ours_shapes" "$theirs_shapes") | ours ≤ 0.3 s |

Classifier-free guidance on two threads: the bundled shapes UNet (batch 2 at 16 × 16 latents)
as one batched pass with libtorch's intra-op threads, against the batch's halves on two threads
of one intra-op thread each, as the engine runs UNets of at most 50 M weights on the CPU (the
shapes row above includes it):

| work | one batched pass (s) | halves on two threads (s) | ratio (split / batched) |
|---|---|---|---|
| bundled shapes UNet, one guided pass | $unet_batched | $unet_split | $(ratio "$unet_split" "$unet_batched") |

## Editing on the CPU ($(nproc) cores), $(date -u +%Y-%m-%d)

Prompt-to-prompt's first edit of a source runs the source and target branches and records the
source's attention; a re-edit of the same source (another word, another weight) replays the
recording and runs the target branch only.

| work | plain generation (s) | first edit (s) | ratio | re-edit (s) | ratio | target |
|---|---|---|---|---|---|---|
| tiny pipeline, 16×16, 20 DDIM steps, CFG | $(field "$edit_tiny" plain) | $(field "$edit_tiny" p2p) | $(field "$edit_tiny" ratio) | $(field "$edit_tiny" re-edit) | $(field "$edit_tiny" re-ratio) | ≤ 1.3 |
| SD 1.5-shaped random model, 256×256, 5 DDIM steps, CFG | $(field "$edit_sd" plain) | $(field "$edit_sd" p2p) | $(field "$edit_sd" ratio) | $(field "$edit_sd" re-edit) | $(field "$edit_sd" re-ratio) | ≤ 1.3 |

Null-text inversion (DDIM inversion, then Adam steps on the unconditional embedding per step with
the paper's learning rate and early stop; our default 6 per step, and the paper's 10) of an image,
against one plain generation of the same steps; then a re-edit of that inverted real image (the
engine keeps its inversion and the source branch; word swaps alternate).

| work | plain generation (s) | null-text, 6 (s) | ratio | null-text, 10 (s) | ratio | target | re-edit of the inverted image (s) | ratio | target |
|---|---|---|---|---|---|---|---|---|---|
| tiny pipeline, 16×16, 20 steps | $(field "$edit_tiny" plain) | $(field "$edit_tiny" null-text) | $(field "$edit_tiny" null-ratio) | $(field "$edit_tiny" null-text-10) | $(field "$edit_tiny" null10-ratio) | ≤ 10 | $(field "$edit_tiny" inverted-re-edit) | $(field "$edit_tiny" inverted-ratio) | ≤ 1.1 |
| SD 1.5-shaped random model, 256×256, 5 steps | $(field "$edit_sd" plain) | $(field "$edit_sd" null-text) | $(field "$edit_sd" null-ratio) | $(field "$edit_sd" null-text-10) | $(field "$edit_sd" null10-ratio) | ≤ 10 | $(field "$edit_sd" inverted-re-edit) | $(field "$edit_sd" inverted-ratio) | ≤ 1.1 |

## The studio's UI on the CPU ($(nproc) cores), $(date -u +%Y-%m-%d)

\`tests/ui_bench.rs\`: six strokes of 60 frames each with a 60-pixel soft brush at 100% zoom on a
4096 × 4096 image, the pointer moving 5–20 points a frame; each frame is the studio's whole UI
pass on the CPU (input, painting the stroke segment into the mask, copying the changed
rectangle for upload, layout and tessellation of every panel) under egui_kittest, without the
GPU's share. "Late" counts frames whose painting was not taken for upload in that same frame.

| work | frames | p50 (ms) | p95 (ms) | max (ms) | late | target |
|---|---|---|---|---|---|---|
| painting the mask on a 4096 × 4096 image | $(field "$paint" frames) | $(field "$paint" p50) | $(field "$paint" p95) | $(field "$paint" max) | $(field "$paint" late) | p95 ≤ 8 ms, 0 late |

Previews: an engine stand-in sends $(field "$preview" previews) previews of 512 × 512 (a TAESD preview of SD
at 512²), 25 ms apart; the studio runs a frame only when one is asked for, as eframe does. The
engine's event wakes the UI; "frames" is how many frames began between a preview's sending and
the end of the frame that shows it (1: the next frame); the times run from the sending to the end
of that frame, CPU only (the GPU's texture upload not counted).

| work | shown | p50 (ms) | p95 (ms) | max (ms) | frames | target |
|---|---|---|---|---|---|---|
| a step preview reaching the canvas | $(field "$preview" shown) | $(field "$preview" p50) | $(field "$preview" p95) | $(field "$preview" max) | $(field "$preview" frames-after-emit) | ≤ 1 frame |

## Audio on the CPU ($(nproc) cores), $(date -u +%Y-%m-%d)

Griffin-Lim, 32 iterations, momentum 0.99, from random phases (\`bench griffin-lim\`; torchaudio
2.11's \`GriffinLim\` with the same n_fft, window, hop and length):

| work | ours (s) | torchaudio (s) | ratio | target |
|---|---|---|---|---|
| Riffusion preset, one 512 × 512 image (5.11 s of 44.1 kHz) | $gl_ours | $gl_theirs | $(awk -v a="$gl_ours" -v b="$gl_theirs" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "—" }') | ≤ 0.3 s |
| studio preset, one 256 × 128 image (4.1 s of 16 kHz) | $gl_studio | — | — | |

Why the Riffusion row misses its target: that preset's frames are 17640 samples (n_fft), 512 of
them per image, and each of the 32 iterations runs one inverse and one forward STFT. A real FFT
of N points costs about 2.5 N log2 N floating-point operations, so the run is about
2 × 512 × 32 × 2.5 × 17640 × log2(17640) ≈ 20.4 GFLOP of FFT alone: $(awk -v a="$gl_ours" 'BEGIN { if (a > 0) printf "%.1f", 20.4 / a; else print "—" }') GFLOP/s for
ours and $(awk -v b="$gl_theirs" 'BEGIN { if (b > 0) printf "%.1f", 20.4 / b; else print "—" }') for torchaudio (both on libtorch's CPU FFT); 0.3 s would need about 68 GFLOP/s of
17640-point FFTs from $(nproc) cores. Shorter frames change what is reconstructed: the same
Griffin-Lim on frames of half the length converges to 0.1184 against 0.1125 (spectral
convergence, unit test \`griffin_lim_on_half_padded_frames_costs_little\`). The GPU row awaits a
session with a GPU: \`diffusion-studio --device cuda bench griffin-lim --preset riffusion\`.

The bundled music model: a clip ready to play after Generate (\`bench audio-generate\`: the audio
room's job — 20 DPM++ 2M Karras steps with CFG at 256 × 128, VAE decode, the mel pseudo-inverse
and 32 Griffin-Lim iterations — from submitting it to its samples; the studio shows it the next
frame):

| work | median (s) | slowest (s) | target |
|---|---|---|---|
| text to audio, bundled music model, $RUNS clips | $clip_median | $clip_slowest | ≤ 1 s |

## The bundled music model's quality, $(date -u +%Y-%m-%d)

\`diffusion-studio audio eval --model $MUSIC --clips 100\` (20 steps, guidance 4, 32 Griffin-Lim
iterations; prompts of one instrument with tempo, mode and key; the classifier fitted on 300
training clips):

$music_eval

## The bundled shapes model's quality, $(date -u +%Y-%m-%d)

\`diffusion-studio eval --model $SHAPES --captions 200 --edits 50 --inversions 20\` (20 DDIM steps,
guidance 5, analytic detectors; the ceilings are the detectors on the held-out images themselves
and on their VAE round trip):

$shapes_eval
TABLE
)
echo "$table"
{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` (bench/run.sh); each row runs both sides on the same machine in one go."
  echo
  echo "$table"
  # the training ablations take hours: their scripts (bench/ablate.sh) write these, kept as they are
  for part in bench/ablations/*.md; do
    if [ -f "$part" ]; then echo; cat "$part"; fi
  done
} > BENCHMARKS.md
