//! audio-diffusion models (Robinson 2022; diffusers' deprecated `AudioDiffusionPipeline`): an
//! unconditional `UNet2DModel` trained on greyscale mel-spectrogram images, on the pixels or on
//! the latents of a small VQ-VAE (`vqvae/`, an `AutoencoderKL`), with the mel settings in
//! `mel/mel_config.json` and a DDPM or DDIM schedule in `scheduler/`. There is no text: the
//! seed (and, for edits, the source clip) says what comes out.
//!
//! Generation is the reference pipeline's: noise drawn from the seeded CPU generator in the
//! UNet's sample shape, the scheduler's steps, the VQ-VAE's decoder, then
//! `(x / 2 + 0.5).clamp(0, 1)·255`, rounded, as the image (row 0 the lowest mel bin). Edits
//! (img2img, blended inpainting of columns and bands) use the same schedule arithmetic as the
//! Stable Diffusion methods, not the reference's `start_step` and mask code, which noise the
//! known region one step off (they re-noise it to the level of the step just run, not the one
//! the sample reached).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::audio::preset::{MelConfig, SpectrogramPreset};
use crate::engine::image_tensor::{image_from_tensor, tensor_from_image};
use crate::engine::loading::LoadError;
use crate::engine::models::unet_2d::{SampleSize, UNet2DModel};
use crate::engine::models::vae::AutoencoderKl;
use crate::engine::schedulers::{CpuGeneratorNoise, Scheduler, SchedulerChoice, SchedulerConfig};
use crate::engine::{JobContext, JobError};
use crate::protocol::{ImageData, Precision};

/// A loaded audio-diffusion pipeline.
pub struct AudioDiffusion {
    pub source: PathBuf,
    pub unet: UNet2DModel,
    /// Latent models' autoencoder; `None` for models on mel pixels.
    pub vqvae: Option<AutoencoderKl>,
    pub mel: MelConfig,
    /// Pixels per latent cell (1 on pixels).
    pub factor: i64,
    pub device: Device,
    pub precision: Precision,
    scheduler_config: Option<String>,
    scheduler_source: String,
}

/// Where the known part of an edit comes from: the source's latents, the noise that noises them,
/// and the mask (1 = generate, 0 = keep) on the latent grid.
pub struct Blend<'a> {
    pub source: &'a Tensor,
    pub noise: &'a Tensor,
    pub mask: &'a Tensor,
}

impl AudioDiffusion {
    /// Loads an `AudioDiffusionPipeline` folder onto `device`, the UNet in `precision`.
    pub fn from_folder(folder: &Path, device: Device, precision: Precision) -> Result<Self, LoadError> {
        let mel_path = folder.join("mel/mel_config.json");
        let text = std::fs::read_to_string(&mel_path)
            .map_err(|source| LoadError::Read { path: mel_path.clone(), source })?;
        let mel = MelConfig::from_json(&text)
            .map_err(|reason| LoadError::Config { path: mel_path.clone(), reason })?;
        let mut unet = UNet2DModel::from_folder(&folder.join("unet"), device)?;
        let vqvae_config = folder.join("vqvae/config.json");
        let vqvae = if vqvae_config.is_file() {
            Some(AutoencoderKl::from_folder(&folder.join("vqvae"), device)?)
        } else {
            None
        };
        let (image_channels, factor) = match &vqvae {
            Some(vqvae) => (vqvae.config.in_channels, 1i64 << (vqvae.config.block_out_channels.len() - 1)),
            None => (1, 1),
        };
        let unet_config = folder.join("unet/config.json");
        let bad = |path: &Path, reason: String| LoadError::Config { path: path.into(), reason };
        let latent_channels = vqvae.as_ref().map_or(1, |v| v.config.latent_channels);
        if unet.config.in_channels != latent_channels || unet.config.out_channels != latent_channels {
            return Err(bad(
                &unet_config,
                format!(
                    "the UNet takes {} and makes {} channels, but the {} has {latent_channels}",
                    unet.config.in_channels,
                    unet.config.out_channels,
                    if vqvae.is_some() { "VQ-VAE's latents" } else { "mel image" }
                ),
            ));
        }
        if image_channels != 1 && image_channels != 3 {
            return Err(bad(
                &vqvae_config,
                format!("in_channels {image_channels}: a mel image is 1 (or 3) channels"),
            ));
        }
        if unet.config.num_class_embeds.is_some() {
            return Err(bad(&unet_config, "class-conditional UNets are not audio-diffusion models".into()));
        }
        let (height, width) = match &unet.config.sample_size {
            Some(SampleSize::Square(side)) => (*side, *side),
            Some(SampleSize::HeightWidth(hw)) if hw.len() == 2 => (hw[0], hw[1]),
            _ => (mel.y_res as i64 / factor, mel.x_res as i64 / factor),
        };
        if height * factor != mel.y_res as i64 || width * factor != mel.x_res as i64 {
            return Err(bad(
                &mel_path,
                format!(
                    "the spectrogram is {}×{} (x_res × y_res) but the UNet's sample_size is {width}×{height}{}",
                    mel.x_res,
                    mel.y_res,
                    if factor > 1 { format!(" latents of {factor} pixels") } else { String::new() }
                ),
            ));
        }
        match precision {
            Precision::F32 => {}
            Precision::F16 => unet.set_kind(Kind::Half),
            Precision::Bf16 => unet.set_kind(Kind::BFloat16),
        }
        let scheduler_path = folder.join("scheduler/scheduler_config.json");
        Ok(Self {
            source: folder.into(),
            unet,
            vqvae,
            mel,
            factor,
            device,
            precision,
            scheduler_config: std::fs::read_to_string(&scheduler_path).ok(),
            scheduler_source: scheduler_path.display().to_string(),
        })
    }

    /// One line for the status bar.
    pub fn describe(&self) -> String {
        format!(
            "audio-diffusion {} ({}×{} mel at {} Hz{}, {} on {:?})",
            self.source
                .file_name()
                .map_or_else(|| self.source.display().to_string(), |n| n.to_string_lossy().into()),
            self.mel.x_res,
            self.mel.y_res,
            self.mel.sample_rate,
            if self.vqvae.is_some() { ", latent" } else { "" },
            self.precision.to_name(),
            self.device
        )
    }

    /// The spectrogram image's size, (width, height).
    pub fn native_size(&self) -> (u32, u32) {
        (self.mel.x_res as u32, self.mel.y_res as u32)
    }

    /// The model's spectrogram preset.
    pub fn preset(&self) -> SpectrogramPreset {
        SpectrogramPreset::of_mel_config(&self.mel)
    }

    /// Image sizes must be multiples of this: the latent factor times the UNet's downsampling.
    pub fn grid(&self) -> u32 {
        let levels = self.unet.config.block_out_channels.len() as u32;
        (self.factor as u32) << levels.saturating_sub(1)
    }

    /// The scheduler `name` with this model's schedule (its `scheduler_config.json`; DDPM's
    /// defaults when it has none, as audio-diffusion trained with them).
    pub fn scheduler(&self, name: &str) -> Result<Box<dyn Scheduler>, JobError> {
        let choice = SchedulerChoice::from_name(name)?;
        let config = match &self.scheduler_config {
            Some(text) => SchedulerConfig::from_json(choice.kind, text, &self.scheduler_source)?,
            None => SchedulerConfig::defaults(choice.kind),
        };
        Ok(choice.build(config)?)
    }

    /// The latent shape of a `width`×`height` spectrogram.
    pub fn latent_shape(&self, width: u32, height: u32) -> [i64; 4] {
        let c = self.unet.config.in_channels;
        [1, c, i64::from(height) / self.factor, i64::from(width) / self.factor]
    }

    /// Standard normal noise from the default CPU generator, on the model's device.
    pub fn cpu_randn(&self, size: &[i64]) -> Result<Tensor, JobError> {
        Ok(Tensor::f_randn(size, (Kind::Float, Device::Cpu))?.f_to_device(self.device)?)
    }

    /// A spectrogram image as the UNet's input: grey in −1…1, through the VQ-VAE's encoder (a
    /// posterior sample, drawn from the default generator) for latent models.
    pub fn encode(&self, image: &ImageData) -> Result<Tensor, JobError> {
        let rgb = tensor_from_image(image, self.device)?; // (1, 3, h, w) in −1…1
        let grey = rgb.f_mean_dim(Some([1i64].as_slice()), true, Kind::Float)?;
        let Some(vqvae) = &self.vqvae else { return Ok(grey) };
        let input = if vqvae.config.in_channels == 3 { rgb } else { grey };
        let posterior = vqvae.encode(&input)?;
        let epsilon = self.cpu_randn(&posterior.mean.size())?.f_to_kind(posterior.mean.kind())?;
        Ok(posterior.sample(&epsilon)?.f_mul_scalar(vqvae.config.scaling_factor)?.f_to_kind(Kind::Float)?)
    }

    /// The UNet's output space back to a spectrogram image (RGBA, grey): through the VQ-VAE's
    /// decoder for latent models, then the reference's byte rounding.
    pub fn decode(&self, latents: &Tensor) -> Result<ImageData, JobError> {
        let image = match &self.vqvae {
            Some(vqvae) => vqvae.decode(&latents.f_div_scalar(vqvae.config.scaling_factor)?)?,
            None => latents.shallow_clone(),
        };
        let image = image.f_to_kind(Kind::Float)?;
        // three-channel decoders are converted to grey as PIL's convert("L") does
        let grey = if image.size()[1] == 3 {
            let weights = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
                .f_view([1, 3, 1, 1])?
                .f_to_device(image.device())?;
            image.f_mul(&weights)?.f_sum_dim_intlist(Some([1i64].as_slice()), true, Kind::Float)?
        } else {
            image
        };
        // image_from_tensor does (x / 2 + 0.5)·255 rounded and clamped, per channel
        image_from_tensor(&grey.f_repeat([1, 3, 1, 1])?)
    }

    /// Runs `scheduler` (timesteps set) from step `start` on `latents`; with `blend`, the known
    /// region is put back after every step at the level the sample reached (the source itself
    /// after the last). `progress(step, of)` reports and may cancel.
    pub fn denoise(
        &self,
        scheduler: &mut dyn Scheduler,
        mut latents: Tensor,
        start: usize,
        blend: Option<Blend<'_>>,
        mut progress: impl FnMut(usize, usize) -> Result<(), JobError>,
    ) -> Result<Tensor, JobError> {
        let timesteps = scheduler.timesteps().to_vec();
        let of = timesteps.len().saturating_sub(start);
        let mut noise = CpuGeneratorNoise;
        for (index, t) in timesteps.iter().enumerate().skip(start) {
            let input = scheduler.scale_model_input(&latents, index)?;
            let output = self.unet.forward(&input, *t, None)?.f_to_kind(Kind::Float)?;
            latents = scheduler.step(&output, index, &latents, &mut noise)?;
            if let Some(blend) = &blend {
                let next = index + 1;
                let known = if next < timesteps.len() {
                    scheduler.add_noise(blend.source, blend.noise, next)?
                } else {
                    blend.source.shallow_clone()
                };
                latents = known.f_add(&latents.f_sub(&known)?.f_mul(blend.mask)?)?;
            }
            progress(index + 1 - start, of)?;
        }
        Ok(latents)
    }

    /// The reference pipeline's unconditional generation: `seed`'s noise, `steps` of scheduler
    /// `scheduler`, decoded.
    pub fn generate(
        &self,
        seed: u64,
        steps: usize,
        scheduler: &str,
        (width, height): (u32, u32),
        ctx: &mut JobContext<'_>,
    ) -> Result<ImageData, JobError> {
        let latents = self.denoised(seed, steps, scheduler, (width, height), None, |step, of| {
            ctx.progress(step, of, None);
            ctx.checkpoint()
        })?;
        self.decode(&latents)
    }

    /// Generation's latents, from `seed` or from given noise.
    pub fn denoised(
        &self,
        seed: u64,
        steps: usize,
        scheduler: &str,
        (width, height): (u32, u32),
        noise: Option<Tensor>,
        progress: impl FnMut(usize, usize) -> Result<(), JobError>,
    ) -> Result<Tensor, JobError> {
        if steps == 0 {
            return Err(JobError::Failed("steps must be at least 1".into()));
        }
        let mut scheduler = self.scheduler(scheduler)?;
        scheduler.set_timesteps(steps)?;
        let noise = match noise {
            Some(noise) => noise,
            None => {
                tch::manual_seed(seed as i64);
                self.cpu_randn(&self.latent_shape(width, height))?
            }
        };
        let latents = noise.f_mul_scalar(scheduler.init_noise_sigma())?;
        self.denoise(scheduler.as_mut(), latents, 0, None, progress)
    }
}
