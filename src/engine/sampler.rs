//! THE denoising loop: classifier-free guidance (Ho & Salimans 2022) with optional guidance
//! rescale (Lin et al. 2023, §3.4), the scheduler step, progress and cancellation. Methods prepare
//! latents and conditioning and call [`denoise`]; none copies the loop.

use tch::Tensor;

use crate::engine::JobError;
use crate::engine::attention_control::{AttentionControl, StepInfo};
use crate::engine::models::unet_2d_condition::UNet2DConditionModel;
use crate::engine::schedulers::{NoiseSource, Scheduler};

/// What one denoising run needs besides the latents.
pub struct Conditioning<'a> {
    /// (1, tokens, dim) for the prompt.
    pub text: &'a Tensor,
    /// (1, tokens, dim) for the negative prompt; `None` runs without guidance.
    pub negative: Option<&'a Tensor>,
    /// CFG scale; ≤ 1 runs the conditional branch only (as diffusers does).
    pub guidance_scale: f64,
    /// φ of guidance rescale, 0 to turn it off.
    pub guidance_rescale: f64,
    /// InstructPix2Pix (Brooks et al. 2023, eq. 3): three branches — [prompt + image,
    /// negative + image, negative + no image] — with this image guidance scale; the image comes in
    /// as `Hooks::extra_channels` (zeros in the last branch).
    pub image_guidance_scale: Option<f64>,
}

impl<'a> Conditioning<'a> {
    /// Classifier-free guidance with `params`' scales.
    pub fn guided(text: &'a Tensor, negative: &'a Tensor, params: &crate::protocol::GenerateParams) -> Self {
        Self {
            text,
            negative: Some(negative),
            guidance_scale: params.guidance_scale,
            guidance_rescale: params.guidance_rescale,
            image_guidance_scale: None,
        }
    }
}

/// Replaces the latents after a scheduler step: `(scheduler, next step index, latents)`.
pub type AfterStep<'a> = dyn FnMut(&dyn Scheduler, usize, Tensor) -> Result<Tensor, JobError> + 'a;

/// How a method changes the loop, without copying it.
#[derive(Default)]
pub struct Hooks<'a> {
    /// The step index to start at (img2img and inpainting start part-way down the schedule).
    pub start: usize,
    /// (1, c, h, w) concatenated to the scaled latents on the channel axis before the UNet sees
    /// them: the mask and masked-image latents of 9-channel inpainting UNets.
    pub extra_channels: Option<&'a Tensor>,
    /// Runs after every scheduler step (blended diffusion puts the known region back).
    pub after_step: Option<&'a mut AfterStep<'a>>,
    /// Called by every attention layer (prompt-to-prompt, attention maps, paint-with-words).
    pub attention: Option<&'a dyn AttentionControl>,
    /// A negative (unconditional) embedding per step from `start` on, instead of
    /// `Conditioning::negative` (null-text inversion's optimised embeddings).
    pub negative_per_step: Option<&'a [Tensor]>,
}

/// Runs every step of `scheduler` from `latents`. `on_step(step, of, latents)` is called after
/// each step; returning an error (e.g. cancellation) stops the loop.
pub fn denoise(
    unet: &UNet2DConditionModel,
    scheduler: &mut dyn Scheduler,
    latents: Tensor,
    conditioning: &Conditioning<'_>,
    noise: &mut dyn NoiseSource,
    on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<Tensor, JobError> {
    denoise_with(unet, scheduler, latents, conditioning, noise, Hooks::default(), on_step)
}

/// [`denoise`] with a method's hooks. Steps are counted from `hooks.start` for `on_step`.
pub fn denoise_with(
    unet: &UNet2DConditionModel,
    scheduler: &mut dyn Scheduler,
    mut latents: Tensor,
    conditioning: &Conditioning<'_>,
    noise: &mut dyn NoiseSource,
    mut hooks: Hooks<'_>,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<Tensor, JobError> {
    let image_scale = conditioning.image_guidance_scale;
    let guided = conditioning.negative.is_some()
        && conditioning.guidance_scale > 1.0
        && image_scale.is_none_or(|scale| scale >= 1.0);
    let branches: i64 = match (guided, image_scale) {
        (false, _) => 1,
        (true, None) => 2,
        (true, Some(_)) => 3,
    };
    // 1. the batched context: [negative, prompt] as diffusers orders it; InstructPix2Pix's
    //    [prompt, negative, negative]
    let context = match (branches, conditioning.negative) {
        (2, Some(negative)) => Tensor::f_cat(&[negative, conditioning.text], 0)?,
        (3, Some(negative)) => Tensor::f_cat(&[conditioning.text, negative, negative], 0)?,
        _ => conditioning.text.shallow_clone(),
    };
    let timesteps = scheduler.timesteps().to_vec();
    let steps = timesteps.len().saturating_sub(hooks.start);
    let extra = match (hooks.extra_channels, branches) {
        (Some(extra), 2) => Some(Tensor::f_cat(&[extra, extra], 0)?),
        (Some(extra), 3) => Some(Tensor::f_cat(&[extra, extra, &extra.f_zeros_like()?], 0)?),
        (Some(extra), _) => Some(extra.shallow_clone()),
        (None, _) => None,
    };
    for (index, t) in timesteps.iter().enumerate().skip(hooks.start) {
        // 2. the model on both branches at once
        let copies: Vec<&Tensor> = (0..branches).map(|_| &latents).collect();
        let model_input = Tensor::f_cat(&copies, 0)?;
        let mut model_input = scheduler.scale_model_input(&model_input, index)?;
        if let Some(extra) = &extra {
            model_input = Tensor::f_cat(&[&model_input, &extra.f_to_kind(model_input.kind())?], 1)?;
        }
        if let Some(control) = hooks.attention {
            control.begin_step(StepInfo { step: index - hooks.start, of: steps, guided });
        }
        let step_context = match (hooks.negative_per_step, branches) {
            (Some(negatives), 2) => {
                let negative = negatives.get(index - hooks.start).ok_or_else(|| {
                    JobError::Failed(format!("no unconditional embedding for step {}", index - hooks.start))
                })?;
                Some(Tensor::f_cat(&[negative, conditioning.text], 0)?)
            }
            _ => None,
        };
        let output = unet
            .forward_controlled(&model_input, *t, step_context.as_ref().unwrap_or(&context), hooks.attention)?
            .f_to_kind(latents.kind())?;
        // 3. classifier-free guidance
        let prediction = if let (3, Some(image_scale)) = (branches, image_scale) {
            let thirds = output.f_chunk(3, 0)?;
            let (text, image, unconditional) = (&thirds[0], &thirds[1], &thirds[2]);
            unconditional
                .f_add(&text.f_sub(image)?.f_mul_scalar(conditioning.guidance_scale)?)?
                .f_add(&image.f_sub(unconditional)?.f_mul_scalar(image_scale)?)?
        } else if guided {
            let halves = output.f_chunk(2, 0)?;
            let (unconditional, text) = (&halves[0], &halves[1]);
            let mut guided_prediction = unconditional
                .f_add(&text.f_sub(unconditional)?.f_mul_scalar(conditioning.guidance_scale)?)?;
            if conditioning.guidance_rescale > 0.0 {
                guided_prediction =
                    rescale_guidance(&guided_prediction, text, conditioning.guidance_rescale)?;
            }
            guided_prediction
        } else {
            output
        };
        // 4. the scheduler's update
        latents = scheduler.step(&prediction, index, &latents, noise)?;
        if let Some(after_step) = hooks.after_step.as_mut() {
            latents = after_step(&*scheduler, index + 1, latents)?;
        }
        on_step(index + 1 - hooks.start, steps, &latents)?;
    }
    Ok(latents)
}

/// Rescales the guided prediction's per-sample standard deviation to the text branch's, mixed by
/// φ (Lin et al. 2023, eq. 15–16), against over-exposure at high guidance.
fn rescale_guidance(guided: &Tensor, text: &Tensor, phi: f64) -> Result<Tensor, tch::TchError> {
    let dims: &[i64] = &[1, 2, 3];
    let std_text = text.f_std_dim(dims, true, true)?;
    let std_guided = guided.f_std_dim(dims, true, true)?;
    let rescaled = guided.f_mul(&std_text.f_div(&std_guided)?)?;
    rescaled.f_mul_scalar(phi)?.f_add(&guided.f_mul_scalar(1.0 - phi)?)
}
