//! img2img / SDEdit (Meng et al. 2021, <https://arxiv.org/abs/2108.01073>): encode the image,
//! noise it to the level of the step that `strength` picks, denoise from there towards the
//! prompt. Random draws follow diffusers' `StableDiffusionImg2ImgPipeline` (VAE sample, then the
//! noise), so a seed reproduces its image.

use tch::Tensor;

use crate::engine::image_tensor::tensor_from_image;
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::schedulers::Scheduler;
use crate::engine::{JobContext, JobError};
use crate::protocol::{GenerateParams, ImageData, Img2ImgParams};

/// The first step index of a run of `steps` at `strength` (diffusers' `get_timesteps`): the
/// last ⌊steps·strength⌋ steps run, each `order` model evaluations long.
pub fn start_index(steps: usize, strength: f64, order: usize) -> Result<usize, JobError> {
    if strength.is_nan() || strength <= 0.0 || strength > 1.0 {
        return Err(JobError::Failed(format!("strength must be in (0, 1], got {strength}")));
    }
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(JobError::Failed(format!(
            "strength {strength} of {steps} steps runs no step; raise --strength or --steps"
        )));
    }
    Ok((steps - run) * order)
}

/// Checks that an input image fits the model's latent grid.
pub fn check_size(model: &StableDiffusion, image: &ImageData, what: &str) -> Result<(), JobError> {
    let factor = model.vae_scale_factor as u32;
    let fits = |side: u32| side > 0 && side.is_multiple_of(factor);
    if !fits(image.width) || !fits(image.height) {
        return Err(JobError::Failed(format!(
            "the {what} is {}×{}; width and height must be multiples of {factor} (resize or crop it)",
            image.width, image.height
        )));
    }
    Ok(())
}

/// Checks that `params`' output size fits the model's latent grid.
pub fn check_output_size(model: &StableDiffusion, params: &GenerateParams) -> Result<(), JobError> {
    let factor = model.vae_scale_factor as u32;
    let fits = |side: u32| side >= factor && side.is_multiple_of(factor);
    if !fits(params.width) || !fits(params.height) {
        return Err(JobError::Failed(format!(
            "width and height must be multiples of {factor}, got {}×{}",
            params.width, params.height
        )));
    }
    Ok(())
}

/// The prompts' embeddings and the scheduler with its timesteps set, as every method starts.
pub fn prepare(
    model: &StableDiffusion,
    params: &GenerateParams,
) -> Result<(Tensor, Tensor, Box<dyn Scheduler>), JobError> {
    if params.steps == 0 {
        return Err(JobError::Failed("steps must be at least 1".into()));
    }
    let (text, negative) = model.prompt_pair(&params.prompt, &params.negative_prompt, params.clip_skip)?;
    let mut scheduler = model.scheduler(&params.scheduler)?;
    scheduler.set_timesteps(params.steps)?;
    Ok((text, negative, scheduler))
}

/// SDEdit's start, in diffusers' draw order from the seeded generator: the image's latents
/// (a VAE posterior sample), the noise, and the latents noised to step `start`.
pub fn noised_image(
    model: &StableDiffusion,
    image: &ImageData,
    seed: u64,
    scheduler: &dyn Scheduler,
    start: usize,
) -> Result<(Tensor, Tensor, Tensor), JobError> {
    tch::manual_seed(seed as i64);
    let image_latents = model.encode_image_sample(&tensor_from_image(image, model.device)?)?;
    let noise = model.cpu_randn(&image_latents.size())?;
    let latents = scheduler.add_noise(&image_latents, &noise, start)?;
    Ok((image_latents, noise, latents))
}

/// Runs img2img as an engine job.
pub fn run(
    model: &StableDiffusion,
    params: &Img2ImgParams,
    ctx: &mut JobContext<'_>,
) -> Result<ImageData, JobError> {
    check_size(model, &params.image, "image")?;
    let base = &params.base;
    // 1. prompts, scheduler, and where to start
    let (text, negative, mut scheduler) = prepare(model, base)?;
    let start = start_index(base.steps, params.strength, scheduler.order())?;
    // 2. the image's latents, noised to the start step (draws: VAE sample, then the noise)
    let (_, _, latents) = noised_image(model, &params.image, base.seed, scheduler.as_ref(), start)?;
    // 3. the loop from there
    let conditioning = Conditioning::guided(&text, &negative, base);
    let hooks = Hooks { start, ..Default::default() };
    let latents = super::denoise_job(model, scheduler.as_mut(), latents, &conditioning, hooks, ctx)?;
    model.decode_to_image(&latents)
}
