//! `UNet2DModel`: the unconditional (or class-conditional) UNet of DDPM-style models — the
//! mel-spectrogram models of audio-diffusion use it. diffusers' names and `config.json` fields.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::blocks::{MidBlock2D, SpatialSelfAttention, conv2d, group_norm};
use super::unet_levels::{LevelsConfig, UNetLevels};
use crate::engine::loading::{self, LoadError};

/// A size that is one number or (height, width), as `sample_size` is.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(i64),
    HeightWidth(Vec<i64>),
}

/// diffusers' `UNet2DModel` config, the fields these models use.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConfig {
    pub sample_size: Option<SampleSize>,
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    /// "DownBlock2D" or "AttnDownBlock2D".
    pub down_block_types: Vec<String>,
    /// "UpBlock2D" or "AttnUpBlock2D".
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<i64>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Channels per attention head (8); `None` means one head per block.
    #[serde(default = "eight")]
    pub attention_head_dim: Option<i64>,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: i64,
    /// Class-conditional models: the number of classes.
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
    #[serde(default = "yes")]
    pub add_attention: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
}

fn three() -> i64 {
    3
}
fn two() -> usize {
    2
}
fn eight() -> Option<i64> {
    Some(8)
}
fn thirty_two() -> i64 {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn positional() -> String {
    "positional".into()
}

impl UNet2DConfig {
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: path.into(), reason: error.to_string() })?;
        let bad = |reason: String| Err(LoadError::Config { path: path.into(), reason });
        let levels = config.block_out_channels.len();
        if levels == 0 || config.down_block_types.len() != levels || config.up_block_types.len() != levels {
            return bad(
                "block_out_channels, down_block_types and up_block_types need one entry per level".into()
            );
        }
        if let Some(kind) =
            config.down_block_types.iter().find(|k| *k != "DownBlock2D" && *k != "AttnDownBlock2D")
        {
            return bad(format!(
                "down block type \"{kind}\" is not supported (DownBlock2D, AttnDownBlock2D)"
            ));
        }
        if let Some(kind) = config.up_block_types.iter().find(|k| *k != "UpBlock2D" && *k != "AttnUpBlock2D")
        {
            return bad(format!("up block type \"{kind}\" is not supported (UpBlock2D, AttnUpBlock2D)"));
        }
        if config.time_embedding_type != "positional" {
            return bad(format!(
                "time_embedding_type \"{}\" is not supported (positional)",
                config.time_embedding_type
            ));
        }
        Ok(config)
    }

    fn heads(&self, channels: i64) -> i64 {
        self.attention_head_dim.map_or(1, |dim| (channels / dim).max(1))
    }
}

/// `UNet2DModel`.
pub struct UNet2DModel {
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    class_embedding: Option<nn::Embedding>,
    conv_in: nn::Conv2D,
    levels: UNetLevels<SpatialSelfAttention>,
    mid_block: MidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    pub config: UNet2DConfig,
    vs: nn::VarStore,
}

impl UNet2DModel {
    pub fn new(config: UNet2DConfig, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let channels = &config.block_out_channels;
        let levels = channels.len();
        let temb = channels[0] * 4;
        let (groups, eps) = (config.norm_num_groups, config.norm_eps);
        // 1. the down and up paths
        let levels_config = LevelsConfig {
            block_out_channels: channels,
            layers_per_block: config.layers_per_block,
            temb_channels: temb,
            groups,
            eps,
        };
        let unet_levels = UNetLevels::new(
            &root,
            &levels_config,
            |i| config.down_block_types[i] == "AttnDownBlock2D",
            |i| config.up_block_types[i] == "AttnUpBlock2D",
            |path, channels, _level| {
                SpatialSelfAttention::new(path, channels, config.heads(channels), groups, eps)
            },
        );
        // 2. middle
        let last = channels[levels - 1];
        let mid_heads = config.add_attention.then(|| config.heads(last));
        let mid_block = MidBlock2D::new(&root / "mid_block", last, Some(temb), groups, eps, mid_heads);
        let time = &root / "time_embedding";
        Self {
            time_linear_1: nn::linear(&time / "linear_1", channels[0], temb, Default::default()),
            time_linear_2: nn::linear(&time / "linear_2", temb, temb, Default::default()),
            class_embedding: config
                .num_class_embeds
                .map(|classes| nn::embedding(&root / "class_embedding", classes, temb, Default::default())),
            conv_in: conv2d(&root / "conv_in", config.in_channels, channels[0], 3, 1, 1),
            levels: unet_levels,
            mid_block,
            conv_norm_out: group_norm(&root / "conv_norm_out", groups, channels[0], eps),
            conv_out: conv2d(&root / "conv_out", channels[0], config.out_channels, 3, 1, 1),
            config,
            vs,
        }
    }

    /// Converts the weights to `kind` (f16/bf16 halve memory; inputs are cast on entry).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
        self.vs.freeze();
    }

    /// Loads a diffusers `unet/` folder of a `UNet2DModel`.
    pub fn from_folder(folder: &Path, device: tch::Device) -> Result<Self, LoadError> {
        let config = UNet2DConfig::from_file(&folder.join("config.json"))?;
        let model = Self::new(config, device);
        loading::load_diffusers_weights(&model.vs, folder)?;
        Ok(model)
    }

    /// sample: (batch, in_channels, h, w) with h, w divisible by 2^(levels−1); `class_labels`:
    /// (batch,) int64 for class-conditional models → (batch, out_channels, h, w).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        let kind = self.vs.kind();
        let batch = sample.size()[0];
        let sample = sample.f_to_kind(kind)?;
        // 1. time (and class) embedding
        let timesteps = Tensor::f_full([batch], timestep, (Kind::Float, sample.device()))?;
        let features = super::embeddings::timestep_features(
            &timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .f_to_kind(kind)?;
        let mut temb = self.time_linear_2.forward(&self.time_linear_1.forward(&features).f_silu()?);
        match (&self.class_embedding, class_labels) {
            (Some(embedding), Some(labels)) => {
                temb = temb.f_add(&embedding.forward(labels).f_to_kind(kind)?)?
            }
            (Some(_), None) => {
                return Err(tch::TchError::Shape(
                    "this model is class-conditional: pass class labels".into(),
                ));
            }
            _ => {}
        }
        // 2. down path, middle, up path
        let (h, skips) = self.levels.down(self.conv_in.forward(&sample), &temb, None)?;
        let h = self.mid_block.forward(&h, Some(&temb))?;
        let h = self.levels.up(h, skips, &temb, None, false)?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).f_silu()?))
    }
}
