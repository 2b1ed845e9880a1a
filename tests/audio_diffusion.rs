//! audio-diffusion models (diffusers' `AudioDiffusionPipeline`) on tiny random pipelines that
//! diffusers built and ran (tests/fixtures/make_fixtures.py, `make_audio_diffusion_fixtures`):
//! the mel image of a known signal, seeded generation on pixels and on VQ-VAE latents, the audio
//! methods through the engine, and bad folders and requests.

mod common;

use std::sync::Arc;

use common::{fixture, json, run_output};
use diffusion_studio::audio::preset::{MelConfig, SpectrogramPreset};
use diffusion_studio::engine::EngineHandle;
use diffusion_studio::engine::audio_diffusion::AudioDiffusion;
use diffusion_studio::engine::spectrogram::Spectrogram;
use diffusion_studio::protocol::{
    AudioClip, AudioParams, AudioTask, DeviceChoice, GenerateParams, Job, JobOutput, Precision,
};

const RATE: u32 = 16_000;
const HOP: usize = 256;

fn bytes(value: &serde_json::Value) -> Vec<u8> {
    value.as_array().expect("array").iter().map(|v| v.as_u64().expect("byte") as u8).collect()
}

/// (largest difference, share of bytes that differ) between two greyscale images.
fn compare(ours: &[u8], theirs: &[u8]) -> (u8, f64) {
    assert_eq!(ours.len(), theirs.len());
    let largest = ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    let differing = ours.iter().zip(theirs).filter(|(a, b)| a != b).count();
    (largest, differing as f64 / ours.len() as f64)
}

#[test]
fn the_mel_image_of_a_signal_matches_diffusers_mel() -> Result<(), String> {
    let record = json("audio_diffusion.json");
    let config: MelConfig =
        serde_json::from_value(record["mel_config"].clone()).map_err(|e| e.to_string())?;
    let preset = SpectrogramPreset::of_mel_config(&config);
    assert_eq!(
        (preset.sample_rate, preset.n_fft, preset.hop, preset.n_mels, preset.width),
        (RATE, 1024, HOP, 16, 32)
    );
    let signal: Vec<f32> = record["signal"]
        .as_array()
        .expect("signal")
        .iter()
        .map(|v| v.as_f64().expect("sample") as f32)
        .collect();
    let spectrogram = Spectrogram::on_cpu(preset).map_err(|e| e.to_string())?;
    // the reference slices x_res · hop − 1 samples (`Mel.slice_size`)
    let image = spectrogram.image_of(&signal[..32 * HOP - 1], 32).map_err(|e| e.to_string())?;
    assert_eq!(image.dimensions(), (32, 16));
    let (largest, share) = compare(image.as_raw(), &bytes(&record["signal_image"]));
    // byte for byte (librosa's float32 rounding could move a byte; it does not here)
    assert!(largest == 0, "mel image differs: largest {largest}, {:.1}% of bytes", share * 100.0);
    Ok(())
}

#[test]
fn seeded_generation_matches_the_reference_pipeline_on_pixels_and_on_latents() -> Result<(), String> {
    let record = json("audio_diffusion.json");
    for name in ["tiny_audio_diffusion", "tiny_latent_audio_diffusion"] {
        let case = &record[name];
        let _generator = diffusion_studio::engine::default_generator_lock();
        let model = AudioDiffusion::from_folder(&fixture(name), tch::Device::Cpu, Precision::F32)
            .map_err(|e| e.to_string())?;
        assert_eq!(model.native_size(), (32, 16));
        assert_eq!(model.vqvae.is_some(), name.contains("latent"), "{}", model.describe());
        let seed = case["seed"].as_u64().expect("seed");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let latents =
            model.denoised(seed, steps, "ddim", (32, 16), None, |_, _| Ok(())).map_err(|e| e.to_string())?;
        let image = model.decode(&latents).map_err(|e| e.to_string())?;
        assert_eq!((image.width, image.height), (32, 16));
        let grey: Vec<u8> = image.rgba.chunks(4).map(|p| p[0]).collect();
        let (largest, share) = compare(&grey, &bytes(&case["image"]));
        // byte for byte, as diffusers rounds them
        assert!(largest == 0, "{name}: differs by up to {largest}, {:.1}% of bytes", share * 100.0);
        // the reference's audio: (x_res − 1) hops (centred frames)
        assert_eq!(case["audio_samples"].as_u64(), Some(31 * HOP as u64));
    }
    Ok(())
}

fn engine() -> EngineHandle {
    EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}))
}

fn params(model: &str, task: AudioTask) -> AudioParams {
    AudioParams {
        base: GenerateParams {
            model: fixture(model),
            model_options: Default::default(),
            // unconditional: the prompt does nothing
            prompt: "ignored".into(),
            negative_prompt: String::new(),
            steps: 4,
            scheduler: "ddim".into(),
            guidance_scale: 1.0,
            guidance_rescale: 0.0,
            clip_skip: 0,
            seed: 11,
            width: 0,
            height: 0,
            precision: Default::default(),
        },
        preset: String::new(),
        task,
        griffin_lim_iterations: 4,
    }
}

fn run(engine: &EngineHandle, params: AudioParams) -> Result<AudioClip, String> {
    match run_output(engine, Job::Audio(params))? {
        JobOutput::Audio(clip) => Ok(clip),
        other => Err(format!("expected audio, got {other:?}")),
    }
}

fn tone(seconds: f64) -> Arc<Vec<f32>> {
    let n = (seconds * f64::from(RATE)) as usize;
    Arc::new(
        (0..n).map(|i| 0.4 * (i as f32 * 2.0 * std::f32::consts::PI * 330.0 / RATE as f32).sin()).collect(),
    )
}

#[test]
fn every_audio_method_runs_on_an_audio_diffusion_model_with_its_own_mel_settings() -> Result<(), String> {
    let engine = engine();
    let image = 32 * HOP;
    for model in ["tiny_audio_diffusion", "tiny_latent_audio_diffusion"] {
        let clip = run(&engine, params(model, AudioTask::Generate))?;
        assert_eq!((clip.sample_rate, clip.preset.as_str(), clip.hop), (RATE, "audio-diffusion", HOP));
        assert_eq!(clip.samples.len(), image);
        assert_eq!(clip.spectrogram.height, 16);
        assert!(clip.samples.iter().all(|s| s.is_finite()) && clip.samples.iter().any(|s| *s != 0.0));
        // the same seed gives the same clip; another seed another
        let again = run(&engine, params(model, AudioTask::Generate))?;
        assert_eq!(again.samples, clip.samples, "{model}: not reproducible");
        let mut other = params(model, AudioTask::Generate);
        other.base.seed = 12;
        assert_ne!(run(&engine, other)?.samples, clip.samples, "{model}: the seed does nothing");

        let source = tone(1.0);
        let transformed =
            run(&engine, params(model, AudioTask::Transform { source: source.clone(), strength: 0.5 }))?;
        assert_eq!(transformed.samples.len(), image);
        // regenerating 0.2–0.3 s keeps every sample outside it and its 50 ms fades
        let task =
            AudioTask::Inpaint { source: source.clone(), start: 0.2, end: 0.3, band: None, strength: 1.0 };
        let inpainted = run(&engine, params(model, task))?;
        assert_eq!(inpainted.samples.len(), source.len());
        let (first, last, fade) = (3_200, 4_800, 800);
        for (i, (a, b)) in source.iter().zip(inpainted.samples.iter()).enumerate() {
            if i + fade < first || i >= last + fade {
                assert_eq!(a, b, "{model}: sample {i} outside the range changed");
            }
        }
        assert!(
            source[first..last] != inpainted.samples[first..last],
            "{model}: the range was not regenerated"
        );
        let continued = run(&engine, params(model, AudioTask::Continue { source: source.clone() }))?;
        assert!(continued.samples.len() > source.len(), "{model}: nothing appended");
        // the source up to the last half image, at most rescaled to keep the clip's peak
        let ratio = continued.samples[1_000] / source[1_000];
        for i in (0..8_000).step_by(37) {
            assert!((continued.samples[i] - source[i] * ratio).abs() < 1e-4, "{model}: sample {i} changed");
        }
        let looped = run(&engine, params(model, AudioTask::Loop { source: None }))?;
        assert_eq!(looped.samples.len(), 31 * HOP - 800);
        let task = AudioTask::Interpolate { to_prompt: String::new(), to_seed: 12, clips: 3 };
        let interpolated = run(&engine, params(model, task))?;
        assert!(interpolated.samples.len() > 2 * 31 * HOP, "{}", interpolated.samples.len());
    }
    Ok(())
}

#[test]
fn audio_diffusion_models_refuse_image_jobs_other_presets_and_sizes_and_the_engine_goes_on()
-> Result<(), String> {
    let engine = engine();
    let model = "tiny_audio_diffusion";
    let mut image_job = params(model, AudioTask::Generate).base;
    image_job.width = 32;
    image_job.height = 16;
    let error = run_output(&engine, Job::Generate(image_job)).expect_err("an image job");
    assert!(error.contains("audio-diffusion model") && error.contains("audio only"), "{error}");
    let mut riffusion = params(model, AudioTask::Generate);
    riffusion.preset = "riffusion".into();
    let error = run(&engine, riffusion).expect_err("another preset");
    assert!(error.contains("its own audio-diffusion spectrograms"), "{error}");
    let mut tall = params(model, AudioTask::Generate);
    tall.base.height = 32;
    let error = run(&engine, tall).expect_err("the wrong height");
    assert!(error.contains("16 mel rows"), "{error}");
    let mut odd = params(model, AudioTask::Generate);
    odd.base.width = 31;
    let error = run(&engine, odd).expect_err("a width off the grid");
    assert!(error.contains("grid"), "{error}");
    // a wider clip than trained is fine (the UNet is convolutional)
    let mut wide = params(model, AudioTask::Generate);
    wide.base.width = 64;
    assert_eq!(run(&engine, wide)?.samples.len(), 64 * HOP);
    Ok(())
}

#[test]
fn broken_audio_diffusion_folders_name_the_file_and_field() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("ds-audio-diffusion-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let copy = |from: &std::path::Path, to: &std::path::Path| -> Result<(), String> {
        for entry in walk(from) {
            let target = to.join(entry.strip_prefix(from).map_err(|e| e.to_string())?);
            std::fs::create_dir_all(target.parent().expect("parent")).map_err(|e| e.to_string())?;
            std::fs::copy(&entry, &target).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    copy(&fixture("tiny_audio_diffusion"), &dir)?;
    let load = || AudioDiffusion::from_folder(&dir, tch::Device::Cpu, Precision::F32).map(|_| ());
    let mel = dir.join("mel/mel_config.json");
    let original = std::fs::read_to_string(&mel).map_err(|e| e.to_string())?;
    for (field, value, says) in [
        ("hop_length", "0", "hop_length must be"),
        ("y_res", "2000", "y_res must be"),
        ("top_db", "-3", "top_db must be"),
        ("x_res", "64", "sample_size"),
        ("sample_rate", "\"fast\"", "invalid type"),
    ] {
        let mut config: serde_json::Value = serde_json::from_str(&original).map_err(|e| e.to_string())?;
        config[field] = serde_json::from_str(value).map_err(|e| e.to_string())?;
        let changed = config.to_string();
        std::fs::write(&mel, changed).map_err(|e| e.to_string())?;
        let error = load().expect_err(field).to_string();
        assert!(error.contains("mel_config.json") && error.contains(says), "{field}: {error}");
    }
    std::fs::remove_file(&mel).map_err(|e| e.to_string())?;
    let error = load().expect_err("no mel config").to_string();
    assert!(error.contains("mel_config.json"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn walk(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
