//! The bundled shapes model (`assets/models/shapes`, trained by `diffusion-studio train`):
//! diffusers' own pipeline generates the same images from it, DDIM inversion of dataset images
//! gets better with more steps (a property random weights cannot show), and the CLI uses it
//! when no model is named.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use diffusion_studio::catalog::bundled_shapes_model;
use diffusion_studio::datasets::shapes::{self, Split};
use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::{
    DeviceChoice, GenerateParams, ImageData, InvertParams, Job, JobOutput, Precision,
};
use serde_json::Value;

fn model() -> PathBuf {
    let path = bundled_shapes_model();
    assert!(path.join("model_index.json").is_file(), "the bundled model is missing at {}", path.display());
    path
}

fn base(prompt: &str, steps: usize, guidance: f64) -> GenerateParams {
    GenerateParams {
        model: model(),
        model_options: Default::default(),
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps,
        scheduler: "ddim".into(),
        guidance_scale: guidance,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 0,
        width: 128,
        height: 128,
        precision: Precision::F32,
    }
}

#[test]
fn diffusers_generates_the_same_images_from_the_bundled_model() {
    let records: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("shapes_model.json")).expect("fixture"),
    )
    .expect("json");
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    for record in records.as_array().expect("records") {
        let params = common::record_params(record);
        let image = common::run_image(&engine, Job::Generate(params)).expect("generates");
        let worst = common::max_difference_255(&image, &record["image"]);
        assert!(worst <= 3.0, "{}: a pixel differs from diffusers by {worst:.2}/255", record["prompt"]);
    }
}

#[test]
fn ddim_inversion_reconstructs_better_with_more_steps() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let mut mean_psnr = Vec::new();
    for steps in [4usize, 10, 25] {
        let mut total = 0.0;
        for index in 0..3 {
            let sample = shapes::sample(9, index, Split::Eval, 128, 128);
            let rgba = sample.rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
            let params = InvertParams {
                base: base(&sample.caption, steps, 1.0),
                image: ImageData { width: 128, height: 128, rgba: Arc::new(rgba) },
                null_text: None,
            };
            match common::run_output(&engine, Job::Invert(params)).expect("inverts") {
                JobOutput::Inversion(inversion) => total += inversion.psnr,
                other => panic!("not an inversion: {other:?}"),
            }
        }
        mean_psnr.push(total / 3.0);
    }
    eprintln!("DDIM inversion PSNR at 4, 10, 25 steps: {mean_psnr:?}");
    assert!(
        mean_psnr[0] < mean_psnr[1] && mean_psnr[1] < mean_psnr[2],
        "PSNR at 4, 10, 25 steps should rise: {mean_psnr:?}"
    );
    // a trained denoiser, not noise: random weights stay near 13 dB at any step count
    assert!(mean_psnr[2] >= 24.0 && mean_psnr[2] - mean_psnr[0] >= 1.0, "{mean_psnr:?}");
}

#[test]
fn the_cli_generates_with_the_bundled_model_when_none_is_named() {
    let out = std::env::temp_dir().join(format!("ds-default-model-{}.png", std::process::id()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_diffusion-studio"))
        .args([
            "--device",
            "cpu",
            "generate",
            "--prompt",
            "a red circle on a blue background",
            "--steps",
            "4",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("runs");
    assert!(status.success());
    let image = image::open(&out).expect("a PNG").to_rgb8();
    assert_eq!(image.dimensions(), (128, 128), "the model's own size");
    let _ = std::fs::remove_file(&out);
}
