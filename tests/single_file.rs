//! Single-file checkpoints in the original LDM layout: the tiny pipelines written in that layout
//! (tests/fixtures/ldm_layout.py, checked by diffusers' `from_single_file`) must generate
//! diffusers' images; full-size SD 1.5 / 2.1 key layouts (recorded without weights) must be
//! detected as diffusers detects them and fill every weight of the release-config models.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::engine::loading::LoadError;
use diffusion_studio::engine::loading::single_file::{self, Layout, Part, Route, Variant};
use diffusion_studio::engine::models::clip::{ClipTextConfig, ClipTextModel};
use diffusion_studio::engine::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use diffusion_studio::engine::models::vae::{AutoencoderKl, AutoencoderKlConfig};
use diffusion_studio::protocol::{
    DeviceChoice, EngineEvent, GenerateParams, ImageData, Job, JobOutput, ModelFamily, ModelOptions,
    Prediction,
};
use serde_json::Value;
use tch::Device;

use common::{fixture, max_difference_255};
fn records() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("single_file.json")).expect("fixture"))
        .expect("json")
}

fn run(engine: &EngineHandle, job: Job) -> Result<(ImageData, Vec<String>), String> {
    let id = engine.submit(job);
    let mut loaded = Vec::new();
    loop {
        match engine.events().recv_timeout(Duration::from_secs(300)).expect("engine answers") {
            EngineEvent::ModelLoaded { job, description, .. } if job == id => loaded.push(description),
            EngineEvent::Done { job, output: JobOutput::Image(image) } if job == id => {
                return Ok((image, loaded));
            }
            EngineEvent::Failed { job, message } if job == id => return Err(message),
            _ => {}
        }
    }
}

fn params(record: &Value, options: ModelOptions) -> GenerateParams {
    GenerateParams { model_options: options, ..common::record_params(record) }
}
#[test]
fn single_files_generate_diffusers_from_single_file_images() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    for record in records()["images"].as_array().expect("images") {
        let options = ModelOptions {
            config: Some(fixture(record["config"].as_str().expect("config"))),
            ..Default::default()
        };
        let (image, loaded) = run(&engine, Job::Generate(params(record, options))).expect("generates");
        let difference = max_difference_255(&image, &record["image"]);
        assert!(difference <= 2.0, "{}: off by {difference}/255", record["file"]);
        assert_eq!(loaded.len(), 1, "{loaded:?}");
        let family = if record["file"] == "tiny_sd_single.safetensors" { "SD 1.x" } else { "SD 2.x" };
        assert!(loaded[0].contains(&format!("{family} text-to-image checkpoint")), "{}", loaded[0]);
    }
}

#[test]
fn a_prediction_type_override_reaches_the_scheduler() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let records = records();
    let record = &records["images"][1];
    assert_eq!(record["file"], "tiny_sd2_single.safetensors");
    let config = Some(fixture(record["config"].as_str().expect("config")));
    let (image, loaded) = run(
        &engine,
        Job::Generate(params(
            record,
            ModelOptions { prediction: Some(Prediction::Epsilon), config, ..Default::default() },
        )),
    )
    .expect("generates");
    assert!(loaded[0].contains("prediction type epsilon (as asked)"), "{}", loaded[0]);
    // the v-prediction model read as epsilon gives another image
    assert!(max_difference_255(&image, &record["image"]) > 10.0);
}

#[test]
fn a_non_standard_single_file_without_configs_names_the_key_shapes_and_what_to_do() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let records = records();
    let message = run(&engine, Job::Generate(params(&records["images"][0], ModelOptions::default())))
        .expect_err("tiny shapes are not SD 1.5's");
    assert!(message.contains("tiny_sd_single.safetensors"), "{message}");
    assert!(message.contains("cond_stage_model.transformer.text_model."), "{message}");
    assert!(message.contains("[77, 32]") && message.contains("[77, 768]"), "{message}");
    assert!(message.contains("--model-config"), "{message}");
    // forcing the wrong family: SD 2.x needs an OpenCLIP text encoder the file does not have
    let config = Some(fixture("tiny_sd2_pipeline"));
    let options = ModelOptions { family: Some(ModelFamily::Sd2), config, ..Default::default() };
    let message =
        run(&engine, Job::Generate(params(&records["images"][0], options))).expect_err("wrong family");
    assert!(message.contains("missing") && message.contains("TextEncoder"), "{message}");
    // the engine goes on serving
    let config = Some(fixture("tiny_sd_pipeline"));
    run(&engine, Job::Generate(params(&records["images"][0], ModelOptions { config, ..Default::default() })))
        .expect("still serves");
}

fn layout_shapes(name: &str) -> (BTreeMap<String, Vec<i64>>, Value) {
    let records = records();
    let layout = &records["layouts"][name];
    let shapes = layout["keys"]
        .as_object()
        .expect("keys")
        .iter()
        .map(|(k, v)| {
            (k.clone(), v.as_array().expect("shape").iter().map(|d| d.as_i64().expect("dim")).collect())
        })
        .collect();
    (shapes, layout["variants"].clone())
}

#[test]
fn full_size_checkpoints_are_detected_as_diffusers_detects_them() {
    for name in ["sd15", "sd21"] {
        let (shapes, variants) = layout_shapes(name);
        for (variant, record) in variants.as_object().expect("variants") {
            let mut shapes = shapes.clone();
            for (key, shape) in record["changes"].as_object().expect("changes") {
                let shape =
                    shape.as_array().expect("shape").iter().map(|d| d.as_i64().expect("dim")).collect();
                shapes.insert(key.clone(), shape);
            }
            let detected =
                single_file::detect(&shapes, Path::new("model.safetensors"), &ModelOptions::default())
                    .expect("detects");
            let theirs = record["diffusers_model_type"].as_str().expect("type");
            let (family, kind, prediction) = match theirs {
                "v1" => (ModelFamily::Sd1, Variant::Base, Prediction::Epsilon),
                "inpainting" => (ModelFamily::Sd1, Variant::Inpainting, Prediction::Epsilon),
                "instruct-pix2pix" => (ModelFamily::Sd1, Variant::InstructPix2Pix, Prediction::Epsilon),
                "inpainting_v2" => (ModelFamily::Sd2, Variant::Inpainting, Prediction::Epsilon),
                // diffusers calls an 8-channel SD 2.x UNet "v2" too; its channels say InstructPix2Pix
                "v2" if variant == "instruct_pix2pix" => {
                    (ModelFamily::Sd2, Variant::InstructPix2Pix, Prediction::Epsilon)
                }
                "v2" => (ModelFamily::Sd2, Variant::Base, Prediction::V),
                other => panic!("{name}/{variant}: diffusers type {other} not expected"),
            };
            assert_eq!(
                (detected.family, detected.variant, detected.prediction),
                (family, kind, prediction),
                "{name}/{variant}"
            );
            // the user's word wins
            let forced = ModelOptions {
                family: Some(ModelFamily::Sd1),
                prediction: Some(Prediction::Sample),
                config: None,
            };
            let detected =
                single_file::detect(&shapes, Path::new("m.safetensors"), &forced).expect("detects");
            assert_eq!((detected.family, detected.prediction), (ModelFamily::Sd1, Prediction::Sample));
        }
    }
}

/// Routes a full-size layout and checks it against the variables of the release-config models:
/// every variable filled exactly once, shapes equal up to unit dimensions, no key unknown.
fn check_layout(name: &str, family: ModelFamily) {
    let (shapes, _) = layout_shapes(name);
    let (text, unet) = match family {
        ModelFamily::Sd1 => (ClipTextConfig::sd_v1(), UNet2DConditionConfig::sd_v1_5()),
        ModelFamily::Sd2 => (ClipTextConfig::sd_v2(), UNet2DConditionConfig::sd_v2_1()),
    };
    let layout = Layout {
        family,
        unet_layers_per_block: unet.layers_per_block,
        vae_levels: 4,
        text_layers: text.num_hidden_layers,
    };
    let mut targets: BTreeMap<(Part, String), Vec<i64>> = BTreeMap::new();
    let mut ignored = 0;
    for (key, shape) in &shapes {
        match single_file::route(key, &layout) {
            Route::To(to) => {
                for target in to {
                    let mut shape = shape.clone();
                    if target.third.is_some() {
                        shape[0] /= 3;
                    }
                    let previous = targets.insert((target.part, target.name.clone()), shape);
                    assert!(previous.is_none(), "{name}: two keys fill {}", target.name);
                }
            }
            Route::Ignored(_) => ignored += 1,
            Route::Unknown => panic!("{name}: {key} maps nowhere"),
        }
    }
    // buffers, EMA bookkeeping, position ids, and for SD 2.x the unused last layer + projection
    let expected_ignored = if family == ModelFamily::Sd1 { 15 } else { 12 + 2 + 12 + 2 };
    assert_eq!(ignored, expected_ignored, "{name}");
    // building modules draws their initial weights from the generator the engine tests seed
    let _generator = diffusion_studio::engine::default_generator_lock();
    let squeeze = |shape: &[i64]| shape.iter().copied().filter(|d| *d != 1).collect::<Vec<_>>();
    let mut check = |part: Part, vs: &tch::nn::VarStore| {
        let variables = vs.variables();
        for (variable, tensor) in &variables {
            let shape = targets
                .remove(&(part, variable.clone()))
                .unwrap_or_else(|| panic!("{name}: nothing fills {part:?} {variable}"));
            assert_eq!(squeeze(&shape), squeeze(&tensor.size()), "{name}: {part:?} {variable}");
        }
    };
    check(Part::TextEncoder, ClipTextModel::new(text, Device::Cpu).var_store());
    check(Part::Vae, AutoencoderKl::new(AutoencoderKlConfig::sd(), Device::Cpu).var_store());
    check(Part::Unet, UNet2DConditionModel::new(unet, Device::Cpu).var_store());
    assert!(
        targets.is_empty(),
        "{name}: keys for no variable: {:?}",
        targets.keys().take(3).collect::<Vec<_>>()
    );
}

#[test]
fn a_full_size_sd15_checkpoint_fills_every_weight_of_the_sd15_models() {
    check_layout("sd15", ModelFamily::Sd1);
}

#[test]
fn a_full_size_sd21_checkpoint_fills_every_weight_of_the_sd21_models() {
    check_layout("sd21", ModelFamily::Sd2);
}

#[test]
fn files_that_are_not_sd_checkpoints_are_named_for_what_they_are() {
    let detect = |keys: &[(&str, Vec<i64>)]| {
        let shapes: BTreeMap<String, Vec<i64>> =
            keys.iter().map(|(k, s)| (k.to_string(), s.clone())).collect();
        single_file::detect(&shapes, Path::new("/models/thing.safetensors"), &ModelOptions::default())
            .expect_err("refused")
            .to_string()
    };
    let conv_in = "model.diffusion_model.input_blocks.0.0.weight";
    type Keys<'a> = Vec<(&'a str, Vec<i64>)>;
    let cases: Vec<(Keys, &str)> = vec![
        (vec![("conditioner.embedders.0.transformer.x", vec![1]), (conv_in, vec![320, 4, 3, 3])], "SDXL"),
        (vec![("down_blocks.0.resnets.0.conv1.weight", vec![1])], "one component of a diffusers folder"),
        (vec![("lora_unet_down_blocks_0.alpha", vec![1])], "LoRA"),
        (vec![("anything", vec![1])], "not a Stable Diffusion single-file checkpoint"),
        (
            vec![(conv_in, vec![320, 5, 3, 3]), ("cond_stage_model.transformer.x", vec![1])],
            "has 5 input channels",
        ),
        (vec![(conv_in, vec![320, 4, 3, 3])], "no text encoder"),
    ];
    for (keys, expected) in cases {
        let message = detect(&keys);
        assert!(message.contains("/models/thing.safetensors") && message.contains(expected), "{message}");
    }
    // a key under the UNet's prefix that maps nowhere is named
    let layout =
        Layout { family: ModelFamily::Sd1, unet_layers_per_block: 2, vae_levels: 4, text_layers: 12 };
    let weights = BTreeMap::from([(
        "model.diffusion_model.label_emb.0.0.weight".to_string(),
        tch::Tensor::zeros([2], (tch::Kind::Float, Device::Cpu)),
    )]);
    let error = single_file::split(weights, &layout, Path::new("x.safetensors")).err().expect("unknown key");
    assert!(
        matches!(error, LoadError::Unexpected { .. }) && error.to_string().contains("label_emb"),
        "{error}"
    );
}
