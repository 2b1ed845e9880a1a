//! DDIM (Song et al. 2020, <https://arxiv.org/abs/2010.02502>) with η, and its inverse (image →
//! noise, for DDIM inversion), following diffusers' `DDIMScheduler` and `DDIMInverseScheduler`.

use tch::Tensor;

use super::{
    NoiseSource, Scheduler, SchedulerConfig, SchedulerError, alphas_cumprod, betas,
    predicted_original_and_epsilon, spaced_timesteps, timestep_at,
};

/// DDIM sampling. `eta` 0 is deterministic; 1 matches DDPM's variance.
pub struct DdimScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// ᾱ after the last step: 1, or ᾱ₀ when `set_alpha_to_one` is false.
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// Stochasticity η (Song et al. eq. 16).
    pub eta: f64,
}

impl DdimScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(&config)?)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new(), eta: 0.0 })
    }

    /// The gap between consecutive timesteps as diffusers computes it (`T // n`, whatever the
    /// spacing).
    fn step_gap(&self) -> i64 {
        (self.config.num_train_timesteps / self.timesteps.len().max(1)) as i64
    }

    fn alpha_at(&self, t: i64) -> f32 {
        if t >= 0 { self.alphas_cumprod[t as usize] } else { self.final_alpha_cumprod }
    }
}

impl Scheduler for DdimScheduler {
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
        // 1. ᾱ at this and the previous timestep
        let timestep = timestep_at(&self.timesteps, step_index)? as i64;
        let previous = timestep - self.step_gap();
        let alpha_prod_t = self.alpha_at(timestep);
        let alpha_prod_t_prev = self.alpha_at(previous);
        // 2. predicted x₀ and ε (Song et al. eq. 12)
        let (original, epsilon) =
            predicted_original_and_epsilon(self.config.prediction_type, model_output, sample, alpha_prod_t)?;
        let original = self.config.clip(original)?;
        // 3. σ_t(η) and the direction pointing to x_t
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = (self.eta as f32) * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let mut previous_sample = original
            .f_mul_scalar(f64::from(alpha_prod_t_prev.sqrt()))?
            .f_add(&epsilon.f_mul_scalar(f64::from(direction_coeff))?)?;
        // 4. fresh noise when η > 0
        if self.eta > 0.0 {
            let fresh = noise.randn(&model_output.size(), model_output.device())?;
            previous_sample = previous_sample.f_add(&fresh.f_mul_scalar(f64::from(std_dev_t))?)?;
        }
        Ok(previous_sample)
    }
}

/// DDIM run backwards from a clean latent to noise: the timesteps ascend, and each step moves
/// from ᾱ at `t − T/n` to ᾱ at `t` (Mokady et al. 2022 use it to invert real images).
pub struct DdimInverseScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    /// ᾱ before the first step: 1, or ᾱ₀ when `set_alpha_to_one` is false.
    initial_alpha_cumprod: f32,
    timesteps: Vec<f64>,
}

impl DdimInverseScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(&betas(&config)?)?;
        let initial_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, alphas_cumprod, initial_alpha_cumprod, timesteps: Vec::new() })
    }
}

impl Scheduler for DdimInverseScheduler {
    fn add_noise(
        &self,
        _original: &Tensor,
        _noise: &Tensor,
        _step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        Err(SchedulerError::Config("DDIM inverse runs from the image towards noise; it adds no noise".into()))
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        if self.config.timestep_spacing == super::TimestepSpacing::Linspace {
            return Err(SchedulerError::Config(
                "DDIM inversion supports timestep_spacing leading or trailing, not linspace".into(),
            ));
        }
        let mut timesteps = spaced_timesteps(&self.config, steps, true)?;
        timesteps.reverse();
        self.timesteps = timesteps;
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError> {
        let target = timestep_at(&self.timesteps, step_index)? as i64;
        let gap = (self.config.num_train_timesteps / self.timesteps.len().max(1)) as i64;
        let current = (target - gap).min(self.config.num_train_timesteps as i64 - 1);
        let alpha_prod_t =
            if current >= 0 { self.alphas_cumprod[current as usize] } else { self.initial_alpha_cumprod };
        let alpha_prod_t_next = self.alphas_cumprod[target as usize];
        let (original, epsilon) =
            predicted_original_and_epsilon(self.config.prediction_type, model_output, sample, alpha_prod_t)?;
        let original = self.config.clip(original)?;
        Ok(original
            .f_mul_scalar(f64::from(alpha_prod_t_next.sqrt()))?
            .f_add(&epsilon.f_mul_scalar(f64::from((1.0 - alpha_prod_t_next).sqrt()))?)?)
    }
}
