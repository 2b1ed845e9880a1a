"""Is the shape word learnt in pixel space where the latent runs fail? A controlled side-by-side:
the same small UNet (diffusers' UNet2DConditionModel, 32-64-64 from 16 × 16 down, cross-attention
at 16 × 16 and 8 × 8, v-prediction, SD's scaled-linear schedule) and the same one-object scenes (drawn with PIL
as `drawn_shapes.draw` draws them: four shapes, six colours, six backgrounds, small and big,
anywhere), conditioned on a learnt embedding of the caption's words, trained either on the images
at 32 × 32 pixels or on their 16 × 16 × C latents from a shapes autoencoder. Every few hundred
steps it prints the loss change when the shape word (or the colour word) is swapped, on held-out
scenes at t = 400/600/800, and at the end writes a sheet of samples (rows: circle, square, star,
triangle; 20 DDIM steps, guidance 3).

    python bench/diagnostics/pixel_vs_latent.py pixel STEPS OUT.png
    python bench/diagnostics/pixel_vs_latent.py latent STEPS OUT.png AUTOENCODER_FOLDER
    python bench/diagnostics/pixel_vs_latent.py clip STEPS OUT.png MODEL_FOLDER

`clip` is `latent` with the model folder's own (frozen) CLIP text encoder reading the whole
caption ("a big red star on a black background", padded to 77 tokens) in place of the learnt
word embeddings: the way the shapes models are conditioned.

    python bench/diagnostics/pixel_vs_latent.py ours STEPS OUT.png MODEL_FOLDER RUN/latents.safetensors

`ours` is `clip` trained on our dataset instead of the PIL scenes: the 128 × 128 latents and
caption tokens our trainer cached in its run folder (its last 32 held out for the measure, in
which every shape word, or every colour word, is swapped for the next in our vocabulary).
With `UNET=FOLDER` and 0 steps, the same measure is taken of FOLDER's trained UNet (a
v-prediction model of ours), on the same held-out scenes: our trainer and this one side by side.
`KEEP_SHAPES=circle,square,star,triangle` keeps only the scenes that name one of those shapes
(one-object runs), and swaps the shape word among them; `FULL_CAPTIONS=1` keeps only the scenes
whose captions name the size and the background (as the PIL scenes' captions always do).
`ARCH=FOLDER` trains a freshly initialised UNet of FOLDER's architecture (one of our model
folders) in place of the diagnostic's own: our architecture under this trainer.
`SEED=N` draws the UNet's initial weights and the batches from seed N (default 0);
`CLIP=1` clips the gradient's global norm at 1.0 before each step, as our trainer does.
"""
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image

from drawn_shapes import draw
from our_vocab import COLOURS as OUR_COLOURS, SHAPES as OUR_SHAPES, swapped

torch.set_num_threads(1)
mode, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
SHAPES = ["circle", "square", "star", "triangle"]
COLOURS = {"red": (220, 30, 30), "green": (40, 180, 60), "blue": (30, 60, 220),
           "yellow": (240, 220, 40), "purple": (140, 50, 170), "white": (245, 245, 245)}
BACKGROUNDS = {"black": (15, 15, 15), "orange": (240, 140, 30), "pink": (240, 150, 190),
               "brown": (120, 70, 30), "blue": (30, 60, 220), "green": (40, 180, 60)}
WORDS = ["<pad>", "small", "big"] + SHAPES + sorted(set(COLOURS) | set(BACKGROUNDS))
INDEX = {w: i for i, w in enumerate(WORDS)}


def scene(rng):
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    big = rng.random() < 0.5
    r = rng.uniform(24, 33) if big else rng.uniform(12, 17)
    centre = (rng.uniform(r, 128 - r), rng.uniform(r, 128 - r))
    image = draw(shape, r, centre, BACKGROUNDS[background], COLOURS[colour])
    return image, ["big" if big else "small", colour, shape, background]


def tokens(words):
    return torch.tensor([INDEX[w] for w in words])


if mode == "pixel":
    encode = lambda images: torch.stack([
        torch.tensor(np.array(im.resize((32, 32), Image.BOX))).permute(2, 0, 1).float() / 127.5 - 1
        for im in images])
    decode = lambda z: z.clamp(-1, 1)
    channels, size = 3, 32
else:
    vae = AutoencoderKL.from_pretrained(sys.argv[4], subfolder="vae").eval()
    if mode in ("clip", "ours"):
        from transformers import CLIPTextModel, CLIPTokenizer
        tokenizer = CLIPTokenizer.from_pretrained(sys.argv[4], subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(sys.argv[4], subfolder="text_encoder").eval()
    scale = vae.config.scaling_factor

    def encode(images):
        x = torch.stack([torch.tensor(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1 for im in images])
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean * scale

    decode = lambda z: vae.decode(z / scale).sample.clamp(-1, 1)
    channels, size = vae.config.latent_channels, 16

rng = random.Random(0)
t0 = time.time()
if mode == "ours":
    from safetensors import safe_open
    cache = safe_open(sys.argv[5], "pt")
    everything, all_ids = cache.get_tensor("128x128.mean") * scale, cache.get_tensor("128x128.ids")
    if os.environ.get("KEEP_SHAPES"):  # only the scenes whose captions name one of these shapes
        OUR_SHAPES = os.environ["KEEP_SHAPES"].split(",")  # and swapped among themselves
        kept = torch.stack([(all_ids == tokenizer(w, add_special_tokens=False).input_ids[0]).any(1)
                            for w in OUR_SHAPES]).any(0)
        everything, all_ids = everything[kept], all_ids[kept]
    if os.environ.get("FULL_CAPTIONS"):  # only the captions that name the size and the background
        has = lambda word: (all_ids == tokenizer(word, add_special_tokens=False).input_ids[0]).any(1)
        kept = (has("small") | has("big")) & has("background")
        everything, all_ids = everything[kept], all_ids[kept]
    data, captions, held_x, held_ids = everything[:-32], all_ids[:-32], everything[-32:], all_ids[-32:]
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    assert (swapped(tokenizer, held_ids, OUR_SHAPES) != held_ids).any(1).all(), "a held-out caption names no shape"
else:
    train = [scene(rng) for _ in range(6000)]
    data = torch.cat([encode([im for im, _ in train[i:i + 200]]) for i in range(0, len(train), 200)])
    captions = torch.stack([tokens(w) for _, w in train])
    held = [scene(random.Random(10_000 + i)) for i in range(32)]
    held_x = encode([im for im, _ in held])
print(f"{mode}: {len(data)} scenes encoded in {time.time() - t0:.0f} s, std {data.std():.3f}", flush=True)

torch.manual_seed(int(os.environ.get("SEED", "0")))
# the same levels from 16 × 16 down; pixels get one more level on top (32 channels, no attention:
# self-attention over 1024 positions is 7 s a step on one CPU thread)
top = (32,) if mode == "pixel" else ()
unet = UNet2DConditionModel(
    sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
    block_out_channels=top + (32, 64, 64), norm_num_groups=8,
    cross_attention_dim=128 if mode in ("clip", "ours") else 64,
    attention_head_dim=8,
    down_block_types=("DownBlock2D",) * len(top) + ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D") + ("UpBlock2D",) * len(top))
if os.environ.get("ARCH"):  # a fresh UNet of a model folder's architecture (its unet/config.json)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(os.environ["ARCH"], subfolder="unet"))
if os.environ.get("UNET"):  # measure a trained model folder's UNet instead (with STEPS 0)
    unet = UNet2DConditionModel.from_pretrained(os.environ["UNET"], subfolder="unet").eval()
embed = torch.nn.Embedding(len(WORDS), 64)
position = torch.nn.Parameter(torch.randn(4, 64) * 0.02)
params = list(unet.parameters()) + list(embed.parameters()) + [position]
optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False)
abar = scheduler.alphas_cumprod


encoded = {}


def caption_encoding(row):
    words = tuple(WORDS[i] for i in row.tolist())
    if words not in encoded:
        caption = "" if words[0] == "<pad>" else f"a {words[0]} {words[1]} {words[2]} on a {words[3]} background"
        ids = tokenizer([caption], padding="max_length", max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            encoded[words] = text_encoder(ids)[0][0]
    return encoded[words]


def context(ids):
    if ids.shape[1] == 77:  # our cached caption tokens
        with torch.no_grad():
            return text_encoder(ids)[0]
    if mode in ("clip", "ours"):
        return torch.stack([caption_encoding(row) for row in ids])
    return embed(ids) + position


def v_loss(x, ids, t, noise):
    a = abar[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * x
    return ((unet(xt, t, context(ids)).sample - target) ** 2).mean(dim=(1, 2, 3))


def sensitivity():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(held_x.shape, generator=g)
    if mode == "ours":
        true, shape_swapped = held_ids, swapped(tokenizer, held_ids, OUR_SHAPES)
        colour_swapped = swapped(tokenizer, held_ids, OUR_COLOURS)
    else:
        true = torch.stack([tokens(w) for _, w in held])
        shape_swapped = torch.stack([tokens([w[0], w[1], SHAPES[(SHAPES.index(w[2]) + 1) % 4], w[3]]) for _, w in held])
        colours = list(COLOURS)
        colour_swapped = torch.stack([tokens([w[0], colours[(colours.index(w[1]) + 1) % 6], w[2], w[3]]) for _, w in held])
    line = []
    with torch.no_grad():
        for t in (400, 600, 800):
            tt = torch.full((len(held_x),), t)
            base = v_loss(held_x, true, tt, noise).mean().item()
            s = v_loss(held_x, shape_swapped, tt, noise).mean().item()
            c = v_loss(held_x, colour_swapped, tt, noise).mean().item()
            line.append(f"t={t}: shape {100 * (s / base - 1):+.1f}% colour {100 * (c / base - 1):+.1f}%")
    return "; ".join(line)


t0, norms = time.time(), []
if steps == 0:
    print(f"{mode} untrained or loaded | {sensitivity()}", flush=True)
for step in range(1, steps + 1):
    idx = torch.randint(0, len(data), (64,))
    ids = captions[idx].clone()
    drop = torch.rand(64) < 0.1
    ids[drop] = empty_ids if mode == "ours" else 0
    t = torch.randint(0, 1000, (64,))
    loss = v_loss(data[idx], ids, t, torch.randn(data[idx].shape)).mean()
    optimizer.zero_grad()
    loss.backward()
    # the gradient's global norm (clipped at 1.0 with CLIP=1), its mean printed with the loss
    norms.append(torch.nn.utils.clip_grad_norm_(params, 1.0 if os.environ.get("CLIP") else float("inf")).item())
    optimizer.step()
    if step % 250 == 0 or step == steps:
        print(f"{mode} step {step} loss {loss.item():.4f} grad norm {np.mean(norms):.2f} {time.time() - t0:.0f} s | "
              f"{sensitivity()}", flush=True)
        norms = []

scheduler.set_timesteps(20)
rows = []
with torch.no_grad():
    for shape in SHAPES:
        ids = torch.stack([tokens(["big", "red", shape, "black"])] * 6)
        empty = torch.zeros_like(ids)
        g = torch.Generator().manual_seed(7)
        z = torch.randn((6, channels, size, size), generator=g)
        for t in scheduler.timesteps:
            tt = torch.full((6,), int(t))
            cond, uncond = unet(z, tt, context(ids)).sample, unet(z, tt, context(empty)).sample
            z = scheduler.step(uncond + 3 * (cond - uncond), t, z).prev_sample
        images = decode(z)
        images = F.interpolate(images, size=(128, 128), mode="nearest") if mode == "pixel" else images
        rows.append(torch.cat(list(images), dim=2))
sheet = ((torch.cat(rows, dim=1).permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
Image.fromarray(sheet).save(out)
print("wrote", out)
