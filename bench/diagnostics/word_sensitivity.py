"""How much a shapes model uses each word: its v/ε loss on drawn shapes (4 shapes x 2 sizes x 3
places, one noise draw each) at t = 200..800 with the true caption, with the shape word swapped,
with the colour word swapped, and with the empty prompt. A model that draws the asked-for shape
loses clearly more with the shape word swapped. Uses diffusers (the oracle), not our engine.

    python bench/diagnostics/word_sensitivity.py MODEL_FOLDER
"""
import sys

import torch

from drawn_shapes import Model, draw

model = Model(sys.argv[1])
shapes = ["star", "circle", "square", "triangle"]
out = {}
with torch.no_grad():
    for t in [200, 400, 600, 800]:
        losses = {"true": 0, "shape": 0, "colour": 0, "empty": 0}
        n = 0
        for si, shape in enumerate(shapes):
            for r in (22, 40):
                for seed in range(3):
                    z = model.latents(draw(shape, r, (45 + seed * 15, 50 + si * 8), (30, 60, 220)))
                    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
                    a = model.scheduler.alphas_cumprod[t]
                    zt = a.sqrt() * z + (1 - a).sqrt() * noise
                    target = a.sqrt() * noise - (1 - a).sqrt() * z if model.prediction == "v_prediction" else noise
                    size, other = ("big" if r == 40 else "small"), shapes[(si + 1) % 4]
                    captions = {"true": f"a {size} red {shape} on a blue background",
                                "shape": f"a {size} red {other} on a blue background",
                                "colour": f"a {size} green {shape} on a blue background",
                                "empty": ""}
                    for key, caption in captions.items():
                        prediction = model.unet(zt, t, model.context(caption)).sample
                        losses[key] += ((prediction - target) ** 2).mean().item()
                    n += 1
        out[t] = {k: round(v / n, 4) for k, v in losses.items()}
print(sys.argv[1], out)
