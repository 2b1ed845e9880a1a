//! A Stable Diffusion model loaded from a diffusers folder (`model_index.json` and one subfolder
//! per component), and text-to-image generation through the one sampler. Random draws follow
//! diffusers' order with a CPU generator, so a seed reproduces `StableDiffusionPipeline`'s image.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::engine::loading::LoadError;
use crate::engine::models::clip::ClipTextModel;
use crate::engine::models::unet_2d_condition::UNet2DConditionModel;
use crate::engine::models::vae::AutoencoderKl;
use crate::engine::sampler::{self, Conditioning};
use crate::engine::schedulers::{CpuGeneratorNoise, SchedulerChoice, SchedulerConfig};
use crate::engine::{JobContext, JobError};
use crate::protocol::{GenerateParams, ImageData, Precision};
use crate::text::ClipTokenizer;

/// Pipelines whose folders load here.
const SUPPORTED_PIPELINES: &[&str] =
    &["StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionInstructPix2PixPipeline"];

/// A loaded Stable Diffusion model.
pub struct StableDiffusion {
    pub folder: PathBuf,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKl,
    /// `scheduler/scheduler_config.json` as text (each scheduler reads it with its defaults).
    scheduler_config: Option<String>,
    /// Pixels per latent cell: 2^(VAE levels − 1), 8 for SD.
    pub vae_scale_factor: i64,
    pub device: Device,
    pub precision: Precision,
}

impl StableDiffusion {
    /// Loads `folder` (a diffusers pipeline folder) onto `device`, the UNet in `precision`.
    pub fn from_folder(folder: &Path, device: Device, precision: Precision) -> Result<Self, LoadError> {
        // 1. model_index.json says what this is
        let index_path = folder.join("model_index.json");
        let index_text = std::fs::read_to_string(&index_path)
            .map_err(|source| LoadError::Read { path: index_path.clone(), source })?;
        let index: serde_json::Value = serde_json::from_str(&index_text)
            .map_err(|error| LoadError::Config { path: index_path.clone(), reason: error.to_string() })?;
        let class = index["_class_name"].as_str().unwrap_or("(none)");
        if !SUPPORTED_PIPELINES.contains(&class) {
            return Err(LoadError::Config {
                path: index_path,
                reason: format!(
                    "_class_name \"{class}\" is not a Stable Diffusion 1.x/2.x pipeline this studio loads ({})",
                    SUPPORTED_PIPELINES.join(", ")
                ),
            });
        }
        // 2. the components
        let tokenizer = ClipTokenizer::from_folder(&folder.join("tokenizer")).map_err(|error| {
            LoadError::Config { path: folder.join("tokenizer"), reason: error.to_string() }
        })?;
        let text_encoder = ClipTextModel::from_folder(&folder.join("text_encoder"), device)?;
        let mut unet = UNet2DConditionModel::from_folder(&folder.join("unet"), device)?;
        match precision {
            Precision::F32 => {}
            Precision::F16 => unet.set_kind(Kind::Half),
            Precision::Bf16 => unet.set_kind(Kind::BFloat16),
        }
        let vae = AutoencoderKl::from_folder(&folder.join("vae"), device)?;
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size {
            return Err(LoadError::Config {
                path: folder.join("unet/config.json"),
                reason: format!(
                    "cross_attention_dim {} does not match the text encoder's hidden_size {} — the folder mixes models",
                    unet.config.cross_attention_dim, text_encoder.config.hidden_size
                ),
            });
        }
        let scheduler_config = std::fs::read_to_string(folder.join("scheduler/scheduler_config.json")).ok();
        let vae_scale_factor = 1i64 << (vae.config.block_out_channels.len() - 1);
        Ok(Self {
            folder: folder.into(),
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            vae_scale_factor,
            device,
            precision,
        })
    }

    /// The prompt's text embeddings: (1, 77 × chunks, dim), with `(word:1.3)` weights applied as
    /// AUTOMATIC1111 does (scale each token's embedding, then restore the overall mean).
    pub fn encode_prompt(&self, prompt: &str, chunks_at_least: usize) -> Result<Tensor, JobError> {
        let mut chunks =
            self.tokenizer.encode_prompt(prompt).map_err(|error| JobError::Failed(error.to_string()))?;
        while chunks.len() < chunks_at_least {
            chunks.extend(
                self.tokenizer.encode_prompt("").map_err(|error| JobError::Failed(error.to_string()))?,
            );
        }
        let mut embeddings = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            let ids: Vec<i64> = chunk.ids.iter().map(|id| i64::from(*id)).collect();
            let input = Tensor::f_from_slice(&ids)?.f_unsqueeze(0)?.f_to_device(self.device)?;
            let hidden = self.text_encoder.forward(&input, 0)?;
            let weighted = if chunk.weights.iter().all(|w| *w == 1.0) {
                hidden
            } else {
                let weights = Tensor::f_from_slice(&chunk.weights)?
                    .f_to_device(self.device)?
                    .f_to_kind(hidden.kind())?
                    .f_view([1, -1, 1])?;
                let original_mean = hidden.f_mean(None)?;
                let scaled = hidden.f_mul(&weights)?;
                let new_mean = scaled.f_mean(None)?;
                scaled.f_mul(&original_mean.f_div(&new_mean)?)?
            };
            embeddings.push(weighted);
        }
        Ok(Tensor::f_cat(&embeddings, 1)?)
    }

    /// How many 77-token chunks a prompt takes.
    fn chunk_count(&self, prompt: &str) -> Result<usize, JobError> {
        Ok(self.tokenizer.encode_prompt(prompt).map_err(|error| JobError::Failed(error.to_string()))?.len())
    }

    /// The scheduler of `name` with this model's scheduler config.
    pub fn scheduler(&self, name: &str) -> Result<Box<dyn crate::engine::schedulers::Scheduler>, JobError> {
        let choice = SchedulerChoice::from_name(name)?;
        let config = match &self.scheduler_config {
            Some(text) => SchedulerConfig::from_json(
                choice.kind,
                text,
                &self.folder.join("scheduler/scheduler_config.json").display().to_string(),
            )?,
            None => SchedulerConfig::stable_diffusion(choice.kind),
        };
        Ok(choice.build(config)?)
    }

    /// Decodes latents to an RGBA image (diffusers' `postprocess`: (x / 2 + 0.5) clamped).
    pub fn decode_to_image(&self, latents: &Tensor) -> Result<ImageData, JobError> {
        let scaled = latents.f_div_scalar(self.vae.config.scaling_factor)?;
        let image = self.vae.decode(&scaled)?.f_to_kind(Kind::Float)?;
        crate::engine::image_tensor::image_from_tensor(&image)
    }

    /// Text to image.
    pub fn generate(&self, params: &GenerateParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        // 1. check the request; sizes round down to the latent grid, and the job says so
        let factor = self.vae_scale_factor;
        let (width, height) = (i64::from(params.width), i64::from(params.height));
        if width < factor || height < factor {
            return Err(JobError::Failed(format!(
                "width and height must be at least {factor} pixels, got {width}×{height}"
            )));
        }
        if params.steps == 0 {
            return Err(JobError::Failed("steps must be at least 1".into()));
        }
        // 2. prompts → embeddings (equal chunk counts for the two branches)
        let chunks = self.chunk_count(&params.prompt)?.max(self.chunk_count(&params.negative_prompt)?);
        let text = self.encode_prompt(&params.prompt, chunks)?;
        let negative = self.encode_prompt(&params.negative_prompt, chunks)?;
        // 3. the scheduler and the seeded initial latents (drawn on the CPU, as diffusers)
        let mut scheduler = self.scheduler(&params.scheduler)?;
        scheduler.set_timesteps(params.steps)?;
        tch::manual_seed(params.seed as i64);
        let channels = self.unet.config.out_channels;
        let latents =
            Tensor::f_randn([1, channels, height / factor, width / factor], (Kind::Float, Device::Cpu))?
                .f_to_device(self.device)?
                .f_mul_scalar(scheduler.init_noise_sigma())?;
        // 4. the loop, with a preview of the predicted image every step
        let conditioning = Conditioning {
            text: &text,
            negative: Some(&negative),
            guidance_scale: params.guidance_scale,
            guidance_rescale: params.guidance_rescale,
        };
        let latents = sampler::denoise(
            &self.unet,
            scheduler.as_mut(),
            latents,
            &conditioning,
            &mut CpuGeneratorNoise,
            |step, of, _latents| {
                ctx.progress(step, of, None);
                ctx.checkpoint()
            },
        )?;
        // 5. decode
        self.decode_to_image(&latents)
    }
}
