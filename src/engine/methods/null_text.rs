//! Null-text inversion (Mokady et al. 2022, <https://arxiv.org/abs/2211.09794>, algorithm 1):
//! DDIM inversion without guidance gives a pivot trajectory z*₀ … z*_T; regenerating from z*_T
//! with classifier-free guidance drifts away from it. So, step by step from z*_T, optimise the
//! unconditional ("null-text") embedding — everything else frozen — so that the guided DDIM step
//! lands on the pivot's next latent, then take that step. Regenerating with the per-step
//! embeddings reconstructs the image under guidance, and prompt edits keep them.

use tch::{Kind, Tensor};

use crate::engine::JobError;
use crate::engine::pipeline::StableDiffusion;
use crate::engine::schedulers::{CpuGeneratorNoise, SchedulerChoice, SchedulerKind};

/// Settings of the optimisation (the paper's: up to 10 Adam steps per timestep, learning rate
/// 0.01 × (1 − i/100), stop early when the loss is below 1e-5 + 2e-5 × i; by default we take
/// [`DEFAULT_NULL_TEXT_STEPS`](crate::protocol::DEFAULT_NULL_TEXT_STEPS)).
#[derive(Debug, Clone, Copy)]
pub struct NullTextSettings {
    pub inner_steps: usize,
    pub learning_rate: f64,
}

impl Default for NullTextSettings {
    fn default() -> Self {
        Self { inner_steps: crate::protocol::DEFAULT_NULL_TEXT_STEPS, learning_rate: 1e-2 }
    }
}

/// Adam (Kingma & Ba 2015) on one tensor, with torch's defaults β = (0.9, 0.999), ε = 1e-8.
struct Adam {
    m: Tensor,
    v: Tensor,
    steps: i32,
}

impl Adam {
    fn new(like: &Tensor) -> Result<Self, tch::TchError> {
        Ok(Self { m: like.f_zeros_like()?, v: like.f_zeros_like()?, steps: 0 })
    }

    /// One update of `parameter` (requires grad) from its gradient, under no_grad.
    fn step(&mut self, parameter: &mut Tensor, learning_rate: f64) -> Result<(), tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        let grad = parameter.grad();
        self.steps += 1;
        let (beta1, beta2) = (0.9f64, 0.999f64);
        self.m = self.m.f_mul_scalar(beta1)?.f_add(&grad.f_mul_scalar(1.0 - beta1)?)?;
        self.v = self.v.f_mul_scalar(beta2)?.f_add(&grad.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
        let m_hat = self.m.f_div_scalar(1.0 - beta1.powi(self.steps))?;
        let v_hat = self.v.f_div_scalar(1.0 - beta2.powi(self.steps))?;
        let update = m_hat.f_div(&v_hat.f_sqrt()?.f_add_scalar(1e-8)?)?.f_mul_scalar(learning_rate)?;
        let _ = parameter.f_sub_(&update)?;
        let mut grad = parameter.grad();
        let _ = grad.f_zero_()?;
        Ok(())
    }
}

/// Optimises one unconditional embedding per step along `trajectory` (z*₀ … z*_T from DDIM
/// inversion) for guidance `guidance_scale` on the `text` embedding, starting from `null`.
/// Returns the embeddings (one per step, in sampling order) and the final latents z̄₀.
/// `on_step(step, of, latents)` runs after each step.
pub fn optimize(
    model: &StableDiffusion,
    trajectory: &[Tensor],
    text: &Tensor,
    null: &Tensor,
    guidance_scale: f64,
    settings: NullTextSettings,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<(Vec<Tensor>, Tensor), JobError> {
    let steps = trajectory.len().saturating_sub(1);
    if steps == 0 {
        return Err(JobError::Failed("null-text inversion needs an inversion of at least one step".into()));
    }
    let mut scheduler =
        model.scheduler_for(SchedulerChoice { kind: SchedulerKind::Ddim, use_karras_sigmas: None })?;
    scheduler.set_timesteps(steps)?;
    let timesteps = scheduler.timesteps().to_vec();
    let mut latents = trajectory[steps].f_detach()?;
    let mut embedding = null.f_detach()?.f_to_kind(Kind::Float)?;
    let mut embeddings = Vec::with_capacity(steps);
    for (index, t) in timesteps.iter().enumerate() {
        let target = &trajectory[steps - index - 1];
        // 1. the text branch, once per step
        let text_prediction = model.unet.forward(&latents, *t, text)?.f_to_kind(Kind::Float)?;
        // 2. a few Adam steps on the null embedding
        let learning_rate = settings.learning_rate * (1.0 - index as f64 / 100.0).max(0.0);
        // jobs run without autograd; this part needs it
        embedding = tch::with_grad(|| -> Result<Tensor, JobError> {
            let mut parameter = embedding.f_detach()?.set_requires_grad(true);
            let mut adam = Adam::new(&parameter)?;
            for _ in 0..settings.inner_steps {
                let unconditional =
                    model.unet.forward_differentiable(&latents, *t, &parameter)?.f_to_kind(Kind::Float)?;
                let guided = unconditional
                    .f_add(&text_prediction.f_sub(&unconditional)?.f_mul_scalar(guidance_scale)?)?;
                let previous = scheduler.step(&guided, index, &latents, &mut CpuGeneratorNoise)?;
                let loss = previous.f_mse_loss(target, tch::Reduction::Mean)?;
                loss.f_backward()?;
                adam.step(&mut parameter, learning_rate)?;
                let loss = f64::try_from(&loss)?;
                tracing::debug!("null-text step {index}: loss {loss:.3e}");
                if loss < 1e-5 + 2e-5 * index as f64 {
                    break;
                }
            }
            Ok(parameter.f_detach()?)
        })?;
        // 3. the guided step with the optimised embedding
        let _no_grad = tch::no_grad_guard();
        let unconditional = model.unet.forward(&latents, *t, &embedding)?.f_to_kind(Kind::Float)?;
        let guided =
            unconditional.f_add(&text_prediction.f_sub(&unconditional)?.f_mul_scalar(guidance_scale)?)?;
        latents = scheduler.step(&guided, index, &latents, &mut CpuGeneratorNoise)?;
        embeddings.push(embedding.shallow_clone());
        on_step(index + 1, steps, &latents)?;
    }
    Ok((embeddings, latents))
}
