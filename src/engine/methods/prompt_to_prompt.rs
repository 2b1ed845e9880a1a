//! Prompt-to-prompt (Hertz et al. 2022, <https://arxiv.org/abs/2208.01626>): the source and the
//! target prompt denoise side by side from the same noise; inside the cross-attention window the
//! target's cross-attention maps are the source's (through the word alignment, scaled for
//! re-weighted words), inside the self-attention window its coarse self-attention is the
//! source's — so the target image changes where the edited words act and keeps the rest.

use tch::{Kind, Tensor};

use crate::engine::attention_control::{AttentionStore, PromptToPrompt, SourceRecord};
use crate::engine::image_tensor::image_from_tensor;
use crate::engine::methods::inversion::invert_image;
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{self, Conditioning, Hooks};
use crate::engine::schedulers::{CpuGeneratorNoise, SharedNoise};
use crate::engine::{JobContext, JobError};
use crate::protocol::{
    ATTENTION_LABEL, ATTENTION_STEPS_LABEL, EditSource, ImageData, LabelledImage, PromptToPromptParams,
    attention_frame_width,
};
use crate::text::alignment::{self, WordTokens};
use crate::text::tokenizer::{CHUNK_LENGTH, CHUNK_TOKENS};

/// The resolution attention maps are kept at: the coarsest down level with cross-attention
/// (16×16 for SD at 512², the paper's choice; 8×8 for the bundled model at 128², whose third
/// level has none), else the third level's feature map.
pub(crate) fn map_resolution(model: &StableDiffusion, height: i64, width: i64) -> (i64, i64) {
    let config = &model.unet.config;
    let halvings = config
        .down_block_types
        .iter()
        .rposition(|kind| kind.starts_with("CrossAttn"))
        .unwrap_or_else(|| 2.min(config.block_out_channels.len().saturating_sub(1)));
    let (mut h, mut w) = (height, width);
    for _ in 0..halvings {
        (h, w) = ((h + 1) / 2, (w + 1) / 2);
    }
    (h, w)
}

pub(crate) fn prompt_words(
    model: &StableDiffusion,
    prompt: &str,
    which: &str,
) -> Result<Vec<WordTokens>, JobError> {
    let words = alignment::words(model.tokenizer(), prompt).map_err(|e| JobError::Failed(e.to_string()))?;
    let count: usize = words.iter().map(|w| w.tokens.len()).sum();
    if count > CHUNK_TOKENS {
        return Err(JobError::Failed(format!(
            "the {which} prompt has {count} tokens; prompt-to-prompt edits prompts of at most {CHUNK_TOKENS}"
        )));
    }
    Ok(words)
}

/// Runs prompt-to-prompt as an engine job: [target, source, attention maps…].
pub fn run(
    model: &StableDiffusion,
    params: &PromptToPromptParams,
    ctx: &mut JobContext<'_>,
) -> Result<Vec<LabelledImage>, JobError> {
    run_with(model, params, |step, of, preview| {
        ctx.progress(step, of, preview);
        ctx.checkpoint()
    })
}

/// [`run`] with `on_step(step, of, preview of the target)` instead of a job context.
pub fn run_with(
    model: &StableDiffusion,
    params: &PromptToPromptParams,
    mut on_step: impl FnMut(usize, usize, Option<ImageData>) -> Result<(), JobError>,
) -> Result<Vec<LabelledImage>, JobError> {
    let base = &params.base;
    let factor = model.vae_scale_factor;
    let (width, height) = (i64::from(base.width), i64::from(base.height));
    crate::engine::methods::img2img::check_output_size(model, base)?;
    // the global window, then each word's own
    let windows = std::iter::once(("the cross-attention window".to_string(), params.cross_window)).chain(
        params
            .word_windows
            .iter()
            .map(|(word, window)| (format!("the cross-attention window of \"{word}\""), *window)),
    );
    for (name, (start, end)) in windows {
        if !(0.0..=1.0).contains(&start) || !(0.0..=1.0).contains(&end) || start > end {
            return Err(JobError::Failed(format!(
                "{name} must be within [0, 1] and start before it ends, got {start}..{end}"
            )));
        }
    }
    if !(0.0..=1.0).contains(&params.self_window) {
        return Err(JobError::Failed(format!(
            "the self-attention window must be in [0, 1], got {}",
            params.self_window
        )));
    }
    // 1. the word alignment and the re-weighting
    let source_words = prompt_words(model, &base.prompt, "source")?;
    let target_words = prompt_words(model, &params.target_prompt, "target")?;
    let mapper = alignment::token_mapper(&source_words, &target_words, CHUNK_LENGTH);
    // per target token: the factor on its attention, and the steps in which it takes the
    // source's; words the target lacks are refused by name
    let mut equalizer = vec![1.0; CHUNK_LENGTH];
    for (word, weight) in &params.reweight {
        set_word_tokens(&mut equalizer, &target_words, word, *weight).map_err(|()| {
            JobError::Failed(format!(
                "re-weighted word \"{word}\" is not in the target prompt \"{}\"",
                params.target_prompt
            ))
        })?;
    }
    let mut token_windows = vec![params.cross_window; CHUNK_LENGTH];
    for (word, window) in &params.word_windows {
        set_word_tokens(&mut token_windows, &target_words, word, *window).map_err(|()| {
            JobError::Failed(format!(
                "the word \"{word}\" given its own attention window is not in the target prompt \"{}\"",
                params.target_prompt
            ))
        })?;
    }
    // 2. embeddings: [source, target], the negative prompt for both
    let source = model.encode_prompt(&base.prompt, 1, base.clip_skip)?;
    let target = model.encode_prompt(&params.target_prompt, 1, base.clip_skip)?;
    let negative = model.encode_prompt(&base.negative_prompt, 1, base.clip_skip)?;
    if source.size() != target.size() || negative.size() != source.size() {
        return Err(JobError::Failed(
            "the negative prompt must fit one 75-token chunk for prompt-to-prompt".into(),
        ));
    }
    // a later edit of the same source replays its recorded branch and runs the target alone
    let resolution = map_resolution(model, height / factor, width / factor);
    let key = source_key(params, resolution);
    let recorded = model.recorded_source(&key);
    let prompts: i64 = if recorded.is_some() { 1 } else { 2 };
    let text =
        if recorded.is_some() { target.shallow_clone() } else { Tensor::f_cat(&[&source, &target], 0)? };
    let negative = negative.f_repeat([prompts, 1, 1])?;
    // 3. the same start for both: seeded noise, or an inverted image's z_T (then DDIM over the
    //    inversion's steps, with its null-text embeddings when it has them)
    let channels = model.unet.config.out_channels;
    let latent_size = [1, channels, height / factor, width / factor];
    let mut offset = 0;
    let (mut scheduler, latents, null_text) = match &params.source {
        EditSource::Generated => {
            let mut scheduler = model.scheduler(&base.scheduler)?;
            scheduler.set_timesteps(base.steps)?;
            let latents = model.seeded_latents(base.seed, height, width, scheduler.init_noise_sigma())?;
            (scheduler, latents, None)
        }
        EditSource::Inversion(inversion) => {
            let [c, h, w] = inversion.latent_shape;
            if [1, c as i64, h as i64, w as i64] != latent_size {
                return Err(JobError::Failed(format!(
                    "the inversion's latents are {c}×{h}×{w}, this edit needs {}×{}×{}; invert the image with this model and size",
                    latent_size[1], latent_size[2], latent_size[3]
                )));
            }
            let mut scheduler = model.scheduler("ddim")?;
            scheduler.set_timesteps(inversion.steps)?;
            let last = inversion
                .trajectory
                .last()
                .ok_or_else(|| JobError::Failed("the inversion is empty".into()))?;
            let latents = Tensor::f_from_slice(last)?.f_view(latent_size)?.f_to_device(model.device)?;
            let hidden = model.unet.config.cross_attention_dim;
            let null_text = match &inversion.null_text {
                Some(list) => Some(
                    list.iter()
                        .map(|values| {
                            Ok(Tensor::f_from_slice(values)?
                                .f_view([1, -1, hidden])?
                                .f_to_device(model.device)?)
                        })
                        .collect::<Result<Vec<_>, JobError>>()?,
                ),
                None => None,
            };
            (scheduler, latents, null_text)
        }
        EditSource::Image { image, null_text } => {
            if (image.width, image.height) != (base.width, base.height) {
                return Err(JobError::Failed(format!(
                    "the image is {}×{} but the edit is {}×{}; edit at the image's size",
                    image.width, image.height, base.width, base.height
                )));
            }
            // the inversion's steps count towards the job's progress (none when cached)
            let inversion_steps = if null_text.is_some() { 2 * base.steps } else { base.steps };
            let inverted = invert_image(model, image, base, *null_text, |step, _, latents| {
                offset = step;
                on_step(step, inversion_steps + base.steps, model.paced_preview(step, latents))
            })?;
            let mut scheduler = model.scheduler("ddim")?;
            scheduler.set_timesteps(base.steps)?;
            let last = inverted
                .trajectory
                .last()
                .ok_or_else(|| JobError::Failed("the inversion is empty".into()))?
                .shallow_clone();
            let null_text =
                inverted.null_text.map(|list| list.iter().map(Tensor::shallow_clone).collect::<Vec<_>>());
            (scheduler, last, null_text)
        }
    };
    let null_text = match null_text {
        Some(list) => Some(list.iter().map(|t| t.f_repeat([prompts, 1, 1])).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    let latents = latents.f_repeat([prompts, 1, 1, 1])?;
    // 4. the loop with the control in every attention layer
    let control =
        PromptToPrompt::new(mapper, equalizer, params.cross_window, params.self_window, Some(resolution))
            .with_token_windows(token_windows);
    let control = match &recorded {
        Some(record) => control.replaying(record.clone()),
        None => control,
    };
    if params.attention_maps {
        control.store.keep_steps();
    }
    let conditioning = Conditioning::guided(&text, &negative, base);
    // local blend (the paper's §3.3): after each step, outside the region the blend words attend
    // to (attention ≥ 0.3 of its peak, grown by one cell) the target takes the source's latents
    let blend_positions = blend_positions(&params.local_blend, &source_words, &target_words)?;
    let mut blend =
        |_: &dyn crate::engine::schedulers::Scheduler, next: usize, latents: Tensor| match &recorded {
            Some(record) => {
                let source = record.latents.get(next - 1).ok_or_else(|| {
                    JobError::Failed(format!("the recorded source has no latents for step {next}"))
                })?;
                local_blend(&control, &blend_positions, source, &latents)
            }
            None => {
                let target = local_blend(
                    &control,
                    &blend_positions,
                    &latents.f_narrow(0, 0, 1)?,
                    &latents.f_narrow(0, 1, 1)?,
                )?;
                Ok(Tensor::f_cat(&[&latents.f_narrow(0, 0, 1)?, &target], 0)?)
            }
        };
    let hooks = Hooks {
        attention: Some(&control),
        after_step: if params.local_blend.is_empty() { None } else { Some(&mut blend) },
        negative_per_step: null_text.as_deref(),
        ..Default::default()
    };
    let mut source_latents = Vec::new();
    let latents = sampler::denoise_with(
        &model.unet,
        scheduler.as_mut(),
        latents,
        &conditioning,
        &mut SharedNoise(&mut CpuGeneratorNoise),
        hooks,
        |step, of, latents| {
            if recorded.is_none() {
                source_latents.push(latents.f_narrow(0, 0, 1)?.f_detach()?);
            }
            let target = latents.f_narrow(0, prompts - 1, 1)?;
            on_step(offset + step, offset + of, model.paced_preview(offset + step, &target))
        },
    )?;
    // 5. decode; keep a new source's record for the next edit
    let target_image = model.decode_to_image(&latents.f_narrow(0, prompts - 1, 1)?)?;
    let source_image = match &recorded {
        Some(record) => record.image.clone(),
        None => {
            let image = model.decode_to_image(&latents.f_narrow(0, 0, 1)?)?;
            let attention = control.take_recorded_attention();
            model.record_source(
                key,
                SourceRecord { attention, latents: source_latents, image: image.clone() },
            );
            image
        }
    };
    let mut images = vec![
        LabelledImage { label: "target".into(), image: target_image },
        LabelledImage { label: "source".into(), image: source_image },
    ];
    if params.attention_maps {
        images.extend(attention_maps(&control.store, 1, &target_words, base.width, base.height)?);
        images.extend(attention_step_strips(&control.store, 1, &target_words, base.width, base.height)?);
    }
    Ok(images)
}

/// Sets `value` at the chunk positions of every occurrence of `word` in `words`; Err when there
/// is none.
fn set_word_tokens<T: Copy>(values: &mut [T], words: &[WordTokens], word: &str, value: T) -> Result<(), ()> {
    let found = alignment::find_word(words, word);
    if found.is_empty() {
        return Err(());
    }
    for index in found {
        for position in alignment::word_positions(words, index) {
            if let Some(slot) = values.get_mut(position) {
                *slot = value;
            }
        }
    }
    Ok(())
}

/// The chunk positions of the blend words in the source and in the target prompt.
fn blend_positions(
    words: &[String],
    source: &[WordTokens],
    target: &[WordTokens],
) -> Result<[Vec<i64>; 2], JobError> {
    let mut positions = [Vec::new(), Vec::new()];
    for word in words {
        let mut found = false;
        for (prompt, list) in [source, target].iter().zip(positions.iter_mut()) {
            for index in alignment::find_word(prompt, word) {
                list.extend(alignment::word_positions(prompt, index).map(|p| p as i64));
                found = true;
            }
        }
        if !found {
            return Err(JobError::Failed(format!(
                "local-blend word \"{word}\" is in neither the source nor the target prompt"
            )));
        }
    }
    Ok(positions)
}

/// latents (2, c, h, w) = [source, target] → the target replaced by the source outside the
/// blend words' attention region.
fn local_blend(
    control: &PromptToPrompt,
    positions: &[Vec<i64>; 2],
    source: &Tensor,
    target: &Tensor,
) -> Result<Tensor, JobError> {
    let Some(maps) = control.store.average()? else { return Ok(target.shallow_clone()) };
    let (height, width) = (target.size()[2], target.size()[3]);
    let mut masks = Vec::new();
    for (branch, list) in positions.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let index = Tensor::f_from_slice(list)?.f_to_device(maps.device())?;
        let map = maps.f_select(0, branch as i64)?.f_index_select(2, &index)?.f_sum_dim_intlist(
            2,
            false,
            Kind::Float,
        )?;
        let map = map
            .f_unsqueeze(0)?
            .f_unsqueeze(0)?
            .f_max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)?
            .f_upsample_nearest2d([height, width], None, None)?;
        let peak = map.f_amax([2, 3], true)?.f_clamp_min(1e-12)?;
        masks.push(map.f_div(&peak)?.f_gt(0.3)?.f_to_kind(Kind::Float)?);
    }
    let Some(mut mask) = masks.pop() else { return Ok(target.shallow_clone()) };
    for other in masks {
        mask = mask.f_maximum(&other)?;
    }
    let mask = mask.f_to_device(target.device())?.f_to_kind(target.kind())?;
    Ok(source.f_add(&target.f_sub(source)?.f_mul(&mask)?)?)
}

/// What a recorded source branch depends on: everything but the target prompt and its word
/// edits (an inverted image by a fingerprint of its z_T).
fn source_key(params: &PromptToPromptParams, resolution: (i64, i64)) -> String {
    use std::hash::{Hash, Hasher};
    let base = &params.base;
    let inversion = match &params.source {
        EditSource::Generated => None,
        EditSource::Inversion(inversion) => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for latents in inversion.trajectory.last().into_iter().chain(inversion.null_text.iter().flatten())
            {
                latents.iter().for_each(|v| v.to_bits().hash(&mut hasher));
            }
            Some(hasher.finish())
        }
        // the inversion follows from the image and the other fields here
        EditSource::Image { image, null_text } => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (image.width, image.height, &image.rgba, null_text).hash(&mut hasher);
            Some(hasher.finish())
        }
    };
    format!(
        "{:?}",
        (
            (&base.prompt, &base.negative_prompt, base.seed, base.steps, &base.scheduler),
            (
                base.guidance_scale.to_bits(),
                base.guidance_rescale.to_bits(),
                base.clip_skip,
                base.width,
                base.height
            ),
            // the windows decide which steps' source attention the record holds
            (params.cross_window.0.to_bits(), params.cross_window.1.to_bits(), params.self_window.to_bits()),
            params.word_windows.iter().map(|(w, (a, b))| (w, a.to_bits(), b.to_bits())).collect::<Vec<_>>(),
            (resolution, params.local_blend.is_empty(), inversion),
        )
    )
}

/// Each target word's cross-attention averaged over its tokens, layers and steps, bilinearly
/// upsampled and normalised to [0, 1], as a grey image of the output's size.
pub(crate) fn attention_maps(
    store: &AttentionStore,
    prompt: i64,
    words: &[WordTokens],
    width: u32,
    height: u32,
) -> Result<Vec<LabelledImage>, JobError> {
    let Some(maps) = store.average()? else { return Ok(Vec::new()) };
    let target = maps.f_select(0, prompt)?; // (h, w, keys)
    let mut images = Vec::new();
    for (index, word) in words.iter().enumerate() {
        let map = word_mean(&target, words, index)?; // (h, w)
        // smoothly up to the image (a mask made from it has no blocks), then normalised
        let smooth = map.f_unsqueeze(0)?.f_unsqueeze(0)?.f_upsample_bilinear2d(
            [i64::from(height), i64::from(width)],
            false,
            None,
            None,
        )?;
        let peak = f64::try_from(smooth.f_max()?)?.max(1e-12);
        let scaled = smooth.f_squeeze_dims([0, 1])?.f_div_scalar(peak)?;
        images.push(LabelledImage {
            label: format!("{ATTENTION_LABEL}{}", word.word),
            image: grey_image(&scaled)?,
        });
    }
    Ok(images)
}

/// The mean over a word's tokens of maps whose last dimension is the keys.
fn word_mean(maps: &Tensor, words: &[WordTokens], index: usize) -> Result<Tensor, tch::TchError> {
    let positions: Vec<i64> = alignment::word_positions(words, index).map(|p| p as i64).collect();
    let keys = Tensor::f_from_slice(&positions)?.f_to_device(maps.device())?;
    maps.f_index_select(-1, &keys)?.f_mean_dim(-1, false, Kind::Float)
}

/// A map of values in [0, 1], (height, width), as a grey image.
fn grey_image(map: &Tensor) -> Result<ImageData, JobError> {
    let signed = map.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
    image_from_tensor(&Tensor::f_stack(&[&signed, &signed, &signed], 0)?)
}

/// Each target word's cross-attention at every step (averaged over its tokens and the layers), as
/// a film strip: one grey frame per step, each normalised to its own peak and drawn at the
/// stored maps' height with the image's aspect ratio (see [`ATTENTION_STEPS_LABEL`]). Empty when
/// the store kept no steps.
pub(crate) fn attention_step_strips(
    store: &AttentionStore,
    prompt: i64,
    words: &[WordTokens],
    width: u32,
    height: u32,
) -> Result<Vec<LabelledImage>, JobError> {
    let steps = store.step_maps()?;
    let Some(first) = steps.first() else { return Ok(Vec::new()) };
    let (_, grid_height, _, _) = first.size4()?;
    let frame_height = grid_height.max(1);
    let frame_width = i64::from(attention_frame_width(frame_height as u32, width, height));
    // (steps, h, w, keys) of the chosen prompt
    let maps =
        Tensor::f_stack(&steps.iter().map(|m| m.f_select(0, prompt)).collect::<Result<Vec<_>, _>>()?, 0)?;
    let mut images = Vec::new();
    for (index, word) in words.iter().enumerate() {
        let map = word_mean(&maps, words, index)?; // (steps, h, w)
        let peak = map.f_amax([1, 2], true)?.f_clamp_min(1e-12)?;
        let frames = map
            .f_div(&peak)?
            .f_unsqueeze(1)?
            .f_upsample_nearest2d([frame_height, frame_width], None, None)?
            .f_squeeze_dim(1)?; // (steps, fh, fw)
        // side by side: (fh, steps × fw)
        let strip = frames.f_permute([1, 0, 2])?.f_reshape([frame_height, -1])?;
        images.push(LabelledImage {
            label: format!("{ATTENTION_STEPS_LABEL}{}", word.word),
            image: grey_image(&strip)?,
        });
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attention_control::{AttentionCall, AttentionControl, Place, StepInfo};

    #[test]
    fn local_blend_keeps_the_source_outside_where_the_words_attend() {
        // a 4×4 map; token 2 attends only to the top-left cell in both prompts
        let control =
            PromptToPrompt::new((0..8).map(Some).collect(), vec![1.0; 8], (0.0, 0.0), 0.0, Some((4, 4)));
        control.begin_step(StepInfo { step: 0, of: 1, guided: false });
        let mut probs = vec![0f32; 2 * 16 * 8];
        for batch in 0..2 {
            for query in 0..16 {
                let at = (batch * 16 + query) * 8;
                if query == 0 {
                    probs[at + 2] = 1.0;
                } else {
                    probs[at] = 1.0; // BOS takes the rest
                }
            }
        }
        let probs = Tensor::from_slice(&probs).view([2, 1, 16, 8]);
        let call = AttentionCall { cross: true, place: Place::Up, height: 4, width: 4, heads: 1 };
        assert!(control.wants(&call));
        let _ = control.edit(&call, probs).expect("stores");
        // source latents 0, target 1, on an 8×8 grid
        let cpu = (Kind::Float, tch::Device::Cpu);
        let (source, target) = (Tensor::zeros([1, 1, 8, 8], cpu), Tensor::ones([1, 1, 8, 8], cpu));
        let blended = local_blend(&control, &[vec![2], vec![2]], &source, &target).expect("blends");
        let target = Vec::<f32>::try_from(blended.flatten(0, -1)).expect("floats");
        // the attended cell, grown by one cell (max-pool 3×3) and upsampled 2×: the top-left 4×4
        for y in 0..8 {
            for x in 0..8 {
                let expected = if x < 4 && y < 4 { 1.0 } else { 0.0 };
                assert_eq!(target[y * 8 + x], expected, "({x}, {y})");
            }
        }
    }
}
