//! MagicMix (Liew et al. 2022, <https://arxiv.org/abs/2210.16056>): semantic mixing — the image
//! gives the layout, the prompt the content. The image's latents are noised to the level `kmax`;
//! from there to `kmin` (the layout phase) each step's latents are mixed with the image's latents
//! noised to that step, weight ν on the generated ones; below `kmin` denoising is plain (the
//! content phase). With ν = 1 it is img2img at strength `kmax`.

use crate::engine::methods::img2img::{check_size, noised_image, prepare, start_index};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::schedulers::Scheduler;
use crate::engine::{JobContext, JobError};
use crate::protocol::{ImageData, MagicMixParams};

/// Runs MagicMix as an engine job.
pub fn run(
    model: &StableDiffusion,
    params: &MagicMixParams,
    ctx: &mut JobContext<'_>,
) -> Result<ImageData, JobError> {
    let (kmin, kmax, mix) = (params.kmin, params.kmax, params.mix_factor);
    if !(0.0..=1.0).contains(&kmin) || !(0.0..=1.0).contains(&kmax) || kmin > kmax {
        return Err(JobError::Failed(format!("need 0 ≤ kmin ≤ kmax ≤ 1, got kmin {kmin}, kmax {kmax}")));
    }
    if !(0.0..=1.0).contains(&mix) {
        return Err(JobError::Failed(format!("the mix factor must be in [0, 1], got {mix}")));
    }
    check_size(model, &params.image, "image")?;
    let base = &params.base;
    // 1. prompts, scheduler; the layout phase runs from the kmax step to the kmin step
    let (text, negative, mut scheduler) = prepare(model, base)?;
    let order = scheduler.order();
    let start = start_index(base.steps, kmax, order)?;
    let end = base.steps.saturating_sub((base.steps as f64 * kmin) as usize) * order;
    // 2. the image's latents noised to the start (as img2img draws them)
    let (layout, noise, latents) = noised_image(model, &params.image, base.seed, scheduler.as_ref(), start)?;
    // 3. the loop; inside the layout phase, mix towards the noised layout after each step
    let conditioning = Conditioning::guided(&text, &negative, base);
    let mut mixing =
        |scheduler: &dyn Scheduler, next: usize, latents: tch::Tensor| -> Result<tch::Tensor, JobError> {
            if next > start && next < end {
                let noised = scheduler.add_noise(&layout, &noise, next)?;
                Ok(latents.f_mul_scalar(mix)?.f_add(&noised.f_mul_scalar(1.0 - mix)?)?)
            } else {
                Ok(latents)
            }
        };
    let hooks = Hooks { start, after_step: Some(&mut mixing), ..Default::default() };
    let latents = super::denoise_job(model, scheduler.as_mut(), latents, &conditioning, hooks, ctx)?;
    model.decode_to_image(&latents)
}
