//! Methods: each a small strategy over the engine's loop (see ARCHITECTURE in README.md).

pub mod audio;
pub mod diffedit;
pub mod forward_noise;
pub mod img2img;
pub mod inpaint;
pub mod instruct_pix2pix;
pub mod inversion;
pub mod magic_mix;
pub mod mask_edges;
pub mod null_text;
pub mod paint_with_words;
pub mod prompt_to_prompt;

use tch::Tensor;

use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{self, Conditioning, Hooks};
use crate::engine::schedulers::{CpuGeneratorNoise, Scheduler};
use crate::engine::{JobContext, JobError};

/// The sampler run as a job: a preview and a cancel check after every step.
pub(crate) fn denoise_job(
    model: &StableDiffusion,
    scheduler: &mut dyn Scheduler,
    latents: Tensor,
    conditioning: &Conditioning<'_>,
    hooks: Hooks<'_>,
    ctx: &mut JobContext<'_>,
) -> Result<Tensor, JobError> {
    sampler::denoise_with(
        &model.unet,
        scheduler,
        latents,
        conditioning,
        &mut CpuGeneratorNoise,
        hooks,
        |step, of, latents| {
            ctx.progress(step, of, model.paced_preview(step, latents));
            ctx.checkpoint()
        },
    )
}
