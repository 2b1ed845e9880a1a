//! Paint-with-words (Balaji et al. 2022, "eDiffi", §4.3): text to image where the person paints
//! where words go. Each region raises its word's cross-attention scores inside it by
//! w · log(1 + σ) · max(q·kᵀ) (see `attention_control::PaintWithWords`); without regions it is
//! plain generation.

use tch::Tensor;

use crate::engine::attention_control::PaintWithWords;
use crate::engine::methods::inpaint::prepare_mask;
use crate::engine::methods::prompt_to_prompt::{
    attention_maps, attention_step_strips, map_resolution, prompt_words,
};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::{JobContext, JobError};
use crate::protocol::{LabelledImage, MaskOptions, PaintWithWordsParams};
use crate::text::alignment;

/// Runs paint-with-words as an engine job: [image, attention maps…].
pub fn run(
    model: &StableDiffusion,
    params: &PaintWithWordsParams,
    ctx: &mut JobContext<'_>,
) -> Result<Vec<LabelledImage>, JobError> {
    let base = &params.base;
    let factor = model.vae_scale_factor;
    let (width, height) = (i64::from(base.width), i64::from(base.height));
    crate::engine::methods::img2img::check_output_size(model, base)?;
    if !(params.strength.is_finite() && params.strength >= 0.0) {
        return Err(JobError::Failed(format!("the strength must be 0 or more, got {}", params.strength)));
    }
    // 1. each region's word positions and mask
    let words = prompt_words(model, &base.prompt, "paint-with-words")?;
    let hard = MaskOptions { dilate: 0, feather: 0.0, invert: false };
    let mut regions = Vec::new();
    for (word, mask) in &params.regions {
        if (mask.width, mask.height) != (base.width, base.height) {
            return Err(JobError::Failed(format!(
                "the region of \"{word}\" is {}×{}, the image {width}×{height}; paint it at the image's size",
                mask.width, mask.height
            )));
        }
        let found = alignment::find_word(&words, word);
        if found.is_empty() {
            return Err(JobError::Failed(format!(
                "painted word \"{word}\" is not in the prompt \"{}\"",
                base.prompt
            )));
        }
        let positions =
            found.iter().flat_map(|i| alignment::word_positions(&words, *i)).map(|p| p as i64).collect();
        let mask = prepare_mask(mask, &hard)?.f_view([height, width])?;
        regions.push((positions, mask));
    }
    // 2. the schedule's σ per step, prompts, seeded noise
    let (text, negative, mut scheduler) = crate::engine::methods::img2img::prepare(model, base)?;
    let sigmas = model.sigmas_at(scheduler.timesteps())?;
    let latents = model.seeded_latents(base.seed, height, width, scheduler.init_noise_sigma())?;
    // 3. the loop with the regions in every cross-attention layer
    let resolution = map_resolution(model, height / factor, width / factor);
    let control = PaintWithWords::new(regions, params.strength, sigmas, Some(resolution));
    if params.attention_maps {
        control.store.keep_steps();
    }
    let conditioning = Conditioning::guided(&text, &negative, base);
    let hooks = Hooks { attention: Some(&control), ..Default::default() };
    let latents: Tensor = super::denoise_job(model, scheduler.as_mut(), latents, &conditioning, hooks, ctx)?;
    let mut images = vec![LabelledImage { label: "image".into(), image: model.decode_to_image(&latents)? }];
    if params.attention_maps {
        images.extend(attention_maps(&control.store, 0, &words, base.width, base.height)?);
        images.extend(attention_step_strips(&control.store, 0, &words, base.width, base.height)?);
    }
    Ok(images)
}
