//! `AutoencoderKL` (Rombach et al. 2022, <https://arxiv.org/abs/2112.10752>): images ⇄ latents,
//! with diffusers' module names and `config.json` fields.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::blocks::{Downsample2D, MidBlock2D, ResnetBlock2D, Upsample2D, conv2d, group_norm};
use crate::engine::loading::{self, LoadError};

/// GroupNorm ε of every VAE block (diffusers' `resnet_eps`).
const EPS: f64 = 1e-6;

/// diffusers' `AutoencoderKL` config (`vae/config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderKlConfig {
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    /// Each must be "DownEncoderBlock2D".
    pub down_block_types: Vec<String>,
    /// Each must be "UpDecoderBlock2D".
    pub up_block_types: Vec<String>,
    /// SD: [128, 256, 512, 512].
    pub block_out_channels: Vec<i64>,
    /// SD: 2.
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: i64,
    /// Latents are multiplied by this after encoding (SD: 0.18215).
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "silu")]
    pub act_fn: String,
}

fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn thirty_two() -> i64 {
    32
}
fn sd_scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}

impl AutoencoderKlConfig {
    /// Stable Diffusion 1.x/2.x's `vae/config.json`.
    pub fn sd() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            act_fn: "silu".into(),
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: path.into(), reason: error.to_string() })?;
        let bad = |reason: String| Err(LoadError::Config { path: path.into(), reason });
        if config.block_out_channels.is_empty()
            || config.block_out_channels.len() != config.down_block_types.len()
        {
            return bad("block_out_channels and down_block_types must have the same, non-zero length".into());
        }
        if let Some(other) = config.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return bad(format!("down block type \"{other}\" is not supported (DownEncoderBlock2D)"));
        }
        if let Some(other) = config.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return bad(format!("up block type \"{other}\" is not supported (UpDecoderBlock2D)"));
        }
        if config.act_fn != "silu" {
            return bad(format!("act_fn \"{}\" is not supported (silu)", config.act_fn));
        }
        Ok(config)
    }
}

struct Encoder {
    conv_in: nn::Conv2D,
    down_blocks: Vec<(Vec<ResnetBlock2D>, Option<Downsample2D>)>,
    mid_block: MidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    fn new(vs: nn::Path, config: &AutoencoderKlConfig) -> Self {
        let channels = &config.block_out_channels;
        let groups = config.norm_num_groups;
        let last = channels[channels.len() - 1];
        let mut input = channels[0];
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &output)| {
                let block = &vs / "down_blocks" / i;
                let resnets = (0..config.layers_per_block)
                    .map(|j| {
                        let in_channels = if j == 0 { input } else { output };
                        ResnetBlock2D::new(&block / "resnets" / j, in_channels, output, None, groups, EPS)
                    })
                    .collect();
                input = output;
                let downsample = (i + 1 < channels.len())
                    .then(|| Downsample2D::new(&block / "downsamplers" / 0, output, 0));
                (resnets, downsample)
            })
            .collect();
        Self {
            conv_in: conv2d(&vs / "conv_in", config.in_channels, channels[0], 3, 1, 1),
            down_blocks,
            mid_block: MidBlock2D::new(
                &vs / "mid_block",
                last,
                None,
                groups,
                EPS,
                config.mid_block_add_attention.then_some(1), // one head: attention_head_dim = channels
            ),
            conv_norm_out: group_norm(&vs / "conv_norm_out", groups, last, EPS),
            conv_out: conv2d(&vs / "conv_out", last, 2 * config.latent_channels, 3, 1, 1),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let mut h = self.conv_in.forward(x);
        for (resnets, downsample) in &self.down_blocks {
            for resnet in resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(downsample) = downsample {
                h = downsample.forward(&h)?;
            }
        }
        h = self.mid_block.forward(&h, None)?;
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).f_silu()?))
    }
}

struct Decoder {
    conv_in: nn::Conv2D,
    mid_block: MidBlock2D,
    up_blocks: Vec<(Vec<ResnetBlock2D>, Option<Upsample2D>)>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    fn new(vs: nn::Path, config: &AutoencoderKlConfig) -> Self {
        let reversed: Vec<i64> = config.block_out_channels.iter().rev().copied().collect();
        let groups = config.norm_num_groups;
        let mut input = reversed[0];
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &output)| {
                let block = &vs / "up_blocks" / i;
                let resnets = (0..=config.layers_per_block)
                    .map(|j| {
                        let in_channels = if j == 0 { input } else { output };
                        ResnetBlock2D::new(&block / "resnets" / j, in_channels, output, None, groups, EPS)
                    })
                    .collect();
                input = output;
                let upsample =
                    (i + 1 < reversed.len()).then(|| Upsample2D::new(&block / "upsamplers" / 0, output));
                (resnets, upsample)
            })
            .collect();
        let first = config.block_out_channels[0];
        Self {
            conv_in: conv2d(&vs / "conv_in", config.latent_channels, reversed[0], 3, 1, 1),
            mid_block: MidBlock2D::new(
                &vs / "mid_block",
                reversed[0],
                None,
                groups,
                EPS,
                config.mid_block_add_attention.then_some(1),
            ),
            up_blocks,
            conv_norm_out: group_norm(&vs / "conv_norm_out", groups, first, EPS),
            conv_out: conv2d(&vs / "conv_out", first, config.out_channels, 3, 1, 1),
        }
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor, tch::TchError> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z), None)?;
        for (resnets, upsample) in &self.up_blocks {
            for resnet in resnets {
                h = resnet.forward(&h, None)?;
            }
            if let Some(upsample) = upsample {
                h = upsample.forward(&h, None)?;
            }
        }
        Ok(self.conv_out.forward(&self.conv_norm_out.forward(&h).f_silu()?))
    }
}

/// The encoder's output distribution over latents (diagonal Gaussian).
pub struct LatentDistribution {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDistribution {
    /// A sample `mean + std · ε` with ε from `noise` (drawn as diffusers draws it).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor, tch::TchError> {
        self.mean.f_add(&self.std.f_mul(noise)?)
    }

    /// The mode (the mean).
    pub fn mode(&self) -> Tensor {
        self.mean.shallow_clone()
    }
}

/// `AutoencoderKL`.
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<nn::Conv2D>,
    post_quant_conv: Option<nn::Conv2D>,
    pub config: AutoencoderKlConfig,
    vs: nn::VarStore,
}

impl AutoencoderKl {
    pub fn new(config: AutoencoderKlConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let latent2 = 2 * config.latent_channels;
        Self {
            encoder: Encoder::new(&root / "encoder", &config),
            decoder: Decoder::new(&root / "decoder", &config),
            quant_conv: config
                .use_quant_conv
                .then(|| conv2d(&root / "quant_conv", latent2, latent2, 1, 1, 0)),
            post_quant_conv: config.use_post_quant_conv.then(|| {
                conv2d(&root / "post_quant_conv", config.latent_channels, config.latent_channels, 1, 1, 0)
            }),
            config,
            vs,
        }
    }

    /// Loads a diffusers `vae/` folder.
    pub fn from_folder(folder: &Path, device: Device) -> Result<Self, LoadError> {
        let config = AutoencoderKlConfig::from_file(&folder.join("config.json"))?;
        let model = Self::new(config, device);
        loading::load_diffusers_weights(&model.vs, folder)?;
        Ok(model)
    }

    /// The weights, for loaders.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// image: (batch, 3, h, w) in [-1, 1] → the latent distribution (unscaled).
    pub fn encode(&self, image: &Tensor) -> Result<LatentDistribution, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.encode_train(image)
    }

    /// [`Self::encode`] with gradients flowing to the weights (training).
    pub fn encode_train(&self, image: &Tensor) -> Result<LatentDistribution, tch::TchError> {
        let mut moments = self.encoder.forward(&image.f_to_kind(self.kind())?)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments);
        }
        let halves = moments.f_chunk(2, 1)?;
        let log_variance = halves[1].f_clamp(-30.0, 20.0)?;
        Ok(LatentDistribution {
            mean: halves[0].shallow_clone(),
            std: log_variance.f_mul_scalar(0.5)?.f_exp()?,
        })
    }

    /// latents: (batch, latent_channels, h/8, w/8), unscaled → image (batch, 3, h, w) in ≈[-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.decode_train(latents)
    }

    /// [`Self::decode`] with gradients flowing to the weights (training).
    pub fn decode_train(&self, latents: &Tensor) -> Result<Tensor, tch::TchError> {
        let mut z = latents.f_to_kind(self.kind())?;
        if let Some(conv) = &self.post_quant_conv {
            z = conv.forward(&z);
        }
        self.decoder.forward(&z)
    }

    fn kind(&self) -> Kind {
        self.vs.kind()
    }
}
