//! `diffusion-studio eval`: the bundled shapes model measured with the analytic detectors on
//! captions and images held out of training (the dataset's eval split):
//! - attribute accuracy of text-to-image (every object's colour and shape, the background);
//! - prompt-to-prompt colour swap: the swapped object's mask IoU before/after, new colour there;
//! - DiffEdit: the estimated mask's IoU with the true mask of the object the edit names;
//! - inpainting: the asked-for object appears inside the masked region; pixels outside it kept;
//! - DDIM inversion: reconstruction PSNR of dataset images at several step counts;
//! - ceilings: the detectors on the held-out images, and on their round trip through the VAE.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::detect::{self, Tally, detect_image};
use crate::datasets::shapes::{self, Colour, Sample, Split};
use crate::engine::EngineHandle;
use crate::engine::vae_round_trip::VaeRoundTrip;
use crate::protocol::{
    DeviceChoice, DiffEditParams, EditSource, EngineEvent, GenerateParams, ImageData, InpaintParams,
    InvertParams, Job, JobOutput, MaskOptions, Precision, PromptToPromptParams,
};

/// What to measure, and how much.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub model: PathBuf,
    pub device: DeviceChoice,
    /// Held-out captions generated for attribute accuracy (the issue: 200).
    pub captions: usize,
    /// Cases of each editing metric.
    pub edits: usize,
    /// Held-out images inverted.
    pub inversions: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Seed of the eval stream (not the training seed's stream: another split anyway).
    pub seed: u64,
    /// DiffEdit's noise samples for the mask and its edge tolerance (the studio's defaults: 10
    /// and [`crate::protocol::DIFFEDIT_MASK_EDGES`]).
    pub mask_samples: usize,
    pub mask_edges: f64,
    /// Write generated images here (a contact sheet per metric).
    pub samples: Option<PathBuf>,
}

/// The numbers (`--out report.json`; BENCHMARKS.md and MODEL_CARD.md quote them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    pub captions: usize,
    pub attribute_accuracy: f64,
    pub colour_accuracy: f64,
    pub shape_accuracy: f64,
    /// Shape accuracy over the small objects and over the big ones.
    pub shape_accuracy_by_size: (f64, f64),
    /// Shape accuracy over scenes of one, two and three objects.
    pub shape_accuracy_by_count: [f64; 3],
    pub background_accuracy: f64,
    /// Objects found whose colour the caption does not name, per image.
    pub extra_objects_per_image: f64,
    pub generation_seconds: f64,
    /// Ceilings on the same held-out captions' dataset images: attribute and shape accuracy of
    /// the detector on the images themselves, and on their round trip through the model's VAE
    /// (what the latent space keeps; the UNet cannot do better than this).
    pub dataset_attribute_accuracy: f64,
    pub dataset_shape_accuracy: f64,
    pub vae_attribute_accuracy: f64,
    pub vae_shape_accuracy: f64,
    /// The round trip's shape accuracy over the small objects and over the big ones.
    pub vae_shape_accuracy_by_size: (f64, f64),
    pub p2p_cases: usize,
    pub p2p_layout_iou: f64,
    pub p2p_new_colour_rate: f64,
    pub diffedit_cases: usize,
    pub diffedit_mask_iou: f64,
    pub inpaint_cases: usize,
    pub inpaint_object_rate: f64,
    pub inpaint_colour_rate: f64,
    /// The largest change of a pixel outside the mask (beyond the feathered seam), /255.
    pub inpaint_outside_max_change: u8,
    pub inversion_images: usize,
    /// Mean reconstruction PSNR (dB) of DDIM inversion at each step count.
    pub inversion_psnr: Vec<(usize, f64)>,
}

impl EvalReport {
    /// The targets, met or not, as a Markdown table (BENCHMARKS.md, MODEL_CARD.md).
    pub fn markdown(&self, options: &EvalOptions) -> String {
        let mark = |met: bool| if met { "✓" } else { "✗" };
        let mut text = String::from("| metric | cases | measured | target | met |\n|---|---|---|---|---|\n");
        let mut row = |metric: String, cases: usize, measured: String, target: &str, met: Option<bool>| {
            // a metric asked for with no cases (`--edits 0`, `--inversions 0`) was not measured
            let (measured, met) = if cases == 0 { ("not run".into(), None) } else { (measured, met) };
            let met = met.map_or("", mark);
            text.push_str(&format!("| {metric} | {cases} | {measured} | {target} | {met} |\n"));
        };
        let steps = options.steps;
        row(
            format!("attribute accuracy ({steps} DDIM steps, guidance {})", options.guidance),
            self.captions,
            format!("{:.3}", self.attribute_accuracy),
            "≥ 0.90",
            Some(self.attribute_accuracy >= 0.9),
        );
        row("— object colour".into(), self.captions, format!("{:.3}", self.colour_accuracy), "", None);
        row("— object shape".into(), self.captions, format!("{:.3}", self.shape_accuracy), "", None);
        row(
            "— object shape: small / big objects".into(),
            self.captions,
            format!("{:.3} / {:.3}", self.shape_accuracy_by_size.0, self.shape_accuracy_by_size.1),
            "",
            None,
        );
        let [one, two, three] = self.shape_accuracy_by_count;
        row(
            "— object shape: scenes of 1 / 2 / 3 objects".into(),
            self.captions,
            format!("{one:.3} / {two:.3} / {three:.3}"),
            "",
            None,
        );
        row(
            "— background colour".into(),
            self.captions,
            format!("{:.3}", self.background_accuracy),
            "",
            None,
        );
        row(
            "— extra objects per image".into(),
            self.captions,
            format!("{:.2}", self.extra_objects_per_image),
            "",
            None,
        );
        row(
            "ceiling: attributes (shape) read from the dataset images".into(),
            self.captions,
            format!("{:.3} ({:.3})", self.dataset_attribute_accuracy, self.dataset_shape_accuracy),
            "",
            None,
        );
        row(
            "ceiling: attributes (shape) after the VAE round trip".into(),
            self.captions,
            format!("{:.3} ({:.3})", self.vae_attribute_accuracy, self.vae_shape_accuracy),
            "",
            None,
        );
        row(
            "ceiling: shape of small / big objects after the VAE round trip".into(),
            self.captions,
            format!("{:.3} / {:.3}", self.vae_shape_accuracy_by_size.0, self.vae_shape_accuracy_by_size.1),
            "",
            None,
        );
        row(
            "P2P colour swap: layout kept (mask IoU)".into(),
            self.p2p_cases,
            format!("{:.3}", self.p2p_layout_iou),
            "≥ 0.80",
            Some(self.p2p_layout_iou >= 0.8),
        );
        row(
            "P2P colour swap: new colour present".into(),
            self.p2p_cases,
            format!("{:.3}", self.p2p_new_colour_rate),
            "",
            None,
        );
        row(
            "DiffEdit mask IoU".into(),
            self.diffedit_cases,
            format!("{:.3}", self.diffedit_mask_iou),
            "≥ 0.70",
            Some(self.diffedit_mask_iou >= 0.7),
        );
        row(
            "inpainting: asked-for object in the mask".into(),
            self.inpaint_cases,
            format!("{:.3}", self.inpaint_object_rate),
            "≥ 0.85",
            Some(self.inpaint_object_rate >= 0.85),
        );
        row(
            "inpainting: largest change outside the mask".into(),
            self.inpaint_cases,
            format!("{}/255", self.inpaint_outside_max_change),
            "unchanged",
            Some(self.inpaint_outside_max_change <= 1),
        );
        for (steps, psnr) in &self.inversion_psnr {
            let target = if *steps == 50 { "≥ 25 dB" } else { "" };
            let met = (*steps == 50).then_some(*psnr >= 25.0);
            row(
                format!("DDIM inversion PSNR, {steps} steps"),
                self.inversion_images,
                format!("{psnr:.1} dB"),
                target,
                met,
            );
        }
        text.push_str(&format!(
            "\nGeneration took {:.3} s per image during the evaluation ({steps} steps at 128×128 with CFG, \
             detection included).\n",
            self.generation_seconds
        ));
        text
    }
}

/// Runs jobs one after the other on an engine, waiting for each.
pub(crate) struct Runner {
    pub(crate) engine: EngineHandle,
}

impl Runner {
    pub(crate) fn run(&self, job: Job) -> anyhow::Result<JobOutput> {
        let id = self.engine.submit(job);
        loop {
            match self.engine.events().recv_timeout(Duration::from_secs(3600))? {
                EngineEvent::Done { job, output } if job == id => return Ok(output),
                EngineEvent::Failed { job, message } if job == id => anyhow::bail!(message),
                _ => {}
            }
        }
    }

    fn image(&self, job: Job) -> anyhow::Result<ImageData> {
        match self.run(job)? {
            JobOutput::Image(image) => Ok(image),
            JobOutput::Images(images) if !images.is_empty() => Ok(images[0].image.clone()),
            _ => anyhow::bail!("the job returned no image"),
        }
    }

    fn images(&self, job: Job) -> anyhow::Result<Vec<(String, ImageData)>> {
        match self.run(job)? {
            JobOutput::Images(images) => Ok(images.into_iter().map(|l| (l.label, l.image)).collect()),
            JobOutput::Image(image) => Ok(vec![("image".into(), image)]),
            _ => anyhow::bail!("the job returned no images"),
        }
    }
}

fn image_of(sample: &Sample) -> ImageData {
    let rgba = sample.rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    ImageData { width: sample.scene.width, height: sample.scene.height, rgba: Arc::new(rgba) }
}

/// `caption` with the word `from` replaced by `to` (whole words only).
pub fn swap_word(caption: &str, from: &str, to: &str) -> String {
    caption
        .split(' ')
        .map(|word| {
            let bare = word.trim_end_matches(',');
            if bare == from { word.replacen(from, to, 1) } else { word.to_string() }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A colour in neither the scene's objects nor its background, chosen by `index`.
fn unused_colour(scene: &shapes::Scene, index: usize) -> Colour {
    let free: Vec<Colour> = Colour::ALL
        .iter()
        .copied()
        .filter(|c| *c != scene.background.colour && scene.objects.iter().all(|o| o.colour != *c))
        .collect();
    free[index % free.len()]
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { f64::NAN } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// A grid of images (rows of `per_row`), for looking at.
fn save_sheet(path: &Path, images: &[ImageData], per_row: usize) -> anyhow::Result<()> {
    let Some(first) = images.first() else { return Ok(()) };
    let (w, h) = (first.width, first.height);
    let rows = images.len().div_ceil(per_row) as u32;
    let mut sheet = image::RgbaImage::new(w * per_row as u32, h * rows);
    for (i, img) in images.iter().enumerate() {
        if let Some(tile) = img.to_rgba_image() {
            let (x, y) = ((i % per_row) as u32 * w, (i / per_row) as u32 * h);
            image::imageops::overlay(&mut sheet, &tile, i64::from(x), i64::from(y));
        }
    }
    sheet.save(path)?;
    Ok(())
}

/// Runs every metric.
pub fn evaluate(options: &EvalOptions, on_progress: &mut dyn FnMut(&str)) -> anyhow::Result<EvalReport> {
    let runner = Runner { engine: EngineHandle::spawn(options.device, Arc::new(|| {})) };
    let size = shapes::IMAGE_SIZE;
    let base = |prompt: String, seed: u64| GenerateParams {
        model: options.model.clone(),
        model_options: Default::default(),
        prompt,
        negative_prompt: String::new(),
        steps: options.steps,
        scheduler: "ddim".into(),
        guidance_scale: options.guidance,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed,
        width: size,
        height: size,
        precision: Precision::F32,
    };
    let held_out = |i: usize| shapes::sample(options.seed, i as u64, Split::Eval, size, size);
    let mut report = EvalReport::default();
    if let Some(folder) = &options.samples {
        std::fs::create_dir_all(folder)?;
    }

    // 1. attribute accuracy
    let (mut tally, mut backgrounds, mut background_total, mut extra) =
        (Tally::default(), 0usize, 0usize, 0usize);
    let mut sheet = Vec::new();
    let clock = Instant::now();
    for i in 0..options.captions {
        let sample = held_out(i);
        let image = runner.image(Job::Generate(base(sample.caption.clone(), i as u64)))?;
        let detected = detect_image(&image);
        tally.add(&sample.scene, &detected);
        if sample.scene.says_background {
            background_total += 1;
            backgrounds += usize::from(detected.background == Some(sample.scene.background.colour));
        }
        extra += detected
            .objects
            .iter()
            .filter(|found| sample.scene.objects.iter().all(|o| o.colour != found.colour))
            .count();
        if sheet.len() < 48 {
            sheet.push(image);
        }
        if (i + 1) % 20 == 0 {
            on_progress(&format!(
                "generated {}/{}: attribute accuracy so far {:.3}",
                i + 1,
                options.captions,
                tally.accuracy()
            ));
        }
    }
    report.captions = options.captions;
    report.generation_seconds = clock.elapsed().as_secs_f64() / options.captions.max(1) as f64;
    report.attribute_accuracy = tally.accuracy();
    report.colour_accuracy = tally.colours as f64 / tally.objects.max(1) as f64;
    report.shape_accuracy = tally.shape();
    report.shape_accuracy_by_size = tally.shape_by_size();
    report.shape_accuracy_by_count = tally.shape_by_count();
    report.background_accuracy = backgrounds as f64 / background_total.max(1) as f64;
    report.extra_objects_per_image = extra as f64 / options.captions.max(1) as f64;
    if let Some(folder) = &options.samples {
        save_sheet(&folder.join("generate.png"), &sheet, 8)?;
    }

    // 2. prompt-to-prompt colour swap on generated images
    let (mut ious, mut new_colour, mut sheet) = (Vec::new(), 0usize, Vec::new());
    for i in 0..options.edits {
        let sample = held_out(10_000 + i);
        let object = sample.scene.objects[0];
        let to = unused_colour(&sample.scene, i);
        let target = swap_word(&sample.caption, object.colour.name(), to.name());
        let params = PromptToPromptParams {
            base: base(sample.caption.clone(), 10_000 + i as u64),
            target_prompt: target,
            cross_window: (0.0, 0.8),
            word_windows: Vec::new(),
            self_window: 0.4,
            reweight: Vec::new(),
            attention_maps: false,
            local_blend: Vec::new(),
            source: EditSource::Generated,
        };
        let images = runner.images(Job::PromptToPrompt(params))?;
        let find = |label: &str| images.iter().find(|(l, _)| l == label).map(|(_, image)| image.clone());
        let (Some(edited), Some(source)) = (find("target"), find("source")) else {
            anyhow::bail!("prompt-to-prompt returned no source/target pair");
        };
        let (before, after) = (detect_image(&source), detect_image(&edited));
        if let Some(found) = after.object(to) {
            new_colour += 1;
            if let Some(original) = before.object(object.colour) {
                ious.push(f64::from(detect::iou(&original.mask, &found.mask)));
            }
        }
        if sheet.len() < 24 {
            sheet.extend([source, edited]);
        }
    }
    report.p2p_cases = options.edits;
    report.p2p_layout_iou = mean(&ious);
    report.p2p_new_colour_rate = new_colour as f64 / options.edits.max(1) as f64;
    on_progress(&format!(
        "p2p: layout IoU {:.3}, new colour {:.3}",
        report.p2p_layout_iou, report.p2p_new_colour_rate
    ));
    if let Some(folder) = &options.samples {
        save_sheet(&folder.join("p2p.png"), &sheet, 8)?;
    }

    // 3. DiffEdit masks on held-out dataset images
    let (mut ious, mut sheet) = (Vec::new(), Vec::new());
    for i in 0..options.edits {
        let sample = held_out(20_000 + i);
        let object_index = i % sample.scene.objects.len();
        let object = sample.scene.objects[object_index];
        let to = unused_colour(&sample.scene, i);
        let target = swap_word(&sample.caption, object.colour.name(), to.name());
        let params = DiffEditParams {
            base: base(target, 20_000 + i as u64),
            source_prompt: sample.caption.clone(),
            image: image_of(&sample),
            strength: 0.8,
            mask_samples: options.mask_samples,
            mask_strength: crate::protocol::DIFFEDIT_MASK_STRENGTH,
            mask_threshold: crate::protocol::DIFFEDIT_MASK_THRESHOLD,
            mask_edges: options.mask_edges,
            mask: None,
        };
        let images = runner.images(Job::DiffEdit(params))?;
        let Some((_, mask)) = images.iter().find(|(l, _)| l == "mask") else {
            anyhow::bail!("DiffEdit returned no mask");
        };
        let estimated: Vec<bool> = mask.rgba.chunks_exact(4).map(|p| p[0] >= 128).collect();
        let truth: Vec<bool> = sample.masks[object_index].iter().map(|v| *v >= 0.5).collect();
        ious.push(f64::from(detect::iou(&estimated, &truth)));
        if sheet.len() < 24 {
            sheet.extend([image_of(&sample), mask.clone(), images[0].1.clone()]);
        }
    }
    report.diffedit_cases = options.edits;
    report.diffedit_mask_iou = mean(&ious);
    on_progress(&format!("DiffEdit: mask IoU {:.3}", report.diffedit_mask_iou));
    if let Some(folder) = &options.samples {
        save_sheet(&folder.join("diffedit.png"), &sheet, 9)?;
    }

    // 4. inpainting: a box around one object, repainted as another colour and shape
    let (mut found_object, mut found_colour, mut worst_outside, mut sheet) =
        (0usize, 0usize, 0u8, Vec::new());
    let feather = 2.0f32;
    for i in 0..options.edits {
        let sample = held_out(30_000 + i);
        let object = sample.scene.objects[i % sample.scene.objects.len()];
        let to = unused_colour(&sample.scene, i);
        let current = shapes::Shape::ALL.iter().position(|s| *s == object.shape).unwrap_or(0);
        let shape = shapes::Shape::ALL[(current + 1 + i) % shapes::Shape::ALL.len()];
        let prompt = swap_word(
            &swap_word(&sample.caption, object.colour.name(), to.name()),
            object.shape.name(),
            shape.name(),
        );
        let (w, h) = (size as usize, size as usize);
        let reach = object.radius * 1.25 + 4.0;
        let inside = |x: usize, y: usize| {
            (x as f32 + 0.5 - object.centre.0).abs() <= reach
                && (y as f32 + 0.5 - object.centre.1).abs() <= reach
        };
        let mask_rgba: Vec<u8> = (0..w * h)
            .flat_map(|p| {
                let v = if inside(p % w, p / w) { 255 } else { 0 };
                [v, v, v, 255]
            })
            .collect();
        let params = InpaintParams {
            base: base(prompt, 30_000 + i as u64),
            image: image_of(&sample),
            mask: ImageData { width: size, height: size, rgba: Arc::new(mask_rgba) },
            strength: 1.0,
            mask_options: MaskOptions { dilate: 0, feather, invert: false },
            composite: true,
        };
        let image = runner.image(Job::Inpaint(params))?;
        let detected = detect_image(&image);
        if let Some(found) = detected.object(to) {
            let within = found.mask.iter().enumerate().filter(|(p, m)| **m && inside(p % w, p / w)).count();
            if within * 2 >= found.area {
                found_colour += 1;
                found_object += usize::from(found.shape == shape);
            }
        }
        // beyond the seam (3σ of the feather) every pixel is the source's
        let seam = (3.0 * feather).ceil() + 1.0;
        for (p, (a, b)) in image.rgba.chunks_exact(4).zip(sample.rgb.chunks_exact(3)).enumerate() {
            let (x, y) = (p % w, p / w);
            let far = (x as f32 + 0.5 - object.centre.0).abs() > reach + seam
                || (y as f32 + 0.5 - object.centre.1).abs() > reach + seam;
            if far {
                for c in 0..3 {
                    worst_outside = worst_outside.max(a[c].abs_diff(b[c]));
                }
            }
        }
        if sheet.len() < 24 {
            sheet.extend([image_of(&sample), image]);
        }
    }
    report.inpaint_cases = options.edits;
    report.inpaint_object_rate = found_object as f64 / options.edits.max(1) as f64;
    report.inpaint_colour_rate = found_colour as f64 / options.edits.max(1) as f64;
    report.inpaint_outside_max_change = worst_outside;
    on_progress(&format!(
        "inpainting: object {:.3}, colour {:.3}",
        report.inpaint_object_rate, report.inpaint_colour_rate
    ));
    if let Some(folder) = &options.samples {
        save_sheet(&folder.join("inpaint.png"), &sheet, 8)?;
    }

    // 5. DDIM inversion of held-out images (no guidance, as Song et al. invert)
    for steps in [10usize, 25, 50] {
        let mut psnrs = Vec::new();
        for i in 0..options.inversions {
            let sample = held_out(40_000 + i);
            let params = InvertParams {
                base: GenerateParams { steps, guidance_scale: 1.0, ..base(sample.caption.clone(), 0) },
                image: image_of(&sample),
                null_text: None,
            };
            match runner.run(Job::Invert(params))? {
                JobOutput::Inversion(inversion) => psnrs.push(inversion.psnr),
                _ => anyhow::bail!("the inversion job returned no inversion"),
            }
        }
        report.inversion_psnr.push((steps, mean(&psnrs)));
    }
    report.inversion_images = options.inversions;
    on_progress(&format!("DDIM inversion PSNR: {:?}", report.inversion_psnr));

    // 6. ceilings: the detectors on the held-out images of step 1, and on their VAE round trip
    // (last, so that this thread's tensor work does not overlap the engine's timed jobs)
    let vae = VaeRoundTrip::load(&options.model, options.device)?;
    let (mut dataset, mut round_trip, mut sheet) = (Tally::default(), Tally::default(), Vec::new());
    for i in 0..options.captions {
        let sample = held_out(i);
        dataset.add(&sample.scene, &detect::detect(&sample.rgb, sample.scene.width, sample.scene.height));
        let image = vae.run(&image_of(&sample))?;
        round_trip.add(&sample.scene, &detect_image(&image));
        if sheet.len() < 24 {
            sheet.extend([image_of(&sample), image]);
        }
    }
    if let Some(folder) = &options.samples {
        save_sheet(&folder.join("vae.png"), &sheet, 8)?;
    }
    (report.dataset_attribute_accuracy, report.dataset_shape_accuracy) =
        (dataset.accuracy(), dataset.shape());
    (report.vae_attribute_accuracy, report.vae_shape_accuracy) = (round_trip.accuracy(), round_trip.shape());
    report.vae_shape_accuracy_by_size = round_trip.shape_by_size();
    on_progress(&format!(
        "ceilings: dataset images {:.3} (shape {:.3}), VAE round trip {:.3} (shape {:.3}: small {:.3}, big {:.3})",
        report.dataset_attribute_accuracy,
        report.dataset_shape_accuracy,
        report.vae_attribute_accuracy,
        report.vae_shape_accuracy,
        report.vae_shape_accuracy_by_size.0,
        report.vae_shape_accuracy_by_size.1
    ));
    drop(vae);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapping_a_word_keeps_punctuation_and_other_words() {
        assert_eq!(
            swap_word("a big red circle, a red star and a blue heart", "red", "green"),
            "a big green circle, a green star and a blue heart"
        );
        assert_eq!(swap_word("a red circle, a star", "circle", "ring"), "a red ring, a star");
        assert_eq!(swap_word("a reddish circle", "red", "blue"), "a reddish circle");
    }
}
