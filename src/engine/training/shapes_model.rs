//! The bundled shapes model's architecture — the model core's own families at a small size — as
//! the `config.json` files of a diffusers folder, and the writing of that folder.
//!
//! Sizes (chosen for the 300 ms / 20-step 128×128 CPU target and the 2-hour training budget,
//! measured with `bench unet --preset`; see MODEL_CARD.md):
//! - `AutoencoderKL` 128×128×3 ⇄ 16×16×4 (8×, as SD), channels 16-32-64-64, one resnet per level;
//! - CLIP text encoder: 3 layers, width 128, 4 heads, the word-level vocabulary of
//!   [`crate::datasets::shapes::vocabulary`];
//! - `UNet2DConditionModel`: channels 32-64-64, one resnet per level, cross-attention at 16×16
//!   and 8×8 and in the middle, 4 heads, context width 128;
//! - `AutoencoderTiny` (TAESD layout) with 16 channels per level, one block per level, for
//!   previews.

use std::path::Path;

use serde_json::{Value, json};
use tch::Tensor;

use crate::engine::models::clip::ClipTextConfig;
use crate::engine::models::taesd::AutoencoderTinyConfig;
use crate::engine::models::unet_2d_condition::UNet2DConditionConfig;
use crate::engine::models::vae::AutoencoderKlConfig;
use crate::engine::training::noise::{BETA_END, BETA_START, TRAIN_TIMESTEPS, Target};
use crate::text::word_vocab::WordVocabulary;

/// The diffusers version whose folder layout is written (the one the tests load it with).
pub const DIFFUSERS_VERSION: &str = "0.42.1";

/// The image side the model is trained at (bucket areas stay near it).
pub const IMAGE_SIZE: i64 = 128;

/// The sizes a run chooses (`train --latent-channels --vae-levels --unet-channels
/// --unet-attention`; their defaults are the sizes described above).
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// Channels of the latents.
    pub latent_channels: i64,
    /// VAE levels: the latents are 2^(levels − 1) times smaller than the image per side.
    pub vae_levels: usize,
    /// UNet channels per level.
    pub unet_channels: Vec<i64>,
    /// Whether each UNet level (down and mirrored up) has cross- and self-attention.
    pub unet_attention: Vec<bool>,
    /// Groups of every UNet group norm.
    pub unet_norm_groups: i64,
    /// Whether the pooled prompt is added to the timestep embedding (`addition_embed_type`).
    pub unet_text_time: bool,
}

impl Architecture {
    /// How many times smaller the latents are than the image, per side.
    pub fn factor(&self) -> i64 {
        1 << (self.vae_levels - 1)
    }

    /// Refuses sizes the model families cannot build, naming the option.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=16).contains(&self.latent_channels), "--latent-channels must be 1 to 16");
        anyhow::ensure!(
            (2..=5).contains(&self.vae_levels),
            "--vae-levels must be 2 to 5 (2× to 16× smaller latents)"
        );
        anyhow::ensure!(
            !self.unet_channels.is_empty() && self.unet_channels.len() == self.unet_attention.len(),
            "--unet-channels and --unet-attention must name the same number of levels"
        );
        let groups = self.unet_norm_groups;
        anyhow::ensure!(groups > 0, "--unet-norm-groups must be at least 1");
        anyhow::ensure!(
            self.unet_channels.iter().all(|c| *c > 0 && c % groups == 0),
            "--unet-channels must be multiples of --unet-norm-groups ({groups})"
        );
        Ok(())
    }
}

/// `vae/config.json` (`scaling_factor` as measured on the data after training).
pub fn vae_config(scaling_factor: f64, arch: &Architecture) -> Value {
    let channels: Vec<i64> = [16, 32, 64, 64, 64][..arch.vae_levels].to_vec();
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": vec!["DownEncoderBlock2D"; arch.vae_levels],
        "up_block_types": vec!["UpDecoderBlock2D"; arch.vae_levels],
        "block_out_channels": channels,
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": arch.latent_channels,
        "norm_num_groups": 8,
        "sample_size": IMAGE_SIZE,
        "scaling_factor": scaling_factor,
        "force_upcast": false,
        "use_quant_conv": true,
        "use_post_quant_conv": true,
        "mid_block_add_attention": true
    })
}

/// `text_encoder/config.json` for a vocabulary of `vocab_size` with these special token ids.
pub fn text_encoder_config(vocab_size: usize, bos: u32, eos: u32) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab_size,
        "hidden_size": 128,
        "intermediate_size": 512,
        "projection_dim": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32"
    })
}

/// `unet/config.json`.
pub fn unet_config(arch: &Architecture) -> Value {
    let down: Vec<&str> = arch
        .unet_attention
        .iter()
        .map(|attention| if *attention { "CrossAttnDownBlock2D" } else { "DownBlock2D" })
        .collect();
    let up: Vec<&str> = arch
        .unet_attention
        .iter()
        .rev()
        .map(|attention| if *attention { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": IMAGE_SIZE / arch.factor(),
        "in_channels": arch.latent_channels,
        "out_channels": arch.latent_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": arch.unet_channels,
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": 128,
        "norm_num_groups": arch.unet_norm_groups,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "center_input_sample": false,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "use_linear_projection": false,
        "upcast_attention": false
    });
    if arch.unet_text_time {
        config["addition_embed_type"] = json!("text");
        config["addition_embed_type_num_heads"] = json!(4);
    }
    config
}

/// `taesd/config.json` (diffusers' `AutoencoderTiny`), one level per VAE level.
pub fn taesd_config(arch: &Architecture) -> Value {
    let levels = arch.vae_levels;
    json!({
        "_class_name": "AutoencoderTiny",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": 3,
        "out_channels": 3,
        "encoder_block_out_channels": vec![16; levels],
        "decoder_block_out_channels": vec![16; levels],
        "num_encoder_blocks": vec![1; levels],
        "num_decoder_blocks": vec![1; levels],
        "latent_channels": arch.latent_channels,
        "act_fn": "relu",
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "scaling_factor": 1.0,
        "force_upcast": false
    })
}

/// `scheduler/scheduler_config.json`: SD's DDPM schedule, sampled with DDIM by default.
pub fn scheduler_config(target: Target) -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "clip_sample": false,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "prediction_type": target.prediction_type(),
        "timestep_spacing": "leading"
    })
}

/// `model_index.json` of a `StableDiffusionPipeline` without safety checker.
pub fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

/// A config value as one of the model core's config structs.
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value.clone())
}

/// The model core's configs of the shapes model.
pub fn configs(
    vocab_size: usize,
    bos: u32,
    eos: u32,
    arch: &Architecture,
) -> Result<
    (AutoencoderKlConfig, ClipTextConfig, UNet2DConditionConfig, AutoencoderTinyConfig),
    serde_json::Error,
> {
    Ok((
        parse(&vae_config(1.0, arch))?,
        parse(&text_encoder_config(vocab_size, bos, eos))?,
        parse(&unet_config(arch))?,
        parse(&taesd_config(arch))?,
    ))
}

/// The words the text encoder knows, as a CLIP-format vocabulary.
pub fn vocabulary() -> WordVocabulary {
    WordVocabulary::new(&crate::datasets::shapes::vocabulary())
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &Value) -> std::io::Result<()> {
    std::fs::write(path, format!("{value:#}\n"))
}

/// Writes named tensors as a contiguous f32 `.safetensors` file, atomically (a temporary file
/// renamed into place, so an interrupted write never leaves a half file under the real name).
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, tensor)| {
            Ok((name.clone(), tensor.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?))
        })
        .collect::<Result<_, tch::TchError>>()?;
    let partial = path.with_extension("partial");
    Tensor::write_safetensors(&contiguous, &partial)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// A `VarStore`'s variables by name, sorted (as saved).
pub fn named_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}
