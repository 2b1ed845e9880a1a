//! DiffEdit (Couairon et al. 2022, <https://arxiv.org/abs/2210.11427>): (1) the mask — noise the
//! image's latents part-way down the schedule with several noise samples, predict the noise under
//! the source and the target prompt, average |ε_target − ε_source| over channels and samples,
//! scale by its peak, threshold; (2) DDIM-invert the image with the source prompt to
//! the encoding ratio r; (3) denoise from there with the target prompt, and after every step
//! put the inversion's latents back outside the mask. The mask is returned so a person can
//! correct it and run again; pixels outside it are composited back from the source exactly.
//!
//! Two departures from the paper, both measured on held-out images of the bundled model
//! (BENCHMARKS.md): the image is noised to a quarter of the schedule rather than half, and the
//! threshold is a share of the largest disagreement rather than of three times the mean; both
//! are parameters. The mask is made at the image's resolution, not the latent grid's: the normalised difference
//! is upsampled before the threshold (at f = 8 a latent cell is 8 pixels, coarser than the small
//! objects it should outline) by joint bilateral upsampling guided by the image, so the mask takes
//! the outline of what it covers (`mask_edges`; 0 upsamples bilinearly), and a given mask is used
//! pixel for pixel. The latents are
//! edited in every cell the pixel mask touches, so the composite has generated pixels wherever
//! the mask is white.

use tch::{Kind, Tensor};

use crate::engine::image_tensor::{image_from_tensor, tensor_from_image};
use crate::engine::methods::img2img::{check_size, start_index};
use crate::engine::methods::inpaint::{composite, prepare_mask};
use crate::engine::methods::inversion::cached_ddim_invert;
use crate::engine::methods::mask_edges::joint_bilateral_upsample;
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::schedulers::{Scheduler, SchedulerChoice, SchedulerKind};
use crate::engine::{JobContext, JobError};
use crate::protocol::{DiffEditParams, LabelledImage, MaskOptions};

/// The estimated mask before the threshold, on the latent grid: (1, 1, h, w), the difference
/// divided by its peak (all zeros where the prompts agree everywhere).
pub fn estimate_soft_mask(
    model: &StableDiffusion,
    params: &DiffEditParams,
    latents: &Tensor,
) -> Result<Tensor, JobError> {
    let base = &params.base;
    let samples = params.mask_samples.max(1) as i64;
    let (source, negative) =
        model.prompt_pair(&params.source_prompt, &base.negative_prompt, base.clip_skip)?;
    let (target, _) = model.prompt_pair(&base.prompt, &base.negative_prompt, base.clip_skip)?;
    let mut scheduler =
        model.scheduler_for(SchedulerChoice { kind: SchedulerKind::Ddim, use_karras_sigmas: None })?;
    scheduler.set_timesteps(base.steps)?;
    let strength = params.mask_strength;
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(JobError::Failed(format!("the mask strength must be in (0, 1], got {strength}")));
    }
    // the step whose noise level is `strength` of the way down the schedule (at least one step)
    let run = ((base.steps as f64 * strength) as usize).clamp(1, base.steps.max(1));
    let index = base.steps.max(1) - run;
    let t = scheduler.timesteps()[index];
    tch::manual_seed(base.seed as i64);
    let noise = model.cpu_randn(&[samples, latents.size()[1], latents.size()[2], latents.size()[3]])?;
    let noised = scheduler.add_noise(&latents.f_repeat([samples, 1, 1, 1])?, &noise, index)?;
    let guided = |text: &Tensor| -> Result<Tensor, JobError> {
        let context =
            Tensor::f_cat(&[&negative.f_repeat([samples, 1, 1])?, &text.f_repeat([samples, 1, 1])?], 0)?;
        let input = Tensor::f_cat(&[&noised, &noised], 0)?;
        let output = model.unet.forward(&input, t, &context)?.f_to_kind(Kind::Float)?;
        let halves = output.f_chunk(2, 0)?;
        Ok(halves[0].f_add(&halves[1].f_sub(&halves[0])?.f_mul_scalar(base.guidance_scale)?)?)
    };
    let difference =
        guided(&target)?.f_sub(&guided(&source)?)?.f_abs()?.f_mean_dim(&[0i64, 1][..], true, Kind::Float)?;
    let peak = f64::try_from(difference.f_max()?)?;
    if peak <= 0.0 || !peak.is_finite() {
        return Ok(difference.f_zeros_like()?);
    }
    Ok(difference.f_div_scalar(peak)?)
}

/// The estimated mask at the image's resolution: (1, 1, height, width), 0 or 1 — the soft mask
/// upsampled to the image (following its edges unless `mask_edges` is 0), then cut at the mask
/// threshold.
pub fn estimate_mask(
    model: &StableDiffusion,
    params: &DiffEditParams,
    latents: &Tensor,
) -> Result<Tensor, JobError> {
    let threshold = params.mask_threshold;
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(JobError::Failed(format!("the mask threshold must be in (0, 1), got {threshold}")));
    }
    let edges = params.mask_edges;
    if !(edges.is_finite() && edges >= 0.0) {
        return Err(JobError::Failed(format!(
            "the mask edge tolerance must be 0 (no snapping) or more, got {edges}"
        )));
    }
    let soft = estimate_soft_mask(model, params, latents)?;
    let guide = tensor_from_image(&params.image, soft.device())?;
    Ok(joint_bilateral_upsample(&soft, &guide, edges)?.f_gt(threshold)?.f_to_kind(Kind::Float)?)
}

/// Runs DiffEdit as an engine job: [image, mask].
pub fn run(
    model: &StableDiffusion,
    params: &DiffEditParams,
    ctx: &mut JobContext<'_>,
) -> Result<Vec<LabelledImage>, JobError> {
    check_size(model, &params.image, "image")?;
    let base = &params.base;
    let factor = model.vae_scale_factor;
    let (height, width) = (i64::from(params.image.height), i64::from(params.image.width));
    if let Some(mask) = &params.mask
        && (mask.width, mask.height) != (params.image.width, params.image.height)
    {
        return Err(JobError::Failed(format!(
            "the mask is {}×{} but the image is {width}×{height}; resize the mask to the image",
            mask.width, mask.height
        )));
    }
    // 1. DDIM inversion with the source prompt; its start is the image's latents
    let trajectory = cached_ddim_invert(
        model,
        &params.image,
        &params.source_prompt,
        base.steps,
        base.clip_skip,
        |_, _, _| ctx.checkpoint(),
    )?;
    let latents = &trajectory[0];
    // 2. the mask at the image's resolution (given, or estimated); the latents are edited in
    // every cell it touches
    let pixel_mask = match &params.mask {
        Some(mask) => {
            let hard = MaskOptions { dilate: 0, feather: 0.0, invert: false };
            prepare_mask(mask, &hard)?.f_gt(0.5)?.f_to_kind(Kind::Float)?
        }
        None => estimate_mask(model, params, latents)?,
    }
    .f_to_device(tch::Device::Cpu)?;
    let latent_mask = pixel_mask
        .f_max_pool2d([factor, factor], [factor, factor], [0, 0], [1, 1], false)?
        .f_to_device(model.device)?;
    // 3. DDIM from the encoding ratio with the target prompt, the inversion kept outside the mask
    let (text, negative) = model.prompt_pair(&base.prompt, &base.negative_prompt, base.clip_skip)?;
    let mut scheduler =
        model.scheduler_for(SchedulerChoice { kind: SchedulerKind::Ddim, use_karras_sigmas: None })?;
    scheduler.set_timesteps(base.steps)?;
    let start = start_index(base.steps, params.strength, 1)?;
    let steps = base.steps;
    let start_latents = trajectory[steps - start].shallow_clone();
    let conditioning = Conditioning::guided(&text, &negative, base);
    let mut keep = |_: &dyn Scheduler, next: usize, latents: Tensor| -> Result<Tensor, JobError> {
        let inverted = &trajectory[steps - next];
        Ok(inverted.f_add(&latents.f_sub(inverted)?.f_mul(&latent_mask)?)?)
    };
    let hooks = Hooks { start, after_step: Some(&mut keep), ..Default::default() };
    let edited = super::denoise_job(model, scheduler.as_mut(), start_latents, &conditioning, hooks, ctx)?;
    // 4. decode; pixels outside the mask from the source
    let generated = model.decode_to_image(&edited)?;
    let image = composite(&params.image, &generated, &pixel_mask)?;
    let mask_image =
        image_from_tensor(&pixel_mask.f_repeat([1, 3, 1, 1])?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?)?;
    Ok(vec![
        LabelledImage { label: "image".into(), image },
        LabelledImage { label: "mask".into(), image: mask_image },
    ])
}
