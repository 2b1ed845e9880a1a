//! Helpers shared by the integration tests: fixtures, running a job on an engine, comparing an
//! image with diffusers' recorded one.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::time::Duration;

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::{EngineEvent, GenerateParams, ImageData, Job, JobOutput, Precision};
use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fixture model loaded directly (not through an engine), with libtorch's default generator
/// held: building modules draws their initial weights from it, which must not interleave with a
/// seeded job running in the same test binary. Keep the guard while the model is used.
pub fn load_model(
    name: &str,
) -> (std::sync::MutexGuard<'static, ()>, diffusion_studio::engine::pipeline::StableDiffusion) {
    let guard = diffusion_studio::engine::default_generator_lock();
    let model = diffusion_studio::engine::pipeline::StableDiffusion::load(
        &fixture(name),
        &Default::default(),
        tch::Device::Cpu,
        Precision::F32,
    )
    .expect("the fixture model loads");
    (guard, model)
}

/// A JSON fixture file.
pub fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).expect("fixture")).expect("json")
}

/// Runs `job` and returns its output, or its failure message.
pub fn run_output(engine: &EngineHandle, job: Job) -> Result<JobOutput, String> {
    let id = engine.submit(job);
    loop {
        match engine.events().recv_timeout(Duration::from_secs(300)).map_err(|e| e.to_string())? {
            EngineEvent::Done { job, output } if job == id => return Ok(output),
            EngineEvent::Failed { job, message } if job == id => return Err(message),
            _ => {}
        }
    }
}

/// Runs an image job.
pub fn run_image(engine: &EngineHandle, job: Job) -> Result<ImageData, String> {
    match run_output(engine, job)? {
        JobOutput::Image(image) => Ok(image),
        other => Err(format!("expected an image, got {other:?}")),
    }
}

/// A recorded case's generation parameters (`model` names a fixture folder; 16×16 unless the
/// record says otherwise).
pub fn record_params(record: &Value) -> GenerateParams {
    let size = |key: &str| record[key].as_u64().unwrap_or(16) as u32;
    GenerateParams {
        model: fixture(record["model"].as_str().or(record["file"].as_str()).expect("model or file")),
        model_options: Default::default(),
        prompt: record["prompt"].as_str().expect("prompt").into(),
        negative_prompt: record["negative_prompt"].as_str().expect("negative").into(),
        steps: record["steps"].as_u64().expect("steps") as usize,
        scheduler: record["scheduler"].as_str().expect("scheduler").into(),
        guidance_scale: record["guidance"].as_f64().expect("guidance"),
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: record["seed"].as_u64().expect("seed"),
        width: size("width"),
        height: size("height"),
        precision: Precision::F32,
    }
}

/// The largest difference of `image`'s RGB from diffusers' image in [0, 1] (as `np` output), in
/// 1/255 steps.
pub fn max_difference_255(image: &ImageData, expected: &Value) -> f64 {
    let expected: Vec<f64> =
        expected.as_array().expect("image").iter().map(|v| v.as_f64().expect("f")).collect();
    let rgb: Vec<u8> = image.rgba.chunks(4).flat_map(|p| p[..3].to_vec()).collect();
    assert_eq!(rgb.len(), expected.len());
    rgb.iter().zip(&expected).map(|(a, b)| (f64::from(*a) - b * 255.0).abs()).fold(0.0, f64::max)
}
