//! DPM-Solver++ multistep, "DPM++ 2M" (Lu et al. 2022, <https://arxiv.org/abs/2211.01095>,
//! algorithm 2), data-prediction form, optionally on the Karras σ schedule, following diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`.

use tch::Tensor;

use super::config::BetaSchedule;
use super::sigmas::{self, TrainSigmas};
use super::{
    NoiseSource, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SolverType, TimestepSpacing,
    past_the_end,
};

pub struct DpmSolverMultistepScheduler {
    config: SchedulerConfig,
    train_sigmas: TrainSigmas,
    /// One σ per step plus a final 0.
    sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// The data predictions x₀ of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Tensor>,
    /// How many steps have run so far (caps at `solver_order`).
    lower_order_nums: usize,
}

/// (α_t, σ_t) of the variance-preserving process from a σ of the variance-exploding one.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log(α/σ), the half log-SNR.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let train_sigmas = TrainSigmas::new(&config)?;
        Ok(Self {
            config,
            train_sigmas,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
            model_outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// DPM-Solver's own spacings: it spaces n + 1 points and drops the last.
    fn spaced(&self, steps: usize) -> Result<Vec<f64>, SchedulerError> {
        let train = self.config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(SchedulerError::Config(format!(
                "steps must be between 1 and num_train_timesteps ({train}), got {steps}"
            )));
        }
        Ok(match self.config.timestep_spacing {
            TimestepSpacing::Linspace => {
                // np.linspace(0, T − 1, n + 1).round()[::-1][:-1]
                let last = (train - 1) as f64;
                let step = last / steps as f64;
                (1..=steps)
                    .rev()
                    .map(|i| if i == steps { last } else { (i as f64 * step).round_ties_even() })
                    .collect()
            }
            TimestepSpacing::Leading => {
                let ratio = train / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + self.config.steps_offset) as f64).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = train as f64 / steps as f64;
                (0..)
                    .map(|i| train as f64 - i as f64 * ratio)
                    .take_while(|t| *t > 0.0)
                    .map(|t| t.round_ties_even() - 1.0)
                    .collect()
            }
        })
    }

    /// x₀ from the model output at σ (diffusers' `convert_model_output`).
    fn data_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f32,
    ) -> Result<Tensor, SchedulerError> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => sample
                .f_sub(&model_output.f_mul_scalar(f64::from(sigma_t))?)?
                .f_div_scalar(f64::from(alpha_t))?,
            PredictionType::VPrediction => sample
                .f_mul_scalar(f64::from(alpha_t))?
                .f_sub(&model_output.f_mul_scalar(f64::from(sigma_t))?)?,
            PredictionType::Sample => model_output.shallow_clone(),
        })
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    /// α_t·x₀ + σ_t·ε with (α_t, σ_t) of the step's σ (diffusers' `_sigma_to_alpha_sigma_t`).
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError> {
        let sigma =
            *self.sigmas.get(step_index).ok_or_else(|| past_the_end(step_index, self.sigmas.len()))?;
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        Ok(original.f_mul_scalar(f64::from(alpha_t))?.f_add(&noise.f_mul_scalar(f64::from(sigma_t))?)?)
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError> {
        let spaced = self.spaced(steps)?;
        let (timesteps, sigmas) = if self.config.use_karras_sigmas {
            // The Karras schedule spans the whole training range, σ_max → σ_min.
            let train = &self.train_sigmas.sigmas;
            let karras = sigmas::karras(f64::from(train[train.len() - 1]), f64::from(train[0]), steps);
            let round = self.config.beta_schedule != BetaSchedule::SquaredCosCapV2;
            let timesteps = karras
                .iter()
                .map(|s| self.train_sigmas.timestep_of(*s))
                .map(|t| if round { t.round_ties_even() } else { t.trunc() })
                .collect();
            (timesteps, karras)
        } else {
            let sigmas = spaced.iter().map(|t| self.train_sigmas.at(*t)).collect();
            (spaced, sigmas)
        };
        self.sigmas = sigmas.iter().map(|s| *s as f32).chain(std::iter::once(0.0)).collect();
        self.timesteps = timesteps;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
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
        let (Some(&sigma_s0), Some(&sigma_next)) =
            (self.sigmas.get(step_index), self.sigmas.get(step_index + 1))
        else {
            return Err(past_the_end(step_index, self.timesteps.len()));
        };
        // 1. the data prediction, kept for the next step
        let x0 = self.data_prediction(model_output, sample, sigma_s0)?;
        self.model_outputs.push(x0.shallow_clone());
        if self.model_outputs.len() > self.config.solver_order {
            drop(self.model_outputs.remove(0));
        }
        // 2. first order at the start, at the end (final σ = 0) and for order 1; else 2M
        let steps = self.timesteps.len();
        let last_step = step_index + 1 == steps;
        let lower_order_final = last_step; // final σ is 0, so diffusers always ends first-order
        let (alpha_t, sigma_t) = alpha_sigma(sigma_next);
        let (alpha_s0, sigma_s0_vp) = alpha_sigma(sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0_vp);
        let sample_coeff = f64::from(sigma_t / sigma_s0_vp);
        let x0_coeff = alpha_t * ((-h).exp() - 1.0);
        let first_order = self.config.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final;
        let previous = if first_order || self.model_outputs.len() < 2 {
            sample.f_mul_scalar(sample_coeff)?.f_sub(&x0.f_mul_scalar(f64::from(x0_coeff))?)?
        } else {
            let sigma_s1 = self.sigmas[step_index - 1];
            let (alpha_s1, sigma_s1_vp) = alpha_sigma(sigma_s1);
            let h_0 = lambda(alpha_s0, sigma_s0_vp) - lambda(alpha_s1, sigma_s1_vp);
            let r0 = h_0 / h;
            let (m0, m1) = (&self.model_outputs[1], &self.model_outputs[0]);
            let d1 = m0.f_sub(m1)?.f_mul_scalar(f64::from(1.0 / r0))?;
            let d1_coeff = match self.config.solver_type {
                SolverType::Midpoint => -0.5 * x0_coeff,
                SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
            };
            sample
                .f_mul_scalar(sample_coeff)?
                .f_sub(&m0.f_mul_scalar(f64::from(x0_coeff))?)?
                .f_add(&d1.f_mul_scalar(f64::from(d1_coeff))?)?
        };
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        Ok(previous)
    }
}
