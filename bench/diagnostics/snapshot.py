"""Makes a finished copy of a running (or stopped) shapes training run from its last UNet
checkpoint, so that the checkpoint can be exported and measured while the run goes on:

    python bench/diagnostics/snapshot.py RUN COPY
    diffusion-studio train --run COPY <the run's flags> --out MODEL

The copy shares the run's autoencoder stages and tokenizer (copied), and its UNet stage is the
checkpoint's EMA weights (the text encoder's own weights when it has no EMA: a frozen encoder),
with a done.json that says which step they are from. Nothing in RUN is changed. RAW=1 takes the
raw weights instead of the EMA (early in a run, an EMA of decay 0.999 is still a third the
initialisation at step 1000).
"""
import json
import os
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

run, copy = Path(sys.argv[1]), Path(sys.argv[2])
if copy.exists():
    sys.exit(f"{copy} exists; give a new folder")
checkpoint = run / "unet" / "checkpoint.safetensors"
if not checkpoint.is_file():
    sys.exit(f"{checkpoint} does not exist yet: the run has not checkpointed its UNet stage")
copy.mkdir(parents=True)
for name in ["vae", "taesd", "tokenizer"]:
    shutil.copytree(run / name, copy / name, ignore=shutil.ignore_patterns("checkpoint.safetensors"))
shutil.copy(run / "options.json", copy / "options.json")
tensors = load_file(str(checkpoint))
step, seconds = int(tensors["step"].item()), float(tensors["seconds"].item())
for part in ["unet", "text_encoder"]:
    ema = {k[len(part) + 5:]: v for k, v in tensors.items() if k.startswith(f"{part}.ema.")}
    raw = {k[len(part) + 9:]: v for k, v in tensors.items() if k.startswith(f"{part}.weights.")}
    weights = raw if os.environ.get("RAW") else (ema or raw)
    if not weights:
        sys.exit(f"{checkpoint} has no weights of {part}")
    (copy / "unet" / part).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(copy / "unet" / part / "final.safetensors"))
# loss.csv: "step,mean of the last 100 losses,lr" every 100 steps
rows = [line.split(",") for line in (run / "unet" / "loss.csv").read_text().split()]
recent = [float(loss) for at, loss, _ in rows if int(at) <= step][-1:] or [float("nan")]
report = {"stage": "unet", "steps": step, "seconds": seconds,
          "final_loss": recent[0], "metrics": {"snapshot_of_step": step}}
(copy / "unet" / "done.json").write_text(json.dumps(report, indent=1))
print(f"{copy}: step {step}, {seconds:.0f} s, loss {report['final_loss']:.4f}")
