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
