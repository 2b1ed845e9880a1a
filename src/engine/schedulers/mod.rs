//! Noise schedulers: one trait, one file per scheduler, numerically following diffusers
//! (<https://github.com/huggingface/diffusers/tree/main/src/diffusers/schedulers>) and checked
//! against trajectories it recorded (`tests/fixtures/schedulers.json`).
//!
//! Schedule values are computed in f32 as diffusers does (its betas are float32 tensors), so the
//! same timesteps and coefficients come out.

pub mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod heun;
pub mod lcm;
pub mod sigmas;

use tch::{Device, Kind, Tensor};

use config::BetaSchedule;
pub use config::{PredictionType, SchedulerConfig, SolverType, TimestepSpacing};

/// Why a scheduler could not be built or stepped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A configuration field is wrong; the message names the file and field.
    #[error("{0}")]
    Config(String),
    #[error("tensor operation failed in the scheduler: {0}")]
    Tensor(#[from] tch::TchError),
}

/// The scheduler algorithms (CLI names in [`SchedulerChoice::from_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    /// DDIM run backwards, image → noise (for inversion).
    DdimInverse,
    Ddpm,
    Euler,
    EulerAncestral,
    /// DPM-Solver++ multistep (2M).
    DpmSolverMultistep,
    /// Heun's second-order method (Karras et al. 2022, algorithm 1).
    Heun,
    /// Latent consistency model sampling (Luo et al. 2023).
    Lcm,
}

/// A scheduler as a person picks it: a kind, and whether to force the Karras σ schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerChoice {
    pub kind: SchedulerKind,
    /// `Some(true)` for the "-karras" names and Heun (the EDM sampler); `None` keeps the config's.
    pub use_karras_sigmas: Option<bool>,
}

impl SchedulerChoice {
    pub const NAMES: &'static str = "ddim, ddpm, euler, euler-a, dpm++2m, dpm++2m-karras, heun, lcm";

    /// From a CLI/UI name.
    pub fn from_name(name: &str) -> Result<Self, SchedulerError> {
        let (kind, karras) = match name {
            "ddim" => (SchedulerKind::Ddim, None),
            "ddpm" => (SchedulerKind::Ddpm, None),
            "euler" => (SchedulerKind::Euler, None),
            "euler-a" | "euler_a" => (SchedulerKind::EulerAncestral, None),
            "dpm++2m" => (SchedulerKind::DpmSolverMultistep, Some(false)),
            "dpm++2m-karras" => (SchedulerKind::DpmSolverMultistep, Some(true)),
            "heun" => (SchedulerKind::Heun, Some(true)),
            "lcm" => (SchedulerKind::Lcm, None),
            other => {
                return Err(SchedulerError::Config(format!(
                    "unknown scheduler \"{other}\"; choose one of {}",
                    Self::NAMES
                )));
            }
        };
        Ok(Self { kind, use_karras_sigmas: karras })
    }

    /// Builds the scheduler from a model's configuration.
    pub fn build(self, mut config: SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError> {
        if let Some(karras) = self.use_karras_sigmas {
            config.use_karras_sigmas = karras;
        }
        build(self.kind, config)
    }
}

impl SchedulerKind {
    /// diffusers' class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Ddim => "DDIMScheduler",
            Self::DdimInverse => "DDIMInverseScheduler",
            Self::Ddpm => "DDPMScheduler",
            Self::Euler => "EulerDiscreteScheduler",
            Self::EulerAncestral => "EulerAncestralDiscreteScheduler",
            Self::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            Self::Heun => "HeunDiscreteScheduler",
            Self::Lcm => "LCMScheduler",
        }
    }
}

/// Where a scheduler's fresh noise comes from. The engine draws on the CPU from libtorch's
/// default generator (seeded with `tch::manual_seed`, which matches
/// `torch.Generator("cpu").manual_seed`) and moves it to the device, as diffusers does with a CPU
/// generator.
pub trait NoiseSource {
    fn randn(&mut self, size: &[i64], device: Device) -> Result<Tensor, SchedulerError>;
}

/// Standard normal noise from libtorch's default CPU generator.
pub struct CpuGeneratorNoise;

impl NoiseSource for CpuGeneratorNoise {
    fn randn(&mut self, size: &[i64], device: Device) -> Result<Tensor, SchedulerError> {
        Ok(Tensor::f_randn(size, (Kind::Float, Device::Cpu))?.f_to_device(device)?)
    }
}

/// Draws one sample's noise and gives every batch member the same (prompt-to-prompt's source and
/// target see the same ancestral noise, and the source branch draws what a plain run draws).
pub struct SharedNoise<'a>(pub &'a mut dyn NoiseSource);

impl NoiseSource for SharedNoise<'_> {
    fn randn(&mut self, size: &[i64], device: Device) -> Result<Tensor, SchedulerError> {
        let mut one = size.to_vec();
        let Some(batch) = one.first_mut() else { return self.0.randn(size, device) };
        let count = std::mem::replace(batch, 1);
        let mut repeats = vec![1i64; size.len()];
        repeats[0] = count;
        Ok(self.0.randn(&one, device)?.f_repeat(&repeats)?)
    }
}

/// A denoising schedule and its update rule.
pub trait Scheduler: Send {
    /// Chooses `steps` inference steps.
    fn set_timesteps(&mut self, steps: usize) -> Result<(), SchedulerError>;
    /// The model's timestep at each step index (fractional for Karras sigmas).
    fn timesteps(&self) -> &[f64];
    /// Model evaluations per step (2 for Heun, whose timesteps list each later step twice).
    fn order(&self) -> usize {
        1
    }
    /// `original` noised to the level of step `step_index` with `noise` (what img2img and
    /// blended inpainting start from, or blend with), as diffusers' `add_noise` does.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> Result<Tensor, SchedulerError>;
    /// The scale of the initial noise (1 for DDIM/DDPM, σ_max-based for Euler).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// Scales the sample before the model sees it at `step_index` (identity for DDIM/DDPM).
    fn scale_model_input(&self, sample: &Tensor, _step_index: usize) -> Result<Tensor, SchedulerError> {
        Ok(sample.shallow_clone())
    }
    /// One update from `sample` given the model's output at `step_index`.
    /// sample, model_output: (batch, channels, height, width).
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<Tensor, SchedulerError>;
}

/// Builds the scheduler of `kind` from a resolved configuration.
pub fn build(kind: SchedulerKind, config: SchedulerConfig) -> Result<Box<dyn Scheduler>, SchedulerError> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(ddim::DdimScheduler::new(config)?),
        SchedulerKind::DdimInverse => Box::new(ddim::DdimInverseScheduler::new(config)?),
        SchedulerKind::Ddpm => Box::new(ddpm::DdpmScheduler::new(config)?),
        SchedulerKind::Euler => Box::new(euler::EulerScheduler::new(config, false)?),
        SchedulerKind::EulerAncestral => Box::new(euler::EulerScheduler::new(config, true)?),
        SchedulerKind::DpmSolverMultistep => Box::new(dpm_solver::DpmSolverMultistepScheduler::new(config)?),
        SchedulerKind::Heun => Box::new(heun::HeunScheduler::new(config)?),
        SchedulerKind::Lcm => Box::new(lcm::LcmScheduler::new(config)?),
    })
}

/// √ᾱ_t·x₀ + √(1−ᾱ_t)·ε at the step's (integer) timestep, in f32 as diffusers computes it.
pub fn add_noise_alpha(
    alphas_cumprod: &[f32],
    timesteps: &[f64],
    original: &Tensor,
    noise: &Tensor,
    step_index: usize,
) -> Result<Tensor, SchedulerError> {
    let t = *timesteps.get(step_index).ok_or_else(|| past_the_end(step_index, timesteps.len()))?;
    let alpha_bar =
        *alphas_cumprod.get(t as usize).ok_or_else(|| past_the_end(t as usize, alphas_cumprod.len()))?;
    let (signal, noise_scale) = (alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt());
    Ok(original.f_mul_scalar(f64::from(signal))?.f_add(&noise.f_mul_scalar(f64::from(noise_scale))?)?)
}

/// x₀ + σ·ε at the step's σ (the σ-parameterised schedulers).
pub fn add_noise_sigma(
    sigmas: &[f32],
    original: &Tensor,
    noise: &Tensor,
    step_index: usize,
) -> Result<Tensor, SchedulerError> {
    let sigma = *sigmas.get(step_index).ok_or_else(|| past_the_end(step_index, sigmas.len()))?;
    Ok(original.f_add(&noise.f_mul_scalar(f64::from(sigma))?)?)
}

/// The training betas (f32, as diffusers' float32 tensors).
pub fn betas(config: &SchedulerConfig) -> Result<Vec<f32>, SchedulerError> {
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = if let Some(betas) = &config.trained_betas {
        betas.clone()
    } else {
        match config.beta_schedule {
            BetaSchedule::Linear => linspace_f32(config.beta_start, config.beta_end, n)?,
            BetaSchedule::ScaledLinear => linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)?
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::SquaredCosCapV2 => {
                // Nichol & Dhariwal 2021, eq. 17, with betas capped at 0.999 (computed in f64).
                let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        }
    };
    Ok(if config.rescale_betas_zero_snr { rescale_zero_terminal_snr(&betas) } else { betas })
}

/// `torch.linspace(start, end, n, dtype=float32)`, bit for bit.
fn linspace_f32(start: f64, end: f64, n: usize) -> Result<Vec<f32>, SchedulerError> {
    let values = Tensor::f_linspace(start, end, n as i64, (Kind::Float, Device::Cpu))?;
    Ok(Vec::<f32>::try_from(&values)?)
}

/// ᾱ_t = Π(1 − β), accumulated in f32 as `torch.cumprod` does on CPU.
pub fn alphas_cumprod(betas: &[f32]) -> Result<Vec<f32>, SchedulerError> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let cumprod = Tensor::f_from_slice(&alphas)?.f_cumprod(0, Kind::Float)?;
    Ok(Vec::<f32>::try_from(&cumprod)?)
}

/// Lin et al. 2023 (<https://arxiv.org/abs/2305.08891>), algorithm 1: shift and scale √ᾱ so
/// that the last step has zero SNR while the first is unchanged.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut cumulative = 1.0f32;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|b| {
            cumulative *= 1.0 - b;
            cumulative.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    for value in &mut sqrt_bar {
        *value -= last;
        *value *= first / (first - last);
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut rescaled = Vec::with_capacity(bar.len());
    rescaled.push(1.0 - bar[0]);
    for pair in bar.windows(2) {
        rescaled.push(1.0 - pair[1] / pair[0]);
    }
    rescaled
}

/// Inference timesteps, largest first (DDIM, DDPM, Euler's spacings). "linspace" values are
/// fractional; `integer` rounds them as DDIM and DDPM do (Euler keeps them, as float32).
pub fn spaced_timesteps(
    config: &SchedulerConfig,
    steps: usize,
    integer: bool,
) -> Result<Vec<f64>, SchedulerError> {
    let train = config.num_train_timesteps;
    if steps == 0 || steps > train {
        return Err(SchedulerError::Config(format!(
            "steps must be between 1 and num_train_timesteps ({train}), got {steps}"
        )));
    }
    Ok(match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, T − 1, n)[::-1]
            let last = (train - 1) as f64;
            let step = if steps > 1 { last / (steps - 1) as f64 } else { 0.0 };
            (0..steps)
                .rev()
                .map(|i| if i + 1 == steps && steps > 1 { last } else { i as f64 * step })
                .map(|t| if integer { t.round_ties_even() } else { f64::from(t as f32) })
                .collect()
        }
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(T, 0, −T/n)) − 1
            let ratio = train as f64 / steps as f64;
            (0..)
                .map(|i| train as f64 - i as f64 * ratio)
                .take_while(|t| *t > 0.0)
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    })
}

/// x₀ and ε from a model output, for the DDPM-family schedulers (all in f32 scalars).
pub(crate) fn predicted_original_and_epsilon(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod_t: f32,
) -> Result<(Tensor, Tensor), SchedulerError> {
    let beta_prod_t = 1.0 - alpha_prod_t;
    let (sqrt_alpha, sqrt_beta) = (f64::from(alpha_prod_t.sqrt()), f64::from(beta_prod_t.sqrt()));
    Ok(match prediction {
        PredictionType::Epsilon => (
            sample.f_sub(&model_output.f_mul_scalar(sqrt_beta)?)?.f_div_scalar(sqrt_alpha)?,
            model_output.shallow_clone(),
        ),
        PredictionType::Sample => (
            model_output.shallow_clone(),
            sample.f_sub(&model_output.f_mul_scalar(sqrt_alpha)?)?.f_div_scalar(sqrt_beta)?,
        ),
        PredictionType::VPrediction => (
            sample.f_mul_scalar(sqrt_alpha)?.f_sub(&model_output.f_mul_scalar(sqrt_beta)?)?,
            model_output.f_mul_scalar(sqrt_alpha)?.f_add(&sample.f_mul_scalar(sqrt_beta)?)?,
        ),
    })
}

/// The step index's timestep, or an error naming both numbers.
pub(crate) fn timestep_at(timesteps: &[f64], step_index: usize) -> Result<f64, SchedulerError> {
    timesteps.get(step_index).copied().ok_or_else(|| past_the_end(step_index, timesteps.len()))
}

/// The error for a step index beyond the schedule.
pub(crate) fn past_the_end(step_index: usize, steps: usize) -> SchedulerError {
    SchedulerError::Config(format!(
        "step {step_index} asked for, but the scheduler has {steps} steps (call set_timesteps first)"
    ))
}

impl SchedulerConfig {
    /// Clamps a predicted x₀ to ±`clip_sample_range` when `clip_sample` is on.
    pub(crate) fn clip(&self, original: Tensor) -> Result<Tensor, SchedulerError> {
        if self.clip_sample {
            Ok(original.f_clamp(-self.clip_sample_range, self.clip_sample_range)?)
        } else {
            Ok(original)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacings_match_diffusers_tables() {
        let mut config = SchedulerConfig::stable_diffusion(SchedulerKind::Ddim);
        // Values printed by diffusers 0.42.1's set_timesteps for these configs.
        assert_eq!(spaced_timesteps(&config, 4, true).expect("leading"), vec![751.0, 501.0, 251.0, 1.0]);
        config.timestep_spacing = TimestepSpacing::Trailing;
        assert_eq!(spaced_timesteps(&config, 3, true).expect("trailing"), vec![999.0, 666.0, 332.0]);
        config.timestep_spacing = TimestepSpacing::Linspace;
        assert_eq!(spaced_timesteps(&config, 4, true).expect("linspace"), vec![999.0, 666.0, 333.0, 0.0]);
        assert_eq!(spaced_timesteps(&config, 7, true).expect("linspace")[..3], [999.0, 832.0, 666.0]);
        assert_eq!(spaced_timesteps(&config, 7, false).expect("linspace")[..3], [999.0, 832.5, 666.0]);
        assert!(spaced_timesteps(&config, 0, true).is_err());
        assert!(spaced_timesteps(&config, 1001, true).is_err());
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero_and_keeps_the_start() {
        let config = SchedulerConfig {
            rescale_betas_zero_snr: true,
            ..SchedulerConfig::stable_diffusion(SchedulerKind::Ddim)
        };
        let plain =
            alphas_cumprod(&betas(&SchedulerConfig::stable_diffusion(SchedulerKind::Ddim)).expect("betas"))
                .expect("cumprod");
        let rescaled = alphas_cumprod(&betas(&config).expect("betas")).expect("cumprod");
        assert!((rescaled[0] - plain[0]).abs() < 1e-6);
        assert!(rescaled[999].abs() < 1e-9, "{}", rescaled[999]);
    }

    #[test]
    fn unknown_names_and_fields_are_clear_errors() {
        let error = SchedulerChoice::from_name("plms").expect_err("unknown").to_string();
        assert!(error.contains("plms") && error.contains("ddim"), "{error}");
        let error =
            SchedulerConfig::from_json(SchedulerKind::Ddim, r#"{"beta_schedule": "cubic"}"#, "x.json")
                .expect_err("bad schedule")
                .to_string();
        assert!(
            error.contains("x.json") && error.contains("beta_schedule") && error.contains("cubic"),
            "{error}"
        );
        let error =
            SchedulerConfig::from_json(SchedulerKind::Ddim, "[1, 2]", "y.json").expect_err("not an object");
        assert!(error.to_string().contains("y.json"));
    }
}
