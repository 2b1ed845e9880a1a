//! `scheduler_config.json` as diffusers reads it: the fields every scheduler here understands,
//! with each scheduler class's own defaults for the fields a file leaves out (diffusers'
//! `from_config`, which is how a user swaps DDIM for Euler on an SD checkpoint).

use serde::Deserialize;

use super::{SchedulerError, SchedulerKind};

/// How the training betas are laid out over `num_train_timesteps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`.
    Linear,
    /// `linspace(√beta_start, √beta_end)²` — Stable Diffusion's.
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal 2021 (`squaredcos_cap_v2`).
    SquaredCosCapV2,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    /// v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022), SD 2.x 768 models.
    VPrediction,
    Sample,
}

/// How inference timesteps are picked from the training ones (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// DDPM's posterior variance choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    FixedSmall,
    FixedLarge,
}

/// DPM-Solver's second-order update rule (Lu et al. 2022b, appendix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// A scheduler configuration with every field resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Training timesteps, 1000 for SD.
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the schedule.
    pub trained_betas: Option<Vec<f32>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Added to "leading" timesteps (SD 1.x: 1).
    pub steps_offset: usize,
    /// Clamp the predicted x₀ to ±`clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// DDIM: ᾱ before the first step is 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// Rescale betas to zero terminal SNR (Lin et al. 2023, algorithm 1).
    pub rescale_betas_zero_snr: bool,
    /// Sigma-based schedulers: the Karras et al. 2022 sigma schedule (ρ = 7).
    pub use_karras_sigmas: bool,
    pub variance_type: VarianceType,
    /// DPM-Solver: order of the multistep solver (1 or 2).
    pub solver_order: usize,
    pub solver_type: SolverType,
    /// DPM-Solver: first-order final step(s) when there are fewer than 15 steps.
    pub lower_order_final: bool,
    /// DPM-Solver: always finish with a first-order (Euler) step.
    pub euler_at_final: bool,
    /// LCM: the teacher's step count the consistency model was distilled for (50).
    pub original_inference_steps: usize,
    /// LCM: the boundary-condition scaling of the timestep (10).
    pub timestep_scaling: f64,
}

/// The fields as a file holds them; any may be missing, and unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    trained_betas: Option<Vec<f32>>,
    prediction_type: Option<String>,
    timestep_spacing: Option<String>,
    steps_offset: Option<usize>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    set_alpha_to_one: Option<bool>,
    rescale_betas_zero_snr: Option<bool>,
    use_karras_sigmas: Option<bool>,
    variance_type: Option<String>,
    thresholding: Option<bool>,
    interpolation_type: Option<String>,
    timestep_type: Option<String>,
    final_sigmas_type: Option<String>,
    solver_order: Option<usize>,
    algorithm_type: Option<String>,
    solver_type: Option<String>,
    lower_order_final: Option<bool>,
    euler_at_final: Option<bool>,
    original_inference_steps: Option<usize>,
    timestep_scaling: Option<f64>,
    lambda_min_clipped: Option<f64>,
}

impl SchedulerConfig {
    /// diffusers' defaults for `kind` (its class's `__init__` arguments).
    pub fn defaults(kind: SchedulerKind) -> Self {
        let linspace_default = matches!(
            kind,
            SchedulerKind::Euler
                | SchedulerKind::EulerAncestral
                | SchedulerKind::Heun
                | SchedulerKind::DpmSolverMultistep
        );
        let clips_by_default =
            matches!(kind, SchedulerKind::Ddim | SchedulerKind::DdimInverse | SchedulerKind::Ddpm);
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: if linspace_default {
                TimestepSpacing::Linspace
            } else {
                TimestepSpacing::Leading
            },
            steps_offset: 0,
            clip_sample: clips_by_default,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            rescale_betas_zero_snr: false,
            use_karras_sigmas: false,
            variance_type: VarianceType::FixedSmall,
            solver_order: 2,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
        }
    }

    /// Stable Diffusion 1.x/2.x's `scheduler_config.json` fields on top of `kind`'s defaults.
    pub fn stable_diffusion(kind: SchedulerKind) -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            set_alpha_to_one: false,
            steps_offset: 1,
            clip_sample: false,
            timestep_spacing: TimestepSpacing::Leading,
            ..Self::defaults(kind)
        }
    }

    /// Reads `scheduler_config.json` text for `kind`; `source` names the file in errors.
    pub fn from_json(kind: SchedulerKind, json: &str, source: &str) -> Result<Self, SchedulerError> {
        let raw: RawConfig = serde_json::from_str(json)
            .map_err(|error| SchedulerError::Config(format!("{source}: not a scheduler config: {error}")))?;
        Self::from_raw(kind, raw, source)
    }

    fn from_raw(kind: SchedulerKind, raw: RawConfig, source: &str) -> Result<Self, SchedulerError> {
        let field_error = |field: &str, value: &str, allowed: &str| {
            SchedulerError::Config(format!(
                "{source}: {field} \"{value}\" is not supported; use one of {allowed}"
            ))
        };
        let mut config = Self::defaults(kind);
        if let Some(value) = raw.num_train_timesteps {
            if value < 2 {
                return Err(SchedulerError::Config(format!(
                    "{source}: num_train_timesteps must be at least 2, got {value}"
                )));
            }
            config.num_train_timesteps = value;
        }
        config.beta_start = raw.beta_start.unwrap_or(config.beta_start);
        config.beta_end = raw.beta_end.unwrap_or(config.beta_end);
        if let Some(value) = raw.beta_schedule.as_deref() {
            config.beta_schedule = match value {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
                other => {
                    return Err(field_error(
                        "beta_schedule",
                        other,
                        "linear, scaled_linear, squaredcos_cap_v2",
                    ));
                }
            };
        }
        if let Some(betas) = raw.trained_betas {
            if betas.len() != config.num_train_timesteps {
                return Err(SchedulerError::Config(format!(
                    "{source}: trained_betas holds {} values, num_train_timesteps is {}",
                    betas.len(),
                    config.num_train_timesteps
                )));
            }
            config.trained_betas = Some(betas);
        }
        if let Some(value) = raw.prediction_type.as_deref() {
            config.prediction_type = match value {
                "epsilon" => PredictionType::Epsilon,
                "v_prediction" => PredictionType::VPrediction,
                "sample" | "original_sample" => PredictionType::Sample,
                other => return Err(field_error("prediction_type", other, "epsilon, v_prediction, sample")),
            };
        }
        if let Some(value) = raw.timestep_spacing.as_deref() {
            config.timestep_spacing = match value {
                "linspace" => TimestepSpacing::Linspace,
                "leading" => TimestepSpacing::Leading,
                "trailing" => TimestepSpacing::Trailing,
                other => return Err(field_error("timestep_spacing", other, "linspace, leading, trailing")),
            };
        }
        config.steps_offset = raw.steps_offset.unwrap_or(config.steps_offset);
        config.clip_sample = raw.clip_sample.unwrap_or(config.clip_sample);
        config.clip_sample_range = raw.clip_sample_range.unwrap_or(config.clip_sample_range);
        config.set_alpha_to_one = raw.set_alpha_to_one.unwrap_or(config.set_alpha_to_one);
        config.rescale_betas_zero_snr = raw.rescale_betas_zero_snr.unwrap_or(config.rescale_betas_zero_snr);
        config.use_karras_sigmas = raw.use_karras_sigmas.unwrap_or(config.use_karras_sigmas);
        if let Some(value) = raw.variance_type.as_deref() {
            config.variance_type = match value {
                "fixed_small" => VarianceType::FixedSmall,
                "fixed_large" => VarianceType::FixedLarge,
                other => return Err(field_error("variance_type", other, "fixed_small, fixed_large")),
            };
        }
        if let Some(order) = raw.solver_order {
            if !(1..=2).contains(&order) {
                return Err(SchedulerError::Config(format!(
                    "{source}: solver_order {order} is not supported; use 1 or 2"
                )));
            }
            config.solver_order = order;
        }
        if let Some(value) = raw.solver_type.as_deref() {
            config.solver_type = match value {
                "midpoint" => SolverType::Midpoint,
                "heun" => SolverType::Heun,
                other => return Err(field_error("solver_type", other, "midpoint, heun")),
            };
        }
        if let Some(value) = raw.algorithm_type.as_deref()
            && value != "dpmsolver++"
        {
            return Err(field_error("algorithm_type", value, "dpmsolver++"));
        }
        config.lower_order_final = raw.lower_order_final.unwrap_or(config.lower_order_final);
        config.euler_at_final = raw.euler_at_final.unwrap_or(config.euler_at_final);
        if let Some(steps) = raw.original_inference_steps {
            if steps == 0 || steps > config.num_train_timesteps {
                return Err(SchedulerError::Config(format!(
                    "{source}: original_inference_steps must be between 1 and num_train_timesteps, got {steps}"
                )));
            }
            config.original_inference_steps = steps;
        }
        config.timestep_scaling = raw.timestep_scaling.unwrap_or(config.timestep_scaling);
        if let Some(value) = raw.lambda_min_clipped
            && value.is_finite()
        {
            return Err(SchedulerError::Config(format!(
                "{source}: lambda_min_clipped {value} is not supported; remove it (no clipping)"
            )));
        }
        // Options no SD 1.x/2.x checkpoint turns on: refuse rather than silently ignore.
        if raw.thresholding == Some(true) {
            return Err(SchedulerError::Config(format!(
                "{source}: thresholding (Imagen's dynamic thresholding) is not supported; set it to false"
            )));
        }
        for (field, value, supported) in [
            ("interpolation_type", raw.interpolation_type.as_deref(), "linear"),
            ("timestep_type", raw.timestep_type.as_deref(), "discrete"),
            ("final_sigmas_type", raw.final_sigmas_type.as_deref(), "zero"),
        ] {
            if let Some(value) = value
                && value != supported
            {
                return Err(field_error(field, value, supported));
            }
        }
        Ok(config)
    }
}
