//! What a diffusion training step draws and how it weighs the loss — the training options the
//! course names, to be measured against each other:
//! - the noise level: uniform over the DDPM timesteps (Ho et al. 2020), or Karras et al.'s EDM
//!   log-normal over σ (P_mean = −1.2, P_std = 1.2; "Elucidating the Design Space…", table 1),
//!   each σ taken to the nearest timestep so the model stays a diffusers DDPM-schedule model;
//! - the target: ε, or v = √ᾱ ε − √(1−ᾱ) x₀ (Salimans & Ho 2022);
//! - the weight: none, or min-SNR-γ (Hang et al. 2023, γ = 5): min(SNR, γ)/SNR for ε,
//!   min(SNR, γ)/(SNR + 1) for v.

use tch::{Kind, Tensor};

/// How training draws noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseDistribution {
    Uniform,
    Edm,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Epsilon,
    V,
}

impl Target {
    /// diffusers' `prediction_type` for it.
    pub fn prediction_type(self) -> &'static str {
        match self {
            Target::Epsilon => "epsilon",
            Target::V => "v_prediction",
        }
    }
}

/// The DDPM training schedule: SD's scaled-linear β from 0.00085 to 0.012 over 1000 steps
/// (what the bundled model's scheduler_config.json says).
pub struct TrainingSchedule {
    /// ᾱ_t for t = 0 … T−1.
    pub alphas_cumprod: Vec<f64>,
}

pub const TRAIN_TIMESTEPS: usize = 1000;
pub const BETA_START: f64 = 0.00085;
pub const BETA_END: f64 = 0.012;

impl Default for TrainingSchedule {
    fn default() -> Self {
        let (start, end) = (BETA_START.sqrt(), BETA_END.sqrt());
        let mut product = 1.0;
        let alphas_cumprod = (0..TRAIN_TIMESTEPS)
            .map(|t| {
                let beta = (start + (end - start) * t as f64 / (TRAIN_TIMESTEPS - 1) as f64).powi(2);
                product *= 1.0 - beta;
                product
            })
            .collect();
        Self { alphas_cumprod }
    }
}

impl TrainingSchedule {
    /// σ_t = √((1 − ᾱ_t)/ᾱ_t).
    pub fn sigma(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        ((1.0 - a) / a).sqrt()
    }

    /// The timestep whose σ is nearest `sigma` (in log σ).
    pub fn timestep_for_sigma(&self, sigma: f64) -> usize {
        let target = sigma.ln();
        // σ_t grows with t: binary search, then the nearer neighbour
        let (mut low, mut high) = (0usize, TRAIN_TIMESTEPS - 1);
        while low < high {
            let mid = (low + high) / 2;
            if self.sigma(mid).ln() < target { low = mid + 1 } else { high = mid }
        }
        if low > 0 && (self.sigma(low - 1).ln() - target).abs() < (self.sigma(low).ln() - target).abs() {
            low - 1
        } else {
            low
        }
    }

    /// `count` timesteps drawn from `distribution` with `rng`.
    pub fn draw(
        &self,
        distribution: NoiseDistribution,
        count: usize,
        rng: &mut impl rand::Rng,
    ) -> Vec<usize> {
        (0..count)
            .map(|_| match distribution {
                NoiseDistribution::Uniform => rng.random_range(0..TRAIN_TIMESTEPS),
                NoiseDistribution::Edm => {
                    let normal: f64 = rand_distr_normal(rng);
                    self.timestep_for_sigma((-1.2 + 1.2 * normal).exp())
                }
            })
            .collect()
    }

    /// Noisy latents x_t = √ᾱ x₀ + √(1−ᾱ) ε, the target for `target`, and the loss weight of
    /// each sample for `min_snr` (None: 1).
    pub fn noisy_and_target(
        &self,
        x0: &Tensor,
        noise: &Tensor,
        timesteps: &[usize],
        target: Target,
        min_snr: Option<f64>,
    ) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
        let device = x0.device();
        let batch = timesteps.len() as i64;
        let alpha: Vec<f32> = timesteps.iter().map(|t| self.alphas_cumprod[*t] as f32).collect();
        let sqrt_alpha: Vec<f32> = alpha.iter().map(|a| a.sqrt()).collect();
        let sqrt_one_minus: Vec<f32> = alpha.iter().map(|a| (1.0 - a).sqrt()).collect();
        let column = |values: &[f32]| -> Result<Tensor, tch::TchError> {
            Tensor::f_from_slice(values)?.f_view([batch, 1, 1, 1])?.f_to_device(device)
        };
        let (a, b) = (column(&sqrt_alpha)?, column(&sqrt_one_minus)?);
        let noisy = x0.f_mul(&a)?.f_add(&noise.f_mul(&b)?)?;
        let wanted = match target {
            Target::Epsilon => noise.shallow_clone(),
            Target::V => noise.f_mul(&a)?.f_sub(&x0.f_mul(&b)?)?,
        };
        let weights: Vec<f32> = alpha
            .iter()
            .map(|a| {
                let snr = f64::from(*a) / (1.0 - f64::from(*a));
                match (min_snr, target) {
                    (None, _) => 1.0,
                    (Some(gamma), Target::Epsilon) => (snr.min(gamma) / snr) as f32,
                    (Some(gamma), Target::V) => (snr.min(gamma) / (snr + 1.0)) as f32,
                }
            })
            .collect();
        let weights = Tensor::f_from_slice(&weights)?.f_to_device(device)?.f_to_kind(Kind::Float)?;
        Ok((noisy, wanted, weights))
    }
}

/// A standard normal draw (Box–Muller), so the stream depends only on `rng`.
fn rand_distr_normal(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Training noise for `x0`: standard normal, plus, with `offset` > 0, one normal draw of
/// standard deviation `offset` per sample and channel added to every pixel (offset noise,
/// Guttenberg 2023). A sampler starts from noise whose per-channel mean is random, while at
/// the last training step an image's mean colour still shows through the noise; without the
/// offset the model takes that random mean for the image's colour (the bigger the latents, the
/// plainer it shows) instead of following the prompt.
pub fn training_noise(x0: &Tensor, offset: f64) -> Result<Tensor, tch::TchError> {
    let noise = x0.f_randn_like()?;
    if offset <= 0.0 {
        return Ok(noise);
    }
    let size = x0.size();
    let shift = Tensor::f_randn([size[0], size[1], 1, 1], (x0.kind(), x0.device()))?;
    noise.f_add(&shift.f_mul_scalar(offset)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_schedule_is_sds() {
        let schedule = TrainingSchedule::default();
        // diffusers' DDPMScheduler(beta_schedule="scaled_linear", 0.00085, 0.012): ᾱ_999 = 0.0046601
        assert!(
            (schedule.alphas_cumprod[999] - 0.004_660_1).abs() < 2e-6,
            "{}",
            schedule.alphas_cumprod[999]
        );
        assert!((schedule.alphas_cumprod[0] - 0.99915).abs() < 1e-9);
        for t in [0, 10, 500, 999] {
            assert_eq!(schedule.timestep_for_sigma(schedule.sigma(t)), t);
        }
    }

    #[test]
    fn edm_draws_centre_on_its_log_normal() {
        let schedule = TrainingSchedule::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let draws = schedule.draw(NoiseDistribution::Edm, 4000, &mut rng);
        let mean_log_sigma = draws.iter().map(|t| schedule.sigma(*t).ln()).sum::<f64>() / draws.len() as f64;
        // σ is clipped to the schedule's range [0.029, 14.6], which lifts the mean a little
        assert!((mean_log_sigma + 1.2).abs() < 0.15, "{mean_log_sigma}");
        let uniform = schedule.draw(NoiseDistribution::Uniform, 4000, &mut rng);
        let mean = uniform.iter().sum::<usize>() as f64 / 4000.0;
        assert!((mean - 499.5).abs() < 20.0, "{mean}");
    }

    #[test]
    fn targets_and_min_snr_weights() {
        let schedule = TrainingSchedule::default();
        let x0 = Tensor::ones([2, 1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let noise = Tensor::zeros([2, 1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let (noisy, v, weights) =
            schedule.noisy_and_target(&x0, &noise, &[0, 999], Target::V, Some(5.0)).expect("tensors");
        let a = schedule.alphas_cumprod[999];
        assert!((f64::try_from(noisy.get(1).sum(Kind::Float)).expect("x") - a.sqrt()).abs() < 1e-6);
        // v = √ᾱ ε − √(1−ᾱ) x₀ with ε = 0
        assert!((f64::try_from(v.get(1).sum(Kind::Float)).expect("v") + (1.0 - a).sqrt()).abs() < 1e-6);
        // t = 0: SNR ≈ 1175 > 5 → 5/(SNR+1); t = 999: SNR < 5 → SNR/(SNR+1)
        let snr = |t: usize| schedule.alphas_cumprod[t] / (1.0 - schedule.alphas_cumprod[t]);
        let w = Vec::<f32>::try_from(weights).expect("weights");
        assert!((f64::from(w[0]) - 5.0 / (snr(0) + 1.0)).abs() < 1e-6);
        assert!((f64::from(w[1]) - snr(999) / (snr(999) + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn offset_noise_gives_each_channel_a_random_mean() {
        tch::manual_seed(0);
        let x0 = Tensor::zeros([256, 4, 16, 16], (Kind::Float, tch::Device::Cpu));
        let spread = |noise: &Tensor| {
            let means = noise.mean_dim(&[2i64, 3][..], false, Kind::Float);
            f64::try_from(means.std(true)).expect("a number")
        };
        let plain = training_noise(&x0, 0.0).expect("noise");
        let offset = training_noise(&x0, 0.3).expect("noise");
        // plain: the mean of 256 unit normals, std 1/16; offset: sqrt(0.3² + 1/256)
        assert!((spread(&plain) - 1.0 / 16.0).abs() < 0.01, "{}", spread(&plain));
        let expected = (0.09f64 + 1.0 / 256.0).sqrt();
        assert!((spread(&offset) - expected).abs() < 0.03, "{} vs {expected}", spread(&offset));
    }
}
