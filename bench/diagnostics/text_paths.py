"""Which of the UNet's two views of the prompt carries a word? With `--unet-text-time` our UNets
read the caption twice: through cross-attention (the text encoder's 77 hidden states), and as a
pooled prompt added to the time embedding (diffusers' `addition_embed_type="text"`). This swaps
every shape word, or every colour word, for the next in our vocabulary in both views, in the
cross-attention context only, or in the pooled prompt only, and prints the loss change on a run's
last 32 cached latents (the held-out scenes of `pixel_vs_latent.py ours`) at t = 400/600/800.

    python bench/diagnostics/text_paths.py MODEL_FOLDER RUN/latents.safetensors

MODEL_FOLDER is a diffusers-format folder of ours (the one `train --out` writes); the latents file
must come from a run on the same VAE.
"""
import sys

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from our_vocab import COLOURS, SHAPES, swapped

torch.set_num_threads(1)
folder, lat = sys.argv[1], sys.argv[2]
unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
c = safe_open(lat, "pt")
x = c.get_tensor("128x128.mean")[-32:] * vae.config.scaling_factor
ids = c.get_tensor("128x128.ids")[-32:]
scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
abar, pred = scheduler.alphas_cumprod, scheduler.config.prediction_type
with torch.no_grad():
    ctx = {k: te(v)[0] for k, v in [("true", ids), ("shape", swapped(tok, ids, SHAPES)), ("colour", swapped(tok, ids, COLOURS))]}
pool = unet.add_embedding.forward if unet.add_embedding is not None else None


def loss(t, cross, pooled, noise):
    """The mean loss with `cross`'s context in cross-attention and `pooled`'s in the time embedding."""
    if pool is not None:
        unet.add_embedding.forward = lambda _: pool(ctx[pooled])
    a = abar[t]
    xt = a.sqrt() * x + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x if pred == "v_prediction" else noise
    with torch.no_grad():
        return ((unet(xt, torch.full((32,), t), ctx[cross]).sample - target) ** 2).mean().item()


g = torch.Generator().manual_seed(1)
noise = torch.randn(x.shape, generator=g)
for t in (400, 600, 800):
    base = loss(t, "true", "true", noise)
    row = [f"t={t}"]
    for w in ("shape", "colour"):
        both, cross, pooled = loss(t, w, w, noise), loss(t, w, "true", noise), loss(t, "true", w, noise)
        row.append(f"{w}: both {100 * (both / base - 1):+.1f}% cross-only {100 * (cross / base - 1):+.1f}% "
                   f"pooled-only {100 * (pooled / base - 1):+.1f}%")
    print(" | ".join(row), flush=True)
