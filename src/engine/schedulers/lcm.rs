//! Latent consistency model sampling (Luo et al. 2023, <https://arxiv.org/abs/2310.04378>,
//! algorithm 3): each step jumps to a consistency-model estimate of x₀ and re-noises it to the next
//! timestep on the teacher's 50-step grid. Follows diffusers' `LCMScheduler`.

use tch::Tensor;

use super::{
    NoiseSource, Scheduler, SchedulerConfig, SchedulerError, alphas_cumprod, betas,
    predicted_original_and_epsilon, timestep_at,
};

/// σ_data of the consistency boundary condition (Song et al. 2023).
const SIGMA_DATA: f64 = 0.5;

pub struct LcmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
}

impl LcmScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(&config)?)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new() })
    }

    /// c_skip and c_out of the boundary condition at timestep `t`.
    fn scalings(&self, t: f64) -> (f64, f64) {
        let scaled = t * self.config.timestep_scaling;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for LcmScheduler {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        super::add_noise_alpha(&self.alphas_cumprod, &self.timesteps, original, noise, step_index)
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        // The teacher's grid: k, 2k, …, T (minus one), k = T / original steps; pick n of them.
        let original = self.config.original_inference_steps;
        if steps == 0 || steps > original {
            return Err(SchedulerError::Config(format!(
                "LCM takes between 1 and {original} steps (original_inference_steps), got {steps}"
            )));
        }
        let k = self.config.num_train_timesteps / original;
        let grid: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        self.timesteps = (0..steps).map(|i| grid[(i * original) / steps] as f64).collect();
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
        // 1. ᾱ now and at the next timestep
        let t = timestep_at(&self.timesteps, step_index)?;
        let next = self.timesteps.get(step_index + 1).copied();
        let alpha_prod_t = self.alphas_cumprod[t as usize];
        let alpha_prod_t_prev = match next.unwrap_or(t) {
            previous if previous >= 0.0 => self.alphas_cumprod[previous as usize],
            _ => self.final_alpha_cumprod,
        };
        // 2. the consistency estimate of x₀
        let (original, _) =
            predicted_original_and_epsilon(self.config.prediction_type, model_output, sample, alpha_prod_t)?;
        let original = self.config.clip(original)?;
        let (c_skip, c_out) = self.scalings(t);
        let denoised = original.f_mul_scalar(c_out)?.f_add(&sample.f_mul_scalar(c_skip)?)?;
        // 3. re-noise to the next timestep, except after the last
        if next.is_none() {
            return Ok(denoised);
        }
        let fresh = noise.randn(&model_output.size(), model_output.device())?;
        Ok(denoised
            .f_mul_scalar(f64::from(alpha_prod_t_prev.sqrt()))?
            .f_add(&fresh.f_mul_scalar(f64::from((1.0 - alpha_prod_t_prev).sqrt()))?)?)
    }
}
