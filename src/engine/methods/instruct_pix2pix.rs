//! InstructPix2Pix (Brooks et al. 2023, <https://arxiv.org/abs/2211.09800>): an 8-channel UNet
//! that sees the source image's latents beside the noisy ones and follows an instruction
//! ("make the circle blue"), guided separately by the text and by the image (eq. 3). Follows
//! diffusers' `StableDiffusionInstructPix2PixPipeline`: the image's latents are the posterior
//! mode, unscaled; a seed reproduces its image.

use crate::engine::image_tensor::tensor_from_image;
use crate::engine::methods::img2img::{check_size, prepare};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::{JobContext, JobError};
use crate::protocol::{ImageData, InstructPix2PixParams};

/// Runs an InstructPix2Pix edit as an engine job.
pub fn run(
    model: &StableDiffusion,
    params: &InstructPix2PixParams,
    ctx: &mut JobContext<'_>,
) -> Result<ImageData, JobError> {
    let in_channels = model.unet.config.in_channels;
    let expected = 2 * model.vae.config.latent_channels;
    if in_channels != expected {
        return Err(JobError::Failed(format!(
            "InstructPix2Pix needs an InstructPix2Pix model ({expected} UNet input channels: latents and image latents); this one takes {in_channels} channels"
        )));
    }
    if !(params.image_guidance_scale.is_finite() && params.image_guidance_scale >= 0.0) {
        return Err(JobError::Failed(format!(
            "the image guidance scale must be 0 or more, got {}",
            params.image_guidance_scale
        )));
    }
    check_size(model, &params.image, "image")?;
    let base = &params.base;
    // 1. prompts and scheduler; the image's latents (no random draw)
    let (text, negative, mut scheduler) = prepare(model, base)?;
    let image = tensor_from_image(&params.image, model.device)?;
    let image_latents = model.vae.encode(&image)?.mode();
    // 2. the initial noise
    let (height, width) = (i64::from(params.image.height), i64::from(params.image.width));
    let latents = model.seeded_latents(base.seed, height, width, scheduler.init_noise_sigma())?;
    // 3. three-branch guidance with the image as extra channels
    let conditioning = Conditioning {
        text: &text,
        negative: Some(&negative),
        guidance_scale: base.guidance_scale,
        guidance_rescale: base.guidance_rescale,
        image_guidance_scale: Some(params.image_guidance_scale),
    };
    let hooks = Hooks { extra_channels: Some(&image_latents), ..Default::default() };
    let latents = super::denoise_job(model, scheduler.as_mut(), latents, &conditioning, hooks, ctx)?;
    model.decode_to_image(&latents)
}
