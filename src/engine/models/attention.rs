//! The UNet's transformer: `Transformer2DModel` holding `BasicTransformerBlock`s (self-attention,
//! cross-attention to the text, GEGLU feed-forward), named as in diffusers'
//! `models/transformers/transformer_2d.py` and `models/attention.py`.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::blocks::{conv2d, group_norm};
use crate::engine::attention_control::{AttentionCall, AttentionControl, CrossContext};

/// diffusers' `Attention` without group norm: multi-head attention from `query_dim` to itself
/// (self) or to a context of `context_dim` (cross).
pub struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
    /// Compute q·k in f32 even for f16 weights (SD 2.1's `upcast_attention`).
    upcast: bool,
}

impl Attention {
    pub fn new(
        vs: nn::Path,
        query_dim: i64,
        context_dim: i64,
        heads: i64,
        head_dim: i64,
        upcast: bool,
    ) -> Self {
        let inner = heads * head_dim;
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            to_q: nn::linear(&vs / "to_q", query_dim, inner, no_bias),
            to_k: nn::linear(&vs / "to_k", context_dim, inner, no_bias),
            to_v: nn::linear(&vs / "to_v", context_dim, inner, no_bias),
            to_out: nn::linear(&vs / "to_out" / 0, inner, query_dim, Default::default()),
            heads,
            upcast,
        }
    }

    /// x: (batch, tokens, query_dim); context: (batch, context_tokens, context_dim), or `None`
    /// for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor, tch::TchError> {
        self.forward_controlled(x, context, None)
    }

    /// [`Attention::forward`], handing the probabilities to `control` when it wants them.
    pub fn forward_controlled(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        control: Option<(&dyn AttentionControl, AttentionCall)>,
    ) -> Result<Tensor, tch::TchError> {
        let context = context.unwrap_or(x);
        let (batch, tokens, _) = x.size3()?;
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context);
        let v = self.to_v.forward(context);
        let inner = q.size().last().copied().unwrap_or(0);
        let head_dim = inner / self.heads;
        let split = |t: &Tensor| -> Result<Tensor, tch::TchError> {
            let length = t.size()[1];
            t.f_view([batch, length, self.heads, head_dim])?.f_transpose(1, 2)
        };
        let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
        let control = control.filter(|(control, call)| control.wants(call));
        let attended = if let Some((control, call)) = control {
            // explicit softmax(q·kᵀ/√d) so the control sees (and may replace) the probabilities
            let kind = q.kind();
            let compute = if self.upcast { Kind::Float } else { kind };
            let scores = q
                .f_to_kind(compute)?
                .f_matmul(&k.f_to_kind(compute)?.f_transpose(-1, -2)?)?
                .f_mul_scalar(1.0 / (head_dim as f64).sqrt())?;
            let scores = control.edit_scores(&call, scores)?;
            let probs = control.edit(&call, scores.f_softmax(-1, compute)?)?;
            probs.f_to_kind(kind)?.f_matmul(&v)?
        } else if self.upcast && q.kind() != Kind::Float {
            let kind = q.kind();
            Tensor::f_scaled_dot_product_attention(
                &q.f_to_kind(Kind::Float)?,
                &k.f_to_kind(Kind::Float)?,
                &v.f_to_kind(Kind::Float)?,
                None::<Tensor>,
                0.0,
                false,
                None,
                false,
            )?
            .f_to_kind(kind)?
        } else {
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)?
        };
        let merged = attended.f_transpose(1, 2)?.f_reshape([batch, tokens, inner])?;
        Ok(self.to_out.forward(&merged))
    }
}

/// `FeedForward` with GEGLU (Shazeer 2020): `net.0.proj` to 2×inner, x·GELU(gate), `net.2`.
struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    fn new(vs: nn::Path, dim: i64) -> Self {
        let inner = 4 * dim;
        Self {
            proj: nn::linear(&vs / "net" / 0 / "proj", dim, inner * 2, Default::default()),
            out: nn::linear(&vs / "net" / 2, inner, dim, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        let halves = self.proj.forward(x).f_chunk(2, -1)?;
        Ok(self.out.forward(&halves[0].f_mul(&halves[1].f_gelu("none")?)?))
    }
}

/// `BasicTransformerBlock`: pre-norm self-attention, cross-attention and feed-forward, each with a
/// residual.
struct BasicTransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vs: nn::Path, dim: i64, context_dim: i64, heads: i64, upcast: bool) -> Self {
        let head_dim = dim / heads;
        let norm = |name: &str| nn::layer_norm(&vs / name, vec![dim], Default::default());
        Self {
            norm1: norm("norm1"),
            attn1: Attention::new(&vs / "attn1", dim, dim, heads, head_dim, upcast),
            norm2: norm("norm2"),
            attn2: Attention::new(&vs / "attn2", dim, context_dim, heads, head_dim, upcast),
            norm3: norm("norm3"),
            ff: FeedForward::new(&vs / "ff", dim),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        context: &CrossContext<'_>,
        size: (i64, i64),
    ) -> Result<Tensor, tch::TchError> {
        let call = |cross: bool| AttentionCall {
            cross,
            place: context.place,
            height: size.0,
            width: size.1,
            heads: self.attn1.heads,
        };
        let control = |cross: bool| context.control.map(|control| (control, call(cross)));
        let x = x.f_add(&self.attn1.forward_controlled(&self.norm1.forward(x), None, control(false))?)?;
        let x = x.f_add(&self.attn2.forward_controlled(
            &self.norm2.forward(&x),
            Some(context.text),
            control(true),
        )?)?;
        x.f_add(&self.ff.forward(&self.norm3.forward(&x))?)
    }
}

/// How `Transformer2DModel` projects into and out of the token space.
enum Projection {
    /// 1×1 convolutions (SD 1.x).
    Conv(Box<(nn::Conv2D, nn::Conv2D)>),
    /// Linear layers on tokens (`use_linear_projection`, SD 2.x).
    Linear(nn::Linear, nn::Linear),
}

/// `Transformer2DModel` on a feature map.
pub struct Transformer2DModel {
    norm: nn::GroupNorm,
    projection: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
}

/// Settings shared by every transformer of a UNet.
#[derive(Debug, Clone, Copy)]
pub struct TransformerOptions {
    pub context_dim: i64,
    pub use_linear_projection: bool,
    pub upcast_attention: bool,
    pub groups: i64,
    pub layers: usize,
}

impl Transformer2DModel {
    pub fn new(vs: nn::Path, channels: i64, heads: i64, options: TransformerOptions) -> Self {
        let projection = if options.use_linear_projection {
            Projection::Linear(
                nn::linear(&vs / "proj_in", channels, channels, Default::default()),
                nn::linear(&vs / "proj_out", channels, channels, Default::default()),
            )
        } else {
            Projection::Conv(Box::new((
                conv2d(&vs / "proj_in", channels, channels, 1, 1, 0),
                conv2d(&vs / "proj_out", channels, channels, 1, 1, 0),
            )))
        };
        Self {
            norm: group_norm(&vs / "norm", options.groups, channels, 1e-6),
            projection,
            transformer_blocks: (0..options.layers)
                .map(|i| {
                    BasicTransformerBlock::new(
                        &vs / "transformer_blocks" / i,
                        channels,
                        options.context_dim,
                        heads,
                        options.upcast_attention,
                    )
                })
                .collect(),
        }
    }

    /// x: (batch, channels, h, w); context: (batch, tokens, context_dim) → (batch, channels, h, w).
    pub fn forward(&self, x: &Tensor, context: &CrossContext<'_>) -> Result<Tensor, tch::TchError> {
        let (b, c, h, w) = x.size4()?;
        let normed = self.norm.forward(x);
        let to_tokens = |t: &Tensor| t.f_permute([0, 2, 3, 1])?.f_reshape([b, h * w, c]);
        let to_map = |t: &Tensor| t.f_reshape([b, h, w, c])?.f_permute([0, 3, 1, 2])?.f_contiguous();
        let mut tokens = match &self.projection {
            Projection::Conv(convs) => to_tokens(&convs.0.forward(&normed))?,
            Projection::Linear(proj_in, _) => proj_in.forward(&to_tokens(&normed)?),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context, (h, w))?;
        }
        let out = match &self.projection {
            Projection::Conv(convs) => convs.1.forward(&to_map(&tokens)?),
            Projection::Linear(_, proj_out) => to_map(&proj_out.forward(&tokens))?,
        };
        out.f_add(x)
    }
}
