"""The diffusers side of `make bench`: the same work as diffusion-studio, timed the same way."""

import sys
import time

import diffusers
import torch


def unet(latent: int, passes: int) -> float:
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    sample = torch.randn(2, 4, latent, latent)
    context = torch.randn(2, 77, 768)
    with torch.no_grad():
        model(sample, 500, encoder_hidden_states=context)
        start = time.perf_counter()
        for _ in range(passes):
            model(sample, 500, encoder_hidden_states=context)
    return (time.perf_counter() - start) / passes


def generate(model: str, steps: int, runs: int, size: int = 16, scheduler: str = "dpm++2m-karras") -> float:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    if scheduler == "ddim":
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    pipe.set_progress_bar_config(disable=True)
    def once():
        pipe("a red circle on a blue background", negative_prompt="a green square", num_inference_steps=steps,
             guidance_scale=7.5, height=size, width=size, generator=torch.Generator("cpu").manual_seed(3))
    once()
    start = time.perf_counter()
    for _ in range(runs):
        once()
    return (time.perf_counter() - start) / runs


def griffin_lim(iterations: int, runs: int) -> float:
    """torchaudio's GriffinLim with Riffusion's settings on 512 frames (5.11 s) of random
    magnitudes (its time does not depend on them), after a warm-up run."""
    import torchaudio
    transform = torchaudio.transforms.GriffinLim(n_fft=17640, n_iter=iterations, win_length=4410, hop_length=441,
                                                 power=1.0, momentum=0.99, length=511 * 441)
    magnitude = torch.rand(8821, 512)
    with torch.no_grad():
        transform(magnitude)
        start = time.perf_counter()
        for _ in range(runs):
            transform(magnitude)
    return (time.perf_counter() - start) / runs


if __name__ == "__main__":
    if sys.argv[1] == "griffin-lim":
        print(f"{griffin_lim(int(sys.argv[2]), int(sys.argv[3])):.4f}")
    elif sys.argv[1] == "unet":
        print(f"{unet(int(sys.argv[2]), int(sys.argv[3])):.4f}")
    else:
        extra = (int(sys.argv[5]), sys.argv[6]) if len(sys.argv) > 6 else ()
        print(f"{generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *extra):.4f}")
