//! The CLIP text encoder of Stable Diffusion (Radford et al. 2021): SD 1.x's CLIP ViT-L/14 text
//! tower (quick_gelu) and SD 2.x's OpenCLIP ViT-H tower (gelu, converted with its last layer
//! dropped). Names mirror transformers' `CLIPTextModel` so checkpoint keys load unchanged.

use std::path::Path;

use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::engine::loading::{self, LoadError};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// x·σ(1.702x), OpenAI CLIP (SD 1.x).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact (erf) GELU, OpenCLIP (SD 2.x).
    #[serde(rename = "gelu")]
    Gelu,
}

/// transformers' `CLIPTextConfig` fields the model uses (`text_encoder/config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// 49408 for SD.
    pub vocab_size: i64,
    /// 768 (SD 1.x) or 1024 (SD 2.x).
    pub hidden_size: i64,
    pub intermediate_size: i64,
    /// 12 (SD 1.x) or 23 (SD 2.x).
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    /// 77.
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// openai/clip-vit-large-patch14's text config (SD 1.x's `text_encoder/config.json`).
    pub fn sd_v1() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// stabilityai/stable-diffusion-2-1's `text_encoder/config.json` (OpenCLIP ViT-H, 23 layers).
    pub fn sd_v2() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        serde_json::from_str(&text)
            .map_err(|error| LoadError::Config { path: path.into(), reason: error.to_string() })
    }
}

struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(vs: nn::Path, config: &ClipTextConfig) -> Self {
        let d = config.hidden_size;
        Self {
            q_proj: nn::linear(&vs / "q_proj", d, d, Default::default()),
            k_proj: nn::linear(&vs / "k_proj", d, d, Default::default()),
            v_proj: nn::linear(&vs / "v_proj", d, d, Default::default()),
            out_proj: nn::linear(&vs / "out_proj", d, d, Default::default()),
            heads: config.num_attention_heads,
        }
    }

    /// x: (batch, tokens, hidden) → same; causal self-attention.
    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let (batch, tokens, hidden) = x.size3()?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| t.f_view([batch, tokens, self.heads, head_dim])?.f_transpose(1, 2);
        let q = split(self.q_proj.forward(x))?;
        let k = split(self.k_proj.forward(x))?;
        let v = split(self.v_proj.forward(x))?;
        let attended =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false)?;
        let merged = attended.f_transpose(1, 2)?.f_reshape([batch, tokens, hidden])?;
        Ok(self.out_proj.forward(&merged))
    }
}

struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    self_attn: Attention,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vs: nn::Path, config: &ClipTextConfig) -> Self {
        let norm = nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() };
        let d = config.hidden_size;
        Self {
            layer_norm1: nn::layer_norm(&vs / "layer_norm1", vec![d], norm),
            self_attn: Attention::new(&vs / "self_attn", config),
            layer_norm2: nn::layer_norm(&vs / "layer_norm2", vec![d], norm),
            fc1: nn::linear(&vs / "mlp" / "fc1", d, config.intermediate_size, Default::default()),
            fc2: nn::linear(&vs / "mlp" / "fc2", config.intermediate_size, d, Default::default()),
            activation: config.hidden_act,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        // 1. pre-norm attention with a residual
        let x = x.f_add(&self.self_attn.forward(&self.layer_norm1.forward(x))?)?;
        // 2. pre-norm MLP with a residual
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x));
        let activated = match self.activation {
            Activation::QuickGelu => hidden.f_mul(&hidden.f_mul_scalar(1.702)?.f_sigmoid()?)?,
            Activation::Gelu => hidden.f_gelu("none")?,
        };
        x.f_add(&self.fc2.forward(&activated))
    }
}

/// `CLIPTextModel`: token ids → per-token hidden states.
pub struct ClipTextModel {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
    pub config: ClipTextConfig,
    /// Owns the weights.
    vs: nn::VarStore,
}

/// Checkpoint keys that are buffers, not weights.
pub const BUFFERS: &[&str] = &["embeddings.position_ids"];

impl ClipTextModel {
    /// Builds the module on `device` with uninitialised-but-allocated weights.
    pub fn new(config: ClipTextConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (d, n) = (config.hidden_size, config.max_position_embeddings);
        let embeddings = &root / "embeddings";
        let token_embedding =
            nn::embedding(&embeddings / "token_embedding", config.vocab_size, d, Default::default());
        let position_embedding = nn::embedding(&embeddings / "position_embedding", n, d, Default::default());
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(&root / "encoder" / "layers" / i, &config))
            .collect();
        let norm = nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() };
        let final_layer_norm = nn::layer_norm(&root / "final_layer_norm", vec![d], norm);
        Self { token_embedding, position_embedding, layers, final_layer_norm, config, vs }
    }

    /// Loads a diffusers `text_encoder/` folder: `config.json` and `model.safetensors`. Keys with
    /// transformers 4's `text_model.` prefix (every SD release) and without it (transformers 5)
    /// both load.
    pub fn from_folder(folder: &Path, device: Device) -> Result<Self, LoadError> {
        let config = ClipTextConfig::from_file(&folder.join("config.json"))?;
        let (weights_path, weights) = loading::read_component(folder, &["model"])?;
        let prefix = if weights.keys().any(|k| k.starts_with("text_model.")) { "text_model." } else { "" };
        let model = Self::new(config, device);
        loading::load_into(&model.vs, weights, &weights_path, prefix, BUFFERS)?;
        Ok(model)
    }

    /// The weights, for loaders.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// input_ids: (batch, 77) int64 → (batch, 77, hidden). `clip_skip` 0 is the last layer; n
    /// takes the output n layers earlier (through the final layer norm, as diffusers does).
    pub fn forward(&self, input_ids: &Tensor, clip_skip: usize) -> Result<Tensor, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.forward_train(input_ids, clip_skip)
    }

    /// [`Self::forward`] with gradients flowing to the weights (training).
    pub fn forward_train(&self, input_ids: &Tensor, clip_skip: usize) -> Result<Tensor, tch::TchError> {
        let tokens = input_ids.size().last().copied().unwrap_or(0);
        let positions = Tensor::f_arange(tokens, (Kind::Int64, input_ids.device()))?.f_unsqueeze(0)?;
        // 1. token + position embeddings
        let mut x =
            self.token_embedding.forward(input_ids).f_add(&self.position_embedding.forward(&positions))?;
        // 2. the layers, stopping early for clip skip
        let keep = self.layers.len().saturating_sub(clip_skip).max(1);
        for layer in &self.layers[..keep] {
            x = layer.forward(&x)?;
        }
        // 3. the final layer norm
        Ok(self.final_layer_norm.forward(&x))
    }
}
