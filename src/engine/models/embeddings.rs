//! Timestep embeddings (diffusers' `get_timestep_embedding`, the transformer's sinusoids of
//! Vaswani et al. 2017 as DDPM uses them).

use tch::{Kind, Tensor};

/// timesteps: (batch,) → (batch, dim) of [cos, sin] (or [sin, cos] without `flip_sin_to_cos`) at
/// frequencies 10000^(−i / (dim/2 − freq_shift)).
pub fn timestep_features(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: i64,
) -> Result<Tensor, tch::TchError> {
    let half = dim / 2;
    let exponent = Tensor::f_arange(half, (Kind::Float, timesteps.device()))?
        .f_mul_scalar(-(10000f64).ln())?
        .f_div_scalar((half - freq_shift) as f64)?;
    let angles =
        timesteps.f_to_kind(Kind::Float)?.f_unsqueeze(1)?.f_mul(&exponent.f_exp()?.f_unsqueeze(0)?)?;
    let (sin, cos) = (angles.f_sin()?, angles.f_cos()?);
    if flip_sin_to_cos { Tensor::f_cat(&[cos, sin], 1) } else { Tensor::f_cat(&[sin, cos], 1) }
}

/// diffusers' `TextTimeEmbedding` (`addition_embed_type: "text"`): the whole prompt pooled into
/// one vector that is added to the timestep embedding, so that every resnet — not only the
/// cross-attention layers — hears the prompt. The pooling is DeepFloyd IF's attention pooling:
/// a query made from the tokens' mean (plus a learned vector) attends over that mean and the
/// tokens.
pub struct TextTimeEmbedding {
    norm1: tch::nn::LayerNorm,
    positional_embedding: Tensor,
    q_proj: tch::nn::Linear,
    k_proj: tch::nn::Linear,
    v_proj: tch::nn::Linear,
    proj: tch::nn::Linear,
    norm2: tch::nn::LayerNorm,
    heads: i64,
}

impl TextTimeEmbedding {
    /// `vs` is the `add_embedding` path; `heads` must divide `context_dim`.
    pub fn new(vs: &tch::nn::Path, context_dim: i64, time_dim: i64, heads: i64) -> Self {
        use tch::nn;
        let pool = vs / "pool";
        let linear = |name: &str| nn::linear(&pool / name, context_dim, context_dim, Default::default());
        Self {
            norm1: nn::layer_norm(vs / "norm1", vec![context_dim], Default::default()),
            positional_embedding: pool.var(
                "positional_embedding",
                &[1, context_dim],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 / (context_dim as f64).sqrt() },
            ),
            q_proj: linear("q_proj"),
            k_proj: linear("k_proj"),
            v_proj: linear("v_proj"),
            proj: nn::linear(vs / "proj", context_dim, time_dim, Default::default()),
            norm2: nn::layer_norm(vs / "norm2", vec![time_dim], Default::default()),
            heads,
        }
    }

    /// context: (batch, tokens, context_dim) → (batch, time_dim).
    pub fn forward(&self, context: &Tensor) -> Result<Tensor, tch::TchError> {
        use tch::nn::Module;
        let (batch, _, width) = context.size3()?;
        let head_dim = width / self.heads;
        let x = self.norm1.forward(context);
        let class_token =
            x.f_mean_dim(1, true, x.kind())?.f_add(&self.positional_embedding.f_to_kind(x.kind())?)?;
        let tokens = Tensor::f_cat(&[&class_token, &x], 1)?;
        // (batch, heads, length, head_dim)
        let split = |t: Tensor| t.f_view([batch, -1, self.heads, head_dim])?.f_transpose(1, 2);
        let q = split(self.q_proj.forward(&class_token))?;
        let k = split(self.k_proj.forward(&tokens))?;
        let v = split(self.v_proj.forward(&tokens))?;
        let weights = q
            .f_matmul(&k.f_transpose(-1, -2)?)?
            .f_div_scalar((head_dim as f64).sqrt())?
            .f_softmax(-1, Kind::Float)?
            .f_to_kind(v.kind())?;
        let pooled = weights.f_matmul(&v)?.f_reshape([batch, width])?;
        Ok(self.norm2.forward(&self.proj.forward(&pooled)))
    }
}
