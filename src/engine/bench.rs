//! Timing helpers for `make bench` (bench/run.sh): engine parts run outside the job queue.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::engine::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::engine::{JobError, device};
use crate::protocol::DeviceChoice;

/// Seconds per run of `work` on `device`, averaged over `runs` after one warm-up run (CUDA work
/// is synchronised before the clock is read).
fn time_runs(device: Device, runs: usize, work: &dyn Fn() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    work()?;
    sync();
    let start = Instant::now();
    for _ in 0..runs.max(1) {
        work()?;
    }
    sync();
    Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
}

/// Seconds per forward pass of a random-weight UNet from `preset` on (2, in_channels, latent, latent)
/// latents and a (2, 77, cross_attention_dim) context, after one warm-up pass.
/// With `split_branches`, the batch's halves run on two threads where the engine would do so;
/// returns the seconds per pass and whether they did.
pub fn unet_passes(
    choice: DeviceChoice,
    preset: &str,
    latent: i64,
    passes: usize,
    split_branches: bool,
) -> anyhow::Result<(f64, bool)> {
    let device = device::select(choice).map_err(anyhow::Error::msg)?;
    let config = match preset {
        "sd_v1_5" => UNet2DConditionConfig::sd_v1_5(),
        "sd_v2_1" => UNet2DConditionConfig::sd_v2_1(),
        path if std::path::Path::new(path).is_file() => {
            let text = std::fs::read_to_string(path)?;
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{path}: not a UNet config.json: {e}"))?
        }
        other => anyhow::bail!("unknown preset {other}: use sd_v1_5, sd_v2_1 or a UNet config.json"),
    };
    let (context_dim, channels) = (config.cross_attention_dim, config.in_channels);
    let mut unet = UNet2DConditionModel::new(config, device);
    let split = split_branches && unet.enable_branch_parallel();
    tch::manual_seed(0);
    let sample = Tensor::f_randn([2, channels, latent, latent], (Kind::Float, device))?;
    let context = Tensor::f_randn([2, 77, context_dim], (Kind::Float, device))?;
    let seconds = time_runs(device, passes, &|| {
        unet.forward(&sample, 500.0, &context).map(drop).map_err(anyhow::Error::from)
    })?;
    Ok((seconds, split))
}

/// Seconds per text-to-image job on the engine (model loaded by a warm-up job first), at
/// `size`² with `scheduler` and CFG 7.5 (the tiny fixture: 16×16 DPM++ 2M Karras, as
/// bench/diffusers_side.py does it).
pub fn generate_runs(
    choice: DeviceChoice,
    model: &std::path::Path,
    (size, steps, scheduler): (u32, usize, &str),
    runs: usize,
) -> anyhow::Result<f64> {
    use crate::engine::EngineHandle;
    use crate::protocol::{EngineEvent, GenerateParams, Job};
    let engine = EngineHandle::spawn(choice, std::sync::Arc::new(|| {}));
    let params = GenerateParams {
        model: model.into(),
        model_options: Default::default(),
        prompt: "a red circle on a blue background".into(),
        negative_prompt: "a green square".into(),
        steps,
        scheduler: scheduler.into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 3,
        width: size,
        height: size,
        precision: crate::protocol::Precision::F32,
    };
    let run_one = || -> anyhow::Result<()> {
        let id = engine.submit(Job::Generate(params.clone()));
        loop {
            match engine.events().recv()? {
                EngineEvent::Done { job, .. } if job == id => return Ok(()),
                EngineEvent::Failed { job, message } if job == id => anyhow::bail!(message),
                _ => {}
            }
        }
    };
    run_one()?;
    let start = Instant::now();
    for _ in 0..runs.max(1) {
        run_one()?;
    }
    Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
}

/// Median and slowest seconds from submitting a text-to-audio job (the audio room's Generate:
/// `steps` DPM++ 2M Karras steps, CFG 4, 32 Griffin-Lim iterations) to its clip, after one
/// warm-up job that also loads the model.
pub fn audio_generate_runs(
    choice: DeviceChoice,
    model: &std::path::Path,
    steps: usize,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    use crate::engine::EngineHandle;
    use crate::protocol::{AudioParams, AudioTask, EngineEvent, GenerateParams, Job};
    let engine = EngineHandle::spawn(choice, std::sync::Arc::new(|| {}));
    let run_one = |seed: u64| -> anyhow::Result<f64> {
        let params = AudioParams {
            base: GenerateParams {
                model: model.into(),
                model_options: Default::default(),
                prompt: "a fast drum beat".into(),
                negative_prompt: String::new(),
                steps,
                scheduler: "dpm++2m-karras".into(),
                guidance_scale: 4.0,
                guidance_rescale: 0.0,
                clip_skip: 0,
                seed,
                width: 0,
                height: 0,
                precision: crate::protocol::Precision::F32,
            },
            preset: String::new(),
            task: AudioTask::Generate,
            griffin_lim_iterations: 32,
        };
        let start = Instant::now();
        let id = engine.submit(Job::Audio(params));
        loop {
            match engine.events().recv()? {
                EngineEvent::Done { job, .. } if job == id => return Ok(start.elapsed().as_secs_f64()),
                EngineEvent::Failed { job, message } if job == id => anyhow::bail!(message),
                _ => {}
            }
        }
    };
    run_one(0)?;
    let mut times = (1..=runs.max(1) as u64).map(run_one).collect::<anyhow::Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// Seconds per 512-class text-to-image run of a release-shaped model with random weights
/// (`preset` sd_v1_5 or sd_v2_1): text encoding, `steps` DPM++ 2M Karras steps with CFG (UNet
/// batch 2) in `precision`, and the VAE decode — the GPU target's workload. One warm-up run.
pub fn random_pipeline_runs(
    choice: DeviceChoice,
    preset: &str,
    size: u32,
    steps: usize,
    precision: crate::protocol::Precision,
    runs: usize,
) -> anyhow::Result<f64> {
    use crate::engine::pipeline::StableDiffusion;
    use crate::protocol::{GenerateParams, ModelFamily};
    let device = device::select(choice).map_err(anyhow::Error::msg)?;
    let family = match preset {
        "sd_v1_5" => ModelFamily::Sd1,
        "sd_v2_1" => ModelFamily::Sd2,
        other => anyhow::bail!("unknown preset {other}: use sd_v1_5 or sd_v2_1"),
    };
    let _no_grad = tch::no_grad_guard();
    let model = StableDiffusion::random(family, device, precision)?;
    let params = GenerateParams {
        model: format!("random {preset}").into(),
        model_options: Default::default(),
        prompt: "a red circle on a blue background".into(),
        negative_prompt: String::new(),
        steps,
        scheduler: "dpm++2m-karras".into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 0,
        width: size,
        height: size,
        precision,
    };
    time_runs(device, runs, &|| {
        model.generate_with(&params, |_, _, _| Ok(())).map(drop).map_err(|error| anyhow::anyhow!("{error}"))
    })
}

/// Seconds per plain generation, per first prompt-to-prompt edit of a source (both branches,
/// recording the source) and per re-edit of it (the target branch against the recording) — swap
/// one word, cross window 0–0.8, self window 0.4, equal steps, DDIM, CFG 7.5 — on `model` (a
/// diffusers folder or single file) or, for "sd_v1_5"/"sd_v2_1", a release-shaped model with
/// random weights.
pub fn edit_runs(
    choice: DeviceChoice,
    model: &str,
    size: u32,
    steps: usize,
    runs: usize,
) -> anyhow::Result<EditTimes> {
    use crate::engine::methods::{inversion, null_text, prompt_to_prompt};
    use crate::engine::pipeline::StableDiffusion;
    use crate::protocol::{GenerateParams, ModelFamily, PromptToPromptParams};
    let device = device::select(choice).map_err(anyhow::Error::msg)?;
    let _no_grad = tch::no_grad_guard();
    let loaded = match model {
        "sd_v1_5" => StableDiffusion::random(ModelFamily::Sd1, device, crate::protocol::Precision::F32)?,
        "sd_v2_1" => StableDiffusion::random(ModelFamily::Sd2, device, crate::protocol::Precision::F32)?,
        path => StableDiffusion::load(
            std::path::Path::new(path),
            &Default::default(),
            device,
            crate::protocol::Precision::F32,
        )?,
    };
    let base = GenerateParams {
        model: model.into(),
        model_options: Default::default(),
        prompt: "a red circle on a blue background".into(),
        negative_prompt: String::new(),
        steps,
        scheduler: "ddim".into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 0,
        width: size,
        height: size,
        precision: crate::protocol::Precision::F32,
    };
    let edit = PromptToPromptParams {
        base: base.clone(),
        target_prompt: "a green circle on a blue background".into(),
        cross_window: (0.0, 0.8),
        word_windows: Vec::new(),
        self_window: 0.4,
        reweight: Vec::new(),
        attention_maps: false,
        local_blend: Vec::new(),
        source: Default::default(),
    };
    let time = |work: &dyn Fn() -> anyhow::Result<()>| time_runs(device, runs, work);
    let plain = time(&|| {
        loaded.generate_with(&base, |_, _, _| Ok(())).map(drop).map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let edit_once = || {
        prompt_to_prompt::run_with(&loaded, &edit, |_, _, _| Ok(()))
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let first = time(&|| {
        loaded.forget_recorded_source();
        edit_once()
    })?;
    let again = time(&edit_once)?;
    // null-text inversion of a plain generation's image: our default inner steps, and the
    // paper's 10 (both with its early stop); uncached
    let image = loaded.generate_with(&base, |_, _, _| Ok(())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let null_text_with = |inner_steps: usize| {
        time(&|| {
            let fail = |e: JobError| anyhow::anyhow!("{e}");
            let trajectory =
                inversion::ddim_invert(&loaded, &image, &base.prompt, steps, 0, |_, _, _| Ok(()))
                    .map_err(fail)?;
            let (text, null) = loaded.prompt_pair(&base.prompt, "", 0).map_err(fail)?;
            let settings = null_text::NullTextSettings { inner_steps, ..Default::default() };
            null_text::optimize(&loaded, &trajectory, &text, &null, 7.5, settings, |_, _, _| Ok(()))
                .map(drop)
                .map_err(fail)
        })
    };
    let null_text = null_text_with(crate::protocol::DEFAULT_NULL_TEXT_STEPS)?;
    let null_text_paper = null_text_with(10)?;
    // a real image's re-edit: its null-text inversion and source branch kept by the first edit
    let real = PromptToPromptParams {
        source: crate::protocol::EditSource::Image {
            image,
            null_text: Some(crate::protocol::DEFAULT_NULL_TEXT_STEPS),
        },
        ..edit.clone()
    };
    prompt_to_prompt::run_with(&loaded, &real, |_, _, _| Ok(())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let targets = ["a yellow circle on a blue background", "a green circle on a blue background"];
    let next = std::cell::Cell::new(0);
    let inverted_again = time(&|| {
        let target = targets[next.get() % targets.len()];
        next.set(next.get() + 1);
        let params = PromptToPromptParams { target_prompt: target.into(), ..real.clone() };
        prompt_to_prompt::run_with(&loaded, &params, |_, _, _| Ok(()))
            .map(drop)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    Ok(EditTimes { plain, first, again, null_text, null_text_paper, inverted_again })
}

/// Seconds per plain generation, first prompt-to-prompt edit, re-edit, null-text inversion (our
/// default inner steps and the paper's 10), and re-edit of a null-text-inverted real image.
pub struct EditTimes {
    pub plain: f64,
    pub first: f64,
    pub again: f64,
    pub null_text: f64,
    pub null_text_paper: f64,
    pub inverted_again: f64,
}

/// Seconds per Griffin-Lim run of `iterations` on one image's worth (`width` frames) of the
/// preset's spectrogram of the reference signal, after one warm-up run.
pub fn griffin_lim_runs(
    device: DeviceChoice,
    preset: &str,
    iterations: usize,
    runs: usize,
) -> anyhow::Result<f64> {
    use crate::engine::spectrogram::{Spectrogram, SpectrogramPreset, reference_signal};
    let preset = SpectrogramPreset::by_name(preset).map_err(anyhow::Error::msg)?;
    let device = crate::engine::device::select(device).map_err(anyhow::Error::msg)?;
    let spectrogram = Spectrogram::new(preset.clone(), device)?;
    let seconds = preset.samples_for(preset.width) as f64 / f64::from(preset.sample_rate);
    let mel = spectrogram.mel(&reference_signal(preset.sample_rate, seconds))?;
    let magnitude = spectrogram.linear_magnitude(&mel)?;
    let length = preset.samples_for(preset.width);
    spectrogram.griffin_lim(&magnitude, iterations, 0.99, 0, length)?;
    let start = std::time::Instant::now();
    for run in 0..runs.max(1) {
        spectrogram.griffin_lim(&magnitude, iterations, 0.99, run as u64, length)?;
    }
    Ok(start.elapsed().as_secs_f64() / runs.max(1) as f64)
}
