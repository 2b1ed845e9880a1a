//! DDIM inversion (Song et al. 2021, §4.3; as used by Mokady et al. 2022 and Hertz et al. 2022
//! for real-image editing): run the deterministic DDIM update backwards from the image's latents
//! (the VAE posterior mean) to noise under the prompt, without guidance, keeping every latent.
//! Regenerating from the last one with DDIM gives the image back; how closely (PSNR) says how
//! faithful edits starting from the inversion will be.

use tch::Tensor;

use crate::engine::image_tensor::tensor_from_image;
use crate::engine::methods::img2img::check_size;
use crate::engine::methods::null_text::{self, NullTextSettings};
use crate::engine::pipeline::{PREVIEW_SIDE, StableDiffusion};
use crate::engine::sampler::{self, Conditioning, Hooks};
use crate::engine::schedulers::{CpuGeneratorNoise, SchedulerChoice, SchedulerKind};
use crate::engine::{JobContext, JobError};
use crate::protocol::{GenerateParams, ImageData, Inversion, InvertParams};

/// z₀ … z_T of `image` under `prompt` over `steps` DDIM steps. `on_step(step, of, latents)`
/// runs after each step.
pub fn ddim_invert(
    model: &StableDiffusion,
    image: &ImageData,
    prompt: &str,
    steps: usize,
    clip_skip: usize,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<Vec<Tensor>, JobError> {
    check_size(model, image, "image")?;
    if steps == 0 {
        return Err(JobError::Failed("steps must be at least 1".into()));
    }
    let pixels = tensor_from_image(image, model.device)?;
    let latents = model.vae.encode(&pixels)?.mode().f_mul_scalar(model.vae.config.scaling_factor)?;
    let (text, _) = model.prompt_pair(prompt, "", clip_skip)?;
    let choice = SchedulerChoice { kind: SchedulerKind::DdimInverse, use_karras_sigmas: None };
    let mut scheduler = model.scheduler_for(choice)?;
    scheduler.set_timesteps(steps)?;
    let conditioning = Conditioning {
        text: &text,
        negative: None,
        guidance_scale: 1.0,
        guidance_rescale: 0.0,
        image_guidance_scale: None,
    };
    let mut trajectory = vec![latents.shallow_clone()];
    let _last = sampler::denoise_with(
        &model.unet,
        scheduler.as_mut(),
        latents,
        &conditioning,
        &mut CpuGeneratorNoise,
        Hooks::default(),
        |step, of, latents| {
            trajectory.push(latents.shallow_clone());
            on_step(step, of, latents)
        },
    )?;
    Ok(trajectory)
}

/// DDIM from `noise_latents` (z_T) with `params`' prompts, steps, guidance and clip skip.
pub fn regenerate(
    model: &StableDiffusion,
    noise_latents: &Tensor,
    params: &GenerateParams,
    null_text: Option<&[Tensor]>,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<ImageData, JobError> {
    let (text, negative) = model.prompt_pair(&params.prompt, &params.negative_prompt, params.clip_skip)?;
    let mut scheduler =
        model.scheduler_for(SchedulerChoice { kind: SchedulerKind::Ddim, use_karras_sigmas: None })?;
    scheduler.set_timesteps(params.steps)?;
    let conditioning = Conditioning {
        text: &text,
        negative: Some(&negative),
        guidance_scale: params.guidance_scale,
        guidance_rescale: 0.0,
        image_guidance_scale: None,
    };
    let latents = sampler::denoise_with(
        &model.unet,
        scheduler.as_mut(),
        noise_latents.shallow_clone(),
        &conditioning,
        &mut CpuGeneratorNoise,
        Hooks { negative_per_step: null_text, ..Default::default() },
        |step, of, latents| on_step(step, of, latents),
    )?;
    model.decode_to_image(&latents)
}

/// A tensor's values in f32 on the CPU, flattened.
fn flatten(tensor: &Tensor) -> Result<Vec<f32>, JobError> {
    let flat = tensor.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Peak signal-to-noise ratio of two same-size images' RGB, in dB (∞ when equal).
pub fn psnr(a: &ImageData, b: &ImageData) -> f64 {
    let (mut total, mut count) = (0.0f64, 0usize);
    for (pa, pb) in a.rgba.chunks(4).zip(b.rgba.chunks(4)) {
        for channel in 0..3 {
            let difference = f64::from(pa[channel]) - f64::from(pb[channel]);
            total += difference * difference;
            count += 1;
        }
    }
    if count == 0 || total == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / (total / count as f64)).log10()
}

/// Runs inversion + reconstruction as an engine job (progress: inversion steps, then
/// regeneration steps).
pub fn run(
    model: &StableDiffusion,
    params: &InvertParams,
    ctx: &mut JobContext<'_>,
) -> Result<Inversion, JobError> {
    let base = &params.base;
    let phases = if params.null_text { 3 } else { 2 };
    let of = phases * base.steps;
    // 1. DDIM inversion without guidance: the pivot trajectory
    let trajectory =
        ddim_invert(model, &params.image, &base.prompt, base.steps, base.clip_skip, |step, _, latents| {
            ctx.progress(step, of, model.preview(latents, PREVIEW_SIDE).ok());
            ctx.checkpoint()
        })?;
    let last = trajectory.last().ok_or_else(|| JobError::Failed("the inversion ran no step".into()))?;
    // 2. null-text optimisation along it, for the guidance scale asked
    let null_text = if params.null_text {
        let (text, negative) = model.prompt_pair(&base.prompt, &base.negative_prompt, base.clip_skip)?;
        let (embeddings, _) = null_text::optimize(
            model,
            &trajectory,
            &text,
            &negative,
            base.guidance_scale,
            NullTextSettings::default(),
            |step, _, latents| {
                ctx.progress(base.steps + step, of, model.preview(latents, PREVIEW_SIDE).ok());
                ctx.checkpoint()
            },
        )?;
        Some(embeddings)
    } else {
        None
    };
    // 3. regeneration with the prompt and guidance
    let done = (phases - 1) * base.steps;
    let reconstruction = regenerate(model, last, base, null_text.as_deref(), |step, _, latents| {
        ctx.progress(done + step, of, model.preview(latents, PREVIEW_SIDE).ok());
        ctx.checkpoint()
    })?;
    let round_trip = model.decode_to_image(&trajectory[0])?;
    let size = last.size();
    let [_, channels, height, width] = size[..] else {
        return Err(JobError::Failed(format!("unexpected latent shape {size:?}")));
    };
    let trajectory = trajectory.iter().map(flatten).collect::<Result<Vec<_>, JobError>>()?;
    Ok(Inversion {
        model: model.source.clone(),
        prompt: base.prompt.clone(),
        steps: base.steps,
        width: params.image.width,
        height: params.image.height,
        latent_shape: [channels as usize, height as usize, width as usize],
        trajectory,
        psnr: psnr(&params.image, &reconstruction),
        psnr_vae: psnr(&round_trip, &reconstruction),
        reconstruction,
        null_text: null_text
            .map(|list| list.iter().map(flatten).collect::<Result<Vec<_>, _>>())
            .transpose()?,
    })
}
