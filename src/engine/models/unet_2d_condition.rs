//! `UNet2DConditionModel` (Rombach et al. 2022) with diffusers' names and `config.json` fields:
//! the denoiser of Stable Diffusion 1.x/2.x, including 8-channel (InstructPix2Pix) and 9-channel
//! (inpainting) inputs.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::{Transformer2DModel, TransformerOptions};
use super::blocks::{ResnetBlock2D, conv2d, group_norm};
use super::embeddings::TextTimeEmbedding;
use super::unet_levels::{LevelsConfig, UNetLevels};
use crate::engine::attention_control::{AttentionControl, CrossContext, Place};
use crate::engine::loading::{self, LoadError};

/// An int or a per-block list, as `attention_head_dim` is in SD configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(i64),
    Each(Vec<i64>),
}

impl PerBlock {
    fn get(&self, block: usize) -> i64 {
        match self {
            PerBlock::One(value) => *value,
            PerBlock::Each(values) => values.get(block).or(values.last()).copied().unwrap_or(1),
        }
    }
}

/// diffusers' `UNet2DConditionModel` config (`unet/config.json`), the fields SD 1.x/2.x use.
#[derive(Debug, Clone, Deserialize)]
pub struct UNet2DConditionConfig {
    /// 4, 8 (InstructPix2Pix) or 9 (inpainting).
    pub in_channels: i64,
    pub out_channels: i64,
    /// "CrossAttnDownBlock2D" or "DownBlock2D".
    pub down_block_types: Vec<String>,
    /// "CrossAttnUpBlock2D" or "UpBlock2D".
    pub up_block_types: Vec<String>,
    /// SD: [320, 640, 1280, 1280].
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: usize,
    /// Despite its name, the number of heads in diffusers' SD configs (8, or [5, 10, 20, 20]).
    pub attention_head_dim: PerBlock,
    /// When present, the number of heads (newer configs).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// The text embedding width: 768 (SD 1.x) or 1024 (SD 2.x).
    pub cross_attention_dim: i64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: i64,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// "text" (a pooled prompt vector added to the timestep embedding, [`TextTimeEmbedding`])
    /// or none (SD 1.x/2.x).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Heads of the "text" addition's attention pooling.
    #[serde(default = "default_addition_heads")]
    pub addition_embed_type_num_heads: i64,
    /// A projection of the text embedding before the UNet (Kandinsky, DeepFloyd IF): refused.
    #[serde(default)]
    pub encoder_hid_dim: Option<i64>,
    #[serde(default = "default_sample_size")]
    pub sample_size: i64,
}

fn default_groups() -> i64 {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_sample_size() -> i64 {
    64
}
fn default_addition_heads() -> i64 {
    64
}

impl UNet2DConditionConfig {
    /// runwayml/stable-diffusion-v1-5's `unet/config.json`.
    pub fn sd_v1_5() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            down_block_types: [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
                .map(String::from)
                .to_vec(),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            cross_attention_dim: 768,
            use_linear_projection: false,
            upcast_attention: false,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0,
            mid_block_type: None,
            class_embed_type: None,
            addition_embed_type: None,
            addition_embed_type_num_heads: 64,
            encoder_hid_dim: None,
            sample_size: 64,
        }
    }

    /// stabilityai/stable-diffusion-2-1's `unet/config.json`.
    pub fn sd_v2_1() -> Self {
        Self {
            attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
            cross_attention_dim: 1024,
            use_linear_projection: true,
            upcast_attention: true,
            sample_size: 96,
            ..Self::sd_v1_5()
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: path.into(), reason: error.to_string() })?;
        config.check().map_err(|reason| LoadError::Config { path: path.into(), reason })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let levels = self.block_out_channels.len();
        if levels == 0 || self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(
                "block_out_channels, down_block_types and up_block_types must have one entry per level"
                    .into(),
            );
        }
        for kind in &self.down_block_types {
            if kind != "CrossAttnDownBlock2D" && kind != "DownBlock2D" {
                return Err(format!(
                    "down block type \"{kind}\" is not supported (CrossAttnDownBlock2D, DownBlock2D)"
                ));
            }
        }
        for kind in &self.up_block_types {
            if kind != "CrossAttnUpBlock2D" && kind != "UpBlock2D" {
                return Err(format!(
                    "up block type \"{kind}\" is not supported (CrossAttnUpBlock2D, UpBlock2D)"
                ));
            }
        }
        if let Some(kind) = self.mid_block_type.as_deref()
            && kind != "UNetMidBlock2DCrossAttn"
        {
            return Err(format!("mid_block_type \"{kind}\" is not supported (UNetMidBlock2DCrossAttn)"));
        }
        if let Some(value) = &self.class_embed_type {
            return Err(format!("class_embed_type \"{value}\" is not supported (SD 1.x/2.x have none)"));
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text") => {
                let heads = self.addition_embed_type_num_heads;
                if heads < 1 || self.cross_attention_dim % heads != 0 {
                    return Err(format!(
                        "addition_embed_type_num_heads {heads} must divide cross_attention_dim {}",
                        self.cross_attention_dim
                    ));
                }
            }
            Some(value) => {
                return Err(format!(
                    "addition_embed_type \"{value}\" is not supported (\"text\", or none as in SD 1.x/2.x)"
                ));
            }
        }
        if let Some(dim) = self.encoder_hid_dim {
            return Err(format!("encoder_hid_dim {dim} is not supported (SD 1.x/2.x have none)"));
        }
        Ok(())
    }

    /// Heads of the transformers at level `block`.
    fn heads(&self, block: usize) -> i64 {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).get(block)
    }
}

/// The denoiser.
pub struct UNet2DConditionModel {
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    /// `addition_embed_type: "text"`.
    add_embedding: Option<TextTimeEmbedding>,
    conv_in: nn::Conv2D,
    levels: UNetLevels<Transformer2DModel>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Transformer2DModel,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
    pub config: UNet2DConditionConfig,
    vs: nn::VarStore,
    /// Runs half of each inference batch on a second thread ([`Self::enable_branch_parallel`]).
    branches: Option<super::branch_parallel::BranchWorker>,
}

impl UNet2DConditionModel {
    pub fn new(config: UNet2DConditionConfig, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let channels = &config.block_out_channels;
        let levels = channels.len();
        let temb = channels[0] * 4;
        let (groups, eps) = (config.norm_num_groups, config.norm_eps);
        let options = |layers| TransformerOptions {
            context_dim: config.cross_attention_dim,
            use_linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
            groups,
            layers,
        };
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
            |i| config.down_block_types[i] == "CrossAttnDownBlock2D",
            |i| config.up_block_types[i] == "CrossAttnUpBlock2D",
            |path, channels, level| Transformer2DModel::new(path, channels, config.heads(level), options(1)),
        );
        // 2. middle
        let last = channels[levels - 1];
        let mid = &root / "mid_block";
        let mid_resnet =
            |j: i64| ResnetBlock2D::new(&mid / "resnets" / j, last, last, Some(temb), groups, eps);
        let mid_resnets = [mid_resnet(0), mid_resnet(1)];
        let mid_attention =
            Transformer2DModel::new(&mid / "attentions" / 0, last, config.heads(levels - 1), options(1));
        let time = &root / "time_embedding";
        let mut model = Self {
            time_linear_1: nn::linear(&time / "linear_1", channels[0], temb, Default::default()),
            time_linear_2: nn::linear(&time / "linear_2", temb, temb, Default::default()),
            add_embedding: (config.addition_embed_type.as_deref() == Some("text")).then(|| {
                TextTimeEmbedding::new(
                    &(&root / "add_embedding"),
                    config.cross_attention_dim,
                    temb,
                    config.addition_embed_type_num_heads,
                )
            }),
            conv_in: conv2d(&root / "conv_in", config.in_channels, channels[0], 3, 1, 1),
            levels: unet_levels,
            mid_resnets,
            mid_attention,
            conv_norm_out: group_norm(&root / "conv_norm_out", groups, channels[0], eps),
            conv_out: conv2d(&root / "conv_out", channels[0], config.out_channels, 3, 1, 1),
            config,
            vs,
            branches: None,
        };
        // inference only: no gradients for the weights (null-text inversion differentiates
        // through the UNet to its inputs)
        model.vs.freeze();
        model
    }

    /// Loads a diffusers `unet/` folder.
    pub fn from_folder(folder: &Path, device: tch::Device) -> Result<Self, LoadError> {
        let config = UNet2DConditionConfig::from_file(&folder.join("config.json"))?;
        let model = Self::new(config, device);
        loading::load_diffusers_weights(&model.vs, folder)?;
        Ok(model)
    }

    /// The weights, for loaders.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Converts the weights to `kind` (f16/bf16 halve memory; inputs are cast on entry).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs.set_kind(kind);
        self.vs.freeze();
    }

    /// sample: (batch, in_channels, h, w); timestep: the scheduler's t (fractional allowed);
    /// context: (batch, tokens, cross_attention_dim) → the model output (batch, out_channels, h, w).
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor, tch::TchError> {
        self.forward_controlled(sample, timestep, context, None)
    }

    /// [`Self::forward`] with `control` called by every attention layer. Without a control, a
    /// batch of two or more is split between this thread and the branch worker when there is one.
    pub fn forward_controlled(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor, tch::TchError> {
        let batch = sample.size()[0];
        match (&self.branches, control) {
            (Some(worker), None) if batch >= 2 && context.size()[0] == batch => {
                worker.forward(self, sample, timestep, context, batch / 2)
            }
            _ => self.forward_here(sample, timestep, context, control),
        }
    }

    /// [`Self::forward`] on this thread alone, whatever the batch.
    pub fn forward_unsplit(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, tch::TchError> {
        self.forward_here(sample, timestep, context, None)
    }

    /// Inference on this thread: no gradients, one timestep for the whole batch.
    fn forward_here(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        let timesteps = Tensor::f_full([sample.size()[0]], timestep, (Kind::Float, sample.device()))?;
        self.forward_inner(sample, &timesteps, context, control)
    }

    /// The number of weights.
    pub fn weight_count(&self) -> i64 {
        self.vs.variables().values().map(Tensor::numel).map(|n| n as i64).sum()
    }

    /// Starts a branch worker when it pays: float weights on the CPU, two or more intra-op
    /// threads, and at most [`super::branch_parallel::MAX_WEIGHTS`] weights (see that module).
    /// Returns whether batches are now split.
    pub fn enable_branch_parallel(&mut self) -> bool {
        if self.branches.is_some() {
            return true;
        }
        let fits = self.vs.device() == tch::Device::Cpu
            && self.vs.kind() == Kind::Float
            && tch::get_num_threads() >= 2
            && self.weight_count() <= super::branch_parallel::MAX_WEIGHTS;
        if !fits {
            return false;
        }
        self.branches = super::branch_parallel::BranchWorker::start(self.replica()).ok();
        self.branches.is_some()
    }

    /// Stops splitting batches (the worker thread ends).
    pub fn disable_branch_parallel(&mut self) {
        self.branches = None;
    }

    /// Another model over the same weight storage (nothing copied): the branch worker's.
    fn replica(&self) -> Self {
        let _no_grad = tch::no_grad_guard();
        let replica = Self::new(self.config.clone(), self.vs.device());
        let weights = self.vs.variables();
        for (name, mut variable) in replica.vs.variables() {
            if let Some(weight) = weights.get(&name) {
                variable.set_data(weight);
            }
        }
        replica
    }

    /// Lets the weights learn (a model is built frozen, for inference).
    pub fn make_trainable(&mut self) {
        self.vs.unfreeze();
    }

    /// Training's forward: gradients flow to the weights; `timesteps` (batch,) one per sample;
    /// `control` sees the attention (a grounding loss reads the cross-attention maps).
    pub fn forward_train(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor, tch::TchError> {
        self.forward_inner(sample, timesteps, context, control)
    }

    /// [`Self::forward`] with gradients flowing to `sample` and `context` (the weights are frozen):
    /// for optimising inputs, as null-text inversion optimises the unconditional embedding.
    pub fn forward_differentiable(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor, tch::TchError> {
        let timesteps = Tensor::f_full([sample.size()[0]], timestep, (Kind::Float, sample.device()))?;
        self.forward_inner(sample, &timesteps, context, None)
    }

    fn forward_inner(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        control: Option<&dyn AttentionControl>,
    ) -> Result<Tensor, tch::TchError> {
        let kind = self.vs.kind();
        let (_, _, height, width) = sample.size4()?;
        let sample = sample.f_to_kind(kind)?;
        let context = context.f_to_kind(kind)?;
        // 1. time embedding
        let features = super::embeddings::timestep_features(
            timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )?
        .f_to_kind(kind)?;
        let mut temb = self.time_linear_2.forward(&self.time_linear_1.forward(&features).f_silu()?);
        if let Some(add_embedding) = &self.add_embedding {
            temb = temb.f_add(&add_embedding.forward(&context)?)?;
        }
        // 2. down path, keeping every output for the skips
        let cross = CrossContext::new(&context, control);
        let (mut h, skips) = self.levels.down(self.conv_in.forward(&sample), &temb, Some(&cross))?;
        // 3. middle
        h = self.mid_resnets[0].forward(&h, Some(&temb))?;
        h = self.mid_attention.forward(&h, &cross.at(Place::Mid))?;
        h = self.mid_resnets[1].forward(&h, Some(&temb))?;
        // 4. up path; upsample to the next skip's size when the latent size is odd
        let overall = 1i64 << (self.levels.levels() - 1);
        let odd_size = height % overall != 0 || width % overall != 0;
        let h = self.levels.up(h, skips, &temb, Some(&cross), odd_size)?;
        // 5. out
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).f_silu()?))
    }
}
