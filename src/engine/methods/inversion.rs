//! DDIM inversion (Song et al. 2021, §4.3; as used by Mokady et al. 2022 and Hertz et al. 2022
//! for real-image editing): run the deterministic DDIM update backwards from the image's latents
//! (the VAE posterior mean) to noise under the prompt, without guidance, keeping every latent.
//! Regenerating from the last one with DDIM gives the image back; how closely (PSNR) says how
//! faithful edits starting from the inversion will be.

use std::rc::Rc;

use tch::Tensor;

use crate::engine::image_tensor::tensor_from_image;
use crate::engine::methods::img2img::check_size;
use crate::engine::methods::null_text::{self, NullTextSettings};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{self, Conditioning, Hooks};
use crate::engine::schedulers::{CpuGeneratorNoise, SchedulerChoice, SchedulerKind};
use crate::engine::{JobContext, JobError};
use crate::protocol::{GenerateParams, ImageData, Inversion, InvertParams};

/// z₀ … z_T of `image` under `prompt` over `steps` DDIM steps. `on_step(step, of, latents)`
/// runs after each step.
pub fn ddim_invert(
    model: &StableDiffusion,
    image: &ImageData,
    prompt: &str,
    steps: usize,
    clip_skip: usize,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<Vec<Tensor>, JobError> {
    check_size(model, image, "image")?;
    if steps == 0 {
        return Err(JobError::Failed("steps must be at least 1".into()));
    }
    let pixels = tensor_from_image(image, model.device)?;
    let latents = model.vae.encode(&pixels)?.mode().f_mul_scalar(model.vae.config.scaling_factor)?;
    let (text, _) = model.prompt_pair(prompt, "", clip_skip)?;
    let choice = SchedulerChoice { kind: SchedulerKind::DdimInverse, use_karras_sigmas: None };
    let mut scheduler = model.scheduler_for(choice)?;
    scheduler.set_timesteps(steps)?;
    let conditioning = Conditioning {
        text: &text,
        negative: None,
        guidance_scale: 1.0,
        guidance_rescale: 0.0,
        image_guidance_scale: None,
    };
    let mut trajectory = vec![latents.shallow_clone()];
    let _last = sampler::denoise_with(
        &model.unet,
        scheduler.as_mut(),
        latents,
        &conditioning,
        &mut CpuGeneratorNoise,
        Hooks::default(),
        |step, of, latents| {
            trajectory.push(latents.shallow_clone());
            on_step(step, of, latents)
        },
    )?;
    Ok(trajectory)
}

/// DDIM from `noise_latents` (z_T) with `params`' prompts, steps, guidance and clip skip.
pub fn regenerate(
    model: &StableDiffusion,
    noise_latents: &Tensor,
    params: &GenerateParams,
    null_text: Option<&[Tensor]>,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<ImageData, JobError> {
    let (text, negative) = model.prompt_pair(&params.prompt, &params.negative_prompt, params.clip_skip)?;
    let mut scheduler =
        model.scheduler_for(SchedulerChoice { kind: SchedulerKind::Ddim, use_karras_sigmas: None })?;
    scheduler.set_timesteps(params.steps)?;
    let conditioning = Conditioning {
        text: &text,
        negative: Some(&negative),
        guidance_scale: params.guidance_scale,
        guidance_rescale: 0.0,
        image_guidance_scale: None,
    };
    let latents = sampler::denoise_with(
        &model.unet,
        scheduler.as_mut(),
        noise_latents.shallow_clone(),
        &conditioning,
        &mut CpuGeneratorNoise,
        Hooks { negative_per_step: null_text, ..Default::default() },
        |step, of, latents| on_step(step, of, latents),
    )?;
    model.decode_to_image(&latents)
}

/// A tensor's values in f32 on the CPU, flattened.
fn flatten(tensor: &Tensor) -> Result<Vec<f32>, JobError> {
    let flat = tensor.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Peak signal-to-noise ratio of two same-size images' RGB, in dB (∞ when equal).
pub fn psnr(a: &ImageData, b: &ImageData) -> f64 {
    let (mut total, mut count) = (0.0f64, 0usize);
    for (pa, pb) in a.rgba.chunks(4).zip(b.rgba.chunks(4)) {
        for channel in 0..3 {
            let difference = f64::from(pa[channel]) - f64::from(pb[channel]);
            total += difference * difference;
            count += 1;
        }
    }
    if count == 0 || total == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / (total / count as f64)).log10()
}

/// How many inversions (trajectories and null-text lists, each an entry) a loaded model keeps.
const INVERSION_CACHE_SIZE: usize = 8;

/// What an inversion depends on: the image (by a digest of its pixels), the prompt, the steps,
/// the clip skip, and for null-text inversion the negative prompt, guidance and inner steps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InversionKey {
    image: u64,
    prompt: String,
    steps: usize,
    clip_skip: usize,
    null_text: Option<(String, u64, usize)>,
}

impl InversionKey {
    fn new(image: &ImageData, prompt: &str, steps: usize, clip_skip: usize) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (image.width, image.height, &image.rgba).hash(&mut hasher);
        Self { image: hasher.finish(), prompt: prompt.to_string(), steps, clip_skip, null_text: None }
    }
}

/// The engine's recent inversions per loaded model, most recently used last: a second edit of
/// the same image skips DDIM inversion and null-text optimisation.
#[derive(Default)]
pub struct InversionCache {
    entries: std::collections::VecDeque<(InversionKey, Rc<Vec<Tensor>>)>,
}

impl InversionCache {
    fn get(&mut self, key: &InversionKey) -> Option<Rc<Vec<Tensor>>> {
        let index = self.entries.iter().position(|(kept, _)| kept == key)?;
        let entry = self.entries.remove(index)?;
        let value = entry.1.clone();
        self.entries.push_back(entry);
        Some(value)
    }

    fn insert(&mut self, key: InversionKey, value: Rc<Vec<Tensor>>) {
        self.entries.retain(|(kept, _)| *kept != key);
        if self.entries.len() >= INVERSION_CACHE_SIZE {
            self.entries.pop_front();
        }
        self.entries.push_back((key, value));
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A real image inverted for editing: its DDIM trajectory z₀ … z_T and, for null-text
/// inversion, the unconditional embedding per step.
pub struct InvertedImage {
    pub trajectory: Rc<Vec<Tensor>>,
    pub null_text: Option<Rc<Vec<Tensor>>>,
}

/// [`ddim_invert`], from the model's cache when the same image was inverted under the same
/// prompt, steps and clip skip before (then `on_step` is not called).
pub fn cached_ddim_invert(
    model: &StableDiffusion,
    image: &ImageData,
    prompt: &str,
    steps: usize,
    clip_skip: usize,
    on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<Rc<Vec<Tensor>>, JobError> {
    let key = InversionKey::new(image, prompt, steps, clip_skip);
    let cached = model.inversion_cache().get(&key);
    if let Some(trajectory) = cached {
        return Ok(trajectory);
    }
    let trajectory = Rc::new(ddim_invert(model, image, prompt, steps, clip_skip, on_step)?);
    model.inversion_cache().insert(key, trajectory.clone());
    Ok(trajectory)
}

/// Inverts `image` under `base.prompt` over `base.steps` (and optimises null-text embeddings
/// for `base.guidance_scale` and `base.negative_prompt` with `null_text` Adam steps per step
/// when given), taking each part from
/// the model's cache when it was computed before. `on_step(step, of)` counts the steps run
/// (`of` = steps, or 2 × steps with null-text); cached parts run none.
pub fn invert_image(
    model: &StableDiffusion,
    image: &ImageData,
    base: &GenerateParams,
    null_text: Option<usize>,
    mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<(), JobError>,
) -> Result<InvertedImage, JobError> {
    let of = if null_text.is_some() { 2 * base.steps } else { base.steps };
    let trajectory =
        cached_ddim_invert(model, image, &base.prompt, base.steps, base.clip_skip, |step, _, latents| {
            on_step(step, of, latents)
        })?;
    let Some(inner_steps) = null_text else {
        return Ok(InvertedImage { trajectory, null_text: None });
    };
    let settings = NullTextSettings { inner_steps, ..Default::default() };
    let key = InversionKey::new(image, &base.prompt, base.steps, base.clip_skip);
    let key = InversionKey {
        null_text: Some((base.negative_prompt.clone(), base.guidance_scale.to_bits(), settings.inner_steps)),
        ..key
    };
    let cached = model.inversion_cache().get(&key);
    let embeddings = match cached {
        Some(embeddings) => embeddings,
        None => {
            let (text, negative) = model.prompt_pair(&base.prompt, &base.negative_prompt, base.clip_skip)?;
            let (embeddings, _) = null_text::optimize(
                model,
                &trajectory,
                &text,
                &negative,
                base.guidance_scale,
                settings,
                |step, _, latents| on_step(base.steps + step, of, latents),
            )?;
            let embeddings = Rc::new(embeddings);
            model.inversion_cache().insert(key, embeddings.clone());
            embeddings
        }
    };
    Ok(InvertedImage { trajectory, null_text: Some(embeddings) })
}

/// Runs inversion + reconstruction as an engine job (progress: inversion steps, null-text
/// steps, then regeneration steps; parts the model has cached are skipped).
pub fn run(
    model: &StableDiffusion,
    params: &InvertParams,
    ctx: &mut JobContext<'_>,
) -> Result<Inversion, JobError> {
    let base = &params.base;
    let phases = if params.null_text.is_some() { 3 } else { 2 };
    let of = phases * base.steps;
    // 1. DDIM inversion without guidance (the pivot trajectory), 2. null-text optimisation along
    //    it for the guidance asked
    let inverted = invert_image(model, &params.image, base, params.null_text, |step, _, latents| {
        ctx.progress(step, of, model.paced_preview(step, latents));
        ctx.checkpoint()
    })?;
    let trajectory = &inverted.trajectory;
    let null_text = inverted.null_text.as_deref();
    let last = trajectory.last().ok_or_else(|| JobError::Failed("the inversion ran no step".into()))?;
    // 3. regeneration with the prompt and guidance
    let done = (phases - 1) * base.steps;
    let reconstruction =
        regenerate(model, last, base, null_text.map(|list| list.as_slice()), |step, _, latents| {
            ctx.progress(done + step, of, model.paced_preview(done + step, latents));
            ctx.checkpoint()
        })?;
    let round_trip = model.decode_to_image(&trajectory[0])?;
    let size = last.size();
    let [_, channels, height, width] = size[..] else {
        return Err(JobError::Failed(format!("unexpected latent shape {size:?}")));
    };
    let trajectory = trajectory.iter().map(flatten).collect::<Result<Vec<_>, JobError>>()?;
    Ok(Inversion {
        model: model.source.clone(),
        prompt: base.prompt.clone(),
        steps: base.steps,
        width: params.image.width,
        height: params.image.height,
        latent_shape: [channels as usize, height as usize, width as usize],
        trajectory,
        psnr: psnr(&params.image, &reconstruction),
        psnr_vae: psnr(&round_trip, &reconstruction),
        reconstruction,
        null_text: null_text
            .map(|list| list.iter().map(flatten).collect::<Result<Vec<_>, _>>())
            .transpose()?,
    })
}
