"""What the diagnostics beside this file share: a shapes model folder loaded with diffusers, and
shapes drawn with PIL the way the dataset draws them (a red object on a plain background)."""
import math

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from PIL import Image, ImageDraw
from transformers import CLIPTextModel, CLIPTokenizer

RED = (220, 30, 30)


class Model:
    def __init__(self, folder):
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.prediction = self.scheduler.config.prediction_type

    def context(self, caption):
        ids = self.tokenizer([caption], padding="max_length", max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]

    def latents(self, image):
        """The scaled posterior mean of a PIL image."""
        x = torch.tensor(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1, 1)


def draw(shape, radius, centre, background, colour=RED):
    """A 128×128 image of one star, circle, square or triangle."""
    image = Image.new("RGB", (128, 128), background)
    d = ImageDraw.Draw(image)
    (x, y), r = centre, radius
    if shape == "star":
        d.polygon([(x + (r if i % 2 == 0 else r * 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
                    y + (r if i % 2 == 0 else r * 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5))
                   for i in range(10)], fill=colour)
    elif shape == "circle":
        d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif shape == "square":
        d.rectangle([x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8], fill=colour)
    else:
        d.polygon([(x, y - r), (x - r, y + r * 0.7), (x + r, y + r * 0.7)], fill=colour)
    return image
