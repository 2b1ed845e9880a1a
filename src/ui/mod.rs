//! The studio's user interface: egui only, never tch (a test enforces it).

pub mod app;
pub mod audio_room;
pub mod canvas;
pub mod inspector;
pub mod prefs;
pub mod spectrogram_view;
pub mod widgets;
pub mod word_editor;

pub use app::{StudioApp, UiCommand};

use crate::engine::EngineHandle;
use crate::protocol::DeviceChoice;

/// Whether a display server is reachable through the environment.
pub fn display_available() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Opens the studio window and runs until it is closed; `open` is an image to show first (the
/// bundled sample when none is given).
pub fn run_studio(device: DeviceChoice, open: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    if !display_available() {
        anyhow::bail!("no display: set DISPLAY, or use the CLI subcommands (diffusion-studio --help)");
    }
    let open = open.or_else(crate::catalog::sample_image);
    // --device wins; left at auto, the device chosen in the settings last time
    let prefs_path = prefs::prefs_path();
    let device = match (device, prefs_path.as_deref().and_then(|p| prefs::read_prefs(p).ok())) {
        (DeviceChoice::Auto, Some(remembered)) => remembered.device(),
        (device, _) => device,
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("diffusion-studio")
            .with_app_id("diffusion-studio")
            .with_inner_size([1280.0, 800.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "diffusion-studio",
        options,
        Box::new(move |cc| {
            let waker = StudioApp::repaint_waker(&cc.egui_ctx);
            let engine = EngineHandle::spawn(device, waker.clone());
            let mut app = StudioApp::new(cc, engine);
            app.respawn = Some(Box::new(move |device| EngineHandle::spawn(device, waker.clone())));
            app.audio.set_output_factory(audio_room::AudioRoom::studio_output());
            app.autosave = crate::document::project::autosave_folder();
            app.check_autosave();
            app.prefs_path = prefs_path;
            app.load_prefs_and_model();
            if let Some(path) = open {
                app.open(path);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|error| anyhow::anyhow!("could not open the studio window: {error}"))
}
