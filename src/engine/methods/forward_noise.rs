//! The forward (noising) process of DDPM (Ho et al. 2020, <https://arxiv.org/abs/2006.11239>):
//! `x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε`, shown stage by stage up to a strength — the noisy
//! start that img2img / SDEdit (Meng et al. 2021) denoises from.

use tch::{Device, Kind, Tensor};

use crate::engine::image_tensor::{image_from_tensor, preview_from_tensor, tensor_from_image};
use crate::engine::{JobContext, JobError};
use crate::protocol::ImageData;

/// Training steps of Stable Diffusion's schedule (`num_train_timesteps` in its
/// `scheduler_config.json`).
pub const TRAIN_TIMESTEPS: i64 = 1000;
/// `beta_start`, `beta_end` of SD 1.x/2.x's "scaled_linear" schedule.
const BETA_START: f64 = 0.00085;
const BETA_END: f64 = 0.012;
/// Longer side of progress previews, in pixels.
const PREVIEW_SIDE: i64 = 256;

/// ᾱ_t for t in 0..1000 of the scaled-linear schedule: betas = linspace(√β₀, √β₁, T)².
pub fn alphas_cumprod() -> Result<Tensor, JobError> {
    let betas =
        Tensor::f_linspace(BETA_START.sqrt(), BETA_END.sqrt(), TRAIN_TIMESTEPS, (Kind::Double, Device::Cpu))?
            .f_square()?;
    let alphas = betas.f_neg()?.f_add_scalar(1.0)?;
    Ok(alphas.f_cumprod(0, Kind::Double)?)
}

/// Noises `image` in `steps` stages up to timestep `strength × 1000`; the noise ε is drawn on
/// the CPU from `seed` (as diffusers does with a CPU generator), then moved to `device`.
pub fn run(
    device: Device,
    image: &ImageData,
    strength: f32,
    steps: usize,
    seed: u64,
    ctx: &mut JobContext<'_>,
) -> Result<ImageData, JobError> {
    // 1. check the request
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(JobError::Failed(format!(
            "strength must be in (0, 1], got {strength}; 0.3 keeps the layout, 1.0 is pure noise"
        )));
    }
    if steps == 0 {
        return Err(JobError::Failed("steps must be at least 1".into()));
    }
    // 2. the clean image and its noise
    let x0 = tensor_from_image(image, device)?;
    tch::manual_seed(seed as i64);
    let noise = Tensor::f_randn(x0.size(), (Kind::Float, Device::Cpu))?.f_to_device(device)?;
    let alphas_cumprod = alphas_cumprod()?;
    let last_t =
        ((f64::from(strength) * TRAIN_TIMESTEPS as f64).round() as i64).clamp(1, TRAIN_TIMESTEPS) - 1;
    // 3. one stage per step, each further along the schedule
    let mut noisy = x0.shallow_clone();
    for step in 1..=steps {
        ctx.checkpoint()?;
        let t = (last_t as f64 * step as f64 / steps as f64).round() as i64;
        let alpha_bar = alphas_cumprod.f_double_value(&[t])?;
        noisy = x0.f_mul_scalar(alpha_bar.sqrt())?.f_add(&noise.f_mul_scalar((1.0 - alpha_bar).sqrt())?)?;
        ctx.progress(step, steps, Some(preview_from_tensor(&noisy, PREVIEW_SIDE)?));
    }
    image_from_tensor(&noisy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_stable_diffusion_endpoints() {
        // Values of DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod in diffusers.
        let ac = alphas_cumprod().expect("schedule");
        let first = ac.double_value(&[0]);
        let last = ac.double_value(&[999]);
        assert!((first - (1.0 - 0.00085)).abs() < 1e-12, "{first}");
        assert!((last - 0.0046_6).abs() < 1e-4, "{last}");
    }
}
