//! Prompt-to-prompt on the tiny pipeline: the properties that pin it down (diffusers has no
//! prompt-to-prompt pipeline to compare with): the same prompt reproduces plain generation,
//! re-weighting by 1 is the identity, injection keeps the target near the source, and bad word
//! edits are named.

mod common;

use std::sync::Arc;

use common::{fixture, run_output as run};

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::{
    DeviceChoice, EditSource, EngineEvent, GenerateParams, ImageData, Job, JobOutput, LabelledImage,
    Precision, PromptToPromptParams,
};
fn base(prompt: &str, scheduler: &str) -> GenerateParams {
    GenerateParams {
        model: fixture("tiny_sd_pipeline"),
        model_options: Default::default(),
        prompt: prompt.into(),
        negative_prompt: "a green square".into(),
        steps: 6,
        scheduler: scheduler.into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 21,
        width: 16,
        height: 16,
        precision: Precision::F32,
    }
}

fn p2p(source: &str, target: &str, scheduler: &str) -> PromptToPromptParams {
    PromptToPromptParams {
        base: base(source, scheduler),
        target_prompt: target.into(),
        cross_window: (0.0, 0.8),
        word_windows: Vec::new(),
        self_window: 0.4,
        reweight: Vec::new(),
        attention_maps: false,
        local_blend: Vec::new(),
        source: EditSource::Generated,
    }
}
fn image(output: JobOutput) -> ImageData {
    match output {
        JobOutput::Image(image) => image,
        other => panic!("expected an image, got {other:?}"),
    }
}

fn images(output: JobOutput) -> Vec<LabelledImage> {
    match output {
        JobOutput::Images(images) => images,
        other => panic!("expected images, got {other:?}"),
    }
}

fn max_difference(a: &ImageData, b: &ImageData) -> u8 {
    a.rgba.iter().zip(b.rgba.iter()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

fn mean_square(a: &ImageData, b: &ImageData) -> f64 {
    let total: f64 =
        a.rgba.iter().zip(b.rgba.iter()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    total / a.rgba.len() as f64
}

#[test]
fn the_same_prompt_reproduces_plain_generation_and_reweighting_by_one_is_the_identity() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let prompt = "a red circle on a blue background";
    for scheduler in ["ddim", "euler-a"] {
        let plain = image(run(&engine, Job::Generate(base(prompt, scheduler))).expect("generates"));
        let mut params = p2p(prompt, prompt, scheduler);
        params.reweight = vec![("red".into(), 1.0)];
        let result = images(run(&engine, Job::PromptToPrompt(params)).expect("edits"));
        assert_eq!(result[0].label, "target");
        assert_eq!(result[1].label, "source");
        // the explicit-softmax attention path agrees with fused attention to rounding
        assert!(
            max_difference(&result[1].image, &plain) <= 1,
            "{scheduler}: source differs from plain generation"
        );
        assert!(
            max_difference(&result[0].image, &plain) <= 1,
            "{scheduler}: target differs from plain generation"
        );
    }
}

#[test]
fn a_word_swap_with_injection_stays_closer_to_the_source_than_a_fresh_generation() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let (source, target) = ("a red circle on a blue background", "a green circle on a blue background");
    let mut params = p2p(source, target, "ddim");
    params.cross_window = (0.0, 1.0);
    params.self_window = 1.0;
    params.attention_maps = true;
    let result = images(run(&engine, Job::PromptToPrompt(params)).expect("edits"));
    let fresh = image(run(&engine, Job::Generate(base(target, "ddim"))).expect("generates"));
    let (edited, original) = (&result[0].image, &result[1].image);
    assert_ne!(edited.rgba, original.rgba, "the target prompt changed nothing");
    let (edited_distance, fresh_distance) = (mean_square(edited, original), mean_square(&fresh, original));
    assert!(
        edited_distance < fresh_distance,
        "injection should keep the layout: edit {edited_distance:.1} vs fresh {fresh_distance:.1} (mean square)"
    );
    // one attention map per target word, at the output's size, then each word's steps
    let words = ["a", "green", "circle", "on", "a", "blue", "background"];
    let labels: Vec<&str> = result[2..].iter().map(|m| m.label.as_str()).collect();
    let expected: Vec<String> = words
        .iter()
        .map(|w| format!("attention: {w}"))
        .chain(words.iter().map(|w| format!("attention steps: {w}")))
        .collect();
    assert_eq!(labels, expected);
    for map in &result[2..9] {
        assert_eq!((map.image.width, map.image.height), (16, 16));
        assert_eq!(map.image.rgba.iter().step_by(4).max(), Some(&255), "{} is normalised", map.label);
    }
    // a film strip of one frame per step (6), each normalised to its own peak
    for strip in &result[9..] {
        let strip_image = strip.image.to_rgba_image().expect("an image");
        let frames =
            diffusion_studio::protocol::attention_frames(&strip_image, 16, 16).expect("whole frames");
        assert_eq!(frames.len(), 6, "{}: one frame per step", strip.label);
        for (step, frame) in frames.iter().enumerate() {
            let peak = frame.pixels().map(|p| p[0]).max();
            assert_eq!(peak, Some(255), "{} step {step} is normalised", strip.label);
        }
    }
    // re-weighting a word changes the image
    let mut params = p2p(source, source, "ddim");
    params.reweight = vec![("red".into(), 4.0)];
    let reweighted = images(run(&engine, Job::PromptToPrompt(params)).expect("edits"));
    assert_ne!(reweighted[0].image.rgba, reweighted[1].image.rgba);
}

/// Per-word windows: every word given the global window is the global window; the swapped word
/// given a shorter one changes the edit (which way, on this random tiny model, says nothing).
#[test]
fn a_words_own_injection_window_acts_on_that_word() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let (source, target) = ("a red circle on a blue background", "a green circle on a blue background");
    let target_of = |params: PromptToPromptParams| {
        images(run(&engine, Job::PromptToPrompt(params)).expect("edits")).swap_remove(0).image
    };
    let global = target_of(p2p(source, target, "ddim"));
    let mut uniform = p2p(source, target, "ddim");
    uniform.word_windows = target.split_whitespace().map(|w| (w.to_string(), (0.0, 0.8))).collect();
    assert_eq!(target_of(uniform).rgba, global.rgba, "the same window per word is the global window");

    let mut all_steps = p2p(source, target, "ddim");
    all_steps.cross_window = (0.0, 1.0);
    let mut short = all_steps.clone();
    short.word_windows = vec![("green".into(), (0.0, 0.2))];
    let (all_steps, short) = (target_of(all_steps), target_of(short));
    assert_ne!(short.rgba, all_steps.rgba, "the word's own window changed the edit");
}

#[test]
fn local_blend_keeps_the_source_outside_the_words_region() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let (source, target) = ("a red circle on a blue background", "a green circle on a blue background");
    let plain = images(run(&engine, Job::PromptToPrompt(p2p(source, target, "ddim"))).expect("edits"));
    let mut params = p2p(source, target, "ddim");
    params.local_blend = vec!["red".into(), "green".into()];
    let blended = images(run(&engine, Job::PromptToPrompt(params)).expect("edits"));
    // the source is untouched by the blend (the tiny random model attends everywhere, so its
    // blend region is the whole image: the masking itself is unit-tested on set attention)
    assert_eq!(blended[1].image.rgba, plain[1].image.rgba);
    let mut params = p2p(source, target, "ddim");
    params.local_blend = vec!["purple".into()];
    let message = run(&engine, Job::PromptToPrompt(params)).expect_err("purple is in neither prompt");
    assert!(message.contains("\"purple\" is in neither the source nor the target prompt"), "{message}");
}

#[test]
fn word_edits_naming_words_not_in_the_prompt_are_refused_by_name() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let mut params = p2p("a red circle", "a green circle", "ddim");
    params.reweight = vec![("purple".into(), 2.0)];
    let message = run(&engine, Job::PromptToPrompt(params)).expect_err("purple is not there");
    assert!(message.contains("\"purple\" is not in the target prompt \"a green circle\""), "{message}");
    let long = "red circle ".repeat(40);
    let message = run(&engine, Job::PromptToPrompt(p2p(&long, "a circle", "ddim"))).expect_err("too long");
    assert!(message.contains("the source prompt has 80 tokens"), "{message}");
    let mut params = p2p("a red circle", "a green circle", "ddim");
    params.cross_window = (0.9, 0.2);
    let message = run(&engine, Job::PromptToPrompt(params)).expect_err("backwards window");
    assert!(message.contains("cross-attention window"), "{message}");
    let mut params = p2p("a red circle", "a green circle", "ddim");
    params.word_windows = vec![("purple".into(), (0.0, 0.5))];
    let message = run(&engine, Job::PromptToPrompt(params)).expect_err("purple is not there");
    assert!(
        message.contains("\"purple\" given its own attention window is not in the target prompt"),
        "{message}"
    );
    let mut params = p2p("a red circle", "a green circle", "ddim");
    params.word_windows = vec![("green".into(), (0.5, 1.5))];
    let message = run(&engine, Job::PromptToPrompt(params)).expect_err("out of range");
    assert!(message.contains("window of \"green\""), "{message}");
    run(&engine, Job::PromptToPrompt(p2p("a red circle", "a green circle", "ddim"))).expect("still serves");
}

#[test]
fn an_inverted_image_is_edited_from_its_inversion_and_the_same_prompt_gives_its_reconstruction() {
    use diffusion_studio::protocol::InvertParams;
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let prompt = "a red circle on a blue background";
    let photo = image::open(fixture("edit_image.png")).expect("fixture").into_rgba8();
    let invert = InvertParams {
        base: GenerateParams { negative_prompt: String::new(), ..base(prompt, "ddim") },
        image: ImageData::from_rgba_image(&photo),
        null_text: Some(6),
    };
    let inversion = match run(&engine, Job::Invert(invert)).expect("inverts") {
        JobOutput::Inversion(inversion) => inversion,
        other => panic!("expected an inversion, got {other:?}"),
    };
    let edit = |target: &str| PromptToPromptParams {
        base: GenerateParams { negative_prompt: String::new(), ..base(prompt, "ddim") },
        source: EditSource::Inversion(inversion.clone()),
        ..p2p(prompt, target, "ddim")
    };
    let same = images(run(&engine, Job::PromptToPrompt(edit(prompt))).expect("edits"));
    assert!(
        max_difference(&same[1].image, &inversion.reconstruction) <= 1,
        "source ≠ the null-text reconstruction"
    );
    assert!(
        max_difference(&same[0].image, &inversion.reconstruction) <= 1,
        "target ≠ the null-text reconstruction"
    );
    let swapped = images(
        run(&engine, Job::PromptToPrompt(edit("a green circle on a blue background"))).expect("edits"),
    );
    assert_eq!(swapped[1].image.rgba, same[1].image.rgba, "the source branch does not depend on the target");
    assert_ne!(swapped[0].image.rgba, same[0].image.rgba, "the swap changed nothing");
    // the same edit from the image itself: the engine kept the Invert job's inversion, so it
    // runs only the edit's steps, and gives what the inversion gave
    let from_image = |target: &str| PromptToPromptParams {
        source: EditSource::Image { image: ImageData::from_rgba_image(&photo), null_text: Some(6) },
        ..edit(target)
    };
    let (output, progress) =
        run_with_progress(&engine, Job::PromptToPrompt(from_image("a green circle on a blue background")));
    assert_eq!(progress.last(), Some(&(6, 6)), "the cached inversion ran again: {progress:?}");
    let from_image_swapped = images(output);
    assert_eq!(from_image_swapped[0].image.rgba, swapped[0].image.rgba);
    // a fresh engine inverts first: the inversion's and null-text steps, then the edit's
    let fresh = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let (output, progress) =
        run_with_progress(&fresh, Job::PromptToPrompt(from_image("a green circle on a blue background")));
    assert_eq!(progress.first(), Some(&(1, 18)));
    assert_eq!(progress.last(), Some(&(18, 18)));
    assert_eq!(images(output)[0].image.rgba, swapped[0].image.rgba);
}

/// Runs a job and keeps its progress as (step, of).
fn run_with_progress(engine: &EngineHandle, job: Job) -> (JobOutput, Vec<(usize, usize)>) {
    let id = engine.submit(job);
    let mut progress = Vec::new();
    loop {
        match engine.events().recv_timeout(std::time::Duration::from_secs(300)).expect("engine answers") {
            EngineEvent::Progress { job, step, of, .. } if job == id => progress.push((step, of)),
            EngineEvent::Done { job, output } if job == id => return (output, progress),
            EngineEvent::Failed { job, message } if job == id => panic!("{message}"),
            _ => {}
        }
    }
}

#[test]
fn a_re_edit_replays_the_recorded_source_and_matches_a_fresh_edit() {
    let source = "a red circle on a blue background";
    for scheduler in ["ddim", "euler-a"] {
        let warm = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
        let mut first = p2p(source, "a green circle on a blue background", scheduler);
        first.local_blend = vec!["red".into()];
        run(&warm, Job::PromptToPrompt(first.clone())).expect("records the source");
        let mut second = first.clone();
        second.target_prompt = "a yellow circle on a blue background".into();
        second.local_blend = vec!["red".into()];
        second.attention_maps = true;
        let replayed = images(run(&warm, Job::PromptToPrompt(second.clone())).expect("replays"));
        let fresh_engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
        let fresh = images(run(&fresh_engine, Job::PromptToPrompt(second)).expect("edits"));
        assert_eq!(replayed.len(), fresh.len());
        for (a, b) in replayed.iter().zip(&fresh) {
            assert_eq!(a.label, b.label);
            assert!(
                max_difference(&a.image, &b.image) <= 1,
                "{scheduler}: {} differs when replayed",
                a.label
            );
        }
    }
}

#[test]
fn paint_with_words_pulls_a_words_attention_into_its_region() {
    use diffusion_studio::protocol::PaintWithWordsParams;
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let prompt = "a red circle on a blue background";
    let left_half: Vec<u8> =
        (0..16 * 16).flat_map(|i| if i % 16 < 8 { [255, 255, 255, 255] } else { [0, 0, 0, 255] }).collect();
    let region = ImageData::new(16, 16, left_half).expect("mask");
    let paint = |regions: Vec<(String, ImageData)>| PaintWithWordsParams {
        base: base(prompt, "ddim"),
        regions,
        strength: 0.4,
        attention_maps: true,
    };
    // without regions it is plain generation
    let plain = image(run(&engine, Job::Generate(base(prompt, "ddim"))).expect("generates"));
    let unpainted = images(run(&engine, Job::PaintWithWords(paint(Vec::new()))).expect("paints"));
    assert!(max_difference(&unpainted[0].image, &plain) <= 1);
    // with "circle" painted on the left, its attention moves left
    let painted = images(
        run(&engine, Job::PaintWithWords(paint(vec![("circle".into(), region.clone())]))).expect("paints"),
    );
    let left_share = |maps: &[LabelledImage]| {
        let map = &maps.iter().find(|m| m.label == "attention: circle").expect("a circle map").image;
        let (mut left, mut all) = (0.0, 0.0);
        for (i, pixel) in map.rgba.chunks(4).enumerate() {
            let value = f64::from(pixel[0]);
            all += value;
            if i % 16 < 8 {
                left += value;
            }
        }
        left / all
    };
    let (before, after) = (left_share(&unpainted), left_share(&painted));
    assert!(after > before + 0.05, "circle's attention on the left: {before:.3} → {after:.3}");
    assert_ne!(painted[0].image.rgba, unpainted[0].image.rgba);
    // bad words and regions are named
    let message =
        run(&engine, Job::PaintWithWords(paint(vec![("star".into(), region.clone())]))).expect_err("no star");
    assert!(message.contains("painted word \"star\" is not in the prompt"), "{message}");
    let small = ImageData::new(8, 8, [255; 256].to_vec()).expect("mask");
    let message = run(&engine, Job::PaintWithWords(paint(vec![("circle".into(), small)]))).expect_err("size");
    assert!(message.contains("the region of \"circle\" is 8×8"), "{message}");
}
