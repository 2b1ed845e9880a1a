//! img2img and inpainting against diffusers' `StableDiffusionImg2ImgPipeline` and
//! `StableDiffusionInpaintPipeline` (tests/fixtures/editing.json), and the properties diffusers
//! has no counterpart for: exact compositing outside the mask, clear errors for bad masks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fixture, max_difference_255, record_params as base, run_image as run};

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::{
    DeviceChoice, EngineEvent, GenerateParams, ImageData, Img2ImgParams, InpaintParams, Job, JobOutput,
    MaskOptions,
};
use serde_json::Value;
fn png(name: &str) -> ImageData {
    ImageData::from_rgba_image(&image::open(fixture(name)).expect("fixture image").into_rgba8())
}

fn hard_mask() -> MaskOptions {
    MaskOptions { dilate: 0, feather: 0.0, invert: false }
}

fn job(record: &Value, composite: bool) -> Job {
    let strength = record["strength"].as_f64().expect("strength");
    match record["method"].as_str().expect("method") {
        "img2img" => {
            Job::Img2Img(Img2ImgParams { base: base(record), image: png("edit_image.png"), strength })
        }
        _ => Job::Inpaint(InpaintParams {
            base: base(record),
            image: png("edit_image.png"),
            mask: png("edit_mask.png"),
            strength,
            mask_options: hard_mask(),
            composite,
        }),
    }
}
fn records() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("editing.json")).expect("fixture");
    serde_json::from_str::<Value>(&text).expect("json").as_array().expect("records").clone()
}

#[test]
fn img2img_and_inpainting_reproduce_diffusers() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    for record in records().iter().filter(|r| r["method"] == "img2img" || r["method"] == "inpaint") {
        let image = run(&engine, job(record, false)).expect("runs");
        let difference = max_difference_255(&image, &record["image"]);
        let label = format!(
            "{} {} {} strength {}",
            record["method"], record["model"], record["scheduler"], record["strength"]
        );
        assert!(difference <= 2.0, "{label}: off by {difference}/255");
    }
}

#[test]
fn clip_skip_takes_an_earlier_text_encoder_layer_as_diffusers_does() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["method"] == "generate").expect("a clip-skip record");
    let params = GenerateParams { clip_skip: 1, ..base(&record) };
    let image = run(&engine, Job::Generate(params.clone())).expect("generates");
    let difference = max_difference_255(&image, &record["image"]);
    assert!(difference <= 2.0, "clip skip 1: off by {difference}/255");
    let unskipped =
        run(&engine, Job::Generate(GenerateParams { clip_skip: 0, ..params })).expect("generates");
    assert!(max_difference_255(&unskipped, &record["image"]) > 2.0, "clip skip changed nothing");
}

#[test]
fn instruct_pix2pix_reproduces_diffusers() {
    use diffusion_studio::protocol::InstructPix2PixParams;
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let cases: Vec<Value> = records().into_iter().filter(|r| r["method"] == "ip2p").collect();
    assert_eq!(cases.len(), 2);
    for record in cases {
        let params = InstructPix2PixParams {
            base: base(&record),
            image: png("edit_image.png"),
            image_guidance_scale: record["image_guidance"].as_f64().expect("scale"),
        };
        let image = run(&engine, Job::InstructPix2Pix(params)).expect("edits");
        let difference = max_difference_255(&image, &record["image"]);
        assert!(difference <= 2.0, "ip2p {}: off by {difference}/255", record["scheduler"]);
    }
    // a model that is not InstructPix2Pix is named
    let params = InstructPix2PixParams {
        base: GenerateParams { model: fixture("tiny_sd_pipeline"), ..base(&records()[0]) },
        image: png("edit_image.png"),
        image_guidance_scale: 1.5,
    };
    let message = run(&engine, Job::InstructPix2Pix(params)).expect_err("a 4-channel model");
    assert!(
        message.contains("needs an InstructPix2Pix model (8 UNet input channels: latents and image latents); this one takes 4"),
        "{message}"
    );
}

#[test]
fn with_composite_on_pixels_outside_a_hard_mask_are_the_source_bytes() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let source = png("edit_image.png");
    for record in records().iter().filter(|r| r["method"] == "inpaint") {
        let result = run(&engine, job(record, true)).expect("runs");
        let mut changed_inside = 0;
        for y in 0..16 {
            for x in 0..16 {
                let at = (y * 16 + x) * 4;
                if x >= 8 {
                    assert_eq!(
                        result.rgba[at..at + 4],
                        source.rgba[at..at + 4],
                        "({x}, {y}) outside the mask"
                    );
                } else if result.rgba[at..at + 3] != source.rgba[at..at + 3] {
                    changed_inside += 1;
                }
            }
        }
        assert!(changed_inside > 100, "the masked half was repainted ({changed_inside} pixels changed)");
    }
}

#[test]
fn every_step_reports_progress_and_previews_show_the_image_forming() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["method"] == "img2img").expect("an img2img record");
    let id = engine.submit(job(&record, false));
    let mut previews = Vec::new();
    loop {
        match engine.events().recv_timeout(Duration::from_secs(300)).expect("engine answers") {
            EngineEvent::Progress { job, step, of, preview } if job == id => {
                previews.push((step, of, preview))
            }
            EngineEvent::Done { job, .. } if job == id => break,
            EngineEvent::Failed { job, message } if job == id => panic!("{message}"),
            _ => {}
        }
    }
    // 5 steps at strength 0.6: the last 3 run
    assert_eq!(
        previews.iter().map(|(step, of, _)| (*step, *of)).collect::<Vec<_>>(),
        [(1, 3), (2, 3), (3, 3)]
    );
    // previews are paced to a tenth of the job's time: the first step always has one, and the
    // linear latent→RGB map costs next to nothing, so later steps have them too
    assert!(previews[0].2.is_some(), "the first step previews");
    let shown: Vec<_> = previews.iter().filter_map(|(_, _, preview)| preview.as_ref()).collect();
    assert!(shown.len() >= 2, "a nearly free preview is shown more than once");
    for preview in &shown {
        // the tiny model's latents are 8×8 (a 2× VAE): the linear latent→RGB map keeps that grid
        assert_eq!((preview.width, preview.height), (8, 8));
    }
    assert_ne!(shown[0].rgba, shown[shown.len() - 1].rgba, "the image forms");
}

#[test]
fn a_model_with_a_tiny_decoder_previews_through_it() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["model"] == "tiny_sd_inpaint_pipeline").expect("a record");
    let id = engine.submit(job(&record, true));
    let mut sizes = Vec::new();
    loop {
        match engine.events().recv_timeout(Duration::from_secs(300)).expect("engine answers") {
            EngineEvent::Progress { job, preview: Some(preview), .. } if job == id => {
                sizes.push((preview.width, preview.height))
            }
            EngineEvent::Done { job, .. } if job == id => break,
            EngineEvent::Failed { job, message } if job == id => panic!("{message}"),
            _ => {}
        }
    }
    // tiny_sd_inpaint_pipeline/taesd decodes its 8×8 latents 8× up (at least at the first
    // step; later ones as the pacer allows)
    assert!(!sizes.is_empty() && sizes.len() <= 4, "{sizes:?}");
    assert!(sizes.iter().all(|size| *size == (64, 64)), "{sizes:?}");
}

#[test]
fn bad_masks_and_strengths_are_clear_errors_and_the_engine_goes_on() {
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["method"] == "inpaint").expect("an inpaint record");
    let Job::Inpaint(good) = job(&record, true) else { panic!("inpaint job") };
    let black = ImageData::new(16, 16, [0, 0, 0, 255].repeat(256)).expect("image");
    let cases = vec![
        (InpaintParams { mask: black.clone(), ..good.clone() }, "the mask is all black"),
        (
            InpaintParams { mask: ImageData::new(8, 8, [255; 256].to_vec()).expect("image"), ..good.clone() },
            "the mask is 8×8 but the image is 16×16",
        ),
        (InpaintParams { strength: 0.1, ..good.clone() }, "runs no step"),
        (InpaintParams { strength: 1.5, ..good.clone() }, "strength must be in (0, 1]"),
        (
            InpaintParams {
                image: ImageData::new(15, 15, [9; 900].to_vec()).expect("image"),
                mask: ImageData::new(15, 15, [255; 900].to_vec()).expect("image"),
                ..good.clone()
            },
            "the image is 15×15; width and height must be multiples of 2",
        ),
    ];
    for (params, expected) in cases {
        let message = run(&engine, Job::Inpaint(params)).expect_err(expected);
        assert!(message.contains(expected), "expected «{expected}» in «{message}»");
    }
    // inverting an all-black mask repaints everything
    let inverted = InpaintParams {
        mask: black,
        mask_options: MaskOptions { invert: true, ..hard_mask() },
        ..good.clone()
    };
    run(&engine, Job::Inpaint(inverted)).expect("inverted black mask repaints all");
    run(&engine, Job::Inpaint(good)).expect("the engine still serves");
}

#[test]
fn ddim_inversion_follows_diffusers_and_its_file_round_trips() {
    use diffusion_studio::document::inversion;
    use diffusion_studio::protocol::InvertParams;
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record =
        records().into_iter().find(|r| r["method"] == "ddim_inversion").expect("an inversion record");
    let params = InvertParams {
        base: GenerateParams { guidance_scale: 1.0, scheduler: "ddim".into(), seed: 0, ..base(&record) },
        image: png("edit_image.png"),
        null_text: None,
    };
    let id = engine.submit(Job::Invert(params));
    let result = loop {
        match engine.events().recv_timeout(Duration::from_secs(300)).expect("engine answers") {
            EngineEvent::Done { job, output: JobOutput::Inversion(inversion) } if job == id => {
                break inversion;
            }
            EngineEvent::Failed { job, message } if job == id => panic!("{message}"),
            _ => {}
        }
    };
    // the trajectory z₀ … z_T, step by step
    let expected = record["trajectory"].as_array().expect("trajectory");
    assert_eq!(result.trajectory.len(), expected.len());
    for (step, (ours, theirs)) in result.trajectory.iter().zip(expected).enumerate() {
        let theirs: Vec<f64> =
            theirs.as_array().expect("latents").iter().map(|v| v.as_f64().expect("f")).collect();
        let scale = theirs.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let error = ours.iter().zip(&theirs).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
        assert!(error <= 1e-4 * scale.max(1.0), "step {step}: off by {error} (scale {scale})");
    }
    // regeneration from z_T
    let difference = max_difference_255(&result.reconstruction, &record["image"]);
    assert!(difference <= 2.0, "reconstruction off by {difference}/255");
    assert!(result.psnr.is_finite() && result.psnr_vae.is_finite());
    // the file keeps everything an edit needs, and refuses the wrong model or size
    let path = std::env::temp_dir().join(format!("ds-inversion-{}.safetensors", std::process::id()));
    inversion::save(&result, &path).expect("saves");
    let loaded = inversion::load(&path).expect("loads");
    assert_eq!(loaded.trajectory, result.trajectory);
    assert_eq!((loaded.steps, loaded.width, loaded.height, loaded.latent_shape), (10, 16, 16, [4, 8, 8]));
    assert_eq!(loaded.prompt, "a red circle on a blue background");
    inversion::check_fits(&loaded, &path, &fixture("tiny_sd_pipeline"), 16, 16).expect("fits its own model");
    let error =
        inversion::check_fits(&loaded, &path, &fixture("tiny_sd2_pipeline"), 16, 16).expect_err("model");
    assert!(error.to_string().contains("was made with the model"), "{error}");
    let error =
        inversion::check_fits(&loaded, &path, &fixture("tiny_sd_pipeline"), 32, 16).expect_err("size");
    assert!(error.to_string().contains("is for a 16×16 image, not 32×16"), "{error}");
    let error = inversion::load(&fixture("tiny_sd_single.safetensors")).expect_err("not an inversion");
    assert!(error.to_string().contains("is not an inversion file"), "{error}");
}

#[test]
fn null_text_optimisation_brings_guided_regeneration_back_to_the_inversion() {
    use diffusion_studio::engine::methods::{inversion, null_text};
    let (_generator, model) = common::load_model("tiny_sd_pipeline");
    let prompt = "a red circle on a blue background";
    let trajectory = inversion::ddim_invert(&model, &png("edit_image.png"), prompt, 8, 0, |_, _, _| Ok(()))
        .expect("inverts");
    let (text, null) = model.prompt_pair(prompt, "", 0).expect("encodes");
    let distance = |inner_steps: usize| {
        let settings = null_text::NullTextSettings { inner_steps, learning_rate: 1e-2 };
        let (embeddings, latents) =
            null_text::optimize(&model, &trajectory, &text, &null, 7.5, settings, |_, _, _| Ok(()))
                .expect("optimises");
        assert_eq!(embeddings.len(), 8);
        f64::try_from(latents.mse_loss(&trajectory[0], tch::Reduction::Mean)).expect("a number")
    };
    // no optimisation is plain guided regeneration from z_T; the default inner steps are tested
    let (plain, optimised) = (distance(0), distance(null_text::NullTextSettings::default().inner_steps));
    eprintln!("null-text: z₀ error {optimised:.4} vs plain {plain:.4}");
    assert!(optimised < 0.8 * plain, "null-text: z₀ error {optimised:.4} vs plain {plain:.4}");
}

#[test]
fn inversions_are_cached_per_image_prompt_steps_and_guidance() {
    use diffusion_studio::engine::methods::inversion;
    let (_generator, model) = common::load_model("tiny_sd_pipeline");
    let photo = png("edit_image.png");
    let base = GenerateParams {
        model: fixture("tiny_sd_pipeline"),
        model_options: Default::default(),
        prompt: "a red circle on a blue background".into(),
        negative_prompt: String::new(),
        steps: 4,
        scheduler: "ddim".into(),
        guidance_scale: 7.5,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 0,
        width: 16,
        height: 16,
        precision: diffusion_studio::protocol::Precision::F32,
    };
    // the steps each call runs, as (step, of)
    let invert = |image: &ImageData, base: &GenerateParams, null_text: Option<usize>| {
        let mut ran = Vec::new();
        let inverted = inversion::invert_image(&model, image, base, null_text, |step, of, _| {
            ran.push((step, of));
            Ok(())
        })
        .expect("inverts");
        (inverted, ran)
    };
    let (first, ran) = invert(&photo, &base, None);
    assert_eq!(ran, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    let (again, ran) = invert(&photo, &base, None);
    assert!(ran.is_empty(), "a second inversion of the same image ran {ran:?}");
    assert!(std::rc::Rc::ptr_eq(&first.trajectory, &again.trajectory));
    // null-text reuses the trajectory and runs only its own steps, once
    let (with_null, ran) = invert(&photo, &base, Some(6));
    assert_eq!(ran, vec![(5, 8), (6, 8), (7, 8), (8, 8)]);
    assert!(std::rc::Rc::ptr_eq(&first.trajectory, &with_null.trajectory));
    let (null_again, ran) = invert(&photo, &base, Some(6));
    assert!(ran.is_empty(), "a second null-text inversion ran {ran:?}");
    let (a, b) = (with_null.null_text.expect("null-text"), null_again.null_text.expect("null-text"));
    assert!(std::rc::Rc::ptr_eq(&a, &b));
    // anything the inversion depends on makes a new one
    let other_guidance = GenerateParams { guidance_scale: 5.0, ..base.clone() };
    assert_eq!(invert(&photo, &other_guidance, Some(6)).1.len(), 4, "another guidance");
    let other_prompt = GenerateParams { prompt: "a red circle".into(), ..base.clone() };
    assert_eq!(invert(&photo, &other_prompt, None).1.len(), 4, "another prompt");
    let other_steps = GenerateParams { steps: 3, ..base.clone() };
    assert_eq!(invert(&photo, &other_steps, None).1.len(), 3, "other steps");
    let mut pixels = photo.rgba.to_vec();
    pixels[0] ^= 1;
    let changed = ImageData::new(photo.width, photo.height, pixels).expect("an image");
    assert_eq!(invert(&changed, &base, None).1.len(), 4, "another image");
    // the cache is bounded: the oldest entries go
    for seed_prompt in 0..10 {
        let prompt = GenerateParams { prompt: format!("shape {seed_prompt}"), steps: 1, ..base.clone() };
        invert(&photo, &prompt, None);
    }
    assert_eq!(model.inversion_cache().len(), 8);
    assert_eq!(invert(&photo, &base, None).1.len(), 4, "evicted");
}

#[test]
fn magic_mix_without_mixing_is_img2img_and_with_mixing_keeps_more_of_the_layout() {
    use diffusion_studio::protocol::{Img2ImgParams, MagicMixParams};
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["method"] == "img2img").expect("a record");
    let base = GenerateParams { steps: 10, prompt: "a blue star".into(), ..base(&record) };
    let magic = |mix_factor: f64, kmin: f64| MagicMixParams {
        base: base.clone(),
        image: png("edit_image.png"),
        kmin,
        kmax: 0.6,
        mix_factor,
    };
    let img2img = run(
        &engine,
        Job::Img2Img(Img2ImgParams { base: base.clone(), image: png("edit_image.png"), strength: 0.6 }),
    )
    .expect("img2img");
    let unmixed = run(&engine, Job::MagicMix(magic(1.0, 0.3))).expect("magicmix");
    assert_eq!(unmixed.rgba, img2img.rgba, "ν = 1 must be img2img at strength kmax");
    let mixed = run(&engine, Job::MagicMix(magic(0.5, 0.3))).expect("magicmix");
    let source = png("edit_image.png");
    let distance = |image: &ImageData| -> f64 {
        image.rgba.iter().zip(source.rgba.iter()).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum()
    };
    assert!(
        distance(&mixed) < distance(&img2img),
        "mixing towards the layout should stay closer to the image: {} vs {}",
        distance(&mixed),
        distance(&img2img)
    );
    let message = run(&engine, Job::MagicMix(magic(0.5, 0.8))).expect_err("kmin above kmax");
    assert!(message.contains("need 0 ≤ kmin ≤ kmax ≤ 1"), "{message}");
}

#[test]
fn diffedit_masks_where_the_prompts_disagree_and_keeps_the_rest_exactly() {
    use diffusion_studio::protocol::DiffEditParams;
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let record = records().into_iter().find(|r| r["method"] == "img2img").expect("a record");
    let source = png("edit_image.png");
    let edit = |target: &str, mask: Option<ImageData>| DiffEditParams {
        base: GenerateParams { steps: 8, prompt: target.into(), ..base(&record) },
        source_prompt: "a red circle on a blue background".into(),
        image: source.clone(),
        strength: 0.8,
        mask_samples: 4,
        mask_strength: diffusion_studio::protocol::DIFFEDIT_MASK_STRENGTH,
        mask_threshold: diffusion_studio::protocol::DIFFEDIT_MASK_THRESHOLD,
        mask_edges: diffusion_studio::protocol::DIFFEDIT_MASK_EDGES,
        mask,
    };
    let outputs =
        |params: DiffEditParams| match common::run_output(&engine, Job::DiffEdit(params)).expect("edits") {
            JobOutput::Images(images) => images,
            other => panic!("expected images, got {other:?}"),
        };
    // the same prompt disagrees nowhere: an all-black mask, the source back exactly
    let same = outputs(edit("a red circle on a blue background", None));
    assert_eq!((same[0].label.as_str(), same[1].label.as_str()), ("image", "mask"));
    assert!(same[1].image.rgba.chunks(4).all(|p| p[0] == 0), "an all-black mask");
    assert_eq!(same[0].image.rgba, source.rgba);
    // another prompt: a binary mask, and outside it the source's pixels exactly
    let other = outputs(edit("a green square on a blue background", None));
    let mask = &other[1].image;
    assert!(mask.rgba.chunks(4).all(|p| p[0] == 0 || p[0] == 255), "a binary mask");
    let white = mask.rgba.chunks(4).filter(|p| p[0] == 255).count();
    assert!(
        white > 0 && white < 256,
        "the prompts disagree somewhere, not everywhere: {white} of 256 pixels"
    );
    for (i, pixel) in mask.rgba.chunks(4).enumerate() {
        if pixel[0] == 0 {
            assert_eq!(
                other[0].image.rgba[i * 4..i * 4 + 4],
                source.rgba[i * 4..i * 4 + 4],
                "pixel {i} outside the mask"
            );
        }
    }
    // a corrected mask is used as given
    let white = ImageData::new(16, 16, [255; 1024].to_vec()).expect("mask");
    let everywhere = outputs(edit("a green square on a blue background", Some(white)));
    assert!(everywhere[1].image.rgba.chunks(4).all(|p| p[0] == 255));
    assert_ne!(everywhere[0].image.rgba, source.rgba);
    // a given mask is used pixel for pixel, not rounded to the latent grid: a 3×5 patch that
    // straddles latent cells comes back as it was, and every pixel outside it is the source's
    let mut patch = vec![0u8; 16 * 16 * 4];
    for (i, pixel) in patch.chunks_mut(4).enumerate() {
        let (x, y) = (i % 16, i / 16);
        let inside = (5..8).contains(&x) && (6..11).contains(&y);
        pixel.copy_from_slice(&if inside { [255, 255, 255, 255] } else { [0, 0, 0, 255] });
    }
    let patch = ImageData::new(16, 16, patch).expect("mask");
    let patched = outputs(edit("a green square on a blue background", Some(patch.clone())));
    assert_eq!(patched[1].image.rgba, patch.rgba, "the mask comes back as given");
    let mut changed_inside = false;
    for (i, pixel) in patch.rgba.chunks(4).enumerate() {
        let (out, src) = (&patched[0].image.rgba[i * 4..i * 4 + 4], &source.rgba[i * 4..i * 4 + 4]);
        if pixel[0] == 0 {
            assert_eq!(out, src, "pixel {i} outside the given mask");
        } else {
            changed_inside |= out != src;
        }
    }
    assert!(changed_inside, "the pixels inside the given mask are repainted");
    // the mask's noise level, threshold and edge tolerance are checked, naming the field
    for (strength, threshold, edges, field) in [
        (0.0, 0.5, 0.3, "mask strength"),
        (0.25, 1.0, 0.3, "mask threshold"),
        (0.25, 0.5, f64::NAN, "mask edge tolerance"),
        (0.25, 0.5, -1.0, "mask edge tolerance"),
    ] {
        let params = DiffEditParams {
            mask_strength: strength,
            mask_threshold: threshold,
            mask_edges: edges,
            ..edit("a green square on a blue background", None)
        };
        let message = common::run_output(&engine, Job::DiffEdit(params)).expect_err("refused");
        assert!(message.contains(field), "{message}");
    }
    let small = ImageData::new(8, 8, [255; 256].to_vec()).expect("mask");
    let message =
        common::run_output(&engine, Job::DiffEdit(edit("a green square", Some(small)))).expect_err("size");
    assert!(message.contains("the mask is 8×8 but the image is 16×16"), "{message}");
}
