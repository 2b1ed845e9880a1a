#!/usr/bin/env bash
# Issue 5's training options measured against each other. Every variant starts from the same
# finished VAE, preview decoder and latent cache (`train --autoencoder-from BASE`), changes one
# UNet option of BASE's, trains the text encoder and UNet for STEPS steps, and is evaluated on the
# same held-out captions and images. Writes bench/ablations/unet.md, which `make bench` copies
# into BENCHMARKS.md. Hours on a 2-core CPU: run it by hand, not from `make bench`.
#   usage: bench/ablate.sh BIN BASE_RUN WORK_DIR [STEPS] [VARIANT …]
#   e.g.   bench/ablate.sh target/release/diffusion-studio /tmp/shapes-f4 /tmp/ablate 1500
# A variant already trained and evaluated under WORK_DIR is not run again (so an interrupted
# ablation resumes); VARIANT names pick some of them.
set -euo pipefail
BIN=$1 BASE=$2 WORK=$3 STEPS=${4:-1500}
shift $(( $# < 4 ? $# : 4 ))
PY=${PYTHON:-python3}
CAPTIONS=${ABLATE_CAPTIONS:-100} EDITS=${ABLATE_EDITS:-20} INVERSIONS=${ABLATE_INVERSIONS:-5}

# name | flags on top of BASE's options | what it tests
VARIANTS=$(cat <<'LIST'
base||BASE's options
v-prediction|--target v|v instead of ε prediction (Salimans & Ho 2022)
no-min-snr|--min-snr 0|no Min-SNR-5 loss weighting (Hang et al. 2023)
min-snr-5|--min-snr 5|Min-SNR-5 loss weighting (Hang et al. 2023), for a BASE trained without it
edm-noise|--noise edm|EDM's log-normal noise levels instead of uniform timesteps (Karras et al. 2022)
no-offset-noise|--offset-noise 0|no offset noise (Guttenberg 2023)
no-caption-dropout|--caption-dropout 0|no empty captions: nothing for classifier-free guidance to contrast
no-ema|--ema 0|the raw weights instead of their EMA (decay 0.999)
no-buckets|--buckets 128x128|square images only instead of three aspect-ratio buckets
LIST
)

# BASE's options as flags (options.json keys → --kebab-case), with STEPS UNet steps and the
# variant's own flags in place of BASE's values for those options
flags_for() {
  "$PY" - "$BASE/options.json" "$STEPS" "$1" <<'PY'
import json, sys
options = json.load(open(sys.argv[1]))
options["unet_steps"] = int(sys.argv[2])
change = sys.argv[3].split()
for flag, value in zip(change[::2], change[1::2]):
    options[flag.removeprefix("--").replace("-", "_")] = value
print(" ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(options.items())))
PY
}

mkdir -p "$WORK" bench/ablations
while IFS='|' read -r name flags what; do
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$name"; then continue; fi
  run="$WORK/$name"
  if [ ! -f "$run/eval.json" ]; then
    echo "== $name: $what" >&2
    # shellcheck disable=SC2046
    "$BIN" --device cpu train --run "$run" --autoencoder-from "$BASE" --out "$run/model" $(flags_for "$flags") >&2
    "$BIN" --device cpu eval --model "$run/model" --captions "$CAPTIONS" --edits "$EDITS" \
      --inversions "$INVERSIONS" --samples "$run/samples" --out "$run/eval.json" >/dev/null
  fi
done <<< "$VARIANTS"

VARIANTS="$VARIANTS" "$PY" - "$WORK" "$STEPS" "$CAPTIONS" "$EDITS" "$INVERSIONS" > bench/ablations/unet.md <<'PY'
import json, os, sys, datetime
work, steps, captions, edits, inversions = sys.argv[1:]
variants = os.environ["VARIANTS"].strip().splitlines()
rows = []
for line in variants:
    name, flags, what = line.split("|")
    path = os.path.join(work, name, "eval.json")
    if not os.path.isfile(path):
        continue
    e = json.load(open(path))
    done = json.load(open(os.path.join(work, name, "unet", "done.json")))
    psnr = dict((s, p) for s, p in e["inversion_psnr"])
    rows.append(f"| {name} | {'`' + flags + '`' if flags else '—'} | {done['final_loss']:.4f} "
                f"| {e['attribute_accuracy']:.3f} | {e['colour_accuracy']:.3f} | {e['shape_accuracy']:.3f} "
                f"| {e['background_accuracy']:.3f} | {e['extra_objects_per_image']:.2f} "
                f"| {e['p2p_layout_iou']:.3f} | {e['diffedit_mask_iou']:.3f} | {e['inpaint_object_rate']:.2f} "
                f"| {psnr.get(50, float('nan')):.1f} |")
print(f"## Shapes UNet training options, one at a time (CPU, 2 cores), {datetime.date.today()}")
print()
print(f"Each row trains the text encoder and UNet for {steps} steps from the same VAE, preview decoder")
print(f"and latent cache (`train --autoencoder-from`, base run's options otherwise), then runs `eval`")
print(f"with {captions} captions, {edits} edits and {inversions} inversions (20 DDIM steps, guidance 5).")
print("Short runs rank the options; the shipped model trains longer. Losses of ε and v targets are")
print("not comparable with each other. Written by bench/ablate.sh.")
print()
print("| variant | change | final loss | attributes | colour | shape | background | extra objects | P2P IoU | DiffEdit IoU | inpaint | inversion 50 (dB) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
cat bench/ablations/unet.md
