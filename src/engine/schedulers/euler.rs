//! Euler and Euler-ancestral samplers in σ-space (Karras et al. 2022,
//! <https://arxiv.org/abs/2206.00364>, algorithm 1 without churn; the ancestral variant of
//! k-diffusion), with the optional Karras σ schedule, following diffusers'
//! `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler`.

use tch::Tensor;

use super::{
    NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerError, TimestepSpacing, alphas_cumprod,
    betas, spaced_timesteps,
};

/// ρ of the Karras schedule, "7.0 is the value used in the paper".
const KARRAS_RHO: f64 = 7.0;

pub struct EulerScheduler {
    config: SchedulerConfig,
    /// σ_t = √((1−ᾱ)/ᾱ) for every training timestep t (f32, as diffusers).
    train_sigmas: Vec<f32>,
    /// Inference σs, one per step plus a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// Adds fresh noise each step (Euler a).
    ancestral: bool,
}

impl EulerScheduler {
    pub fn new(config: SchedulerConfig, ancestral: bool) -> Result<Self, SchedulerError> {
        let mut alphas_cumprod = alphas_cumprod(&betas(&config)?)?;
        if config.rescale_betas_zero_snr {
            // σ would be infinite at zero terminal SNR; diffusers sets ᾱ_T = 2⁻²⁴.
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let train_sigmas = alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        Ok(Self { config, train_sigmas, sigmas: Vec::new(), timesteps: Vec::new(), ancestral })
    }

    /// The inference σs (with the final 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// σ at a fractional timestep, linearly interpolated (`np.interp`).
    fn sigma_at(&self, t: f64) -> f64 {
        let last = self.train_sigmas.len() - 1;
        let t = t.clamp(0.0, last as f64);
        let low = (t.floor() as usize).min(last);
        let high = (low + 1).min(last);
        let w = t - low as f64;
        f64::from(self.train_sigmas[low]) * (1.0 - w) + f64::from(self.train_sigmas[high]) * w
    }

    /// The fractional timestep of a σ, interpolating log σ between training timesteps.
    fn timestep_of_sigma(&self, sigma: f64) -> f64 {
        let log_sigmas: Vec<f64> = self.train_sigmas.iter().map(|s| f64::from(s.ln())).collect();
        let log_sigma = sigma.max(1e-10).ln();
        let at_or_below = log_sigmas.iter().filter(|l| log_sigma - **l >= 0.0).count();
        let low = at_or_below.saturating_sub(1).min(log_sigmas.len() - 2);
        let high = low + 1;
        let w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }

    fn sigma(&self, step_index: usize) -> Result<(f32, f32), SchedulerError> {
        match (self.sigmas.get(step_index), self.sigmas.get(step_index + 1)) {
            (Some(sigma), Some(next)) => Ok((*sigma, *next)),
            _ => Err(SchedulerError::Config(format!(
                "step {step_index} asked for, but the scheduler has {} steps (call set_timesteps first)",
                self.timesteps.len()
            ))),
        }
    }
}

impl Scheduler for EulerScheduler {
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let timesteps = spaced_timesteps(&self.config, steps, false)?;
        let sigmas: Vec<f64> = timesteps.iter().map(|t| self.sigma_at(*t)).collect();
        let (timesteps, sigmas) = if self.config.use_karras_sigmas && !self.ancestral {
            // Karras et al. eq. 5 between the schedule's ends, then each σ's timestep.
            let (sigma_max, sigma_min) = (sigmas[0], sigmas[sigmas.len() - 1]);
            let (max_inv_rho, min_inv_rho) =
                (sigma_max.powf(1.0 / KARRAS_RHO), sigma_min.powf(1.0 / KARRAS_RHO));
            let karras: Vec<f64> = (0..steps)
                .map(|i| {
                    let ramp = if steps > 1 { i as f64 / (steps - 1) as f64 } else { 0.0 };
                    (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(KARRAS_RHO)
                })
                .collect();
            let timesteps = karras.iter().map(|s| f64::from(self.timestep_of_sigma(*s) as f32)).collect();
            (timesteps, karras)
        } else {
            (timesteps, sigmas)
        };
        self.sigmas = sigmas.iter().map(|s| *s as f32).chain(std::iter::once(0.0)).collect();
        self.timesteps = timesteps;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        let max_sigma = self.sigmas.iter().copied().fold(0.0f32, f32::max);
        let sigma = match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        f64::from(sigma)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor, SchedulerError> {
        let (sigma, _) = self.sigma(step_index)?;
        Ok(sample.f_div_scalar(f64::from((sigma * sigma + 1.0).sqrt()))?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError> {
        // 1. the denoised estimate at σ
        let (sigma, sigma_next) = self.sigma(step_index)?;
        let original = match self.config.prediction_type {
            PredictionType::Epsilon => sample.f_sub(&model_output.f_mul_scalar(f64::from(sigma))?)?,
            PredictionType::VPrediction => {
                let scale = sigma * sigma + 1.0;
                model_output
                    .f_mul_scalar(f64::from(-sigma / scale.sqrt()))?
                    .f_add(&sample.f_div_scalar(f64::from(scale))?)?
            }
            PredictionType::Sample => model_output.shallow_clone(),
        };
        // 2. the ODE's derivative dx/dσ, and the step to σ_next (σ_down for Euler a)
        let derivative = sample.f_sub(&original)?.f_div_scalar(f64::from(sigma))?;
        if !self.ancestral {
            let dt = sigma_next - sigma;
            return Ok(sample.f_add(&derivative.f_mul_scalar(f64::from(dt))?)?);
        }
        let sigma_up =
            (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let previous = sample.f_add(&derivative.f_mul_scalar(f64::from(dt))?)?;
        // 3. Euler a: fresh noise back up to σ_next
        let fresh = noise.randn(&model_output.size(), model_output.device())?;
        Ok(previous.f_add(&fresh.f_mul_scalar(f64::from(sigma_up))?)?)
    }
}
