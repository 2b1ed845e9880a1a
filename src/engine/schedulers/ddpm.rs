//! DDPM ancestral sampling (Ho et al. 2020, <https://arxiv.org/abs/2006.11239>, eq. 6–7) on a
//! subset of timesteps, following diffusers' `DDPMScheduler`.

use tch::Tensor;

use super::config::VarianceType;
use super::{
    NoiseSource, Scheduler, SchedulerConfig, SchedulerError, alphas_cumprod, betas,
    predicted_original_and_epsilon, spaced_timesteps, timestep_at,
};

pub struct DdpmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
}

impl DdpmScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(&config)?)?;
        Ok(Self { config, alphas_cumprod, timesteps: Vec::new() })
    }
}

impl Scheduler for DdpmScheduler {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        super::add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, step_index)
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        self.timesteps = spaced_timesteps(&self.config, steps, true)?;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError> {
        // 1. ᾱ at t and at the next timestep of the schedule (1 after the last)
        let t = timestep_at(&self.timesteps, step_index)? as usize;
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = match self.timesteps.get(step_index + 1) {
            Some(previous) => self.alphas_cumprod[*previous as usize],
            None => 1.0,
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;
        // 2. predicted x₀
        let (original, _) =
            predicted_original_and_epsilon(self.config.prediction_type, model_output, sample, alpha_prod_t)?;
        let original = self.config.clip(original)?;
        // 3. the posterior mean μ̃(x_t, x₀) (Ho et al. eq. 7)
        let original_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let mean = original
            .f_mul_scalar(f64::from(original_coeff))?
            .f_add(&sample.f_mul_scalar(f64::from(sample_coeff))?)?;
        if t == 0 {
            return Ok(mean);
        }
        // 4. plus σ_t z
        let variance = match self.config.variance_type {
            VarianceType::FixedSmall => {
                ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20)
            }
            VarianceType::FixedLarge => current_beta_t,
        };
        let fresh = noise.randn(&model_output.size(), model_output.device())?;
        Ok(mean.f_add(&fresh.f_mul_scalar(f64::from(variance.sqrt()))?)?)
    }
}
