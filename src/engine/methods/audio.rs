//! Audio as spectrogram images (Riffusion, Forsgren & Martiros 2022): every audio method is an
//! image method on the clip's mel spectrogram — text to image, img2img, inpainting — followed by
//! the pseudo-inverse and Griffin-Lim. Time ranges become image columns; what is kept of the
//! source is spliced back in the time domain, with short equal-power crossfades, so that the
//! audio outside a selection is the source's own samples.

use std::sync::Arc;

use tch::Tensor;

use crate::engine::audio_diffusion::{AudioDiffusion, Blend};
use crate::engine::methods::img2img::{prepare, start_index};
use crate::engine::pipeline::StableDiffusion;
use crate::engine::sampler::{Conditioning, Hooks};
use crate::engine::spectrogram::{Spectrogram, SpectrogramPreset};
use crate::engine::{JobContext, JobError};
use crate::protocol::{
    AudioClip, AudioParams, AudioTask, GenerateParams, ImageData, Img2ImgParams, InpaintParams, MaskOptions,
};

/// Seconds of crossfade where regenerated audio meets the source.
pub const CROSSFADE_SECONDS: f64 = 0.05;

/// What the audio methods need of a model: spectrogram images from a prompt, from an image
/// (img2img), from an image and a mask (inpainting), and along an interpolation. Stable
/// Diffusion models (Riffusion, the bundled music model) and audio-diffusion models have it.
pub trait SpectrogramModel {
    fn device(&self) -> tch::Device;
    /// The model's own spectrogram and image width, when it has one.
    fn own_spectrogram(&self) -> Option<(SpectrogramPreset, u32)>;
    /// Whether another preset may be asked for (an audio-diffusion model knows only its own).
    fn takes_any_preset(&self) -> bool;
    /// Image sides must be multiples of this.
    fn grid(&self) -> u32;
    fn generate(&self, params: &GenerateParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError>;
    fn img2img(&self, params: &Img2ImgParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError>;
    fn inpaint(&self, params: &InpaintParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError>;
    /// `clips` images from `base` (t = 0) to `to_prompt` and `to_seed` (t = 1).
    fn interpolation(
        &self,
        base: &GenerateParams,
        to_prompt: &str,
        to_seed: u64,
        clips: usize,
        ctx: &mut JobContext<'_>,
    ) -> Result<Vec<ImageData>, JobError>;
}

/// The spectrogram preset and image size a job uses: asked for, else the model's own
/// (`spectrogram.json`, `mel_config.json`), else Riffusion's for a Stable Diffusion model.
pub fn preset_for(
    model: &dyn SpectrogramModel,
    params: &AudioParams,
) -> Result<(SpectrogramPreset, u32, u32), JobError> {
    let own = model.own_spectrogram();
    let preset = match (&own, params.preset.as_str()) {
        (Some((own, _)), "") => own.clone(),
        (Some((own, _)), asked) if !model.takes_any_preset() && asked != own.name => {
            return Err(JobError::Failed(format!(
                "this model makes its own {} spectrograms; leave the preset out (asked for {asked})",
                own.name
            )));
        }
        (Some((own, _)), _) if !model.takes_any_preset() => own.clone(),
        (None, "") => SpectrogramPreset::riffusion(),
        (_, asked) => SpectrogramPreset::by_name(asked).map_err(JobError::Failed)?,
    };
    let width = match (params.base.width, &own) {
        (0, Some((own, width))) if own.name == preset.name => *width,
        (0, _) => preset.width as u32,
        (width, _) => width,
    };
    let height = preset.n_mels as u32;
    if params.base.height != 0 && params.base.height != height {
        return Err(JobError::Failed(format!(
            "the {} preset's spectrograms are {height} mel rows high, not {}; leave the height out",
            preset.name, params.base.height
        )));
    }
    let factor = model.grid();
    if !width.is_multiple_of(factor) || width < factor || !height.is_multiple_of(factor) {
        return Err(JobError::Failed(format!(
            "a {width}×{height} spectrogram does not fit this model's {factor}-pixel grid"
        )));
    }
    Ok((preset, width, height))
}

/// One job's spectrogram machinery.
struct Audio<'a> {
    model: &'a dyn SpectrogramModel,
    spectrogram: Spectrogram,
    width: u32,
    height: u32,
    iterations: usize,
    seed: u64,
}

impl Audio<'_> {
    fn preset(&self) -> &SpectrogramPreset {
        &self.spectrogram.preset
    }

    fn hop(&self) -> usize {
        self.preset().hop
    }

    /// Samples one image spans.
    fn image_samples(&self) -> usize {
        self.width as usize * self.hop()
    }

    /// The spectrogram image of `samples[start..]`, `width` frames (zeros past the end), as RGBA.
    fn image_of(&self, samples: &[f32], start: usize) -> Result<ImageData, JobError> {
        let mut window = vec![0f32; self.image_samples()];
        let available = samples.len().saturating_sub(start).min(window.len());
        window[..available].copy_from_slice(&samples[start..start + available]);
        let grey = self.spectrogram.image_of(&window, self.width as usize)?;
        let rgba = image::DynamicImage::ImageLuma8(grey).to_rgba8();
        Ok(ImageData::from_rgba_image(&rgba))
    }

    /// Samples from a spectrogram image (pseudo-inverse, Griffin-Lim): `width × hop` of them,
    /// the last hop's worth zeros.
    fn samples_of(&self, image: &ImageData) -> Result<Vec<f32>, JobError> {
        let rgba =
            image.to_rgba_image().ok_or_else(|| JobError::Failed("malformed spectrogram image".into()))?;
        let rgb = image::DynamicImage::ImageRgba8(rgba).to_rgb8();
        let mel =
            self.spectrogram.mel_from_image(&rgb).map_err(|error| JobError::Failed(error.to_string()))?;
        let mut samples = self.spectrogram.audio_from_mel(&mel, self.iterations, self.seed)?;
        samples.resize(self.image_samples(), 0.0);
        Ok(samples)
    }

    fn base(&self, params: &GenerateParams) -> GenerateParams {
        GenerateParams { width: self.width, height: self.height, ..params.clone() }
    }

    fn generate_image(
        &self,
        params: &GenerateParams,
        ctx: &mut JobContext<'_>,
    ) -> Result<ImageData, JobError> {
        self.model.generate(&self.base(params), ctx)
    }

    #[allow(clippy::too_many_arguments)]
    /// Inpaints the columns `from..to` (and the rows of `band`, in Hz, when given) of `image`.
    fn inpaint_columns(
        &self,
        params: &GenerateParams,
        image: ImageData,
        from: u32,
        to: u32,
        band: Option<(f64, f64)>,
        strength: f64,
        ctx: &mut JobContext<'_>,
    ) -> Result<ImageData, JobError> {
        let rows = self.rows_of(band);
        let mut mask = image::RgbaImage::new(self.width, self.height);
        for (x, y, pixel) in mask.enumerate_pixels_mut() {
            let inside = (from..to).contains(&x) && rows.contains(&y);
            *pixel = if inside { image::Rgba([255, 255, 255, 255]) } else { image::Rgba([0, 0, 0, 255]) };
        }
        let params = InpaintParams {
            base: self.base(params),
            image,
            mask: ImageData::from_rgba_image(&mask),
            strength,
            // a soft edge of a couple of columns: the seam is a crossfade, not a cut
            mask_options: MaskOptions { dilate: 0, feather: 2.0, invert: false },
            composite: true,
        };
        self.model.inpaint(&params, ctx)
    }

    /// The image rows (top = 0) a frequency band covers; all rows without one.
    fn rows_of(&self, band: Option<(f64, f64)>) -> std::ops::Range<u32> {
        let Some((low, high)) = band else { return 0..self.height };
        let centres = self.preset().mel_centres_hz();
        let below = |hz: f64| centres.iter().filter(|c| **c < hz).count() as u32;
        let (first, last) = (below(low.min(high)), below(low.max(high)).max(below(low.min(high)) + 1));
        let (first, last) = (first.min(self.height - 1), last.min(self.height));
        if self.preset().low_at_bottom { self.height - last..self.height - first } else { first..last }
    }

    /// The result: `samples` with their whole spectrogram.
    fn clip(&self, samples: Vec<f32>) -> Result<AudioClip, JobError> {
        analysed(&self.spectrogram, samples)
    }
}

/// `samples` with their spectrogram at `spectrogram`'s preset.
pub fn analysed(spectrogram: &Spectrogram, samples: Vec<f32>) -> Result<AudioClip, JobError> {
    let preset = &spectrogram.preset;
    let mut padded;
    let source = if samples.len() < preset.n_fft {
        padded = samples.clone();
        padded.resize(preset.n_fft, 0.0);
        &padded
    } else {
        &samples
    };
    let mel = spectrogram.mel(source)?;
    let grey = spectrogram.image_from_mel(&mel)?;
    let rgba = image::DynamicImage::ImageLuma8(grey).to_rgba8();
    let mut row_hz = preset.mel_centres_hz();
    if preset.low_at_bottom {
        row_hz.reverse();
    }
    Ok(AudioClip {
        sample_rate: preset.sample_rate,
        samples: Arc::new(samples),
        spectrogram: ImageData::from_rgba_image(&rgba),
        preset: preset.name.to_string(),
        hop: preset.hop,
        row_hz,
    })
}

/// The spectrogram of `source` at `preset` (no model): [`AudioTask::Analyse`].
pub fn analyse(preset: &str, source: &[f32], device: tch::Device) -> Result<AudioClip, JobError> {
    let preset = SpectrogramPreset::by_name(preset).map_err(JobError::Failed)?;
    if source.is_empty() || source.iter().any(|s| !s.is_finite()) {
        return Err(JobError::Failed("the clip is empty or holds samples that are not numbers".into()));
    }
    analysed(&Spectrogram::new(preset, device)?, source.to_vec())
}

/// The gain that best maps `generated` onto `source` over the samples where `weight` is 1
/// (least squares on magnitudes' energy: RMS matching), 1 where there is none.
fn matching_gain(source: &[f32], generated: &[f32], keep: impl Fn(usize) -> bool) -> f32 {
    let (mut a, mut b) = (0f64, 0f64);
    for (i, (s, g)) in source.iter().zip(generated).enumerate() {
        if keep(i) {
            a += f64::from(*s).powi(2);
            b += f64::from(*g).powi(2);
        }
    }
    if a <= 0.0 || b <= 0.0 { 1.0 } else { (a / b).sqrt() as f32 }
}

/// Peak-normalises to −1 dBFS (Griffin-Lim's level is relative).
fn normalised(mut samples: Vec<f32>) -> Vec<f32> {
    let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    if peak > 0.0 {
        let gain = 10f32.powf(-1.0 / 20.0) / peak;
        samples.iter_mut().for_each(|s| *s *= gain);
    }
    samples
}

/// `source` with `new` (aligned with it) in `start..end` samples, equal-power crossfades of
/// `fade` samples just outside: outside `start − fade .. end + fade` the result is `source`.
pub fn splice(source: &[f32], new: &[f32], start: usize, end: usize, fade: usize) -> Vec<f32> {
    let mut out = source.to_vec();
    let (from, to) = (start.saturating_sub(fade), (end + fade).min(source.len()).min(new.len()));
    for i in from..to {
        let weight = if i < start {
            (i - from + 1) as f32 / (start - from + 1) as f32
        } else if i >= end {
            (to - i) as f32 / (to - end + 1) as f32
        } else {
            // inside the range: the new samples exactly (cos(π/2) is not 0 in floating point)
            out[i] = new[i];
            continue;
        };
        let angle = weight * std::f32::consts::FRAC_PI_2;
        out[i] = source[i] * angle.cos() + new[i] * angle.sin();
    }
    out
}

/// Appends `next` to `first`, overlapping `fade` samples with an equal-power crossfade.
pub fn crossfade_concat(first: &[f32], next: &[f32], fade: usize) -> Vec<f32> {
    let fade = fade.min(first.len()).min(next.len());
    let mut out = first[..first.len() - fade].to_vec();
    for i in 0..fade {
        let angle = (i + 1) as f32 / (fade + 1) as f32 * std::f32::consts::FRAC_PI_2;
        out.push(first[first.len() - fade + i] * angle.cos() + next[i] * angle.sin());
    }
    out.extend_from_slice(&next[fade..]);
    out
}

/// Spherical interpolation of two noise tensors (as Riffusion interpolates seeds).
fn slerp(a: &Tensor, b: &Tensor, t: f64) -> Result<Tensor, tch::TchError> {
    let dot = f64::try_from(a.f_flatten(0, -1)?.f_dot(&b.f_flatten(0, -1)?)?)?;
    let norms = f64::try_from(a.f_norm()?)? * f64::try_from(b.f_norm()?)?;
    let cos = (dot / norms.max(1e-12)).clamp(-1.0, 1.0);
    if cos.abs() > 0.9995 {
        return a.f_mul_scalar(1.0 - t)?.f_add(&b.f_mul_scalar(t)?);
    }
    let theta = cos.acos();
    let (wa, wb) = (((1.0 - t) * theta).sin() / theta.sin(), (t * theta).sin() / theta.sin());
    a.f_mul_scalar(wa)?.f_add(&b.f_mul_scalar(wb)?)
}

/// Runs an audio job.
pub fn run(
    model: &dyn SpectrogramModel,
    params: &AudioParams,
    ctx: &mut JobContext<'_>,
) -> Result<AudioClip, JobError> {
    let (preset, width, height) = preset_for(model, params)?;
    if params.griffin_lim_iterations == 0 {
        return Err(JobError::Failed("Griffin-Lim needs at least 1 iteration".into()));
    }
    let audio = Audio {
        model,
        spectrogram: Spectrogram::new(preset, model.device())?,
        width,
        height,
        iterations: params.griffin_lim_iterations,
        seed: params.base.seed,
    };
    let rate = f64::from(audio.preset().sample_rate);
    let fade = (CROSSFADE_SECONDS * rate) as usize;
    let check_source = |source: &[f32]| -> Result<(), JobError> {
        if source.len() < audio.preset().n_fft {
            return Err(JobError::Failed(format!(
                "the source clip is {:.3} s long; the {} preset needs at least {:.3} s",
                source.len() as f64 / rate,
                audio.preset().name,
                audio.preset().n_fft as f64 / rate
            )));
        }
        if source.iter().any(|s| !s.is_finite()) {
            return Err(JobError::Failed("the source clip holds samples that are not numbers".into()));
        }
        Ok(())
    };
    match &params.task {
        AudioTask::Analyse { source } => {
            check_source(source)?;
            audio.clip(source.to_vec())
        }
        AudioTask::Generate => {
            let image = audio.generate_image(&params.base, ctx)?;
            let samples = normalised(audio.samples_of(&image)?);
            audio.clip(samples)
        }
        AudioTask::Transform { source, strength } => {
            check_source(source)?;
            let image = audio.image_of(source, 0)?;
            let job = Img2ImgParams { base: audio.base(&params.base), image, strength: *strength };
            let image = model.img2img(&job, ctx)?;
            let samples = normalised(audio.samples_of(&image)?);
            audio.clip(samples)
        }
        AudioTask::Inpaint { source, start, end, band, strength } => {
            check_source(source)?;
            let seconds = source.len() as f64 / rate;
            let (start, end) = (start.min(*end), start.max(*end));
            if !(start.is_finite() && end.is_finite())
                || start < 0.0
                || end > seconds + 1e-6
                || end - start <= 0.0
            {
                return Err(JobError::Failed(format!(
                    "the range {start:.3}..{end:.3} s is not inside the {seconds:.3} s clip"
                )));
            }
            let span = audio.image_samples();
            let (first, last) = ((start * rate) as usize, ((end * rate) as usize).min(source.len()));
            if last - first + 2 * fade + 2 * audio.hop() > span {
                return Err(JobError::Failed(format!(
                    "the range is {:.2} s long; one spectrogram holds {:.2} s with its margins: select less",
                    end - start,
                    span as f64 / rate - 2.0 * (fade + audio.hop()) as f64 / rate
                )));
            }
            // the image window: centred on the range, inside the clip where it can be
            let centre = (first + last) / 2;
            let window = centre.saturating_sub(span / 2).min(source.len().saturating_sub(span));
            let window = window / audio.hop() * audio.hop();
            let image = audio.image_of(source, window)?;
            let hop = audio.hop() as u32;
            let from = ((first - window) as u32 / hop).saturating_sub(1);
            let to = ((last - window) as u32).div_ceil(hop) + 1;
            let image =
                audio.inpaint_columns(&params.base, image, from, to.min(width), *band, *strength, ctx)?;
            let generated = audio.samples_of(&image)?;
            // the regenerated audio at the source's level (matched where the source is kept)
            let local = &source[window..(window + span).min(source.len())];
            let (a, b) = (first - window, last - window);
            let gain = matching_gain(local, &generated, |i| i < a.saturating_sub(fade) || i > b + fade);
            let mut aligned = source.to_vec();
            for (i, g) in generated.iter().enumerate() {
                if let Some(slot) = aligned.get_mut(window + i) {
                    *slot = g * gain;
                }
            }
            let samples = splice(source, &aligned, first, last, fade);
            audio.clip(samples)
        }
        AudioTask::Continue { source } => {
            check_source(source)?;
            // the source's last half image on the left, the continuation on the right
            let span = audio.image_samples();
            let half = (width / 2) as usize * audio.hop();
            let window = source.len().saturating_sub(half) / audio.hop() * audio.hop();
            let image = audio.image_of(source, window)?;
            let known = ((source.len() - window) / audio.hop()) as u32;
            let image = audio.inpaint_columns(&params.base, image, known, width, None, 1.0, ctx)?;
            let generated = audio.samples_of(&image)?;
            let kept = source.len() - window;
            let gain = matching_gain(&source[window..], &generated, |i| i + fade < kept);
            let generated: Vec<f32> = generated.iter().map(|g| g * gain).collect();
            // the source to its end, then the generated audio, crossfaded at the junction
            let junction = kept.saturating_sub(fade);
            let mut samples = source[..window + junction].to_vec();
            samples = crossfade_concat(&samples, &generated[junction.saturating_sub(fade)..span], fade);
            audio.clip(normalised_like(source, samples))
        }
        AudioTask::Loop { source } => {
            let image = match source {
                Some(source) => {
                    check_source(source)?;
                    audio.image_of(source, 0)?
                }
                None => audio.generate_image(&params.base, ctx)?,
            };
            // roll by half: the seam (end → start) comes to the middle, where it is repainted
            let rgba = image.to_rgba_image().ok_or_else(|| JobError::Failed("malformed image".into()))?;
            let rolled = roll_columns(&rgba, width / 2);
            let seam = (width / 8).max(2);
            let repaired = audio.inpaint_columns(
                &params.base,
                ImageData::from_rgba_image(&rolled),
                width / 2 - seam,
                width / 2 + seam,
                None,
                1.0,
                ctx,
            )?;
            // the rolled image is continuous in the middle; its ends are neighbours in the
            // source, so the audio loops with a short crossfade of its ends
            let samples = audio.samples_of(&repaired)?;
            let used = (width as usize - 1) * audio.hop();
            let looped = loop_crossfade(&samples[..used], fade);
            audio.clip(normalised(looped))
        }
        AudioTask::Interpolate { to_prompt, to_seed, clips } => {
            if *clips < 2 || *clips > 64 {
                return Err(JobError::Failed(format!("interpolation makes 2 to 64 clips, not {clips}")));
            }
            let base = audio.base(&params.base);
            let images = model.interpolation(&base, to_prompt, *to_seed, *clips, ctx)?;
            let mut samples: Vec<f32> = Vec::new();
            for image in &images {
                let clip = audio.samples_of(image)?;
                let clip = &clip[..(width as usize - 1) * audio.hop()];
                samples = if samples.is_empty() {
                    clip.to_vec()
                } else {
                    crossfade_concat(&samples, clip, 4 * fade)
                };
            }
            audio.clip(normalised(samples))
        }
    }
}

impl SpectrogramModel for StableDiffusion {
    fn device(&self) -> tch::Device {
        self.device
    }

    fn own_spectrogram(&self) -> Option<(SpectrogramPreset, u32)> {
        let info = self.spectrogram.as_ref()?;
        Some((SpectrogramPreset::by_name(&info.preset).ok()?, info.width))
    }

    fn takes_any_preset(&self) -> bool {
        true
    }

    fn grid(&self) -> u32 {
        self.vae_scale_factor as u32
    }

    fn generate(&self, params: &GenerateParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        StableDiffusion::generate(self, params, ctx)
    }

    fn img2img(&self, params: &Img2ImgParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        super::img2img::run(self, params, ctx)
    }

    fn inpaint(&self, params: &InpaintParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        super::inpaint::run(self, params, ctx)
    }

    /// Riffusion's interpolation: the text embeddings mixed linearly, the seeds' noise by slerp.
    fn interpolation(
        &self,
        base: &GenerateParams,
        to_prompt: &str,
        to_seed: u64,
        clips: usize,
        ctx: &mut JobContext<'_>,
    ) -> Result<Vec<ImageData>, JobError> {
        let (text_a, negative, mut scheduler) = prepare(self, base)?;
        let other = GenerateParams { prompt: to_prompt.to_string(), ..base.clone() };
        let (text_b, _, _) = prepare(self, &other)?;
        if text_a.size() != text_b.size() {
            return Err(JobError::Failed(
                "the two prompts encode to different lengths (one is over 75 tokens); shorten it".into(),
            ));
        }
        let (height, width) = (i64::from(base.height), i64::from(base.width));
        let sigma = scheduler.init_noise_sigma();
        let noise_a = self.seeded_latents(base.seed, height, width, sigma)?;
        let noise_b = self.seeded_latents(to_seed, height, width, sigma)?;
        let mut images = Vec::with_capacity(clips);
        for k in 0..clips {
            let t = k as f64 / (clips - 1) as f64;
            let text = text_a.f_mul_scalar(1.0 - t)?.f_add(&text_b.f_mul_scalar(t)?)?;
            let latents = slerp(&noise_a, &noise_b, t)?;
            scheduler.set_timesteps(base.steps)?;
            let conditioning = Conditioning::guided(&text, &negative, base);
            let latents = crate::engine::sampler::denoise_with(
                &self.unet,
                scheduler.as_mut(),
                latents,
                &conditioning,
                &mut crate::engine::schedulers::CpuGeneratorNoise,
                Hooks::default(),
                |step, of, latents| {
                    ctx.progress(k * of + step, clips * of, self.paced_preview(step, latents));
                    ctx.checkpoint()
                },
            )?;
            images.push(self.decode_to_image(&latents)?);
        }
        Ok(images)
    }
}

/// audio-diffusion models are unconditional: prompts (and guidance) do nothing; the seed and
/// the source clip say what comes out.
impl SpectrogramModel for AudioDiffusion {
    fn device(&self) -> tch::Device {
        self.device
    }

    fn own_spectrogram(&self) -> Option<(SpectrogramPreset, u32)> {
        Some((self.preset(), self.mel.x_res as u32))
    }

    fn takes_any_preset(&self) -> bool {
        false
    }

    fn grid(&self) -> u32 {
        AudioDiffusion::grid(self)
    }

    fn generate(&self, params: &GenerateParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        AudioDiffusion::generate(
            self,
            params.seed,
            params.steps,
            &params.scheduler,
            (params.width, params.height),
            ctx,
        )
    }

    /// SDEdit: the source's latents (a VQ-VAE sample, drawn first) noised to the step that
    /// `strength` picks, then denoised.
    fn img2img(&self, params: &Img2ImgParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        let base = &params.base;
        let (source, noise, mut scheduler, start) = self.edit_start(base, &params.image, params.strength)?;
        let latents = scheduler.add_noise(&source, &noise, start)?;
        let latents = self.denoise(scheduler.as_mut(), latents, start, None, |step, of| {
            ctx.progress(step, of, None);
            ctx.checkpoint()
        })?;
        self.decode(&latents)
    }

    /// Blended inpainting (Avrahami et al. 2022): outside the mask the source, noised to each
    /// step's level, replaces the sample; the unmasked pixels are composited back exactly.
    fn inpaint(&self, params: &InpaintParams, ctx: &mut JobContext<'_>) -> Result<ImageData, JobError> {
        let base = &params.base;
        if (params.mask.width, params.mask.height) != (params.image.width, params.image.height) {
            return Err(JobError::Failed("the mask's size differs from the spectrogram's".into()));
        }
        let pixel_mask = super::inpaint::prepare_mask(&params.mask, &params.mask_options)?;
        let (source, noise, mut scheduler, start) = self.edit_start(base, &params.image, params.strength)?;
        let size = source.size();
        let mask = pixel_mask.f_adaptive_avg_pool2d([size[2], size[3]])?.f_to_device(self.device)?;
        let latents = if params.strength >= 1.0 {
            noise.f_mul_scalar(scheduler.init_noise_sigma())?
        } else {
            scheduler.add_noise(&source, &noise, start)?
        };
        let blend = Blend { source: &source, noise: &noise, mask: &mask };
        let latents = self.denoise(scheduler.as_mut(), latents, start, Some(blend), |step, of| {
            ctx.progress(step, of, None);
            ctx.checkpoint()
        })?;
        let generated = self.decode(&latents)?;
        if !params.composite {
            return Ok(generated);
        }
        super::inpaint::composite(&params.image, &generated, &pixel_mask)
    }

    /// The seeds' noise by slerp (the reference pipeline's `slerp`); there is no text to mix.
    fn interpolation(
        &self,
        base: &GenerateParams,
        _to_prompt: &str,
        to_seed: u64,
        clips: usize,
        ctx: &mut JobContext<'_>,
    ) -> Result<Vec<ImageData>, JobError> {
        let shape = self.latent_shape(base.width, base.height);
        tch::manual_seed(base.seed as i64);
        let noise_a = self.cpu_randn(&shape)?;
        tch::manual_seed(to_seed as i64);
        let noise_b = self.cpu_randn(&shape)?;
        let mut images = Vec::with_capacity(clips);
        for k in 0..clips {
            let t = k as f64 / (clips - 1) as f64;
            let noise = slerp(&noise_a, &noise_b, t)?;
            let size = (base.width, base.height);
            let latents =
                self.denoised(base.seed, base.steps, &base.scheduler, size, Some(noise), |step, of| {
                    ctx.progress(k * of + step, clips * of, None);
                    ctx.checkpoint()
                })?;
            images.push(self.decode(&latents)?);
        }
        Ok(images)
    }
}

impl AudioDiffusion {
    /// An edit's start from the seeded generator: the source's latents (a VAE posterior sample
    /// for latent models, drawn first, as the image methods draw it), then the noise; and the
    /// scheduler with the first step that `strength` runs.
    #[allow(clippy::type_complexity)]
    fn edit_start(
        &self,
        base: &GenerateParams,
        image: &ImageData,
        strength: f64,
    ) -> Result<(Tensor, Tensor, Box<dyn crate::engine::schedulers::Scheduler>, usize), JobError> {
        if (image.width, image.height) != (base.width, base.height) {
            return Err(JobError::Failed(format!(
                "the spectrogram is {}×{}, the job asks for {}×{}",
                image.width, image.height, base.width, base.height
            )));
        }
        if base.steps == 0 {
            return Err(JobError::Failed("steps must be at least 1".into()));
        }
        let mut scheduler = self.scheduler(&base.scheduler)?;
        scheduler.set_timesteps(base.steps)?;
        let start = start_index(base.steps, strength, scheduler.order())?;
        tch::manual_seed(base.seed as i64);
        let source = self.encode(image)?;
        let noise = self.cpu_randn(&source.size())?;
        Ok((source, noise, scheduler, start))
    }
}

/// `samples` scaled so that its peak is the source's (a continuation keeps the clip's level).
fn normalised_like(source: &[f32], mut samples: Vec<f32>) -> Vec<f32> {
    let peak = |s: &[f32]| s.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (want, have) = (peak(source), peak(&samples));
    if want > 0.0 && have > 0.0 {
        let gain = want / have;
        if gain < 1.0 {
            samples.iter_mut().for_each(|s| *s *= gain);
        }
    }
    samples
}

/// The image's columns rotated left by `by`.
fn roll_columns(image: &image::RgbaImage, by: u32) -> image::RgbaImage {
    let width = image.width();
    image::RgbaImage::from_fn(width, image.height(), |x, y| *image.get_pixel((x + by) % width, y))
}

/// A clip whose end runs into its start: the last `fade` samples are crossfaded into the first
/// ones and dropped, so that playing it on repeat has no seam.
pub fn loop_crossfade(samples: &[f32], fade: usize) -> Vec<f32> {
    let fade = fade.min(samples.len() / 2);
    let n = samples.len() - fade;
    let mut out = samples[..n].to_vec();
    for i in 0..fade {
        let angle = (i + 1) as f32 / (fade + 1) as f32 * std::f32::consts::FRAC_PI_2;
        out[i] = samples[n + i] * angle.cos() + samples[i] * angle.sin();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_keeps_the_source_outside_the_fades() {
        let source: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.01).sin()).collect();
        let new = vec![0.5f32; 1000];
        let out = splice(&source, &new, 300, 600, 50);
        for i in (0..250).chain(650..1000) {
            assert_eq!(out[i], source[i], "sample {i}");
        }
        assert!(out[300..600].iter().all(|v| *v == 0.5));
        // the fades move monotonically between the two
        assert!((out[251] - source[251]).abs() < 0.05);
    }

    #[test]
    fn crossfades_keep_length_and_loops_wrap() {
        let a = vec![1.0f32; 100];
        let b = vec![-1.0f32; 100];
        let joined = crossfade_concat(&a, &b, 10);
        assert_eq!(joined.len(), 190);
        assert_eq!(joined[0], 1.0);
        assert_eq!(joined[189], -1.0);
        let ramp: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let looped = loop_crossfade(&ramp, 10);
        assert_eq!(looped.len(), 90);
        // the loop's start comes out of its (dropped) end
        assert!((looped[0] - 90.0).abs() < 10.0 && looped[0] > 80.0);
        assert_eq!(looped[50], 50.0);
    }
}
