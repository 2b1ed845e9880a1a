//! Heun's second-order sampler in σ-space (Karras et al. 2022, <https://arxiv.org/abs/2206.00364>,
//! algorithm 1 without churn): each step evaluates the model twice, so the schedule lists every
//! inner timestep twice. Follows diffusers' `HeunDiscreteScheduler`.

use tch::Tensor;

use super::sigmas::{self, TrainSigmas};
use super::{NoiseSource, Scheduler, SchedulerConfig, SchedulerError, past_the_end, spaced_timesteps};

pub struct HeunScheduler {
    config: SchedulerConfig,
    train_sigmas: TrainSigmas,
    /// σ per model evaluation: σ₀, σ₁, σ₁, σ₂, σ₂, …, σ_{n−1}, σ_{n−1}, 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// Between the two evaluations of a step: the first derivative, dt and the step's start.
    pending: Option<(Tensor, f32, Tensor)>,
}

impl HeunScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let train_sigmas = TrainSigmas::new(&config)?;
        Ok(Self { config, train_sigmas, sigmas: Vec::new(), timesteps: Vec::new(), pending: None })
    }
}

/// [a, b, c] → [a, b, b, c, c] (the first entry once, every later one twice).
fn doubled<T: Copy>(values: &[T]) -> Vec<T> {
    values.iter().enumerate().flat_map(|(i, v)| std::iter::repeat_n(*v, if i == 0 { 1 } else { 2 })).collect()
}

impl Scheduler for HeunScheduler {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        super::add_noise_sigma(&self.sigmas, original, noise, step_index)
    }

    fn order(&self) -> usize {
        2
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let timesteps = spaced_timesteps(&self.config, steps, false)?;
        let sigmas: Vec<f64> = timesteps.iter().map(|t| self.train_sigmas.at(*t)).collect();
        let (timesteps, sigmas) = if self.config.use_karras_sigmas {
            let karras = sigmas::karras(sigmas[0], sigmas[sigmas.len() - 1], steps);
            let timesteps =
                karras.iter().map(|s| f64::from(self.train_sigmas.timestep_of(*s) as f32)).collect();
            (timesteps, karras)
        } else {
            (timesteps, sigmas)
        };
        // σ₀ once, every later σ twice, then the final 0.
        let single: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
        self.sigmas = doubled(&single);
        self.sigmas.push(0.0);
        self.timesteps = doubled(&timesteps);
        self.pending = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        sigmas::init_noise_sigma(&self.sigmas, &self.config)
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> Result<Tensor, SchedulerError> {
        let sigma = self.sigmas.get(step_index).copied().unwrap_or(0.0);
        Ok(sample.f_div_scalar(f64::from((sigma * sigma + 1.0).sqrt()))?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError> {
        if step_index >= self.timesteps.len() {
            return Err(past_the_end(step_index, self.timesteps.len()));
        }
        match self.pending.take() {
            // 1. first evaluation: an Euler step, remembered
            None => {
                let (sigma, sigma_next) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
                let original = self.config.clip(sigmas::denoised(
                    self.config.prediction_type,
                    model_output,
                    sample,
                    sigma,
                )?)?;
                let derivative = sample.f_sub(&original)?.f_div_scalar(f64::from(sigma))?;
                let dt = sigma_next - sigma;
                let previous = sample.f_add(&derivative.f_mul_scalar(f64::from(dt))?)?;
                self.pending = Some((derivative, dt, sample.shallow_clone()));
                Ok(previous)
            }
            // 2. second evaluation at σ_next: average the two slopes from the step's start
            Some((first_derivative, dt, start)) => {
                let sigma_next = self.sigmas[step_index];
                let original = self.config.clip(sigmas::denoised(
                    self.config.prediction_type,
                    model_output,
                    sample,
                    sigma_next,
                )?)?;
                let derivative = sample.f_sub(&original)?.f_div_scalar(f64::from(sigma_next))?;
                let average = first_derivative.f_add(&derivative)?.f_div_scalar(2.0)?;
                Ok(start.f_add(&average.f_mul_scalar(f64::from(dt))?)?)
            }
        }
    }
}
