//! The σ parameterisation shared by the Euler, Heun and DPM-Solver schedulers: σ_t = √((1−ᾱ)/ᾱ)
//! per training timestep, interpolation in both directions, and the Karras et al. 2022 schedule.

use super::{SchedulerConfig, SchedulerError, alphas_cumprod, betas};

/// ρ of the Karras schedule, "7.0 is the value used in the paper" (Karras et al. 2022, eq. 5).
const KARRAS_RHO: f64 = 7.0;

/// σ for every training timestep (f32, as diffusers computes them).
pub struct TrainSigmas {
    pub sigmas: Vec<f32>,
    log_sigmas: Vec<f64>,
}

impl TrainSigmas {
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let mut alphas_cumprod = alphas_cumprod(&betas(config)?)?;
        if config.rescale_betas_zero_snr {
            // σ would be infinite at zero terminal SNR; diffusers sets ᾱ_T = 2⁻²⁴.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let sigmas: Vec<f32> = alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let log_sigmas = sigmas.iter().map(|s| f64::from(s.ln())).collect();
        Ok(Self { sigmas, log_sigmas })
    }

    /// σ at a fractional timestep, linearly interpolated (`np.interp`).
    pub fn at(&self, t: f64) -> f64 {
        let last = self.sigmas.len() - 1;
        let t = t.clamp(0.0, last as f64);
        let low = (t.floor() as usize).min(last);
        let high = (low + 1).min(last);
        let w = t - low as f64;
        f64::from(self.sigmas[low]) * (1.0 - w) + f64::from(self.sigmas[high]) * w
    }

    /// The fractional timestep of a σ, interpolating log σ between training timesteps.
    pub fn timestep_of(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.max(1e-10).ln();
        let at_or_below = self.log_sigmas.iter().filter(|l| log_sigma - **l >= 0.0).count();
        let low = at_or_below.saturating_sub(1).min(self.log_sigmas.len() - 2);
        let high = low + 1;
        let (log_low, log_high) = (self.log_sigmas[low], self.log_sigmas[high]);
        let w = ((log_low - log_sigma) / (log_low - log_high)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }
}

/// `steps` σs from `sigma_max` down to `sigma_min`, evenly spaced in σ^(1/ρ) (Karras eq. 5).
pub fn karras(sigma_max: f64, sigma_min: f64, steps: usize) -> Vec<f64> {
    let (max_inv_rho, min_inv_rho) = (sigma_max.powf(1.0 / KARRAS_RHO), sigma_min.powf(1.0 / KARRAS_RHO));
    (0..steps)
        .map(|i| {
            let ramp = if steps > 1 { i as f64 / (steps - 1) as f64 } else { 0.0 };
            (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(KARRAS_RHO)
        })
        .collect()
}

/// Euler's and Heun's starting noise scale: σ_max, or √(σ_max² + 1) with "leading" spacing.
pub fn init_noise_sigma(sigmas: &[f32], config: &SchedulerConfig) -> f64 {
    let max_sigma = sigmas.iter().copied().fold(0.0f32, f32::max);
    let sigma = match config.timestep_spacing {
        super::TimestepSpacing::Linspace | super::TimestepSpacing::Trailing => max_sigma,
        super::TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    };
    f64::from(sigma)
}

/// x₀ from a model output in σ-space (Euler, Heun). sample, model_output: (b, c, h, w).
pub fn denoised(
    prediction: super::PredictionType,
    model_output: &tch::Tensor,
    sample: &tch::Tensor,
    sigma: f32,
) -> Result<tch::Tensor, SchedulerError> {
    Ok(match prediction {
        super::PredictionType::Epsilon => sample.f_sub(&model_output.f_mul_scalar(f64::from(sigma))?)?,
        super::PredictionType::VPrediction => {
            let scale = sigma * sigma + 1.0;
            model_output
                .f_mul_scalar(f64::from(-sigma / scale.sqrt()))?
                .f_add(&sample.f_div_scalar(f64::from(scale))?)?
        }
        super::PredictionType::Sample => model_output.shallow_clone(),
    })
}
