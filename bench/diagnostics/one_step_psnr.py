"""One-step image estimates of a shapes model: drawn shapes are encoded, noised to t, denoised in
one UNet call and decoded; prints the PSNR against the VAE round trip at each t (the denoiser's
quality apart from the VAE). Uses diffusers (the oracle), not our engine.

    python bench/diagnostics/one_step_psnr.py MODEL_FOLDER
"""
import math
import sys

import torch

from drawn_shapes import Model, draw

model = Model(sys.argv[1])
cases = []
for k, (shape, background) in enumerate([("star", (30, 60, 220)), ("circle", (240, 240, 240)),
                                         ("square", (20, 20, 20)), ("triangle", (30, 160, 60))]):
    for r in (20, 40):
        cases.append((draw(shape, r, (50 + k * 8, 60 + k * 5), background),
                      f"a {'big' if r == 40 else 'small'} red {shape}"))
psnr = {t: [] for t in [50, 100, 200, 300, 500]}
with torch.no_grad():
    for image, caption in cases:
        context = model.context(caption)
        z = model.latents(image)
        reference = model.decode(z)
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
        for t in psnr:
            a = model.scheduler.alphas_cumprod[t]
            zt = a.sqrt() * z + (1 - a).sqrt() * noise
            out = model.unet(zt, t, context).sample
            if model.prediction == "v_prediction":
                x0 = a.sqrt() * zt - (1 - a).sqrt() * out
            else:
                x0 = (zt - (1 - a).sqrt() * out) / a.sqrt()
            mse = ((model.decode(x0) - reference) ** 2).mean().item() / 4
            psnr[t].append(10 * math.log10(1 / mse))
print(sys.argv[1], model.prediction, {t: round(sum(v) / len(v), 1) for t, v in psnr.items()})
