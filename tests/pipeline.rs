//! Text-to-image through the engine against diffusers' `StableDiffusionPipeline` on a tiny model
//! (`tests/fixtures/tiny_sd_pipeline`): same seed, prompt, scheduler and steps → the same image.

mod common;

use std::sync::Arc;

use common::{fixture, record_params as params, run_image as run};

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::{DeviceChoice, EngineEvent, GenerateParams, Job, JobOutput, Precision};
use serde_json::Value;
#[test]
fn generation_reproduces_diffusers_images_for_each_scheduler_and_sd2_v_prediction() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pipeline.json")).expect("fixture"))
            .expect("json");
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    for case in cases.as_array().expect("cases") {
        let name = format!(
            "{} {}",
            case["model"].as_str().expect("model"),
            case["scheduler"].as_str().expect("name")
        );
        let image = run(&engine, Job::Generate(params(case))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width, image.height), (16, 16));
        let worst = common::max_difference_255(&image, &case["image"]);
        assert!(worst <= 2.0, "{name}: a pixel differs from diffusers by {worst:.2}/255");
    }
    assert!(cases.as_array().expect("cases").len() >= 10, "every scheduler, two model shapes");
    // The model stays loaded: a second job with a bad parameter fails cleanly, the next succeeds.
    let first = &cases[0];
    let bad = GenerateParams { scheduler: "plms".into(), ..params(first) };
    let message = run(&engine, Job::Generate(bad)).expect_err("unknown scheduler");
    assert!(message.contains("plms"), "{message}");
    let long = GenerateParams { prompt: "red circle ".repeat(500), ..params(first) };
    run(&engine, Job::Generate(long)).expect("a 1000-word prompt is chunked, not refused");
}

#[test]
fn a_folder_that_is_not_a_model_is_a_clear_failure() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let case = GenerateParams {
        model: fixture("tiny_vae"),
        model_options: Default::default(),
        prompt: "x".into(),
        negative_prompt: String::new(),
        steps: 2,
        scheduler: "ddim".into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 0,
        width: 16,
        height: 16,
        precision: Precision::F32,
    };
    let message = run(&engine, Job::Generate(case)).expect_err("not a pipeline");
    assert!(message.contains("model_index.json"), "{message}");
}

#[test]
fn half_precision_unets_give_nearly_the_same_image() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pipeline.json")).expect("fixture"))
            .expect("json");
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let base = params(&cases[0]);
    let reference = run(&engine, Job::Generate(base.clone())).expect("f32");
    for precision in [Precision::F16, Precision::Bf16] {
        let image = run(&engine, Job::Generate(GenerateParams { precision, ..base.clone() })).expect("half");
        let worst =
            image.rgba.iter().zip(reference.rgba.iter()).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        assert!(worst <= 8, "{precision:?}: a channel differs from f32 by {worst}/255");
    }
}

#[test]
fn a_model_loaded_ahead_serves_the_next_jobs_and_unload_frees_it() {
    use diffusion_studio::protocol::{ModelRef, Precision as P};
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let model =
        ModelRef { path: fixture("tiny_sd_pipeline"), options: Default::default(), precision: P::F32 };
    let load = engine.load_model(model);
    let mut loaded = 0;
    loop {
        match engine.events().recv_timeout(std::time::Duration::from_secs(60)).expect("event") {
            EngineEvent::ModelLoaded { .. } => loaded += 1,
            EngineEvent::Done { job, output: JobOutput::Loaded(description) } if job == load => {
                assert!(description.contains("tiny_sd_pipeline"), "{description}");
                break;
            }
            EngineEvent::Failed { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert_eq!(loaded, 1);
    // the generation that follows uses the loaded model: no second load
    let records: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pipeline.json")).expect("fixture"))
            .expect("json");
    let case = &records.as_array().expect("records")[0];
    let id = engine.submit(Job::Generate(params(case)));
    loop {
        match engine.events().recv_timeout(std::time::Duration::from_secs(60)).expect("event") {
            EngineEvent::ModelLoaded { .. } => panic!("the model was loaded again"),
            EngineEvent::Done { job, .. } if job == id => break,
            EngineEvent::Failed { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    engine.unload();
    loop {
        if let EngineEvent::Unloaded =
            engine.events().recv_timeout(std::time::Duration::from_secs(60)).expect("event")
        {
            break;
        }
    }
    // after an unload the next job loads the model again
    let id = engine.submit(Job::Generate(params(case)));
    let mut reloaded = false;
    loop {
        match engine.events().recv_timeout(std::time::Duration::from_secs(60)).expect("event") {
            EngineEvent::ModelLoaded { .. } => reloaded = true,
            EngineEvent::Done { job, .. } if job == id => break,
            EngineEvent::Failed { message, .. } => panic!("{message}"),
            _ => {}
        }
    }
    assert!(reloaded);
}

#[test]
fn prompt_embeddings_are_computed_once_per_prompt() {
    let (_generator, model) = common::load_model("tiny_sd_pipeline");
    let first = model.encode_prompt("a red circle", 1, 0).expect("encodes");
    let again = model.encode_prompt("a red circle", 1, 0).expect("encodes");
    assert_eq!(model.cached_embeddings(), 1);
    assert!(first.equal(&again));
    let _ = model.encode_prompt("a red circle", 1, 1).expect("encodes");
    let _ = model.encode_prompt("a blue circle", 1, 0).expect("encodes");
    assert_eq!(model.cached_embeddings(), 3);
}
