//! Euler and Euler-ancestral samplers in σ-space (Karras et al. 2022,
//! <https://arxiv.org/abs/2206.00364>, algorithm 1 without churn; the ancestral variant of
//! k-diffusion), with the optional Karras σ schedule, following diffusers'
//! `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler`.

use tch::Tensor;

use super::sigmas::{self, TrainSigmas};
use super::{NoiseSource, Scheduler, SchedulerConfig, SchedulerError, past_the_end, spaced_timesteps};

pub struct EulerScheduler {
    config: SchedulerConfig,
    train_sigmas: TrainSigmas,
    /// Inference σs, one per step plus a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// Adds fresh noise each step (Euler a).
    ancestral: bool,
}

impl EulerScheduler {
    pub fn new(config: SchedulerConfig, ancestral: bool) -> Result<Self, SchedulerError> {
        let train_sigmas = TrainSigmas::new(&config)?;
        Ok(Self { config, train_sigmas, sigmas: Vec::new(), timesteps: Vec::new(), ancestral })
    }

    /// The inference σs (with the final 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn sigma(&self, step_index: usize) -> Result<(f32, f32), SchedulerError> {
        match (self.sigmas.get(step_index), self.sigmas.get(step_index + 1)) {
            (Some(sigma), Some(next)) => Ok((*sigma, *next)),
            _ => Err(past_the_end(step_index, self.timesteps.len())),
        }
    }
}

impl Scheduler for EulerScheduler {
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        super::add_noise_sigma(&self.sigmas, original, noise, step_index)
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let timesteps = spaced_timesteps(&self.config, steps, false)?;
        let sigmas: Vec<f64> = timesteps.iter().map(|t| self.train_sigmas.at(*t)).collect();
        let (timesteps, sigmas) = if self.config.use_karras_sigmas && !self.ancestral {
            // Karras et al. eq. 5 between the schedule's ends, then each σ's timestep.
            let karras = sigmas::karras(sigmas[0], sigmas[sigmas.len() - 1], steps);
            let timesteps =
                karras.iter().map(|s| f64::from(self.train_sigmas.timestep_of(*s) as f32)).collect();
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
        sigmas::init_noise_sigma(&self.sigmas, &self.config)
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
        let original = sigmas::denoised(self.config.prediction_type, model_output, sample, sigma)?;
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
