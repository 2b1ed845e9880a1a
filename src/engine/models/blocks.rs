//! Building blocks shared by the VAE and the UNets, named as diffusers names them:
//! `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, the VAE/UNet mid-block spatial self-attention,
//! and `UNetMidBlock2D` (resnet, attention, resnet).

use tch::Tensor;
use tch::nn::{self, Module};

/// `nn.GroupNorm` with diffusers' naming (`weight`, `bias`).
pub fn group_norm(vs: nn::Path, groups: i64, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(vs, groups, channels, nn::GroupNormConfig { eps, ..Default::default() })
}

/// A 2-D convolution with `kernel`, `stride` and `padding`.
pub fn conv2d(
    vs: nn::Path,
    in_channels: i64,
    out_channels: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    nn::conv2d(
        vs,
        in_channels,
        out_channels,
        kernel,
        nn::ConvConfig { stride, padding, ..Default::default() },
    )
}

/// `ResnetBlock2D`: two GroupNorm–SiLU–conv layers with a residual (1×1 `conv_shortcut` when the
/// channel count changes) and an optional time-embedding projection.
pub struct ResnetBlock2D {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock2D {
    /// `temb_channels`: the time embedding's width, or `None` (VAE).
    pub fn new(
        vs: nn::Path,
        in_channels: i64,
        out_channels: i64,
        temb_channels: Option<i64>,
        groups: i64,
        eps: f64,
    ) -> Self {
        Self {
            norm1: group_norm(&vs / "norm1", groups, in_channels, eps),
            conv1: conv2d(&vs / "conv1", in_channels, out_channels, 3, 1, 1),
            time_emb_proj: temb_channels
                .map(|t| nn::linear(&vs / "time_emb_proj", t, out_channels, Default::default())),
            norm2: group_norm(&vs / "norm2", groups, out_channels, eps),
            conv2: conv2d(&vs / "conv2", out_channels, out_channels, 3, 1, 1),
            conv_shortcut: (in_channels != out_channels)
                .then(|| conv2d(&vs / "conv_shortcut", in_channels, out_channels, 1, 1, 0)),
        }
    }

    /// x: (batch, in, h, w); temb: (batch, temb_channels) → (batch, out, h, w).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
        let mut h = self.conv1.forward(&self.norm1.forward(x).f_silu()?);
        if let (Some(projection), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h.f_add(&projection.forward(&temb.f_silu()?).f_unsqueeze(-1)?.f_unsqueeze(-1)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).f_silu()?);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x.shallow_clone(),
        };
        shortcut.f_add(&h)
    }
}

/// `Downsample2D`: a stride-2 3×3 conv; `padding` 0 pads right and bottom by one first (the VAE).
pub struct Downsample2D {
    conv: nn::Conv2D,
    padding: i64,
}

impl Downsample2D {
    pub fn new(vs: nn::Path, channels: i64, padding: i64) -> Self {
        Self { conv: conv2d(&vs / "conv", channels, channels, 3, 2, padding), padding }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        if self.padding == 0 {
            Ok(self.conv.forward(&x.f_constant_pad_nd([0, 1, 0, 1])?))
        } else {
            Ok(self.conv.forward(x))
        }
    }
}

/// `Upsample2D`: nearest-neighbour ×2, then a 3×3 conv.
pub struct Upsample2D {
    conv: nn::Conv2D,
}

impl Upsample2D {
    pub fn new(vs: nn::Path, channels: i64) -> Self {
        Self { conv: conv2d(&vs / "conv", channels, channels, 3, 1, 1) }
    }

    /// `size`: the target (h, w) when it is not twice the input (odd sizes in the UNet).
    pub fn forward(&self, x: &Tensor, size: Option<(i64, i64)>) -> Result<Tensor, tch::TchError> {
        let (_, _, h, w) = x.size4()?;
        let (th, tw) = size.unwrap_or((h * 2, w * 2));
        Ok(self.conv.forward(&x.f_upsample_nearest2d([th, tw], None, None)?))
    }
}

/// The single-head spatial self-attention of the VAE's mid-block (diffusers' `Attention` with
/// `group_norm`, a residual connection and `heads = channels / attention_head_dim`).
pub struct SpatialSelfAttention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl SpatialSelfAttention {
    pub fn new(vs: nn::Path, channels: i64, heads: i64, groups: i64, eps: f64) -> Self {
        let linear = |name: &str| nn::linear(&vs / name, channels, channels, Default::default());
        Self {
            group_norm: group_norm(&vs / "group_norm", groups, channels, eps),
            to_q: linear("to_q"),
            to_k: linear("to_k"),
            to_v: linear("to_v"),
            to_out: nn::linear(&vs / "to_out" / 0, channels, channels, Default::default()),
            heads,
        }
    }

    /// x: (batch, channels, h, w) → same.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let (b, c, h, w) = x.size4()?;
        // 1. normalise, flatten the pixels to a sequence
        let tokens = self.group_norm.forward(x).f_view([b, c, h * w])?.f_transpose(1, 2)?;
        let head_dim = c / self.heads;
        let split = |t: Tensor| t.f_view([b, h * w, self.heads, head_dim])?.f_transpose(1, 2);
        let q = split(self.to_q.forward(&tokens))?;
        let k = split(self.to_k.forward(&tokens))?;
        let v = split(self.to_v.forward(&tokens))?;
        // 2. attention (fused), merge heads, project
        let attended =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)?;
        let merged = attended.f_transpose(1, 2)?.f_reshape([b, h * w, c])?;
        let out = self.to_out.forward(&merged).f_transpose(1, 2)?.f_reshape([b, c, h, w])?;
        // 3. residual
        out.f_add(x)
    }
}

/// `UNetMidBlock2D`: resnet, self-attention (`attention_heads`, or none), resnet.
pub struct MidBlock2D {
    resnets: [ResnetBlock2D; 2],
    attention: Option<SpatialSelfAttention>,
}

impl MidBlock2D {
    pub fn new(
        vs: nn::Path,
        channels: i64,
        temb_channels: Option<i64>,
        groups: i64,
        eps: f64,
        attention_heads: Option<i64>,
    ) -> Self {
        let resnet =
            |i: i64| ResnetBlock2D::new(&vs / "resnets" / i, channels, channels, temb_channels, groups, eps);
        Self {
            resnets: [resnet(0), resnet(1)],
            attention: attention_heads
                .map(|heads| SpatialSelfAttention::new(&vs / "attentions" / 0, channels, heads, groups, eps)),
        }
    }

    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
        let mut h = self.resnets[0].forward(x, temb)?;
        if let Some(attention) = &self.attention {
            h = attention.forward(&h)?;
        }
        self.resnets[1].forward(&h, temb)
    }
}
