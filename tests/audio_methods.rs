//! Audio methods on spectrogram images (text to audio, audio to audio, regenerating a range,
//! continuing, looping, interpolating) on the tiny random SD fixture with the studio preset:
//! lengths, what is kept of the source, and bad requests.

mod common;

use std::sync::Arc;

use common::{fixture, run_output};
use diffusion_studio::engine::EngineHandle;
use diffusion_studio::engine::spectrogram::reference_signal;
use diffusion_studio::protocol::{
    AudioClip, AudioParams, AudioTask, DeviceChoice, GenerateParams, Job, JobOutput,
};

fn engine() -> EngineHandle {
    EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}))
}

/// A 256×128 studio spectrogram from the tiny fixture (its VAE halves, so the latents are
/// 128×64), in 2 steps.
fn params(task: AudioTask) -> AudioParams {
    AudioParams {
        base: GenerateParams {
            model: fixture("tiny_sd_pipeline"),
            model_options: Default::default(),
            prompt: "a slow bass line".into(),
            negative_prompt: String::new(),
            steps: 2,
            scheduler: "ddim".into(),
            guidance_scale: 3.0,
            guidance_rescale: 0.0,
            clip_skip: 0,
            seed: 4,
            width: 256,
            height: 0,
            precision: Default::default(),
        },
        preset: "studio".into(),
        task,
        griffin_lim_iterations: 4,
    }
}

fn run(engine: &EngineHandle, task: AudioTask) -> Result<AudioClip, String> {
    match run_output(engine, Job::Audio(params(task)))? {
        JobOutput::Audio(clip) => Ok(clip),
        other => Err(format!("expected audio, got {other:?}")),
    }
}

fn source(seconds: f64) -> Arc<Vec<f32>> {
    Arc::new(reference_signal(16_000, seconds))
}

const IMAGE: usize = 256 * 256;
const FADE: usize = 800; // 50 ms at 16 kHz

#[test]
fn text_to_audio_fills_one_image() -> Result<(), String> {
    let engine = engine();
    let clip = run(&engine, AudioTask::Generate)?;
    assert_eq!(clip.sample_rate, 16_000);
    assert_eq!(clip.samples.len(), IMAGE);
    assert_eq!((clip.spectrogram.width, clip.spectrogram.height), (257, 128));
    // a spectrogram alone, of a file, needs no model
    let mut analyse = params(AudioTask::Analyse { source: source(1.0) });
    analyse.base.model = std::path::PathBuf::from("/nonexistent");
    match run_output(&engine, Job::Audio(analyse))? {
        JobOutput::Audio(clip) => assert_eq!(clip.spectrogram.width, 16_000 / 256 + 1),
        other => return Err(format!("expected audio, got {other:?}")),
    }
    let peak = clip.samples.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!((peak - 10f32.powf(-1.0 / 20.0)).abs() < 1e-3, "peak {peak}");
    Ok(())
}

#[test]
fn regenerating_a_range_keeps_every_sample_outside_it() -> Result<(), String> {
    let engine = engine();
    let source = source(6.0);
    for band in [None, Some((200.0, 1000.0))] {
        let clip = run(
            &engine,
            AudioTask::Inpaint { source: Arc::clone(&source), start: 4.5, end: 5.0, band, strength: 1.0 },
        )?;
        assert_eq!(clip.samples.len(), source.len());
        let (start, end) = (72_000, 80_000);
        let kept = (0..start - FADE).chain(end + FADE..source.len());
        for i in kept {
            assert_eq!(clip.samples[i], source[i], "sample {i} changed ({band:?})");
        }
        let changed = (start..end).filter(|&i| clip.samples[i] != source[i]).count();
        assert!(changed > (end - start) * 9 / 10, "{changed} samples of the range changed ({band:?})");
        // the spectrogram shows the whole clip, a column per hop
        assert_eq!(clip.spectrogram.width as usize, source.len() / 256 + 1);
        assert_eq!(clip.row_hz.len(), 128);
        assert!(clip.row_hz[0] > clip.row_hz[127], "low frequencies at the bottom");
    }
    Ok(())
}

#[test]
fn continuing_appends_half_an_image_and_keeps_the_start() -> Result<(), String> {
    let engine = engine();
    let source = source(3.0);
    let clip = run(&engine, AudioTask::Continue { source: Arc::clone(&source) })?;
    let added = clip.samples.len() as i64 - source.len() as i64;
    // half an image, give or take the crossfades and a hop
    assert!((added - (IMAGE / 2) as i64).abs() < 3 * FADE as i64, "{added} samples added");
    // the source is kept up to the last half image (rounded down to a hop), scaled at most
    let window = (source.len() - IMAGE / 2) / 256 * 256;
    let ratio = clip.samples[1000] / source[1000];
    for i in (0..window).step_by(97) {
        assert!((clip.samples[i] - source[i] * ratio).abs() < 1e-4, "sample {i}");
    }
    Ok(())
}

#[test]
fn loops_and_interpolations_have_their_lengths() -> Result<(), String> {
    let engine = engine();
    let looped = run(&engine, AudioTask::Loop { source: None })?;
    assert_eq!(looped.samples.len(), 255 * 256 - FADE);
    let from_source = run(&engine, AudioTask::Loop { source: Some(source(5.0)) })?;
    assert_eq!(from_source.samples.len(), 255 * 256 - FADE);
    let clips =
        run(&engine, AudioTask::Interpolate { to_prompt: "a fast drum beat".into(), to_seed: 5, clips: 3 })?;
    assert_eq!(clips.samples.len(), 3 * 255 * 256 - 2 * 4 * FADE);
    assert_eq!(clips.spectrogram.width as usize, clips.samples.len() / 256 + 1);
    Ok(())
}

#[test]
fn bad_requests_are_named() {
    let engine = engine();
    let cases = [
        (
            AudioTask::Inpaint { source: source(3.0), start: 2.5, end: 3.5, band: None, strength: 1.0 },
            "not inside",
        ),
        (
            AudioTask::Inpaint { source: source(8.0), start: 1.0, end: 5.0, band: None, strength: 1.0 },
            "select less",
        ),
        (AudioTask::Transform { source: Arc::new(vec![0.0; 100]), strength: 0.5 }, "needs at least"),
        (AudioTask::Transform { source: Arc::new(vec![f32::NAN; 20_000]), strength: 0.5 }, "not numbers"),
        (AudioTask::Interpolate { to_prompt: "a pad".into(), to_seed: 1, clips: 1 }, "2 to 64 clips"),
    ];
    for (task, expected) in cases {
        let label = task.label();
        let error = run(&engine, task).expect_err(label);
        assert!(error.contains(expected), "{label}: {error}");
    }
    // a preset whose height is not the asked one
    let mut wrong = params(AudioTask::Generate);
    wrong.base.height = 64;
    let error = match run_output(&engine, Job::Audio(wrong)) {
        Err(message) => message,
        Ok(_) => String::from("no error"),
    };
    assert!(error.contains("128 mel rows"), "{error}");
    // the engine is still there
    assert!(run(&engine, AudioTask::Generate).is_ok());
}
