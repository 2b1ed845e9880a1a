//! The studio's UI logic through egui_kittest, by role and label: opening images (good and bad),
//! zoom and pan, painting the mask (brush, eraser, straight lines, mask tools, shortcuts) with
//! undo, inpainting from the inspector, a job from the inspector with undo, a failed job, and the
//! canvas shader (image, mask overlay) drawn through wgpu on a software adapter.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use diffusion_studio::engine::{EngineHandle, JobContext, JobError, JobRunner};
use diffusion_studio::protocol::{DeviceChoice, DeviceReport, ImageData, Job, JobOutput, LabelledImage};
use diffusion_studio::ui::StudioApp;
use diffusion_studio::ui::app::Tool;
use diffusion_studio::ui::canvas::Minimap;
use diffusion_studio::ui::inspector::Method;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/shapes.png")
}

fn studio() -> Harness<'static, StudioApp> {
    Harness::builder().with_size(egui::vec2(1280.0, 800.0)).build_eframe(|cc| {
        let engine = EngineHandle::spawn(DeviceChoice::Cpu, StudioApp::repaint_waker(&cc.egui_ctx));
        StudioApp::new(cc, engine)
    })
}

/// Steps the UI until `done` holds, for at most 20 s.
fn settle(harness: &mut Harness<'static, StudioApp>, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !done(harness.state()) {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out; status: {}", harness.state().status);
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    harness.run_steps(2);
}

fn opened(harness: &mut Harness<'static, StudioApp>, path: PathBuf) {
    harness.state_mut().open(path);
    settle(harness, |app| app.pending_io == 0 && app.document.image.is_some());
}

fn centre_pixel(app: &StudioApp) -> [u8; 4] {
    let image = &app.document.image.as_ref().expect("an image").image;
    image.get_pixel(image.width() / 2, image.height() / 2).0
}

#[test]
fn opening_an_image_shows_it_fitted_on_the_canvas() {
    let mut harness = studio();
    assert!(harness.state().document.image.is_none());
    opened(&mut harness, sample());
    let app = harness.state();
    assert!(!app.view.fit_pending, "the view was fitted");
    assert!(app.view.zoom > 1.0 && app.view.zoom < 2.0, "fitted zoom {}", app.view.zoom);
    harness.get_by_label("512×512");
    harness.get_by_label_contains("Opened");
}

#[test]
fn menu_zoom_wheel_and_drag_change_the_view() {
    let mut harness = studio();
    opened(&mut harness, sample());
    harness.get_by_label("View").click();
    harness.run();
    harness.get_by_label("Actual size (100%)").click();
    harness.run();
    assert_eq!(harness.state().view.zoom, 1.0);
    harness.get_by_label("Zoom 100%");
    // the status bar's buttons do the same
    harness.get_by_label("Fit").click();
    harness.run();
    assert!(harness.state().view.zoom > 1.0);
    harness.get_by_label("100%").click();
    harness.run();
    assert_eq!(harness.state().view.zoom, 1.0);

    // The wheel over the canvas zooms in about the cursor.
    let centre = egui::pos2(600.0, 400.0);
    harness.hover_at(centre);
    harness.event(egui::Event::MouseWheel {
        unit: egui::MouseWheelUnit::Point,
        delta: egui::vec2(0.0, 200.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: egui::Modifiers::NONE,
    });
    harness.run();
    let zoomed = harness.state().view.zoom;
    assert!(zoomed > 1.3, "zoom after the wheel: {zoomed}");

    // With the pan tool, a drag pans by the drag.
    harness.get_by_label("Pan (H)").click();
    harness.run();
    let before = harness.state().view.offset;
    harness.drag_at(centre);
    harness.run();
    harness.hover_at(centre + egui::vec2(40.0, -25.0));
    harness.run();
    harness.drop_at(centre + egui::vec2(40.0, -25.0));
    harness.run();
    let moved = harness.state().view.offset - before;
    assert!((moved - egui::vec2(40.0, -25.0)).length() < 1.0, "panned by {moved:?}");
}

#[test]
fn zoomed_in_a_minimap_shows_where_the_view_is_and_a_click_on_it_moves_the_view() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let size = egui::vec2(512.0, 512.0);
    let canvas = harness.state().canvas_rect;
    assert_eq!(Minimap::of(&harness.state().view, size, canvas), None, "fitted: no minimap");
    harness.state_mut().view.zoom = 4.0;
    harness.run();
    let map = Minimap::of(&harness.state().view, size, canvas).expect("zoomed in: a minimap");
    assert!(canvas.contains_rect(map.rect));
    // a click on the minimap's point over pixel (128, 384) centres the view there, paints nothing
    let target = map.rect.min + map.rect.size() * egui::vec2(0.25, 0.75);
    harness.hover_at(target);
    harness.run();
    harness.drag_at(target);
    harness.run();
    harness.drop_at(target);
    harness.run();
    let view = harness.state().view;
    let centre = view.image_pos_from_screen(canvas.center(), size, canvas);
    assert!((centre - egui::pos2(128.0, 384.0)).length() < 1.0, "the view's centre is at {centre:?}");
    assert_eq!(marked(harness.state()), 0, "a click on the minimap is not a brush stroke");
    let moved = Minimap::of(&view, size, canvas).expect("a minimap");
    assert!((moved.visible.center() - target).length() < 1.0, "the outline follows the view");
}

#[test]
fn a_file_that_is_not_an_image_shows_an_error_and_keeps_the_document() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let text = std::env::temp_dir().join(format!("ds-ui-{}-notes.png", std::process::id()));
    std::fs::write(&text, "not an image at all").expect("write");
    harness.state_mut().open(text);
    settle(&mut harness, |app| !app.errors.is_empty());
    harness.get_by_label_contains("is not an image");
    assert_eq!(centre_pixel(harness.state()), [214, 40, 40, 255], "the sample is still open");
    harness.get_by_label("Dismiss").click();
    harness.run();
    assert!(harness.state().errors.is_empty());

    // pasting with no image on the clipboard (none here, or no clipboard at all) says so
    harness.state_mut().execute(diffusion_studio::ui::UiCommand::PasteImage);
    settle(&mut harness, |app| !app.errors.is_empty() && app.pending_io == 0);
    harness.get_by_label_contains("clipboard");
    assert_eq!(centre_pixel(harness.state()), [214, 40, 40, 255], "the sample is still open");
}

#[test]
fn add_noise_runs_on_the_engine_and_undo_restores_the_image() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let original = centre_pixel(harness.state());
    press(&mut harness, "Add noise");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.document.can_undo());
    let noised = centre_pixel(harness.state());
    assert_ne!(noised, original, "the engine's result is on the canvas");
    harness.get_by_label_contains("forward noise done");
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    harness.run();
    assert_eq!(centre_pixel(harness.state()), original);
}

/// An engine runner whose every job fails, as a job that runs out of memory would.
struct FailingRunner;

impl JobRunner for FailingRunner {
    fn device_report(&self) -> DeviceReport {
        DeviceReport { name: "test".into(), description: "failing test runner".into(), cuda_devices: 0 }
    }

    fn run(&mut self, _job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError> {
        ctx.progress(1, 2, None);
        Err(JobError::Failed("out of memory: try a smaller image".into()))
    }
}

#[test]
fn a_failed_job_shows_its_message_and_leaves_the_document_intact() {
    let mut harness = Harness::builder().with_size(egui::vec2(1280.0, 800.0)).build_eframe(|cc| {
        let waker = StudioApp::repaint_waker(&cc.egui_ctx);
        StudioApp::new(cc, EngineHandle::spawn_with(|| (FailingRunner, None), waker))
    });
    opened(&mut harness, sample());
    press(&mut harness, "Add noise");
    harness.run_steps(2);
    settle(&mut harness, |app| !app.errors.is_empty());
    harness.get_by_label_contains("out of memory: try a smaller image");
    harness.get_by_label("Engine: failing test runner");
    assert!(harness.state().jobs.is_empty());
    assert_eq!(centre_pixel(harness.state()), [214, 40, 40, 255]);
    assert!(!harness.state().document.can_undo());
}

/// Renders through wgpu (lavapipe/llvmpipe in CI): the canvas's paint callback draws the image.
#[test]
fn the_canvas_shader_draws_the_image() {
    let mut harness = Harness::builder().with_size(egui::vec2(1280.0, 800.0)).wgpu().build_eframe(|cc| {
        let engine = EngineHandle::spawn(DeviceChoice::Cpu, StudioApp::repaint_waker(&cc.egui_ctx));
        StudioApp::new(cc, engine)
    });
    opened(&mut harness, sample());
    let rendered = harness.render().expect("a wgpu adapter (install mesa-vulkan-drivers)");
    let ppp = rendered.width() as f32 / 1280.0;
    let app = harness.state();
    let canvas_centre = app.view.offset; // image centre relative to the canvas centre: zero after fit
    assert_eq!(canvas_centre, egui::Vec2::ZERO);
    // The red disc covers the middle of the fitted image; sample a little left and right of it.
    let red = rendered.get_pixel((600.0 * ppp) as u32, (400.0 * ppp) as u32).0;
    assert!(red[0] > 150 && red[1] < 90 && red[2] < 90, "expected the sample's red disc, got {red:?}");

    // A filled mask tints the image toward the overlay colour (1.0, 0.2, 0.3) at 45%; hidden,
    // the image shows as it is again.
    harness
        .state_mut()
        .execute(diffusion_studio::ui::UiCommand::Mask(diffusion_studio::document::MaskOp::Fill));
    harness.run();
    let tinted = harness.render().expect("render");
    let tinted = tinted.get_pixel((600.0 * ppp) as u32, (400.0 * ppp) as u32).0;
    assert!(tinted[0] > red[0] + 8 && tinted[2] > red[2] + 5, "{red:?} → {tinted:?}");
    harness.state_mut().show_mask = false;
    harness.run();
    let hidden = harness.render().expect("render");
    assert_eq!(hidden.get_pixel((600.0 * ppp) as u32, (400.0 * ppp) as u32).0, red);

    // A word's attention map shown over the image darkens where the word does not attend.
    let nowhere = Arc::new(image::RgbaImage::from_pixel(512, 512, image::Rgba([0, 0, 0, 255])));
    harness.state_mut().words.maps = vec![("red".into(), nowhere)];
    harness.state_mut().words.shown_map = Some(0);
    harness.run();
    let heat = harness.render().expect("render");
    let dark = heat.get_pixel((600.0 * ppp) as u32, (400.0 * ppp) as u32).0;
    assert!(dark[0] < red[0] / 3, "{red:?} → {dark:?}");
}

/// A file as the window system hands it over on drop.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn dropping_a_file_on_the_window_opens_it() {
    let mut harness = studio();
    harness.input_mut().dropped_files.push(std::sync::Arc::new(Dropped(sample())));
    harness.step();
    settle(&mut harness, |app| app.pending_io == 0 && app.document.image.is_some());
    let layer = harness.state().document.image.as_ref().expect("opened");
    assert_eq!(layer.path.as_deref(), Some(sample().as_path()));
    assert_eq!(centre_pixel(harness.state()), [214, 40, 40, 255]);
}

#[test]
fn save_as_writes_the_image_and_keeps_its_pixels() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let out = std::env::temp_dir().join(format!("ds-ui-{}-saved.png", std::process::id()));
    harness.state_mut().execute(diffusion_studio::ui::UiCommand::SaveAs(out.clone()));
    settle(&mut harness, |app| app.pending_io == 0);
    harness.get_by_label_contains("Saved");
    let saved = image::open(&out).expect("a PNG").into_rgba8();
    let original = image::open(sample()).expect("sample").into_rgba8();
    assert_eq!(saved, original);
}

/// Mask pixels marked for repainting at all.
fn marked(app: &StudioApp) -> usize {
    app.document.mask.as_ref().map_or(0, |m| m.pixels().iter().filter(|&&v| v > 0).count())
}

/// Scrolls a button into view, as a person would, and clicks it. (Frames by count, not until
/// the UI settles: while a job runs, its progress keeps asking for frames.)
fn press(harness: &mut Harness<'static, StudioApp>, label: &str) {
    harness.get_by_label(label).scroll_to_me();
    harness.run_steps(3);
    harness.get_by_label(label).click();
}

/// Ctrl+Z.
fn undo(harness: &mut Harness<'static, StudioApp>) {
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    harness.run();
}

/// A left-button stroke from `from` through `to`, as a mouse makes it.
fn stroke(
    harness: &mut Harness<'static, StudioApp>,
    from: egui::Pos2,
    to: egui::Pos2,
    modifiers: egui::Modifiers,
) {
    let button = |pos, pressed| egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers,
    };
    harness.event(egui::Event::ModifiersChanged(modifiers));
    harness.event(egui::Event::PointerMoved(from));
    harness.step();
    harness.event(button(from, true));
    harness.step();
    for i in 1..=4 {
        harness.event(egui::Event::PointerMoved(from + (to - from) * (i as f32 / 4.0)));
        harness.step();
    }
    harness.event(button(to, false));
    harness.step();
    harness.event(egui::Event::ModifiersChanged(egui::Modifiers::NONE));
    harness.step();
}

#[test]
fn a_brush_stroke_paints_the_mask_and_undo_and_redo_walk_it() {
    let mut harness = studio();
    opened(&mut harness, sample());
    assert_eq!(harness.state().tool, Tool::Brush, "the studio opens on the brush");
    assert_eq!(marked(harness.state()), 0);
    stroke(&mut harness, egui::pos2(560.0, 400.0), egui::pos2(660.0, 420.0), egui::Modifiers::NONE);
    let painted = marked(harness.state());
    // about 68 × 48 image pixels plus the round ends (zoom ≈ 1.46, radius 24)
    assert!((3000..15000).contains(&painted), "{painted} pixels marked");
    harness.get_by_label_contains("Painted the mask");

    // the eraser takes part of it back
    harness.key_press(egui::Key::E);
    harness.run();
    assert_eq!(harness.state().tool, Tool::Eraser);
    stroke(&mut harness, egui::pos2(560.0, 400.0), egui::pos2(600.0, 408.0), egui::Modifiers::NONE);
    let erased = marked(harness.state());
    assert!(erased < painted && erased > 0, "{erased} of {painted}");

    undo(&mut harness);
    assert_eq!(marked(harness.state()), painted, "undo brings the erased part back");
    undo(&mut harness);
    assert_eq!(marked(harness.state()), 0, "undo takes the stroke away");
    harness.key_press_modifiers(egui::Modifiers::COMMAND | egui::Modifiers::SHIFT, egui::Key::Z);
    harness.run();
    assert_eq!(marked(harness.state()), painted, "redo paints it again");
}

#[test]
fn shift_click_draws_a_straight_line_and_brackets_resize_the_brush() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let radius = harness.state().brush.radius;
    harness.key_press(egui::Key::CloseBracket);
    harness.run();
    assert!((harness.state().brush.radius - radius * 1.25).abs() < 1e-3);
    harness.key_press(egui::Key::OpenBracket);
    harness.key_press(egui::Key::OpenBracket);
    harness.run();
    assert!((harness.state().brush.radius - radius / 1.25).abs() < 1e-3);

    let (a, b) = (egui::pos2(450.0, 300.0), egui::pos2(750.0, 500.0));
    stroke(&mut harness, a, a, egui::Modifiers::NONE);
    let dab = marked(harness.state());
    stroke(&mut harness, b, b, egui::Modifiers::SHIFT);
    let line = marked(harness.state());
    assert!(line > dab * 5, "a line from the dab to the click: {dab} then {line}");
    undo(&mut harness);
    assert_eq!(marked(harness.state()), dab, "the line is one undo step");
}

#[test]
fn the_mask_tools_change_the_whole_mask_in_one_undo_step() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let total = 512 * 512;
    stroke(&mut harness, egui::pos2(560.0, 400.0), egui::pos2(600.0, 400.0), egui::Modifiers::NONE);
    let painted = marked(harness.state());
    harness.get_by_label("Grow").click();
    harness.run();
    let grown = marked(harness.state());
    assert!(grown > painted, "{painted} → {grown}");
    harness.get_by_label("Shrink").click();
    harness.run();
    assert!(marked(harness.state()) < grown);
    harness.get_by_label("Invert").click();
    harness.run();
    let inverted = marked(harness.state());
    assert!(inverted > total - grown, "{inverted}");
    harness.get_by_label("Clear").click();
    harness.run();
    assert_eq!(marked(harness.state()), 0);
    harness.get_by_label("Edit").click();
    harness.run();
    harness.get_by_label("Undo").click();
    harness.run();
    assert_eq!(marked(harness.state()), inverted, "undo takes back the clear alone");
}

#[test]
fn typing_in_the_prompt_does_not_switch_tools() {
    let mut harness = studio();
    opened(&mut harness, sample());
    harness.get_by_role_and_label(egui::accesskit::Role::MultilineTextInput, "prompt").click();
    harness.run();
    harness.get_by_role_and_label(egui::accesskit::Role::MultilineTextInput, "prompt").type_text(" here");
    harness.run();
    assert_eq!(harness.state().tool, Tool::Brush, "the e of \"here\" went into the prompt");
    assert!(harness.state().params.prompt.ends_with(" here"), "{}", harness.state().params.prompt);
}

/// The inpaint jobs a [`RecordingRunner`] got: prompt, mask pixels marked, strength.
type Recorded = Arc<Mutex<Vec<(String, usize, f64)>>>;

/// An engine runner that records the inpaint jobs it gets and answers with a flat blue image.
struct RecordingRunner(Recorded);

impl JobRunner for RecordingRunner {
    fn device_report(&self) -> DeviceReport {
        DeviceReport { name: "test".into(), description: "recording test runner".into(), cuda_devices: 0 }
    }

    fn run(&mut self, job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError> {
        if let Job::Generate(params) = job {
            // a long generation that only a cancel ends (records its prompt)
            if let Ok(mut seen) = self.0.lock() {
                seen.push((params.prompt.clone(), 0, 0.0));
            }
            for step in 1..=2000 {
                ctx.checkpoint()?;
                ctx.progress(step, 2000, None);
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(JobError::Failed("the generation was not cancelled".into()));
        }
        if let Job::DiffEdit(params) = job {
            // records the source prompt with the mask's edge tolerance and the mask it was given
            // (None: estimate), and answers with the image unchanged and the left half as the mask
            let given =
                params.mask.as_ref().map_or(0, |m| m.rgba.chunks_exact(4).filter(|p| p[0] > 0).count());
            if let Ok(mut seen) = self.0.lock() {
                seen.push((
                    format!("{} | edges {}", params.source_prompt, params.mask_edges),
                    given,
                    params.strength,
                ));
            }
            let (w, h) = (params.image.width, params.image.height);
            let mask: Vec<u8> = (0..w * h)
                .flat_map(|i| if i % w < w / 2 { [255, 255, 255, 255] } else { [0, 0, 0, 255] })
                .collect();
            let mask = ImageData::new(w, h, mask).map_err(JobError::Failed)?;
            return Ok(JobOutput::Images(vec![
                LabelledImage { label: "image".into(), image: params.image.clone() },
                LabelledImage { label: "mask".into(), image: mask },
            ]));
        }
        if let Job::PromptToPrompt(params) = job {
            // records the target prompt and its re-weights, and the local-blend words; answers
            // with a flat image and an attention map per target word (the left half)
            let reweight: Vec<String> = params.reweight.iter().map(|(w, f)| format!("{w}={f:.2}")).collect();
            if let Ok(mut seen) = self.0.lock() {
                let windows: Vec<String> =
                    params.word_windows.iter().map(|(w, (a, b))| format!("{w}@{a:.1}-{b:.1}")).collect();
                let sent =
                    format!("{} | {} | {}", params.target_prompt, reweight.join(","), windows.join(","));
                seen.push((sent, params.local_blend.len(), params.cross_window.1));
            }
            let (w, h) = (params.base.width, params.base.height);
            let flat =
                |rgba: [u8; 4]| ImageData::new(w, h, rgba.repeat((w * h) as usize)).map_err(JobError::Failed);
            let half: Vec<u8> = (0..w * h)
                .flat_map(|i| if i % w < w / 2 { [255, 255, 255, 255] } else { [0, 0, 0, 255] })
                .collect();
            let mut images = vec![
                LabelledImage { label: "target".into(), image: flat([30, 200, 30, 255])? },
                LabelledImage { label: "source".into(), image: flat([200, 30, 30, 255])? },
            ];
            for word in params.target_prompt.split_whitespace() {
                let map = ImageData::new(w, h, half.clone()).map_err(JobError::Failed)?;
                images.push(LabelledImage { label: format!("attention: {word}"), image: map });
            }
            // and each word's three steps at a 2 × 2 grid: the left column, the right column,
            // everywhere
            let (on, off) = ([255u8, 255, 255, 255], [0u8, 0, 0, 255]);
            let mut strip = Vec::new();
            for _row in 0..2 {
                for pixel in [on, off, off, on, on, on] {
                    strip.extend(pixel);
                }
            }
            for word in params.target_prompt.split_whitespace() {
                let image = ImageData::new(6, 2, strip.clone()).map_err(JobError::Failed)?;
                images.push(LabelledImage { label: format!("attention steps: {word}"), image });
            }
            return Ok(JobOutput::Images(images));
        }
        let Job::Inpaint(params) = job else {
            return Err(JobError::Failed("only inpainting, DiffEdit and prompt-to-prompt here".into()));
        };
        let marked = params.mask.rgba.chunks_exact(4).filter(|p| p[0] > 0).count();
        if let Ok(mut seen) = self.0.lock() {
            seen.push((params.base.prompt.clone(), marked, params.strength));
        }
        ctx.progress(1, 1, None);
        let (w, h) = (params.image.width, params.image.height);
        // blue, with the prompt's length in the green channel (tells results apart)
        let green = 40u8.wrapping_add(params.base.prompt.len() as u8).wrapping_sub(17);
        let colour = [20u8, green, 220, 255].repeat((w * h) as usize);
        ImageData::new(w, h, colour).map(JobOutput::Image).map_err(JobError::Failed)
    }
}

#[test]
fn inpaint_sends_the_painted_mask_and_prompt_and_keeps_the_mask_for_the_next_try() {
    let (mut harness, seen) = recording_studio();
    opened(&mut harness, sample());
    harness.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));

    // nothing painted: a message, no job
    harness.get_by_label("Inpaint").click();
    harness.run();
    harness.get_by_label_contains("The mask is empty");
    assert!(harness.state().jobs.is_empty());
    harness.get_by_label("Dismiss").click();
    harness.run();

    stroke(&mut harness, egui::pos2(560.0, 400.0), egui::pos2(640.0, 400.0), egui::Modifiers::NONE);
    let painted = marked(harness.state());
    harness.state_mut().params.prompt = "a big blue square".into();
    harness.get_by_label("Inpaint").click();
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.document.can_undo() && app.status.contains("done"));
    let jobs = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(jobs, vec![("a big blue square".to_string(), painted, 1.0)]);
    assert_eq!(centre_pixel(harness.state()), [20, 40, 220, 255], "the result is on the canvas");
    assert_eq!(marked(harness.state()), painted, "the mask stays for another try");

    // holding \ shows the image before the result; the status bar reads the pixel under the
    // pointer
    harness.hover_at(egui::pos2(600.0, 400.0));
    harness.key_down(egui::Key::Backslash);
    harness.run();
    assert!(harness.state().comparing);
    harness.get_by_label("Showing the image before the last result");
    harness.key_up(egui::Key::Backslash);
    harness.run();
    assert!(!harness.state().comparing);
    let ((x, y), rgba, mask) = harness.state().inspected.expect("a pixel under the pointer");
    assert_eq!(rgba, [20, 40, 220, 255]);
    harness.get_by_label(&format!("{x},{y}: 20 40 220 255, mask {mask}"));
    undo(&mut harness);
    assert_eq!(centre_pixel(harness.state()), [214, 40, 40, 255], "undo brings the image back");
    assert_eq!(marked(harness.state()), painted);

    // Ctrl+Enter runs it again
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && centre_pixel(app) == [20, 40, 220, 255]);
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or_default(), 2);
}

fn recording_studio() -> (Harness<'static, StudioApp>, Recorded) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    let harness = Harness::builder().with_size(egui::vec2(1280.0, 800.0)).build_eframe(move |cc| {
        let waker = StudioApp::repaint_waker(&cc.egui_ctx);
        StudioApp::new(cc, EngineHandle::spawn_with(move || (RecordingRunner(recorder), None), waker))
    });
    (harness, seen)
}

fn inpaint_with(harness: &mut Harness<'static, StudioApp>, prompt: &str) {
    let before = harness.state().history.len();
    harness.state_mut().params.prompt = prompt.into();
    harness.get_by_label("Inpaint").click();
    harness.run_steps(2);
    settle(harness, |app| app.jobs.is_empty() && app.history.len() == before + 1);
}

#[test]
fn results_go_into_the_history_and_clicking_one_puts_its_image_and_settings_back() {
    let (mut harness, _) = recording_studio();
    opened(&mut harness, sample());
    harness.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));
    stroke(&mut harness, egui::pos2(560.0, 400.0), egui::pos2(640.0, 400.0), egui::Modifiers::NONE);
    inpaint_with(&mut harness, "a big blue square"); // 17 letters: green 40
    harness.state_mut().params.steps = 33;
    inpaint_with(&mut harness, "a small blue square"); // 19: green 42
    // Repeat sends the last job again as it was, whatever the panels say now
    harness.state_mut().params.prompt = "changed since".into();
    press(&mut harness, "Repeat");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.history.len() == 3);
    assert_eq!(harness.state().history[2].entry.parameters, harness.state().history[1].entry.parameters);
    harness.state_mut().history.pop();
    assert_eq!(centre_pixel(harness.state()), [20, 42, 220, 255]);
    let history = &harness.state().history;
    assert_eq!(history.len(), 2);
    assert!(
        history[0].entry.parameters.starts_with("a big blue square\nSteps: 20"),
        "{}",
        history[0].entry.parameters
    );

    harness.get_by_label("inpaint #1").click();
    harness.run();
    let app = harness.state();
    assert_eq!(centre_pixel(app), [20, 40, 220, 255], "the first result is back");
    assert_eq!((app.params.prompt.as_str(), app.params.steps), ("a big blue square", 20));
    undo(&mut harness);
    assert_eq!(centre_pixel(harness.state()), [20, 42, 220, 255], "restoring is one undo step");
}

#[test]
fn after_a_crash_the_studio_offers_its_autosave_and_restores_it() {
    let folder = std::env::temp_dir().join(format!("ds-ui-{}-autosave", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    let (mut first, _) = recording_studio();
    first.state_mut().autosave = Some(folder.clone());
    first.state_mut().autosave_every = Duration::ZERO;
    opened(&mut first, sample());
    first.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));
    stroke(&mut first, egui::pos2(560.0, 400.0), egui::pos2(640.0, 400.0), egui::Modifiers::NONE);
    inpaint_with(&mut first, "a big blue square");
    first.state_mut().params.prompt = "typed just before the crash".into();
    let painted = marked(first.state());
    let project = folder.join("project.json");
    let saved_prompt = |project: &Path| {
        std::fs::read_to_string(project).unwrap_or_default().contains("typed just before the crash")
    };
    let start = Instant::now();
    while !(saved_prompt(&project) && first.state().pending_io == 0) {
        assert!(start.elapsed() < Duration::from_secs(20), "no autosave");
        first.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(first); // a crash: no on_exit

    let (mut second, _) = recording_studio();
    second.state_mut().autosave = Some(folder.clone());
    second.state_mut().check_autosave();
    // (steps, not run: the engine thread's start may ask for repaints at any time)
    second.run_steps(3);
    second.get_by_label_contains("did not close normally");
    second.get_by_label("Restore").click();
    second.run_steps(2);
    settle(&mut second, |app| app.document.image.is_some() && app.pending_io == 0);
    let app = second.state();
    assert_eq!(centre_pixel(app), [20, 40, 220, 255], "the result that was on the canvas");
    assert_eq!(marked(app), painted, "the mask");
    assert_eq!(app.params.prompt, "typed just before the crash");
    assert_eq!(app.history.len(), 1);
    assert!(app.restore_offer.is_none());

    // a normal exit is not offered again
    second.state_mut().autosave_on_exit().expect("saved on exit");
    let (mut third, _) = recording_studio();
    third.state_mut().autosave = Some(folder);
    third.state_mut().check_autosave();
    assert!(third.state().restore_offer.is_none());
}

#[test]
fn diffedit_puts_its_mask_on_the_canvas_and_runs_again_with_the_corrected_one() {
    let (mut harness, seen) = recording_studio();
    opened(&mut harness, sample());
    harness.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));
    harness.state_mut().params.method = Method::DiffEdit;
    harness.run();
    press(&mut harness, "DiffEdit");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.history.len() == 1);
    assert_eq!(marked(harness.state()), 256 * 512, "the estimated mask (left half) is on the canvas");
    // correct it with the eraser and run again on the corrected mask
    harness.key_press(egui::Key::E);
    harness.run();
    stroke(&mut harness, egui::pos2(450.0, 400.0), egui::pos2(500.0, 400.0), egui::Modifiers::NONE);
    let corrected = marked(harness.state());
    assert!(corrected < 256 * 512);
    harness.get_by_label("use my mask").click();
    press(&mut harness, "DiffEdit");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.history.len() == 2);
    // an estimated mask again, now without snapping to the image's edges
    harness.get_by_label("use my mask").click();
    harness.run();
    harness.get_by_label("mask follows edges").click();
    press(&mut harness, "DiffEdit");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.history.len() == 3);
    let jobs = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let edges = diffusion_studio::protocol::DIFFEDIT_MASK_EDGES;
    assert_eq!(
        jobs,
        vec![
            (format!("a big red circle | edges {edges}"), 0, 0.8),
            (format!("a big red circle | edges {edges}"), corrected, 0.8),
            ("a big red circle | edges 0".to_string(), 0, 0.8),
        ]
    );
}

#[test]
fn the_word_editor_sends_the_word_edits_and_shows_each_words_attention() {
    let (mut harness, seen) = recording_studio();
    opened(&mut harness, sample());
    harness.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));
    harness.state_mut().words.source_prompt = "a big red circle".into();
    harness.state_mut().words.target_prompt = String::new();
    harness.state_mut().params.method = Method::PromptToPrompt;
    harness.run();
    // typing the target prompt shows the word-level difference: "red →" then "green"
    let target = harness.get_by_role_and_label(egui::accesskit::Role::TextInput, "target prompt (the edit)");
    target.click();
    harness.run();
    harness
        .get_by_role_and_label(egui::accesskit::Role::TextInput, "target prompt (the edit)")
        .type_text("a big green circle");
    harness.run();
    harness.get_by_label("red ->");
    // a weight on the chip "green" is written into the prompt as syntax
    harness.get_by_label("green").click();
    harness.run();
    let slider = harness.get_by_role_and_label(egui::accesskit::Role::Slider, "re-weight");
    slider.focus();
    harness.run();
    for _ in 0..10 {
        harness.key_press(egui::Key::ArrowRight);
        harness.run();
    }
    assert_eq!(harness.state().words.target_prompt, "a big (green:1.5) circle");
    harness.get_by_label("local blend").click();
    harness.run();
    harness.get_by_label("own attention window").click();
    harness.run();
    press(&mut harness, "Apply edit");
    harness.run_steps(2);
    settle(&mut harness, |app| app.jobs.is_empty() && app.history.len() == 1);
    let jobs = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(jobs, vec![("a big green circle | green=1.50 | green@0.0-0.8".to_string(), 1, 0.8)]);
    assert_eq!(centre_pixel(harness.state()), [30, 200, 30, 255], "the edited image is on the canvas");
    assert_eq!(harness.state().words.maps.len(), 4, "a map per target word");

    // hovering a word shows its map; "Use as mask" makes it the mask
    let chip = harness.get_by_label("green").rect().center();
    harness.hover_at(chip);
    harness.run();
    assert_eq!(harness.state().words.visible_map().map(|(id, _)| id), Some(2 << 16));
    press(&mut harness, "Use as mask");
    harness.run();
    // the edit was generated at the generation size (128 × 128), and is the open image now
    assert_eq!(marked(harness.state()), 64 * 128);

    // the step scrubber shows a word's map at one step, and that step's map becomes the mask
    assert_eq!(harness.state().words.step_count(), 3);
    let scrubber = harness.get_by_role_and_label(egui::accesskit::Role::Slider, "attention at step");
    scrubber.focus();
    harness.run();
    for _ in 0..2 {
        harness.key_press(egui::Key::ArrowRight);
        harness.run();
    }
    assert_eq!(harness.state().words.map_step, Some(1), "scrubbed to the second step");
    harness.state_mut().words.shown_map = Some(2); // "Show attention" pins "green"
    let shown = harness.state().words.visible_map().map(|(id, map)| (id, map.dimensions()));
    assert_eq!(shown, Some((2 << 16 | 2, (2, 2))), "the second step's frame of the pinned word");
    press(&mut harness, "Use as mask");
    harness.run();
    let mask = harness.state().document.mask.as_ref().map(|m| (m.get(0, 64), m.get(127, 64)));
    assert_eq!(mask, Some((0, 255)), "the second step attended to the right");
}

/// The word editor's request, as the real engine runs it on the bundled model: the target's
/// word swap with a re-weight and local blend is accepted, the result lands on the canvas, and
/// every target word has an attention map.
#[test]
fn a_word_edit_runs_on_the_bundled_model() {
    let mut harness = studio();
    harness.state_mut().load_default_model();
    let small = std::env::temp_dir().join(format!("ds-ui-{}-small.png", std::process::id()));
    image::RgbaImage::from_pixel(128, 128, image::Rgba([40, 60, 200, 255])).save(&small).expect("write");
    opened(&mut harness, small);
    {
        let words = &mut harness.state_mut().words;
        words.source_prompt = "a big red circle on a blue background".into();
        words.target_prompt = "a big (green:1.5) circle on a blue background".into();
        words.local_blend.insert("green".into());
    }
    harness.state_mut().params.method = Method::PromptToPrompt;
    harness.run();
    harness.state_mut().params.steps = 10;
    press(&mut harness, "Apply edit");
    harness.run_steps(2);
    let start = Instant::now();
    while !(harness.state().jobs.is_empty() && harness.state().history.len() == 1) {
        assert!(harness.state().errors.is_empty(), "{:?}", harness.state().errors);
        assert!(start.elapsed() < Duration::from_secs(120), "timed out; status: {}", harness.state().status);
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    let app = harness.state();
    assert!(app.errors.is_empty(), "{:?}", app.errors);
    let words: Vec<&str> = app.words.maps.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(words, ["a", "big", "green", "circle", "on", "a", "blue", "background"]);
    assert_ne!(centre_pixel(app), [40, 60, 200, 255], "the generated edit replaced the image");
    assert!(app.history[0].entry.parameters.contains("Target prompt: a big (green:1.5) circle"));
}

/// Choosing a method from the inspector's list and running it on the bundled model through the
/// real engine: text to image with no image open, then image to image on its result, with the
/// seed stepping on after each run.
#[test]
fn methods_from_the_list_run_on_the_bundled_model() {
    let mut harness = studio();
    harness.state_mut().load_default_model();
    harness.state_mut().params.steps = 8;
    harness.state_mut().params.prompt = "a big yellow star on a green background".into();
    harness.run();
    harness.get_by_label("method").click();
    harness.run();
    harness.get_by_label("Text to image").click();
    harness.run();
    harness.get_by_label("+1").click();
    harness.run();
    assert_eq!(harness.state().params.method, Method::TextToImage);
    let run = |harness: &mut Harness<'static, StudioApp>, action: &str, results: usize| {
        press(harness, action);
        harness.run_steps(2);
        let start = Instant::now();
        while !(harness.state().jobs.is_empty() && harness.state().history.len() == results) {
            assert!(harness.state().errors.is_empty(), "{:?}", harness.state().errors);
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out; status: {}",
                harness.state().status
            );
            harness.step();
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    run(&mut harness, "Generate", 1);
    let generated =
        harness.state().document.image.as_ref().map(|l| l.image.as_ref().clone()).expect("an image");
    assert_eq!(generated.dimensions(), (128, 128));
    assert_eq!(harness.state().params.seed, 1, "the seed stepped on");

    harness.state_mut().params.method = Method::ImageToImage;
    harness.state_mut().params.strength = 0.5;
    harness.run();
    run(&mut harness, "Transform", 2);
    let transformed =
        harness.state().document.image.as_ref().map(|l| l.image.as_ref().clone()).expect("an image");
    assert_ne!(transformed, generated);
    assert!(harness.state().history[1].entry.parameters.contains("Denoising strength: 0.5"));
    undo(&mut harness);
    assert_eq!(harness.state().document.image.as_ref().map(|l| l.image.as_ref().clone()), Some(generated));
}

#[test]
fn the_model_chosen_is_remembered_for_the_next_start() {
    let folder = std::env::temp_dir().join(format!("ds-ui-{}-prefs", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    let prefs = folder.join("settings.json");
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models/shapes");

    let mut first = studio();
    first.state_mut().prefs_path = Some(prefs.clone());
    first.state_mut().execute(diffusion_studio::ui::UiCommand::LoadModel(bundled.clone()));
    first.state_mut().execute(diffusion_studio::ui::UiCommand::SetPrecision("bf16".into()));
    settle(&mut first, |app| app.model.as_deref().is_some_and(|m| m.starts_with("shapes")));
    // the settings show what the folder was detected as
    let model = first.state().model.clone().unwrap_or_default();
    assert!(model.contains("diffusers folder") && model.contains("text-to-image"), "{model}");
    assert!(model.contains("prediction type epsilon") && model.contains("8× VAE"), "{model}");

    let mut second = studio();
    second.state_mut().prefs_path = Some(prefs.clone());
    second.state_mut().load_prefs_and_model();
    assert_eq!(second.state().model_path.as_deref(), Some(bundled.as_path()));
    assert_eq!(second.state().prefs.precision, "bf16");

    // a remembered model that is gone: said, and the bundled model instead
    let gone = diffusion_studio::ui::prefs::Prefs {
        model: Some(folder.join("deleted-model")),
        precision: "f32".into(),
        ..Default::default()
    };
    diffusion_studio::ui::prefs::write_prefs(&prefs, &gone).expect("write");
    let mut third = studio();
    third.state_mut().prefs_path = Some(prefs);
    third.state_mut().load_prefs_and_model();
    third.run();
    third.get_by_label_contains("is not there any more");
    assert!(third.state().model_path.as_ref().is_some_and(|p| p.ends_with("assets/models/shapes")));
}

#[test]
fn choosing_a_device_in_the_settings_restarts_the_engine_there_and_remembers_it() {
    let folder = std::env::temp_dir().join(format!("ds-ui-{}-device", std::process::id()));
    let _ = std::fs::remove_dir_all(&folder);
    let prefs = folder.join("settings.json");
    let (mut harness, seen) = recording_studio();
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let (record, waker) = (Arc::clone(&started), StudioApp::repaint_waker(&harness.ctx));
    harness.state_mut().respawn = Some(Box::new(move |device| {
        if let Ok(mut started) = record.lock() {
            started.push(device.to_name());
        }
        let recorder = Arc::clone(&seen);
        EngineHandle::spawn_with(move || (RecordingRunner(recorder), None), waker.clone())
    }));
    harness.state_mut().prefs_path = Some(prefs.clone());
    harness.state_mut().execute(diffusion_studio::ui::UiCommand::ToggleSettings);
    harness.run();
    harness.get_by_role_and_label(egui::accesskit::Role::ComboBox, "device").click();
    harness.run();
    harness.get_by_label("cpu").click();
    harness.run_steps(3);
    assert_eq!(
        started.lock().map(|s| s.clone()).unwrap_or_default(),
        ["cpu"],
        "one engine started, on the CPU"
    );
    assert_eq!(harness.state().prefs.device, "cpu");
    let saved = diffusion_studio::ui::prefs::read_prefs(&prefs).expect("saved");
    assert_eq!(saved.device(), diffusion_studio::protocol::DeviceChoice::Cpu, "remembered");
    // the new engine reports in, and the model is loaded again on it
    settle(&mut harness, |app| app.device.is_some());
    assert!(harness.state().model_path.is_some(), "the model is loaded on the new engine");
    let _ = std::fs::remove_dir_all(&folder);
}

#[test]
fn escape_and_the_cancel_button_cancel_the_running_job_and_keep_the_document() {
    let (mut harness, seen) = recording_studio();
    opened(&mut harness, sample());
    harness.state_mut().model_path = Some(PathBuf::from("assets/models/shapes"));
    harness.state_mut().params.method = Method::TextToImage;
    harness.run();
    let before = centre_pixel(harness.state());
    for (attempt, prompt) in ["cancelled by escape", "cancelled by the button"].into_iter().enumerate() {
        harness.state_mut().params.prompt = prompt.into();
        press(&mut harness, "Generate");
        settle(&mut harness, |app| app.jobs.values().any(|job| job.step > 0));
        if attempt == 0 {
            harness.key_press(egui::Key::Escape);
        } else {
            press(&mut harness, "Cancel");
        }
        settle(&mut harness, |app| app.jobs.is_empty());
        let app = harness.state();
        assert!(app.status.contains("cancelled"), "{}", app.status);
        assert!(app.errors.is_empty(), "{:?}", app.errors);
        assert!(app.history.is_empty(), "a cancelled job leaves no result");
        assert_eq!(centre_pixel(app), before, "the document is as it was");
    }
    let prompts: Vec<String> =
        seen.lock().map(|s| s.iter().map(|(p, ..)| p.clone()).collect()).unwrap_or_default();
    assert_eq!(prompts, ["cancelled by escape", "cancelled by the button"]);
}

/// The audio room's null output, shared with the test so that it can pull buffers as a sound
/// card's callback would.
struct PulledOutput(Arc<Mutex<diffusion_studio::audio::playback::NullOutput>>);

impl diffusion_studio::audio::playback::AudioOutput for PulledOutput {
    fn sample_rate(&self) -> u32 {
        self.0.lock().map_or(0, |output| output.sample_rate())
    }

    fn describe(&self) -> String {
        "test output".into()
    }
}

/// The audio room end to end on the tiny fixture model with the studio preset: generate, seek
/// by a click, select by a drag, regenerate the selection (the rest kept), compare A and B,
/// play, export, and a broken WAV named in an error.
#[test]
fn the_audio_room_generates_selects_regenerates_compares_plays_and_exports() {
    use diffusion_studio::audio::playback::{self, NullOutput};
    use diffusion_studio::ui::app::{Room, UiCommand};
    use diffusion_studio::ui::audio_room::AudioMethod;
    let mut harness = studio();
    let output: Arc<Mutex<Option<Arc<Mutex<NullOutput>>>>> = Arc::new(Mutex::new(None));
    let handed = Arc::clone(&output);
    {
        let app = harness.state_mut();
        // a folder that is no model is refused by name; a diffusers folder becomes the audio model
        app.execute(UiCommand::SetAudioModel(std::env::temp_dir()));
        assert!(app.errors.last().is_some_and(|e| e.contains("not a diffusers folder")), "{:?}", app.errors);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_sd_pipeline");
        app.execute(UiCommand::SetAudioModel(fixture.clone()));
        assert_eq!(app.audio_model, fixture);
        app.errors.clear();
        app.audio.settings.preset = "studio".into();
        app.audio.settings.steps = 2;
        app.audio.settings.iterations = 2;
        app.audio.set_output_factory(Box::new(move || {
            let (player, transport) = playback::player();
            let null = Arc::new(Mutex::new(NullOutput::new(player, 16_000, "test")));
            if let Ok(mut slot) = handed.lock() {
                *slot = Some(Arc::clone(&null));
            }
            (transport, Box::new(PulledOutput(null)))
        }));
    }
    let pull = |frames: usize| {
        if let Some(null) = output.lock().ok().and_then(|slot| slot.clone())
            && let Ok(mut null) = null.lock()
        {
            null.pull(frames, 1);
        }
    };
    press(&mut harness, "Audio");
    harness.run_steps(2);
    assert_eq!(harness.state().room, Room::Audio);
    // 1. text to audio
    press(&mut harness, "Run");
    settle(&mut harness, |app| app.audio.clip.is_some() && app.jobs.is_empty());
    let first = harness.state().audio.clip.as_ref().map(|c| Arc::clone(&c.clip.samples)).expect("a clip");
    assert_eq!(
        first.len(),
        256 * 256,
        "one image of the studio preset (the model's size is not used: 256 frames)"
    );
    harness.run_steps(2);
    let rect = harness.state().audio.spectrogram_rect;
    assert!(rect.width() > 100.0 && rect.height() > 50.0, "the spectrogram is drawn: {rect:?}");
    // 2. a click seeks: the middle of the view is the middle of the clip
    let middle = rect.center();
    stroke(&mut harness, middle, middle, egui::Modifiers::NONE);
    pull(1);
    let (seconds, playing) = harness.state().audio.playhead().expect("a playhead");
    assert!((seconds - 2.048).abs() < 0.05 && !playing, "playhead at {seconds} s");
    assert!(harness.state().audio.selection.is_none(), "a click selects nothing");
    // 3. a drag selects a stretch; Shift also a band
    let at = |share: f32| egui::pos2(rect.min.x + rect.width() * share, rect.center().y);
    let band_end = egui::pos2(rect.min.x + rect.width() * 0.5, rect.min.y + rect.height() * 0.25);
    stroke(&mut harness, at(0.25), band_end, egui::Modifiers::SHIFT);
    let selection = harness.state().audio.selection.expect("a selection");
    let (low, high) = selection.band.expect("a band");
    assert!(low < high && high > 1000.0, "{selection:?}");
    stroke(&mut harness, at(0.25), at(0.5), egui::Modifiers::NONE);
    let selection = harness.state().audio.selection.expect("a selection");
    assert!((selection.start - 1.024).abs() < 0.05 && (selection.end - 2.048).abs() < 0.05, "{selection:?}");
    assert!(selection.band.is_none());
    // 4. regenerate the selection: outside it (and its crossfade) every sample is kept
    harness.state_mut().audio.settings.method = AudioMethod::Regenerate;
    harness.run_steps(2);
    press(&mut harness, "Run");
    settle(&mut harness, |app| app.audio.previous.is_some() && app.jobs.is_empty());
    let second = harness.state().audio.clip.as_ref().map(|c| Arc::clone(&c.clip.samples)).expect("a clip");
    assert_eq!(second.len(), first.len());
    let (start, end) = ((selection.start * 16_000.0) as usize, (selection.end * 16_000.0) as usize);
    assert!((0..start - 800).chain(end + 800..first.len()).all(|i| first[i] == second[i]), "kept outside");
    assert!((start..end).filter(|&i| first[i] != second[i]).count() > (end - start) / 2, "changed inside");
    // 5. A/B: the clip before is shown and played
    press(&mut harness, "A/B: before");
    harness.run_steps(2);
    assert!(harness.state().audio.showing_previous);
    let shown = harness.state().audio.shown().map(|c| Arc::clone(&c.clip.samples)).expect("shown");
    assert!(Arc::ptr_eq(&shown, &first));
    // 6. space plays; the playhead moves as the output pulls
    harness.key_press(egui::Key::Space);
    harness.run_steps(2);
    let before = harness.state().audio.playhead().map_or(0.0, |(s, _)| s);
    pull(1600);
    let (after, playing) = harness.state().audio.playhead().expect("a playhead");
    assert!(playing && (after - before - 0.1).abs() < 1e-3, "{before} → {after}");
    // 7. export writes the shown clip
    let path = std::env::temp_dir().join(format!("ds-ui-audio-{}.wav", std::process::id()));
    harness.state_mut().execute(UiCommand::ExportAudio(path.clone()));
    settle(&mut harness, |app| app.pending_io == 0);
    let reader = hound::WavReader::open(&path).expect("a WAV file");
    assert_eq!((reader.spec().sample_rate, reader.len() as usize), (16_000, first.len()));
    let _ = std::fs::remove_file(&path);
    // 8. a broken WAV is named, and the room keeps its clips
    let broken = std::env::temp_dir().join(format!("ds-ui-broken-{}.wav", std::process::id()));
    std::fs::write(&broken, b"RIFF not really").expect("writes");
    harness.state_mut().open(broken.clone());
    settle(&mut harness, |app| app.pending_io == 0 && !app.errors.is_empty());
    let error = harness.state().errors.last().cloned().unwrap_or_default();
    assert!(error.contains("ds-ui-broken"), "{error}");
    assert!(harness.state().audio.clip.is_some() && harness.state().audio.previous.is_some());
    let _ = std::fs::remove_file(&broken);
}

#[test]
fn an_audio_diffusion_model_greys_out_the_prompts_and_takes_clips_of_another_rate() {
    use diffusion_studio::audio::wav;
    use diffusion_studio::ui::app::{Room, UiCommand};
    use diffusion_studio::ui::audio_room::{AudioMethod, Selection};
    let mut harness = studio();
    // a 1 s tone, opened at the audio-diffusion preset's 22.05 kHz
    let path = std::env::temp_dir().join(format!("ds-ui-tone-{}.wav", std::process::id()));
    let tone: Vec<f32> = (0..22_050).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    wav::write_wav(&path, &wav::Clip { sample_rate: 22_050, channels: vec![tone] }).expect("a WAV");
    {
        let app = harness.state_mut();
        app.execute(UiCommand::SetRoom(Room::Audio));
        app.audio.settings.preset = "audio-diffusion".into();
        app.open_audio(path.clone());
    }
    settle(&mut harness, |app| app.pending_io == 0 && app.audio.clip.is_some() && app.jobs.is_empty());
    assert_eq!(harness.state().audio.clip.as_ref().map(|c| c.clip.sample_rate), Some(22_050));
    // the tiny audio-diffusion fixture works at 16 kHz with its own mel settings
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_audio_diffusion");
    {
        let app = harness.state_mut();
        app.execute(UiCommand::SetAudioModel(fixture));
        assert!(app.audio.unconditional, "{}", app.status);
        app.audio.settings.preset = String::new();
        app.audio.settings.steps = 3;
        app.audio.settings.iterations = 2;
        app.audio.settings.method = AudioMethod::Regenerate;
        app.audio.selection = Some(Selection { start: 0.4, end: 0.6, band: None });
    }
    harness.run_steps(2);
    harness.get_by_label_contains("An unconditional model");
    use egui_kittest::kittest::NodeT as _;
    assert!(harness.get_by_label("Prompt").accesskit_node().is_disabled(), "the prompt is greyed out");
    press(&mut harness, "Run");
    settle(&mut harness, |app| app.pending_io == 0 && app.audio.previous.is_some() && app.jobs.is_empty());
    let app = harness.state();
    assert!(app.errors.is_empty(), "{:?}", app.errors);
    let clip = &app.audio.clip.as_ref().expect("the regenerated clip").clip;
    // resampled to the model's rate before the job, the clip keeps its duration
    assert_eq!(clip.sample_rate, 16_000);
    assert!((clip.samples.len() as i64 - 16_000).abs() <= 2, "{} samples", clip.samples.len());
    let _ = std::fs::remove_file(&path);
}

/// A long clip (a minute at 16 kHz) for a 48 kHz output is resampled on another thread: the room
/// answers at once, keeps the seek and Play asked for meanwhile, and plays the clip at the right
/// pitch once it arrives.
#[test]
fn a_long_clip_is_resampled_for_playback_off_the_ui_thread() {
    use diffusion_studio::audio::playback::{self, NullOutput};
    use diffusion_studio::protocol::{AudioClip, ImageData};
    use diffusion_studio::ui::audio_room::AudioRoom;
    let output: Arc<Mutex<Option<Arc<Mutex<NullOutput>>>>> = Arc::new(Mutex::new(None));
    let handed = Arc::clone(&output);
    let mut room = AudioRoom::new(None);
    room.set_output_factory(Box::new(move || {
        let (player, transport) = playback::player();
        let null = Arc::new(Mutex::new(NullOutput::new(player, 48_000, "test")));
        if let Ok(mut slot) = handed.lock() {
            *slot = Some(Arc::clone(&null));
        }
        (transport, Box::new(PulledOutput(null)))
    }));
    let tone: Vec<f32> = (0..60 * 16_000)
        .map(|i| 0.5 * (i as f32 * std::f32::consts::TAU * 1000.0 / 16_000.0).sin())
        .collect();
    let clip = AudioClip {
        sample_rate: 16_000,
        samples: Arc::new(tone),
        spectrogram: ImageData::new(1, 1, vec![0, 0, 0, 255]).expect("an image"),
        preset: "studio".into(),
        hop: 256,
        row_hz: vec![1000.0],
    };
    room.set_result(clip, "a minute");
    assert_eq!(room.playhead(), Some((0.0, false)), "on its way: the playhead waits at the start");
    room.seek(10.0);
    room.toggle_play();
    assert_eq!(room.playhead(), Some((10.0, true)));
    let start = Instant::now();
    while room.poll_pending() {
        assert!(start.elapsed() < Duration::from_secs(20), "the resampled clip never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let null = output.lock().ok().and_then(|slot| slot.clone()).expect("an output");
    let pulled = null.lock().map(|mut null| null.pull(4_800, 1)).expect("pulled");
    // 0.1 s of a 1 kHz tone at 48 kHz: about 200 zero crossings (600 if it were not resampled)
    let crossings = pulled.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
    assert!((195..=205).contains(&crossings), "{crossings} zero crossings");
    let (seconds, playing) = room.playhead().expect("a playhead");
    assert!(playing && (10.0..10.2).contains(&seconds), "{seconds} s, playing {playing}");
}
