#!/bin/bash
# Trains the shapes model's text encoder and UNet on a lent GPU machine (README, "GPU"), from a
# finished run's autoencoder, in one process that outlives the device tool's 10-minute calls.
#
#   here:  bash bench/gpu-train.sh prepare AE_RUN        # → .gpu/ (binary, autoencoder, libasound)
#   there: TRAIN="…" bash bench/gpu-train.sh start SECONDS  # latents, calibration, detached run
#   there: bash bench/gpu-train.sh finish                # waits for it; the model → $OUT/model.tar.*
#
# AE="…" (there) are the autoencoder's flags, as the run in AE_RUN was trained (default: the
# f = 4 edge-weighted VAE of BENCHMARKS.md); TRAIN="…" are the UNet's. The run folder cannot come
# back (its checkpoint is over the tool's file limits), so `start` sizes the step count from an
# 80-step calibration to end SECONDS after it began; call `finish` at once after `start` returns
# (the machine is given back 30 s after a call). Carry `.gpu` in both calls.
set -u
mode=${1:?prepare, start or finish}
G=$PWD/.gpu
DEVICE=${DEVICE:-cuda}
AE=${AE:---vae-levels 3 --vae-edge-weight 5 --vae-steps 2000 --taesd-steps 1000}
TRAIN=${TRAIN:---target v --unet-channels 16,32,64,128 --unet-attention 0,0,1,0 --unet-norm-groups 4 --unet-batch 256 --unet-text-time --text-lr-scale 0}
case $mode in
prepare)
  from=${2:?the finished autoencoder run folder}
  mkdir -p "$G/lib" "$G/ae"
  strip -o "$G/ds" target/release/diffusion-studio && xz -f -T2 "$G/ds"
  cp -L /lib/x86_64-linux-gnu/libasound.so.2 "$G/lib/"
  cp "$from/options.json" "$G/ae/" && { [ ! -d "$from/tokenizer" ] || cp -r "$from/tokenizer" "$G/ae/"; }
  for stage in vae taesd; do mkdir -p "$G/ae/$stage" && cp "$from/$stage"/{done.json,final.safetensors} "$G/ae/$stage/"; done
  du -sh "$G" ;;
start)
  seconds=${2:?seconds from now by which training must end}
  t0=$(date +%s); end=$((t0 + seconds))
  xz -dc "$G/ds.xz" > /tmp/ds && chmod +x /tmp/ds
  export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib:$G/lib
  /tmp/ds info | grep -i cuda
  flags="$AE --checkpoint-every 1000000"
  # the latent cache, once; every run below copies it
  [ -f /tmp/base/latents.safetensors ] || /tmp/ds --device $DEVICE train --run /tmp/base --autoencoder-from "$G/ae" $flags $TRAIN --unet-steps 1 >/tmp/base.log 2>&1 || { cat /tmp/base.log; exit 1; }
  rm -rf /tmp/calibration
  /tmp/ds --device $DEVICE train --run /tmp/calibration --autoencoder-from /tmp/base $flags $TRAIN --unet-steps 80 >/dev/null 2>&1
  per80=$(python3 -c "import json;print(json.load(open('/tmp/calibration/unet/done.json'))['seconds'])")
  steps=$(python3 -c "print(int(($end - $(date +%s) - 25) / ($per80 / 80) * 0.95) // 100 * 100)")
  echo "calibration: $per80 s per 80 steps; training $steps steps"
  echo "$flags $TRAIN --unet-steps $steps" > /tmp/train.flags
  setsid nohup /tmp/ds --device $DEVICE train --run /tmp/run --autoencoder-from /tmp/base $flags $TRAIN --unet-steps "$steps" --out /tmp/model >/tmp/run.log 2>&1 </dev/null &
  sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
  while [ $(date +%s) -lt $((t0 + 570)) ] && [ $(date +%s) -lt $end ]; do sleep 10; done
  tr '\r' '\n' </tmp/run.log | tail -1 ;;
finish)
  t0=$(date +%s)
  while pgrep -f "train --run /tmp/run " >/dev/null && [ $(( $(date +%s) - t0 )) -lt 560 ]; do sleep 5; done
  tr '\r' '\n' </tmp/run.log | tail -3
  [ -d /tmp/model ] || { echo "no model: the run did not finish"; exit 1; }
  # the autoencoder and tokenizer are the prepared run's: only what this run trained comes back
  mkdir -p /tmp/pack && cp -r /tmp/model/{unet,text_encoder,scheduler,model_index.json,TRAINING.md} /tmp/run/unet/loss.csv /tmp/train.flags /tmp/pack/
  tar -C /tmp/pack -cf - . | split -b 15M - "$OUT/model.tar."
  ls -la "$OUT" ;;
*) echo "unknown mode $mode: prepare, start or finish"; exit 2 ;;
esac
