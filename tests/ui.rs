//! The studio's UI logic through egui_kittest, by role and label: opening images (good and bad),
//! zoom and pan, a job from the inspector with undo, a failed job, and the canvas shader drawn
//! through wgpu on a software adapter.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diffusion_studio::engine::{EngineHandle, JobContext, JobError, JobRunner};
use diffusion_studio::protocol::{DeviceChoice, DeviceReport, Job, JobOutput};
use diffusion_studio::ui::StudioApp;
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

    // A drag pans by the drag.
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
}

#[test]
fn add_noise_runs_on_the_engine_and_undo_restores_the_image() {
    let mut harness = studio();
    opened(&mut harness, sample());
    let original = centre_pixel(harness.state());
    harness.get_by_label("Add noise").click();
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
        DeviceReport { name: "test".into(), description: "failing test runner".into() }
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
    harness.get_by_label("Add noise").click();
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
