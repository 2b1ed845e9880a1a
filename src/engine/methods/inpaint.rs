//! Inpainting. Any model: blended latent diffusion (Avrahami et al. 2022,
//! <https://arxiv.org/abs/2206.02779>) — after every step the region outside the mask is
//! replaced by the source image's latents noised to that step. 9-channel inpainting UNets: the
//! mask and the masked image's latents go in as extra input channels. Random draws follow
//! diffusers' `StableDiffusionInpaintPipeline`, so with a hard block-aligned mask, no feather and
//! no composite a seed reproduces its image. By default the pixels outside the mask are then put
//! back exactly from the source, through a feathered seam.

use tch::{Device, Kind, Tensor};

use crate::engine::image_tensor::{image_from_tensor, tensor_from_image};
use crate::engine::methods::img2img::{check_size, prepare, start_index};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::schedulers::Scheduler;
use crate::engine::{JobContext, JobError};
use crate::protocol::{ImageData, InpaintParams, MaskOptions};

/// The mask as (1, 1, h, w) in [0, 1] on the CPU (luminance as PIL's "L"; 1 = repaint), dilated,
/// feathered and inverted as asked.
pub fn prepare_mask(mask: &ImageData, options: &MaskOptions) -> Result<Tensor, JobError> {
    let (width, height) = (i64::from(mask.width), i64::from(mask.height));
    if mask.rgba.len() != (width * height * 4) as usize {
        return Err(JobError::Failed("the mask's pixel buffer does not match its size; reload it".into()));
    }
    let rgba =
        Tensor::f_from_slice(mask.rgba.as_slice())?.f_view([height, width, 4])?.f_to_kind(Kind::Float)?;
    let channel = |c: i64| rgba.f_select(2, c);
    // ITU-R 601-2 luma, as PIL converts to "L"
    let luma = channel(0)?
        .f_mul_scalar(0.299)?
        .f_add(&channel(1)?.f_mul_scalar(0.587)?)?
        .f_add(&channel(2)?.f_mul_scalar(0.114)?)?
        .f_div_scalar(255.0)?;
    let mut mask = luma.f_view([1, 1, height, width])?;
    if options.invert {
        mask = mask.f_neg()?.f_add_scalar(1.0)?;
    }
    if options.dilate > 0 {
        let k = 2 * i64::from(options.dilate) + 1;
        mask = mask.f_max_pool2d([k, k], [1, 1], [k / 2, k / 2], [1, 1], false)?;
    }
    if options.feather > 0.0 {
        mask = gaussian_blur(&mask, f64::from(options.feather))?;
    }
    Ok(mask.f_clamp(0.0, 1.0)?)
}

/// Separable Gaussian blur of a (1, 1, h, w) tensor, σ in pixels, edges replicated.
fn gaussian_blur(x: &Tensor, sigma: f64) -> Result<Tensor, tch::TchError> {
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f32> =
        (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = weights.iter().sum();
    let kernel = Tensor::f_from_slice(&weights.iter().map(|w| w / sum).collect::<Vec<_>>())?;
    let n = 2 * radius + 1;
    let padded = x.f_pad([radius, radius, radius, radius], "replicate", None)?;
    let horizontal =
        padded.f_conv2d(&kernel.f_view([1, 1, 1, n])?, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?;
    horizontal.f_conv2d(&kernel.f_view([1, 1, n, 1])?, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
}

/// Runs inpainting as an engine job.
pub fn run(
    model: &StableDiffusion,
    params: &InpaintParams,
    ctx: &mut JobContext<'_>,
) -> Result<ImageData, JobError> {
    check_size(model, &params.image, "image")?;
    if (params.mask.width, params.mask.height) != (params.image.width, params.image.height) {
        return Err(JobError::Failed(format!(
            "the mask is {}×{} but the image is {}×{}; resize the mask to the image",
            params.mask.width, params.mask.height, params.image.width, params.image.height
        )));
    }
    let in_channels = model.unet.config.in_channels;
    // a plain UNet takes the latents; an inpainting UNet (SD's 9 channels) also the masked
    // image's latents and the mask
    let latent_channels = model.vae.config.latent_channels;
    let plain = in_channels == latent_channels;
    if !plain && in_channels != 2 * latent_channels + 1 {
        return Err(JobError::Failed(format!(
            "this model's UNet takes {in_channels} input channels; inpainting needs a {latent_channels}-channel (any) or {}-channel (inpainting) model",
            2 * latent_channels + 1
        )));
    }
    // 1. the mask: in pixels (compositing), and on the latent grid (area-averaged)
    let pixel_mask = prepare_mask(&params.mask, &params.mask_options)?;
    let repaint = f64::try_from(pixel_mask.f_max()?)?;
    if repaint < 0.5 / 255.0 {
        return Err(JobError::Failed(
            "the mask is all black: nothing to repaint (paint the region white, or use --invert)".into(),
        ));
    }
    let factor = model.vae_scale_factor;
    let (height, width) = (i64::from(params.image.height), i64::from(params.image.width));
    let latent_mask =
        pixel_mask.f_adaptive_avg_pool2d([height / factor, width / factor])?.f_to_device(model.device)?;
    // 2. prompts, scheduler, start
    let base = &params.base;
    let (text, negative, mut scheduler) = prepare(model, base)?;
    let start = start_index(base.steps, params.strength, scheduler.order())?;
    let full_strength = params.strength >= 1.0;
    // 3. latents, in diffusers' draw order: [image sample], noise, masked-image sample
    tch::manual_seed(base.seed as i64);
    let image = tensor_from_image(&params.image, model.device)?;
    let latent_shape = [1, model.unet.config.out_channels, height / factor, width / factor];
    let image_latents = if plain || !full_strength { Some(model.encode_image_sample(&image)?) } else { None };
    let noise = model.cpu_randn(&latent_shape)?;
    let latents = match (&image_latents, full_strength) {
        (Some(image_latents), false) => scheduler.add_noise(image_latents, &noise, start)?,
        _ => noise.f_mul_scalar(scheduler.init_noise_sigma())?,
    };
    let keep = pixel_mask.f_lt(0.5)?.f_to_kind(Kind::Float)?.f_to_device(model.device)?;
    let masked_image_latents = model.encode_image_sample(&image.f_mul(&keep)?)?;
    // 4. the loop, with the method's hooks
    let conditioning = Conditioning::guided(&text, &negative, base);
    let extra = Tensor::f_cat(&[&latent_mask, &masked_image_latents], 1)?;
    let source_latents = image_latents.as_ref().map(Tensor::shallow_clone);
    let steps_total = scheduler.timesteps().len();
    let mut blend = |scheduler: &dyn Scheduler, next: usize, latents: Tensor| -> Result<Tensor, JobError> {
        let Some(source) = &source_latents else { return Ok(latents) };
        let known = if next < steps_total {
            scheduler.add_noise(source, &noise, next)?
        } else {
            source.shallow_clone()
        };
        Ok(known.f_add(&latents.f_sub(&known)?.f_mul(&latent_mask)?)?)
    };
    let hooks = if !plain {
        Hooks { start, extra_channels: Some(&extra), ..Default::default() }
    } else {
        Hooks { start, after_step: Some(&mut blend), ..Default::default() }
    };
    let latents = super::denoise_job(model, scheduler.as_mut(), latents, &conditioning, hooks, ctx)?;
    // 5. decode, and put the unmasked pixels back exactly
    let scaled = latents.f_div_scalar(model.vae.config.scaling_factor)?;
    let decoded = model.vae.decode(&scaled)?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
    let generated = image_from_tensor(&decoded)?;
    if !params.composite {
        return Ok(generated);
    }
    composite(&params.image, &generated, &pixel_mask)
}

/// `source` where the mask is 0, `generated` where it is 1, blended between; alpha from
/// `source`. Pixels with mask 0 are the source's bytes exactly.
pub fn composite(source: &ImageData, generated: &ImageData, mask: &Tensor) -> Result<ImageData, JobError> {
    let weights = Vec::<f32>::try_from(&mask.f_flatten(0, -1)?.f_to_kind(Kind::Float)?)?;
    let mut rgba = source.rgba.to_vec();
    for (index, weight) in weights.iter().enumerate() {
        if *weight <= 0.0 {
            continue;
        }
        for channel in 0..3 {
            let at = index * 4 + channel;
            let (a, b) = (f32::from(source.rgba[at]), f32::from(generated.rgba[at]));
            rgba[at] = (a + (b - a) * weight.min(1.0)).round().clamp(0.0, 255.0) as u8;
        }
    }
    ImageData::new(source.width, source.height, rgba).map_err(JobError::Failed)
}
