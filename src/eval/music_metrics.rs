//! The bundled music model's measurements: the spectral classifier ([`super::music_features`])
//! fitted on training clips and checked on held-out ones (its ceiling), then applied to clips
//! the model generates from single-instrument prompts (`diffusion-studio audio eval`).

use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::music_features::{LabelledClip, MusicClassifier, SpectrogramView};
use crate::datasets::music::{self, Instrument, KEYS, Mode, Piece, PieceStyle, Tempo};
use crate::datasets::shapes::Split;
use crate::engine::spectrogram::{Spectrogram, SpectrogramPreset};

/// Studio-preset spectrogram images of clips, on the CPU.
pub struct MusicImages {
    spectrogram: Spectrogram,
    centres: Vec<f64>,
}

impl MusicImages {
    pub fn new() -> anyhow::Result<Self> {
        let preset = SpectrogramPreset::studio();
        let centres = preset.mel_centres_hz();
        Ok(Self { spectrogram: Spectrogram::on_cpu(preset)?, centres })
    }

    /// The image of `samples` (16 kHz), its first [`music::FRAMES`] frames at most.
    pub fn image(&self, samples: &[f32]) -> anyhow::Result<GrayImage> {
        Ok(self.spectrogram.image_of(samples, music::FRAMES)?)
    }

    /// `image` heard: the mel pseudo-inverse and Griffin-Lim (as the engine makes a generated
    /// clip's audio, from the red channel), then a fresh image of the audio.
    pub fn heard(&self, image: &image::RgbImage, iterations: usize, seed: u64) -> anyhow::Result<GrayImage> {
        let mel = self.spectrogram.mel_from_image(image)?;
        let samples = self.spectrogram.audio_from_mel(&mel, iterations, seed)?;
        self.image(&samples)
    }

    /// What the classifier reads of a studio-preset image.
    pub fn view(&self, image: &GrayImage) -> anyhow::Result<SpectrogramView> {
        SpectrogramView::from_image(image, self.centres.clone()).map_err(anyhow::Error::msg)
    }
}

/// Single-instrument dataset clips of `split` as (piece, image).
pub fn dataset_clips(
    images: &MusicImages,
    seed: u64,
    split: Split,
    count: usize,
) -> anyhow::Result<Vec<(Piece, GrayImage)>> {
    (0..count)
        .map(|index| {
            let sample = music::sample_styled(seed, index as u64, split, PieceStyle { mixes: 0.0 });
            Ok((sample.piece, images.image(&sample.samples)?))
        })
        .collect()
}

/// The classifier fitted on `count` single-instrument training clips.
pub fn fit_classifier(images: &MusicImages, seed: u64, count: usize) -> anyhow::Result<MusicClassifier> {
    let clips = dataset_clips(images, seed, Split::Train, count)?
        .into_iter()
        .map(|(piece, image)| {
            Ok(LabelledClip {
                view: images.view(&image)?,
                instrument: piece.parts[0],
                tempo: piece.tempo,
                mode: piece.mode,
                tonic: KEYS[piece.key].1 as usize,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    MusicClassifier::fit(&clips).map_err(anyhow::Error::msg)
}

/// How often the classifier reads clips as what their prompts asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MusicScores {
    pub clips: usize,
    /// The prompted instrument recognised.
    pub instrument_accuracy: f64,
    /// Per instrument, in [`Instrument::ALL`]'s order.
    pub instrument_accuracy_by_class: Vec<f64>,
    /// The prompted tempo recognised (clips whose instrument was recognised, without pads,
    /// whose tempo hardly shows).
    pub tempo_accuracy: f64,
    /// The prompted mode recognised from the pitch classes, given the prompted key and
    /// instrument (tonal clips).
    pub mode_accuracy: f64,
}

/// Tallies [`MusicScores`] over (asked-for piece, spectrogram) pairs.
pub fn score(
    classifier: &MusicClassifier,
    images: &MusicImages,
    clips: &[(Piece, GrayImage)],
) -> anyhow::Result<MusicScores> {
    let mut by_class = vec![(0usize, 0usize); Instrument::ALL.len()];
    let (mut tempo, mut mode) = ((0usize, 0usize), (0usize, 0usize));
    for (piece, image) in clips {
        let view = images.view(image)?;
        let asked = piece.parts[0];
        let class = Instrument::ALL.iter().position(|i| *i == asked).unwrap_or(0);
        by_class[class].1 += 1;
        if let Some((instrument, heard_tempo)) = classifier.classify(&view)
            && instrument == asked
        {
            by_class[class].0 += 1;
            if asked != Instrument::Pad {
                tempo.1 += 1;
                tempo.0 += usize::from(heard_tempo == piece.tempo);
            }
        }
        if asked.tonal() {
            mode.1 += 1;
            let tonic = KEYS[piece.key].1 as usize;
            mode.0 += usize::from(classifier.mode(&view, asked, tonic) == Some(piece.mode));
        }
    }
    let share = |(hit, all): (usize, usize)| if all == 0 { 0.0 } else { hit as f64 / all as f64 };
    let (hits, all) = by_class.iter().fold((0, 0), |(h, a), (hit, n)| (h + hit, a + n));
    Ok(MusicScores {
        clips: clips.len(),
        instrument_accuracy: share((hits, all)),
        instrument_accuracy_by_class: by_class.into_iter().map(share).collect(),
        tempo_accuracy: share(tempo),
        mode_accuracy: share(mode),
    })
}

/// Evaluation prompts: `count` single-instrument pieces, the instruments in turn, tempo, mode
/// and key drawn from `seed`, the key always said (so that the mode can be checked).
pub fn eval_pieces(seed: u64, count: usize) -> Vec<Piece> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6576_616c);
    (0..count)
        .map(|index| {
            let instrument = Instrument::ALL[index % Instrument::ALL.len()];
            let tempo = if rng.random_bool(0.5) { Tempo::Slow } else { Tempo::Fast };
            let (low, high) = tempo.bpm_range();
            Piece {
                parts: vec![instrument],
                tempo,
                bpm: rng.random_range(low..high),
                mode: if rng.random_bool(0.5) { Mode::Major } else { Mode::Minor },
                key: rng.random_range(0..KEYS.len()),
                says_key: true,
            }
        })
        .collect()
}

/// What `audio eval` measures, and how much.
#[derive(Debug, Clone)]
pub struct MusicEvalOptions {
    pub model: std::path::PathBuf,
    pub device: crate::protocol::DeviceChoice,
    /// Generated clips (the instruments in turn).
    pub clips: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    /// Griffin-Lim iterations of the generated clips.
    pub iterations: usize,
    /// Training clips the classifier is fitted on, and held-out clips it is checked on.
    pub fit_clips: usize,
    pub held_out_clips: usize,
    /// Write the generated clips (WAV and spectrogram PNG) here.
    pub samples: Option<std::path::PathBuf>,
}

/// The numbers (`audio eval --out`; MODEL_CARD.md and BENCHMARKS.md quote them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MusicEvalReport {
    /// The classifier on held-out dataset clips: its ceiling.
    pub dataset: MusicScores,
    /// The same clips' images heard (pseudo-inverse, Griffin-Lim) and analysed again: what the
    /// inversion keeps.
    pub dataset_heard: MusicScores,
    /// The same clips' images through the model's VAE (posterior mean), then heard: what the
    /// latent space keeps.
    pub dataset_vae_heard: MusicScores,
    /// The classifier on generated clips, after Griffin-Lim and a fresh spectrogram of the audio.
    pub generated: MusicScores,
    /// Seconds from submitting a clip's job to its audio (generation, decoding, Griffin-Lim).
    pub seconds_per_clip: f64,
    pub steps: usize,
    pub guidance: f64,
}

impl MusicEvalReport {
    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &MusicScores| {
            let by: Vec<String> = Instrument::ALL
                .iter()
                .zip(&s.instrument_accuracy_by_class)
                .map(|(i, a)| format!("{} {:.0}%", i.name(), a * 100.0))
                .collect();
            format!(
                "| {name} | {} | {:.1}% ({}) | {:.1}% | {:.1}% |\n",
                s.clips,
                s.instrument_accuracy * 100.0,
                by.join(", "),
                s.tempo_accuracy * 100.0,
                s.mode_accuracy * 100.0
            )
        };
        let mut text = String::from(
            "| clips | n | instrument recognised | tempo | mode (key given) |\n|---|---|---|---|---|\n",
        );
        text.push_str(&row("held-out dataset clips (the classifier's ceiling)", &self.dataset));
        text.push_str(&row("the same, heard (Griffin-Lim, then analysed again)", &self.dataset_heard));
        text.push_str(&row("the same, through the model's VAE, then heard", &self.dataset_vae_heard));
        text.push_str(&row("generated, heard (Griffin-Lim, then analysed again)", &self.generated));
        text.push_str(&format!(
            "\n{:.3} s per generated clip from submitting the job to its audio ({} steps, guidance {}).\n",
            self.seconds_per_clip, self.steps, self.guidance
        ));
        text
    }
}

/// Fits the classifier, checks it on held-out clips, then generates clips from single-instrument
/// prompts and reads them back.
pub fn evaluate(
    options: &MusicEvalOptions,
    on_progress: &mut dyn FnMut(&str),
) -> anyhow::Result<MusicEvalReport> {
    use crate::protocol::{AudioParams, AudioTask, GenerateParams, Job, JobOutput};
    let images = MusicImages::new()?;
    on_progress(&format!("fitting the classifier on {} training clips", options.fit_clips));
    let classifier = fit_classifier(&images, options.seed, options.fit_clips)?;
    let held_out = dataset_clips(&images, options.seed, Split::Eval, options.held_out_clips)?;
    let dataset = score(&classifier, &images, &held_out)?;
    on_progress(&format!("held-out dataset clips: instrument {:.1}%", dataset.instrument_accuracy * 100.0));
    // where the generated clips' losses can come from: the inversion, and the VAE's latent space
    let vae = crate::engine::vae_round_trip::VaeRoundTrip::load(&options.model, options.device)?;
    let (mut heard, mut vae_heard) = (Vec::new(), Vec::new());
    for (index, (piece, image)) in held_out.iter().enumerate() {
        let seed = options.seed.wrapping_add(index as u64);
        let rgb = image::DynamicImage::ImageLuma8(image.clone()).to_rgb8();
        heard.push((piece.clone(), images.heard(&rgb, options.iterations, seed)?));
        let rgba = image::DynamicImage::ImageRgb8(rgb).to_rgba8();
        let decoded = vae.run(&crate::protocol::ImageData::from_rgba_image(&rgba))?;
        let decoded =
            decoded.to_rgba_image().ok_or_else(|| anyhow::anyhow!("the VAE returned a malformed image"))?;
        let rgb = image::DynamicImage::ImageRgba8(decoded).to_rgb8();
        vae_heard.push((piece.clone(), images.heard(&rgb, options.iterations, seed)?));
    }
    let dataset_heard = score(&classifier, &images, &heard)?;
    let dataset_vae_heard = score(&classifier, &images, &vae_heard)?;
    on_progress(&format!(
        "held-out clips heard: mode {:.1}%; through the VAE: mode {:.1}%",
        dataset_heard.mode_accuracy * 100.0,
        dataset_vae_heard.mode_accuracy * 100.0
    ));
    let runner = super::shapes_metrics::Runner {
        engine: crate::engine::EngineHandle::spawn(options.device, std::sync::Arc::new(|| {})),
    };
    if let Some(folder) = &options.samples {
        std::fs::create_dir_all(folder)?;
    }
    let mut generated = Vec::new();
    let mut seconds = 0.0;
    for (index, piece) in eval_pieces(options.seed, options.clips).into_iter().enumerate() {
        let caption = piece.caption();
        let params = AudioParams {
            base: GenerateParams {
                model: options.model.clone(),
                model_options: Default::default(),
                prompt: caption.clone(),
                negative_prompt: String::new(),
                steps: options.steps,
                scheduler: "dpm++2m-karras".into(),
                guidance_scale: options.guidance,
                guidance_rescale: 0.0,
                clip_skip: 0,
                seed: options.seed.wrapping_add(index as u64),
                width: 0,
                height: 0,
                precision: Default::default(),
            },
            preset: String::new(),
            task: AudioTask::Generate,
            griffin_lim_iterations: options.iterations,
        };
        let clock = std::time::Instant::now();
        let JobOutput::Audio(clip) = runner.run(Job::Audio(params))? else {
            anyhow::bail!("the engine returned no audio for \"{caption}\"");
        };
        if index > 0 {
            // the first clip also loads the model
            seconds += clock.elapsed().as_secs_f64();
        }
        let image = images.image(&clip.samples)?;
        if let Some(folder) = &options.samples {
            let name = format!("{index:03}-{}", caption.replace(' ', "-"));
            let wav = crate::audio::wav::Clip {
                sample_rate: clip.sample_rate,
                channels: vec![clip.samples.to_vec()],
            };
            crate::audio::wav::write_wav(&folder.join(format!("{name}.wav")), &wav)?;
            image.save(folder.join(format!("{name}.png")))?;
        }
        generated.push((piece, image));
        if (index + 1) % 10 == 0 {
            on_progress(&format!("generated {} of {} clips", index + 1, options.clips));
        }
    }
    let generated_scores = score(&classifier, &images, &generated)?;
    Ok(MusicEvalReport {
        dataset,
        dataset_heard,
        dataset_vae_heard,
        generated: generated_scores,
        seconds_per_clip: seconds / (options.clips.saturating_sub(1)).max(1) as f64,
        steps: options.steps,
        guidance: options.guidance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier's ceiling: fitted on training clips, it reads held-out clips' instrument
    /// (the bar for generated clips is 90%), tempo and mode.
    #[test]
    fn the_classifier_recognises_held_out_dataset_clips() -> anyhow::Result<()> {
        let images = MusicImages::new()?;
        let classifier = fit_classifier(&images, 0, 250)?;
        let held_out = dataset_clips(&images, 0, Split::Eval, 150)?;
        let scores = score(&classifier, &images, &held_out)?;
        eprintln!("{scores:?}");
        assert!(scores.instrument_accuracy >= 0.95, "{scores:?}");
        assert!(scores.tempo_accuracy >= 0.85, "{scores:?}");
        assert!(scores.mode_accuracy >= 0.85, "{scores:?}");
        // and it can fail: clips labelled with the wrong instrument score low
        let shuffled: Vec<(Piece, GrayImage)> = held_out
            .iter()
            .map(|(piece, image)| {
                let next =
                    Instrument::ALL[(Instrument::ALL.iter().position(|i| *i == piece.parts[0]).unwrap_or(0)
                        + 1)
                        % Instrument::ALL.len()];
                (Piece { parts: vec![next], ..piece.clone() }, image.clone())
            })
            .collect();
        assert!(score(&classifier, &images, &shuffled)?.instrument_accuracy < 0.2);
        Ok(())
    }
}
