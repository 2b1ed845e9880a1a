//! A Stable Diffusion model loaded from a diffusers folder (`model_index.json` and one subfolder
//! per component) or a single-file checkpoint in the original LDM layout, and text-to-image generation through the one sampler. Random draws follow
//! diffusers' order with a CPU generator, so a seed reproduces `StableDiffusionPipeline`'s image.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::engine::loading::LoadError;
use crate::engine::loading::single_file::{self, Part};
use crate::engine::models::clip::{ClipTextConfig, ClipTextModel};
use crate::engine::models::taesd::AutoencoderTiny;
use crate::engine::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::engine::models::vae::{AutoencoderKl, AutoencoderKlConfig};
use crate::engine::sampler::{self, Conditioning};
use crate::engine::schedulers::{CpuGeneratorNoise, SchedulerChoice, SchedulerConfig};
use crate::engine::{JobContext, JobError};
use crate::protocol::{GenerateParams, ImageData, ModelFamily, ModelOptions, Precision, Prediction};
use crate::text::ClipTokenizer;

/// Pipelines whose folders load here.
const SUPPORTED_PIPELINES: &[&str] =
    &["StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionInstructPix2PixPipeline"];

/// SD latent channels → RGB in [-1, 1] (rows: channels 0–3; columns: R, G, B).
const LATENT_RGB: [f32; 12] =
    [0.298, 0.207, 0.208, 0.187, 0.286, 0.173, -0.158, 0.189, 0.264, -0.184, -0.271, -0.473];

/// Prompt embeddings kept per model (cleared when full).
const EMBEDDING_CACHE_SIZE: usize = 64;

/// The longer side of per-step previews, in pixels.
pub const PREVIEW_SIDE: i64 = 256;

/// An audio model's spectrograms: `spectrogram.json` beside `model_index.json` (the bundled
/// music model writes it; Riffusion's folders have none and get the riffusion preset).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct SpectrogramInfo {
    /// A preset name ([`crate::engine::spectrogram::SpectrogramPreset::by_name`]).
    pub preset: String,
    /// Image width (frames) and height (mel rows).
    pub width: u32,
    pub height: u32,
}

impl SpectrogramInfo {
    /// The folder's `spectrogram.json`, if it has one.
    pub fn read(folder: &Path) -> Result<Option<Self>, LoadError> {
        let path = folder.join("spectrogram.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let info: Self = serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: path.clone(), reason: error.to_string() })?;
        let preset = crate::engine::spectrogram::SpectrogramPreset::by_name(&info.preset)
            .map_err(|reason| LoadError::Config { path: path.clone(), reason })?;
        if info.height as usize != preset.n_mels || info.width == 0 {
            return Err(LoadError::Config {
                path,
                reason: format!(
                    "a {} spectrogram is {} mel rows high with at least one frame, not {}×{}",
                    preset.name, preset.n_mels, info.width, info.height
                ),
            });
        }
        Ok(Some(info))
    }
}

/// A loaded Stable Diffusion model.
pub struct StableDiffusion {
    /// The diffusers folder or single file it came from.
    pub source: PathBuf,
    /// The options it was loaded with.
    pub options: ModelOptions,
    /// What a single-file checkpoint was detected as (None for diffusers folders).
    pub detected: Option<single_file::Detected>,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKl,
    /// A tiny decoder for per-step previews (a diffusers folder's optional `taesd/`).
    pub taesd: Option<AutoencoderTiny>,
    /// Text embeddings by (prompt, chunks, clip skip): re-edits skip the text encoder.
    embeddings: std::cell::RefCell<std::collections::HashMap<(String, usize, usize), Tensor>>,
    /// The last prompt-to-prompt source branch, by what it depends on: re-edits replay it.
    p2p_source:
        std::cell::RefCell<Option<(String, std::rc::Rc<crate::engine::attention_control::SourceRecord>)>>,
    /// Recent inversions of real images: a second edit of the same image skips them.
    inversions: std::cell::RefCell<crate::engine::methods::inversion::InversionCache>,
    /// Which steps get a preview (see [`PreviewPacer`]).
    pacer: std::cell::RefCell<PreviewPacer>,
    /// `scheduler_config.json` as text (each scheduler reads it with its defaults).
    scheduler_config: Option<String>,
    /// Where the scheduler config came from, for messages.
    scheduler_config_source: String,
    /// Pixels per latent cell: 2^(VAE levels − 1), 8 for SD.
    pub vae_scale_factor: i64,
    /// What spectrograms an audio model makes (a folder's `spectrogram.json`).
    pub spectrogram: Option<SpectrogramInfo>,
    pub device: Device,
    pub precision: Precision,
}

/// The configs and tokenizer of a model, before its weights.
struct Parts {
    tokenizer: ClipTokenizer,
    text: ClipTextConfig,
    unet: UNet2DConditionConfig,
    vae: AutoencoderKlConfig,
    scheduler_config: Option<String>,
    scheduler_config_source: String,
}

impl Parts {
    /// The configs of a diffusers folder (the tokenizer from its tokenizer/ folder).
    fn from_folder(folder: &Path) -> Result<Self, LoadError> {
        let scheduler_path = folder.join("scheduler/scheduler_config.json");
        Ok(Self {
            tokenizer: ClipTokenizer::from_folder(&folder.join("tokenizer")).map_err(|error| {
                LoadError::Config { path: folder.join("tokenizer"), reason: error.to_string() }
            })?,
            text: ClipTextConfig::from_file(&folder.join("text_encoder/config.json"))?,
            unet: UNet2DConditionConfig::from_file(&folder.join("unet/config.json"))?,
            vae: AutoencoderKlConfig::from_file(&folder.join("vae/config.json"))?,
            scheduler_config: std::fs::read_to_string(&scheduler_path).ok(),
            scheduler_config_source: scheduler_path.display().to_string(),
        })
    }

    /// The released configs of SD 1.5 / SD 2.1 (CompVis/runwayml and stabilityai's diffusers
    /// folders), with the detected UNet input channels, and the bundled CLIP tokenizer.
    fn preset(detected: &single_file::Detected) -> Result<Self, LoadError> {
        Self::release(detected.family, detected.in_channels)
    }

    /// The release configs of `family` with `in_channels` UNet inputs.
    fn release(family: ModelFamily, in_channels: i64) -> Result<Self, LoadError> {
        let (text, unet, pad) = match family {
            ModelFamily::Sd1 => (ClipTextConfig::sd_v1(), UNet2DConditionConfig::sd_v1_5(), "<|endoftext|>"),
            ModelFamily::Sd2 => (ClipTextConfig::sd_v2(), UNet2DConditionConfig::sd_v2_1(), "!"),
        };
        let tokenizer = ClipTokenizer::bundled(pad).map_err(|error| LoadError::Config {
            path: "assets/tokenizers/clip".into(),
            reason: error.to_string(),
        })?;
        // scheduler_config.json of both releases (PNDM there; every scheduler reads these fields)
        let scheduler = serde_json::json!({
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "set_alpha_to_one": false,
            "steps_offset": 1,
            "clip_sample": false,
            "prediction_type": "epsilon",
        });
        Ok(Self {
            tokenizer,
            text,
            unet: UNet2DConditionConfig { in_channels, ..unet },
            vae: AutoencoderKlConfig::sd(),
            scheduler_config: Some(scheduler.to_string()),
            scheduler_config_source: "the SD scheduler preset".into(),
        })
    }

    /// Sets the scheduler config's `prediction_type`.
    fn set_prediction(&mut self, prediction: Prediction) -> Result<(), LoadError> {
        let text = self.scheduler_config.as_deref().unwrap_or("{}");
        let mut json: serde_json::Value = serde_json::from_str(text).map_err(|error| LoadError::Config {
            path: self.scheduler_config_source.clone().into(),
            reason: error.to_string(),
        })?;
        if let Some(object) = json.as_object_mut() {
            object.insert("prediction_type".into(), prediction.diffusers_name().into());
        }
        self.scheduler_config = Some(json.to_string());
        Ok(())
    }
}

impl StableDiffusion {
    /// Loads `model` — a diffusers folder, or a single-file `.safetensors` checkpoint — onto
    /// `device`, the UNet in `precision`.
    pub fn load(
        model: &Path,
        options: &ModelOptions,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        if model.is_dir() {
            Self::from_folder(model, options, device, precision)
        } else {
            Self::from_single_file(model, options, device, precision)
        }
    }

    /// Loads `folder` (a diffusers pipeline folder) onto `device`, the UNet in `precision`;
    /// `options.prediction` overrides the scheduler config's.
    pub fn from_folder(
        folder: &Path,
        options: &ModelOptions,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
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
        let mut parts = Parts::from_folder(folder)?;
        if let Some(prediction) = options.prediction {
            parts.set_prediction(prediction)?;
        }
        let text_encoder = ClipTextModel::from_folder(&folder.join("text_encoder"), device)?;
        let unet = UNet2DConditionModel::from_folder(&folder.join("unet"), device)?;
        let vae = AutoencoderKl::from_folder(&folder.join("vae"), device)?;
        let mut model =
            Self::assemble(folder, options.clone(), None, parts, text_encoder, unet, vae, precision)?;
        let taesd = folder.join("taesd");
        if taesd.join("config.json").is_file() {
            model.taesd = Some(AutoencoderTiny::from_folder(&taesd, device)?);
        }
        model.spectrogram = SpectrogramInfo::read(folder)?;
        Ok(model)
    }

    /// Loads a single-file checkpoint in the original LDM key layout: what it is comes from its
    /// keys and shapes (or `options`), the configs from the SD 1.5 / 2.1 releases (or the
    /// diffusers folder `options.config`).
    pub fn from_single_file(
        path: &Path,
        options: &ModelOptions,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        // 1. the weights, and what they are
        let file = super::loading::SafetensorsFile::open(path)?;
        let detected = single_file::detect(&file.shapes()?, path, options)?;
        tracing::info!("{}: {}", path.display(), detected.describe());
        // 2. configs: a folder the user names, else the release presets
        let (mut parts, hint) = match &options.config {
            Some(folder) => (
                Parts::from_folder(folder)?,
                format!(" — the configs in {} do not describe this checkpoint", folder.display()),
            ),
            None => (
                Parts::preset(&detected)?,
                " — the checkpoint is not a standard SD 1.x/2.x shape (or is not the family detected): \
                 pass --model-type, or --model-config with a diffusers folder whose configs describe it"
                    .to_string(),
            ),
        };
        let mut detected = detected;
        if options.config.is_some() && options.prediction.is_none() {
            // the folder's scheduler config says what the UNet predicts
            let config: serde_json::Value =
                serde_json::from_str(parts.scheduler_config.as_deref().unwrap_or("{}")).unwrap_or_default();
            let name = config["prediction_type"].as_str().unwrap_or("epsilon");
            detected.prediction = Prediction::from_name(name).map_err(|reason| LoadError::Config {
                path: parts.scheduler_config_source.clone().into(),
                reason,
            })?;
            detected.prediction_reason = "from the --model-config folder's scheduler config".into();
        } else {
            parts.set_prediction(detected.prediction)?;
        }
        if parts.unet.in_channels != detected.in_channels {
            return Err(LoadError::Config {
                path: path.into(),
                reason: format!(
                    "the UNet takes {} input channels, its config {}{hint}",
                    detected.in_channels, parts.unet.in_channels
                ),
            });
        }
        // 3. route every key to its model, and load each
        let layout = single_file::Layout {
            family: detected.family,
            unet_layers_per_block: parts.unet.layers_per_block,
            vae_levels: parts.vae.block_out_channels.len(),
            text_layers: parts.text.num_hidden_layers,
        };
        let weights =
            file.tensors(|key| !matches!(single_file::route(key, &layout), single_file::Route::Ignored(_)))?;
        drop(file);
        let mut split = single_file::split(weights, &layout, path)?;
        let text_encoder = ClipTextModel::new(parts.text.clone(), device);
        single_file::load_part(text_encoder.var_store(), Part::TextEncoder, &mut split, path, &hint)?;
        let unet = UNet2DConditionModel::new(parts.unet.clone(), device);
        single_file::load_part(unet.var_store(), Part::Unet, &mut split, path, &hint)?;
        let vae = AutoencoderKl::new(parts.vae.clone(), device);
        single_file::load_part(vae.var_store(), Part::Vae, &mut split, path, &hint)?;
        Self::assemble(path, options.clone(), Some(detected), parts, text_encoder, unet, vae, precision)
    }

    /// A model of `family`'s release shape with random weights, for benchmarks (speed does not
    /// depend on weight values).
    pub fn random(family: ModelFamily, device: Device, precision: Precision) -> Result<Self, LoadError> {
        let parts = Parts::release(family, 4)?;
        let text_encoder = ClipTextModel::new(parts.text.clone(), device);
        let unet = UNet2DConditionModel::new(parts.unet.clone(), device);
        let vae = AutoencoderKl::new(parts.vae.clone(), device);
        let source = PathBuf::from(format!("random-{family:?}"));
        Self::assemble(&source, ModelOptions::default(), None, parts, text_encoder, unet, vae, precision)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        source: &Path,
        options: ModelOptions,
        detected: Option<single_file::Detected>,
        parts: Parts,
        text_encoder: ClipTextModel,
        mut unet: UNet2DConditionModel,
        vae: AutoencoderKl,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size {
            return Err(LoadError::Config {
                path: source.into(),
                reason: format!(
                    "the UNet's cross_attention_dim {} does not match the text encoder's hidden_size {} — the model mixes parts",
                    unet.config.cross_attention_dim, text_encoder.config.hidden_size
                ),
            });
        }
        match precision {
            Precision::F32 => {}
            Precision::F16 => unet.set_kind(Kind::Half),
            Precision::Bf16 => unet.set_kind(Kind::BFloat16),
        }
        // small UNets on the CPU run guidance's two branches side by side (branch_parallel.rs)
        unet.enable_branch_parallel();
        let vae_scale_factor = 1i64 << (vae.config.block_out_channels.len() - 1);
        let device = unet.var_store().device();
        Ok(Self {
            source: source.into(),
            options,
            detected,
            tokenizer: parts.tokenizer,
            text_encoder,
            unet,
            vae,
            taesd: None,
            embeddings: Default::default(),
            p2p_source: Default::default(),
            inversions: Default::default(),
            pacer: Default::default(),
            scheduler_config: parts.scheduler_config,
            scheduler_config_source: parts.scheduler_config_source,
            vae_scale_factor,
            spectrogram: None,
            device,
            precision,
        })
    }

    /// The image size the model was trained at: the UNet's sample size × the VAE's factor.
    pub fn native_size(&self) -> (u32, u32) {
        if let Some(info) = &self.spectrogram {
            return (info.width, info.height);
        }
        let side = (self.unet.config.sample_size * self.vae_scale_factor).clamp(8, 8192) as u32;
        (side, side)
    }

    /// What was loaded, in one line.
    pub fn describe(&self) -> String {
        let name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match &self.detected {
            Some(detected) => format!("{name}: {}", detected.describe()),
            None => {
                // what the folder's configs say it is
                let family = match self.unet.config.cross_attention_dim {
                    768 => "SD 1.x".to_string(),
                    1024 => "SD 2.x".to_string(),
                    other => format!("small SD-family ({other}-wide text)"),
                };
                let variant = single_file::Variant::from_channels(
                    self.unet.config.in_channels,
                    self.vae.config.latent_channels,
                )
                .map_or("unusual-input", single_file::Variant::name);
                let config: serde_json::Value =
                    serde_json::from_str(self.scheduler_config.as_deref().unwrap_or("{}"))
                        .unwrap_or_default();
                let prediction = config["prediction_type"].as_str().unwrap_or("epsilon");
                format!(
                    "{name}: diffusers folder, {family} {variant}, {}-channel UNet, prediction type {prediction}, {}× VAE{}",
                    self.unet.config.in_channels,
                    self.vae_scale_factor,
                    if self.taesd.is_some() { ", preview decoder" } else { "" }
                )
            }
        }
    }

    /// The prompt's text embeddings: (1, 77 × chunks, dim), with `(word:1.3)` weights applied as
    /// AUTOMATIC1111 does (scale each token's embedding, then restore the overall mean).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        chunks_at_least: usize,
        clip_skip: usize,
    ) -> Result<Tensor, JobError> {
        let key = (prompt.to_string(), chunks_at_least, clip_skip);
        if let Some(cached) = self.embeddings.borrow().get(&key) {
            return Ok(cached.shallow_clone());
        }
        let embedding = self.encode_prompt_uncached(prompt, chunks_at_least, clip_skip)?;
        let mut cache = self.embeddings.borrow_mut();
        if cache.len() >= EMBEDDING_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, embedding.shallow_clone());
        Ok(embedding)
    }

    /// The recorded prompt-to-prompt source branch for `key`, if it is the one kept.
    pub fn recorded_source(
        &self,
        key: &str,
    ) -> Option<std::rc::Rc<crate::engine::attention_control::SourceRecord>> {
        match &*self.p2p_source.borrow() {
            Some((kept, record)) if kept == key => Some(record.clone()),
            _ => None,
        }
    }

    /// Keeps `record` as the prompt-to-prompt source for `key` (one at a time).
    pub fn record_source(&self, key: String, record: crate::engine::attention_control::SourceRecord) {
        *self.p2p_source.borrow_mut() = Some((key, std::rc::Rc::new(record)));
    }

    /// Drops the recorded prompt-to-prompt source (the next edit runs both branches).
    pub fn forget_recorded_source(&self) {
        *self.p2p_source.borrow_mut() = None;
    }

    /// The model's inversion cache.
    pub fn inversion_cache(
        &self,
    ) -> std::cell::RefMut<'_, crate::engine::methods::inversion::InversionCache> {
        self.inversions.borrow_mut()
    }

    /// How many prompt embeddings are cached.
    pub fn cached_embeddings(&self) -> usize {
        self.embeddings.borrow().len()
    }

    fn encode_prompt_uncached(
        &self,
        prompt: &str,
        chunks_at_least: usize,
        clip_skip: usize,
    ) -> Result<Tensor, JobError> {
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
            let hidden = self.text_encoder.forward(&input, clip_skip)?;
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

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The prompt's and negative prompt's embeddings, padded to the same number of chunks.
    pub fn prompt_pair(
        &self,
        prompt: &str,
        negative: &str,
        clip_skip: usize,
    ) -> Result<(Tensor, Tensor), JobError> {
        let chunks = self.chunk_count(prompt)?.max(self.chunk_count(negative)?);
        Ok((self.encode_prompt(prompt, chunks, clip_skip)?, self.encode_prompt(negative, chunks, clip_skip)?))
    }

    /// Image (1, 3, h, w) in [-1, 1] → scaled latents sampled from the VAE's posterior, the
    /// sample's ε drawn from the default CPU generator (diffusers' `retrieve_latents` with a
    /// CPU generator).
    pub fn encode_image_sample(&self, image: &Tensor) -> Result<Tensor, JobError> {
        let posterior = self.vae.encode(image)?;
        let epsilon = Tensor::f_randn(posterior.mean.size(), (Kind::Float, Device::Cpu))?
            .f_to_device(self.device)?
            .f_to_kind(posterior.mean.kind())?;
        Ok(posterior.sample(&epsilon)?.f_mul_scalar(self.vae.config.scaling_factor)?)
    }

    /// Text-to-image's starting latents for a `height`×`width` (pixels) image: the generator seeded
    /// with `seed`, one standard-normal latent drawn on the CPU (as diffusers draws it) and moved
    /// to the device, scaled by the scheduler's `init_noise_sigma`.
    pub fn seeded_latents(&self, seed: u64, height: i64, width: i64, sigma: f64) -> Result<Tensor, JobError> {
        tch::manual_seed(seed as i64);
        let factor = self.vae_scale_factor;
        let size = [1, self.unet.config.out_channels, height / factor, width / factor];
        Ok(self.cpu_randn(&size)?.f_mul_scalar(sigma)?)
    }

    /// Standard normal noise of `size` from the default CPU generator, on the model's device.
    pub fn cpu_randn(&self, size: &[i64]) -> Result<Tensor, JobError> {
        Ok(Tensor::f_randn(size, (Kind::Float, Device::Cpu))?.f_to_device(self.device)?)
    }

    /// How many 77-token chunks a prompt takes.
    fn chunk_count(&self, prompt: &str) -> Result<usize, JobError> {
        Ok(self.tokenizer.encode_prompt(prompt).map_err(|error| JobError::Failed(error.to_string()))?.len())
    }

    /// The scheduler of `name` with this model's scheduler config.
    pub fn scheduler(&self, name: &str) -> Result<Box<dyn crate::engine::schedulers::Scheduler>, JobError> {
        self.scheduler_for(SchedulerChoice::from_name(name)?)
    }

    /// σ = √((1 − ᾱ)/ᾱ) at each of `timesteps` (rounded to training steps), from this model's
    /// noise schedule.
    pub fn sigmas_at(&self, timesteps: &[f64]) -> Result<Vec<f64>, JobError> {
        let config = self.scheduler_config_for(crate::engine::schedulers::SchedulerKind::Ddim)?;
        let alphas = crate::engine::schedulers::alphas_cumprod(&crate::engine::schedulers::betas(&config)?)?;
        Ok(timesteps
            .iter()
            .map(|t| {
                let alpha = f64::from(alphas[(t.round().max(0.0) as usize).min(alphas.len() - 1)]);
                ((1.0 - alpha) / alpha).sqrt()
            })
            .collect())
    }

    /// The scheduler `choice` with this model's scheduler config.
    pub fn scheduler_for(
        &self,
        choice: SchedulerChoice,
    ) -> Result<Box<dyn crate::engine::schedulers::Scheduler>, JobError> {
        Ok(choice.build(self.scheduler_config_for(choice.kind)?)?)
    }

    /// This model's scheduler config read for `kind` (SD's defaults when the model has none).
    fn scheduler_config_for(
        &self,
        kind: crate::engine::schedulers::SchedulerKind,
    ) -> Result<SchedulerConfig, JobError> {
        Ok(match &self.scheduler_config {
            Some(text) => SchedulerConfig::from_json(kind, text, &self.scheduler_config_source)?,
            None => SchedulerConfig::stable_diffusion(kind),
        })
    }

    /// A preview for step `step` (1-based) of a job when the pacer says one is due: always at
    /// step 1, later while previews take at most a tenth of the job's time.
    pub fn paced_preview(&self, step: usize, latents: &Tensor) -> Option<ImageData> {
        let mut pacer = self.pacer.borrow_mut();
        let start = std::time::Instant::now();
        if step > 1 && !pacer.due(start) {
            return None;
        }
        let image = self.preview(latents, PREVIEW_SIDE).ok();
        pacer.record(start, std::time::Instant::now());
        image
    }

    /// A cheap look at (scaled) latents for progress: the tiny decoder when the model has one,
    /// else a fixed linear map from SD's four latent channels to RGB; at most `max_side` pixels.
    pub fn preview(&self, latents: &Tensor, max_side: i64) -> Result<ImageData, JobError> {
        let _no_grad = tch::no_grad_guard();
        let rgb = match &self.taesd {
            Some(taesd) => taesd.decode(&latents.f_to_kind(Kind::Float)?)?,
            None if latents.size().get(1) == Some(&4) => {
                // SD 1.x latent channels' linear fit to RGB, published by keturn on the Hugging
                // Face forum ("Decoding latents to RGB without upscaling", 2022)
                let map = Tensor::f_from_slice(&LATENT_RGB)?.f_view([4, 3])?.f_to_device(latents.device())?;
                latents
                    .f_to_kind(Kind::Float)?
                    .f_permute([0, 2, 3, 1])?
                    .f_matmul(&map)?
                    .f_permute([0, 3, 1, 2])?
            }
            None => return Err(JobError::Failed("no preview for latents that are not 4-channel".into())),
        };
        crate::engine::image_tensor::preview_from_tensor(&rgb, max_side)
    }

    /// Decodes latents to an RGBA image (diffusers' `postprocess`: (x / 2 + 0.5) clamped).
    pub fn decode_to_image(&self, latents: &Tensor) -> Result<ImageData, JobError> {
        let scaled = latents.f_div_scalar(self.vae.config.scaling_factor)?;
        let image = self.vae.decode(&scaled)?.f_to_kind(Kind::Float)?;
        crate::engine::image_tensor::image_from_tensor(&image)
    }

    /// Text to image, as an engine job (progress events, cancel between steps).
    pub fn generate(&self, params: &GenerateParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        self.generate_with(params, |step, of, latents| {
            ctx.progress(step, of, self.paced_preview(step, latents));
            ctx.checkpoint()
        })
    }

    /// Text to image; `on_step(step, of)` runs after each step and may stop the loop.
    pub fn generate_with(
        &self,
        params: &GenerateParams,
        mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
    ) -> Result<ImageData, JobError> {
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
        let (text, negative) = self.prompt_pair(&params.prompt, &params.negative_prompt, params.clip_skip)?;
        // 3. the scheduler and the seeded initial latents (drawn on the CPU, as diffusers)
        let mut scheduler = self.scheduler(&params.scheduler)?;
        scheduler.set_timesteps(params.steps)?;
        let latents = self.seeded_latents(params.seed, height, width, scheduler.init_noise_sigma())?;
        // 4. the loop, with a preview of the predicted image every step
        let conditioning = Conditioning::guided(&text, &negative, params);
        let latents = sampler::denoise(
            &self.unet,
            scheduler.as_mut(),
            latents,
            &conditioning,
            &mut CpuGeneratorNoise,
            |step, of, latents| on_step(step, of, latents),
        )?;
        // 5. decode
        self.decode_to_image(&latents)
    }
}

/// Paces previews so that they cost at most a tenth of a job's time: a slow model (seconds per
/// step) previews every step, a fast one (the bundled model: ~15 ms per step against ~10 ms per
/// tiny-decoder preview) every several steps — a preview every step would double its time.
#[derive(Debug, Default)]
pub struct PreviewPacer {
    last_end: Option<std::time::Instant>,
    cost: std::time::Duration,
}

impl PreviewPacer {
    /// Whether a preview at `now` keeps previews within a tenth of the time.
    pub fn due(&self, now: std::time::Instant) -> bool {
        self.last_end.is_none_or(|end| now.saturating_duration_since(end) >= self.cost * 9)
    }

    /// A preview ran from `start` to `end`.
    pub fn record(&mut self, start: std::time::Instant, end: std::time::Instant) {
        self.cost = end.saturating_duration_since(start);
        self.last_end = Some(end);
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::PreviewPacer;
    use std::time::{Duration, Instant};

    #[test]
    fn previews_take_at_most_a_tenth_of_the_time() {
        let mut pacer = PreviewPacer::default();
        let t0 = Instant::now();
        assert!(pacer.due(t0), "the first preview is always due");
        // a 10 ms preview: the next is due 90 ms after it ended, not before
        pacer.record(t0, t0 + Duration::from_millis(10));
        assert!(!pacer.due(t0 + Duration::from_millis(60)));
        assert!(pacer.due(t0 + Duration::from_millis(100)));
        // a free preview (the linear latent map) is due at every step
        pacer.record(t0 + Duration::from_millis(100), t0 + Duration::from_millis(100));
        assert!(pacer.due(t0 + Duration::from_millis(101)));
    }
}
