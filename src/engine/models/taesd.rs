//! `AutoencoderTiny` (TAESD, Bohan Ollin Boer Bohan's tiny distilled SD autoencoder) for fast
//! previews, with diffusers' names: `encoder.layers.{i}` / `decoder.layers.{i}` are the indexes
//! of its `nn.Sequential`s.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::blocks::conv2d;
use crate::engine::loading::{self, LoadError};

/// diffusers' `AutoencoderTiny` config (`vae/config.json` of a TAESD folder).
#[derive(Debug, Clone, Deserialize)]
pub struct AutoencoderTinyConfig {
    #[serde(default = "three")]
    pub in_channels: i64,
    #[serde(default = "three")]
    pub out_channels: i64,
    #[serde(default = "sixty_four")]
    pub encoder_block_out_channels: Vec<i64>,
    #[serde(default = "sixty_four")]
    pub decoder_block_out_channels: Vec<i64>,
    #[serde(default = "encoder_blocks")]
    pub num_encoder_blocks: Vec<usize>,
    #[serde(default = "decoder_blocks")]
    pub num_decoder_blocks: Vec<usize>,
    #[serde(default = "four")]
    pub latent_channels: i64,
    #[serde(default = "relu")]
    pub act_fn: String,
    #[serde(default = "nearest")]
    pub upsample_fn: String,
    #[serde(default = "two")]
    pub upsampling_scaling_factor: i64,
}

fn three() -> i64 {
    3
}
fn four() -> i64 {
    4
}
fn two() -> i64 {
    2
}
fn sixty_four() -> Vec<i64> {
    vec![64; 4]
}
fn encoder_blocks() -> Vec<usize> {
    vec![1, 3, 3, 3]
}
fn decoder_blocks() -> Vec<usize> {
    vec![3, 3, 3, 1]
}
fn relu() -> String {
    "relu".into()
}
fn nearest() -> String {
    "nearest".into()
}

/// `AutoencoderTinyBlock`: three 3×3 convs with ReLUs, a residual, a ReLU.
struct TinyBlock {
    convs: [nn::Conv2D; 3],
}

impl TinyBlock {
    fn new(vs: nn::Path, channels: i64) -> Self {
        let conv = |i: i64| conv2d(&vs / "conv" / i, channels, channels, 3, 1, 1);
        Self { convs: [conv(0), conv(2), conv(4)] }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let h = self.convs[0].forward(x).f_relu()?;
        let h = self.convs[1].forward(&h).f_relu()?;
        self.convs[2].forward(&h).f_add(x)?.f_relu()
    }
}

enum Layer {
    Conv(nn::Conv2D),
    Block(Box<TinyBlock>),
    Relu,
    Upsample(i64),
}

fn run(layers: &[Layer], mut x: Tensor) -> Result<Tensor, tch::TchError> {
    for layer in layers {
        x = match layer {
            Layer::Conv(conv) => conv.forward(&x),
            Layer::Block(block) => block.forward(&x)?,
            Layer::Relu => x.f_relu()?,
            Layer::Upsample(factor) => {
                let (_, _, h, w) = x.size4()?;
                x.f_upsample_nearest2d([h * factor, w * factor], None, None)?
            }
        };
    }
    Ok(x)
}

/// TAESD: encodes to and decodes from SD's (scaled) latent space, fast.
pub struct AutoencoderTiny {
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    pub config: AutoencoderTinyConfig,
    vs: nn::VarStore,
}

impl AutoencoderTiny {
    pub fn new(config: AutoencoderTinyConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let no_bias = nn::ConvConfig { stride: 2, padding: 1, bias: false, ..Default::default() };
        // 1. encoder: conv, blocks, then per level a stride-2 conv and blocks, then conv out
        let (encoder_path, mut encoder) = (&root / "encoder" / "layers", Vec::new());
        let channels = &config.encoder_block_out_channels;
        for (level, &count) in config.num_encoder_blocks.iter().enumerate() {
            let c = channels[level];
            let index = encoder.len();
            encoder.push(Layer::Conv(if level == 0 {
                conv2d(&encoder_path / index, config.in_channels, c, 3, 1, 1)
            } else {
                nn::conv2d(&encoder_path / index, c, c, 3, no_bias)
            }));
            for _ in 0..count {
                let index = encoder.len();
                encoder.push(Layer::Block(Box::new(TinyBlock::new(&encoder_path / index, c))));
            }
        }
        let last = channels.last().copied().unwrap_or(64);
        let index = encoder.len();
        encoder.push(Layer::Conv(conv2d(&encoder_path / index, last, config.latent_channels, 3, 1, 1)));
        // 2. decoder: conv, ReLU, then per level blocks, ×2 upsampling and a conv
        let (decoder_path, channels) = (&root / "decoder" / "layers", &config.decoder_block_out_channels);
        let mut decoder = vec![
            Layer::Conv(conv2d(&decoder_path / 0, config.latent_channels, channels[0], 3, 1, 1)),
            Layer::Relu,
        ];
        let levels = config.num_decoder_blocks.len();
        for (level, &count) in config.num_decoder_blocks.iter().enumerate() {
            let c = channels[level];
            let is_final = level + 1 == levels;
            for _ in 0..count {
                let index = decoder.len();
                decoder.push(Layer::Block(Box::new(TinyBlock::new(&decoder_path / index, c))));
            }
            if !is_final {
                decoder.push(Layer::Upsample(config.upsampling_scaling_factor));
            }
            let out = if is_final { config.out_channels } else { c };
            let index = decoder.len();
            let conv_config = nn::ConvConfig { padding: 1, bias: is_final, ..Default::default() };
            decoder.push(Layer::Conv(nn::conv2d(&decoder_path / index, c, out, 3, conv_config)));
        }
        Self { encoder, decoder, config, vs }
    }

    /// Loads a diffusers `AutoencoderTiny` folder (e.g. madebyollin/taesd).
    pub fn from_folder(folder: &Path, device: Device) -> Result<Self, LoadError> {
        let config_path = folder.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| LoadError::Read { path: config_path.clone(), source })?;
        let config: AutoencoderTinyConfig = serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: config_path.clone(), reason: error.to_string() })?;
        if config.act_fn != "relu" || config.upsample_fn != "nearest" {
            return Err(LoadError::Config {
                path: config_path,
                reason: format!(
                    "act_fn {} / upsample_fn {} are not supported (relu / nearest)",
                    config.act_fn, config.upsample_fn
                ),
            });
        }
        let model = Self::new(config, device);
        loading::load_diffusers_weights(&model.vs, folder)?;
        Ok(model)
    }

    /// The weights, for training and saving.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// image: (batch, 3, h, w) in [-1, 1] → latents (batch, 4, h/8, w/8) on SD's scaled latent
    /// scale (what the UNet sees).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.encode_train(image)
    }

    /// [`Self::encode`] with gradients flowing to the weights (distillation).
    pub fn encode_train(&self, image: &Tensor) -> Result<Tensor, tch::TchError> {
        run(&self.encoder, image.f_add_scalar(1.0)?.f_div_scalar(2.0)?)
    }

    /// latents on the UNet's scale → image in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.decode_train(latents)
    }

    /// [`Self::decode`] with gradients flowing to the weights (distillation).
    pub fn decode_train(&self, latents: &Tensor) -> Result<Tensor, tch::TchError> {
        let soft_clamped = latents.f_div_scalar(3.0)?.f_tanh()?.f_mul_scalar(3.0)?;
        run(&self.decoder, soft_clamped)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)
    }
}
