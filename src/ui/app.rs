//! The studio window: menu, tool and inspector panels, the canvas, the status bar. UI code only —
//! no tch. Widgets return [`UiCommand`]s that run at the end of the frame; engine events and file
//! results are drained at the start of each frame, within a time budget.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use egui::{Color32, RichText, Vec2};

use crate::document::{self, Document};
use crate::engine::EngineHandle;
use crate::protocol::{DeviceReport, EngineEvent, ImageData, Job, JobId, JobOutput};
use crate::ui::canvas::{CanvasCallback, CanvasImage, CanvasRenderer, CanvasView};

/// How long one frame may spend draining engine events and file results.
const EVENT_BUDGET: Duration = Duration::from_millis(4);

/// Something a widget asked for, run after the frame's widgets are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum UiCommand {
    /// Show the open-file dialog.
    ShowOpenDialog,
    /// Show the save-file dialog.
    ShowSaveDialog,
    Open(PathBuf),
    SaveAs(PathBuf),
    FitToView,
    ActualSize,
    ZoomBy(f32),
    Undo,
    Redo,
    RunForwardNoise,
    Cancel(JobId),
    DismissError(usize),
}

/// What background file work reports back.
enum IoResult {
    Opened {
        path: PathBuf,
        result: Result<image::RgbaImage, String>,
    },
    Saved {
        path: PathBuf,
        result: Result<(), String>,
    },
    /// The dialog's choice; `None` when it was closed without one.
    DialogChose(Option<UiCommand>),
}

/// One job as the UI tracks it.
#[derive(Debug, Clone)]
pub struct JobState {
    pub label: &'static str,
    pub step: usize,
    pub of: usize,
}

/// Settings of the forward-noise (SDEdit strength) preview.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseSettings {
    pub strength: f32,
    pub steps: usize,
    pub seed: u64,
}

impl Default for NoiseSettings {
    fn default() -> Self {
        Self { strength: 0.5, steps: 10, seed: 42 }
    }
}

/// The studio.
pub struct StudioApp {
    engine: EngineHandle,
    pub document: Document,
    pub view: CanvasView,
    /// Whether the wgpu canvas renderer is installed (false in renderer-less tests).
    gpu_canvas: bool,
    pub device: Option<DeviceReport>,
    /// The model jobs run on: what the engine said it loaded, or what is being loaded.
    pub model: Option<String>,
    /// Errors a person should see, newest last; each can be dismissed.
    pub errors: Vec<String>,
    /// The last thing that happened, for the status bar.
    pub status: String,
    pub jobs: BTreeMap<JobId, JobState>,
    /// A running job's latest preview, drawn over the document image.
    preview: Option<CanvasImage>,
    pub noise: NoiseSettings,
    io_sender: Sender<IoResult>,
    io_receiver: Receiver<IoResult>,
    /// Background file tasks still running.
    pub pending_io: usize,
    repaint: Arc<dyn Fn() + Send + Sync>,
}

impl StudioApp {
    /// Builds the studio around `engine`; installs the canvas renderer when eframe runs on wgpu.
    pub fn new(cc: &eframe::CreationContext<'_>, engine: EngineHandle) -> Self {
        let gpu_canvas = match cc.wgpu_render_state.as_ref() {
            Some(render_state) => {
                CanvasRenderer::install(render_state);
                true
            }
            None => false,
        };
        let ctx = cc.egui_ctx.clone();
        let (io_sender, io_receiver) = crossbeam_channel::unbounded();
        Self {
            engine,
            document: Document::default(),
            view: CanvasView::default(),
            gpu_canvas,
            device: None,
            model: None,
            errors: Vec::new(),
            status: "Open an image to begin: File > Open…, or drop a file on the window".into(),
            jobs: BTreeMap::new(),
            preview: None,
            noise: NoiseSettings::default(),
            io_sender,
            io_receiver,
            pending_io: 0,
            repaint: Arc::new(move || ctx.request_repaint()),
        }
    }

    /// Loads the bundled shapes model in the background if it is there — the model the studio
    /// opens on, so that every method works with no download; the status bar says when it is in.
    pub fn load_default_model(&mut self) {
        let path = crate::catalog::bundled_shapes_model();
        if !path.join("model_index.json").is_file() {
            self.model = Some(format!("none (no bundled model at {})", path.display()));
            return;
        }
        self.model = Some(format!("loading {}…", path.display()));
        self.engine.load_model(crate::protocol::ModelRef {
            path,
            options: Default::default(),
            precision: crate::protocol::Precision::F32,
        });
    }

    /// The waker the engine calls after each event.
    pub fn repaint_waker(ctx: &egui::Context) -> crate::engine::Waker {
        let ctx = ctx.clone();
        Arc::new(move || ctx.request_repaint())
    }

    /// Runs a command now (what widgets do at the end of a frame; tests call it directly).
    pub fn execute(&mut self, command: UiCommand) {
        match command {
            UiCommand::ShowOpenDialog => self.spawn_dialog(false),
            UiCommand::ShowSaveDialog => self.spawn_dialog(true),
            UiCommand::Open(path) => self.open(path),
            UiCommand::SaveAs(path) => self.save_as(path),
            UiCommand::FitToView => self.view.fit_pending = true,
            UiCommand::ActualSize => self.view.actual_size(),
            UiCommand::ZoomBy(factor) => self.view.zoom_at_centre(factor),
            UiCommand::Undo => {
                if self.document.undo() {
                    self.status = "Undone".into();
                }
            }
            UiCommand::Redo => {
                if self.document.redo() {
                    self.status = "Redone".into();
                }
            }
            UiCommand::RunForwardNoise => self.run_forward_noise(),
            UiCommand::Cancel(id) => self.engine.cancel(id),
            UiCommand::DismissError(index) => {
                if index < self.errors.len() {
                    self.errors.remove(index);
                }
            }
        }
    }

    fn spawn_io(&mut self, task: impl FnOnce() -> IoResult + Send + 'static) {
        let sender = self.io_sender.clone();
        let repaint = Arc::clone(&self.repaint);
        self.pending_io += 1;
        let spawned = std::thread::Builder::new().name("file io".into()).spawn(move || {
            let _ = sender.send(task());
            repaint();
        });
        if let Err(error) = spawned {
            self.pending_io -= 1;
            self.errors.push(format!("could not start a background task: {error}"));
        }
    }

    /// Opens the native file dialog on its own thread, so the UI keeps drawing.
    fn spawn_dialog(&mut self, save: bool) {
        if !desktop_bus_reachable() {
            self.errors.push(
                "No file dialog is available here (no desktop session bus for xdg-desktop-portal). \
                 Drop an image on the window, or pass it on the command line: diffusion-studio IMAGE"
                    .into(),
            );
            return;
        }
        let suggested = self
            .document
            .image
            .as_ref()
            .and_then(|layer| layer.path.as_ref())
            .and_then(|path| path.file_stem())
            .map(|stem| format!("{}-edited.png", stem.to_string_lossy()))
            .unwrap_or_else(|| "image.png".into());
        self.spawn_io(move || {
            let dialog = rfd::FileDialog::new()
                .add_filter("Images", &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]);
            let chosen = if save {
                dialog.set_file_name(suggested).save_file().map(UiCommand::SaveAs)
            } else {
                dialog.pick_file().map(UiCommand::Open)
            };
            IoResult::DialogChose(chosen)
        });
    }

    /// Reads and decodes `path` in the background; the canvas shows it when it arrives.
    pub fn open(&mut self, path: PathBuf) {
        self.status = format!("Opening {}…", path.display());
        self.spawn_io(move || {
            let result = document::read_image(&path).map_err(|error| error.to_string());
            IoResult::Opened { path, result }
        });
    }

    fn save_as(&mut self, path: PathBuf) {
        let Some(layer) = self.document.image.as_ref() else {
            self.errors.push("Nothing to save: open an image first.".into());
            return;
        };
        let image = Arc::clone(&layer.image);
        self.status = format!("Saving {}…", path.display());
        self.spawn_io(move || {
            let result = document::write_png_atomic(&image, &path).map_err(|error| error.to_string());
            IoResult::Saved { path, result }
        });
    }

    fn run_forward_noise(&mut self) {
        let Some(layer) = self.document.image.as_ref() else {
            self.errors.push("Open an image first: the noise preview noises the open image.".into());
            return;
        };
        let job = Job::ForwardNoise {
            image: ImageData::from_rgba_image(&layer.image),
            strength: self.noise.strength,
            steps: self.noise.steps,
            seed: self.noise.seed,
        };
        let label = job.label();
        let id = self.engine.submit(job);
        self.jobs.insert(id, JobState { label, step: 0, of: self.noise.steps });
        self.status = format!("Queued {label} ({id})");
    }

    /// Drains engine events and file results, for at most `EVENT_BUDGET`.
    pub fn drain_events(&mut self) {
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            if let Ok(result) = self.io_receiver.try_recv() {
                self.pending_io = self.pending_io.saturating_sub(1);
                self.on_io(result);
            } else if let Ok(event) = self.engine.events().try_recv() {
                self.on_engine_event(event);
            } else {
                break;
            }
        }
    }

    fn on_io(&mut self, result: IoResult) {
        match result {
            IoResult::Opened { path, result: Ok(image) } => {
                self.status = format!("Opened {} ({}×{})", path.display(), image.width(), image.height());
                self.document.set_opened_image(image, path);
                self.preview = None;
                self.view.fit_pending = true;
            }
            IoResult::Opened { result: Err(message), .. } | IoResult::Saved { result: Err(message), .. } => {
                self.status = "Failed — see the message above".into();
                self.errors.push(message);
            }
            IoResult::Saved { path, result: Ok(()) } => {
                self.status = format!("Saved {}", path.display());
                if let Some(layer) = self.document.image.as_mut() {
                    layer.path = Some(path);
                }
                self.document.modified = false;
            }
            IoResult::DialogChose(Some(command)) => self.execute(command),
            IoResult::DialogChose(None) => {}
        }
    }

    fn on_engine_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Ready { device } => self.device = Some(device),
            EngineEvent::DeviceWarning { message } => self.errors.push(message),
            EngineEvent::Started { job } => self.status = format!("Running {job}"),
            EngineEvent::ModelLoaded { description, .. } => {
                self.status = format!("Loaded {description}");
                self.model = Some(description);
            }
            EngineEvent::Unloaded => self.status = "Model unloaded".into(),
            EngineEvent::Progress { job, step, of, preview } => {
                if let Some(state) = self.jobs.get_mut(&job) {
                    state.step = step;
                    state.of = of;
                }
                if let Some(image) = preview.and_then(|p| p.to_rgba_image()) {
                    let revision = self.document.take_revision();
                    self.preview = Some(CanvasImage { revision, image: Arc::new(image) });
                }
            }
            EngineEvent::Done { job, output } => {
                let label = self.jobs.remove(&job).map_or("job", |state| state.label);
                self.preview = None;
                match output {
                    JobOutput::Image(data) => match data.to_rgba_image() {
                        Some(image) => {
                            self.document.set_result_image(image);
                            self.status = format!("{label} done ({job}); Ctrl+Z to undo");
                        }
                        None => self.errors.push(format!("{job} returned a malformed image")),
                    },
                    JobOutput::Images(images) => {
                        match images.first().and_then(|first| first.image.to_rgba_image()) {
                            Some(image) => {
                                self.document.set_result_image(image);
                                self.status = format!("{label} done ({job}); Ctrl+Z to undo");
                            }
                            None => self.errors.push(format!("{job} returned no image")),
                        }
                    }
                    JobOutput::Loaded(description) => self.status = format!("{label} done: {description}"),
                    JobOutput::Inversion(inversion) => {
                        self.status = format!(
                            "{label} done ({job}): reconstruction PSNR {:.1} dB ({:.1} dB against the VAE round trip) over {} steps",
                            inversion.psnr, inversion.psnr_vae, inversion.steps
                        );
                    }
                }
            }
            EngineEvent::Failed { job, message } => {
                self.jobs.remove(&job);
                self.preview = None;
                self.status = format!("{job} failed");
                self.errors.push(message);
            }
            EngineEvent::Cancelled { job } => {
                self.jobs.remove(&job);
                self.preview = None;
                self.status = format!("{job} cancelled");
            }
        }
    }

    fn menu_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open…").clicked() {
                    commands.push(UiCommand::ShowOpenDialog);
                }
                let has_image = self.document.image.is_some();
                if ui.add_enabled(has_image, egui::Button::new("Save As…")).clicked() {
                    commands.push(UiCommand::ShowSaveDialog);
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Edit", |ui| {
                if ui.add_enabled(self.document.can_undo(), egui::Button::new("Undo")).clicked() {
                    commands.push(UiCommand::Undo);
                }
                if ui.add_enabled(self.document.can_redo(), egui::Button::new("Redo")).clicked() {
                    commands.push(UiCommand::Redo);
                }
            });
            ui.menu_button("View", |ui| {
                if ui.button("Fit to window").clicked() {
                    commands.push(UiCommand::FitToView);
                }
                if ui.button("Actual size (100%)").clicked() {
                    commands.push(UiCommand::ActualSize);
                }
            });
        });
    }

    fn errors_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        for (index, message) in self.errors.iter().enumerate() {
            ui.horizontal_wrapped(|ui| {
                let text = RichText::new(format!("Error: {message}")).color(Color32::from_rgb(255, 140, 120));
                ui.add(egui::Label::new(text).wrap());
                if ui.button("Dismiss").clicked() {
                    commands.push(UiCommand::DismissError(index));
                }
            });
        }
    }

    fn tools_ui(&self, ui: &mut egui::Ui) {
        ui.heading("Tools");
        ui.label("Pan: drag (left or middle button)");
        ui.label("Zoom: mouse wheel");
        ui.separator();
        ui.weak("Brush, eraser and mask tools arrive with the mask canvas.");
    }

    fn inspector_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        ui.heading("Inspector");
        ui.separator();
        ui.label(RichText::new("Noise preview").strong())
            .on_hover_text("Runs the image forward through the diffusion noising process: what img2img starts from at this strength.");
        ui.add(egui::Slider::new(&mut self.noise.strength, 0.01..=1.0).text("strength"));
        ui.add(egui::Slider::new(&mut self.noise.steps, 1..=50).text("stages"));
        ui.horizontal(|ui| {
            let label = ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.noise.seed)).labelled_by(label.id);
        });
        let has_image = self.document.image.is_some();
        if ui.add_enabled(has_image, egui::Button::new("Add noise")).clicked() {
            commands.push(UiCommand::RunForwardNoise);
        }
        ui.separator();
        ui.heading("Jobs");
        if self.jobs.is_empty() {
            ui.weak("No jobs running");
        }
        for (id, job) in &self.jobs {
            ui.horizontal(|ui| {
                let fraction = if job.of > 0 { job.step as f32 / job.of as f32 } else { 0.0 };
                let bar_width = (ui.available_width() - 70.0).max(60.0);
                ui.add(
                    egui::ProgressBar::new(fraction)
                        .desired_width(bar_width)
                        .text(format!("{} {}/{}", job.label, job.step, job.of)),
                );
                if ui.button("Cancel").clicked() {
                    commands.push(UiCommand::Cancel(*id));
                }
            });
        }
    }

    fn status_ui(&self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let device = self.device.as_ref().map_or("starting…", |d| d.description.as_str());
            ui.label(format!("Engine: {device}"));
            ui.separator();
            if let Some(model) = &self.model {
                ui.label(format!("Model: {model}"));
                ui.separator();
            }
            if let Some(layer) = &self.document.image {
                ui.label(format!("{}×{}", layer.image.width(), layer.image.height()));
                ui.separator();
            }
            ui.label(format!("Zoom {:.0}%", self.view.zoom * 100.0));
            ui.separator();
            ui.label(&self.status);
        });
    }

    fn canvas_ui(&mut self, ui: &mut egui::Ui) {
        let canvas = ui.available_rect_before_wrap();
        let response = ui.allocate_rect(canvas, egui::Sense::click_and_drag());
        let Some(layer) = self.document.image.as_ref() else {
            ui.painter().text(
                canvas.center(),
                egui::Align2::CENTER_CENTER,
                "Open an image: File > Open…, or drop a file here",
                egui::FontId::proportional(18.0),
                ui.visuals().weak_text_color(),
            );
            return;
        };
        let image_size = Vec2::new(layer.image.width() as f32, layer.image.height() as f32);
        if self.view.fit_pending {
            self.view.fit(image_size, canvas);
        }
        // 1. navigation: drag pans, the wheel zooms about the cursor
        if response.dragged_by(egui::PointerButton::Primary)
            || response.dragged_by(egui::PointerButton::Middle)
        {
            self.view.pan(response.drag_delta());
        }
        if response.hovered() {
            let factor = ui.input(|i| wheel_zoom_factor(&i.events));
            if factor != 1.0
                && let Some(pointer) = response.hover_pos()
            {
                self.view.zoom_at(factor, pointer, canvas);
            }
        }
        // 2. draw: the preview of a running job, else the document image
        let image_rect = self.view.image_rect(image_size, canvas);
        let shown = self
            .preview
            .clone()
            .unwrap_or_else(|| CanvasImage { revision: layer.revision, image: Arc::clone(&layer.image) });
        if self.gpu_canvas {
            let callback =
                CanvasCallback::new(shown, image_rect, canvas, self.view.zoom, ui.ctx().pixels_per_point());
            ui.painter()
                .with_clip_rect(canvas)
                .add(eframe::egui_wgpu::Callback::new_paint_callback(canvas, callback));
        } else {
            ui.painter().rect_filled(image_rect.intersect(canvas), 0.0, Color32::DARK_GRAY);
        }
    }
}

/// Whether a D-Bus session bus, through which rfd reaches the desktop's file dialog portal, is
/// there to talk to.
fn desktop_bus_reachable() -> bool {
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR")
            .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists())
}

/// The zoom factor a frame's wheel and pinch events ask for: ×e per 500 points of wheel.
fn wheel_zoom_factor(events: &[egui::Event]) -> f32 {
    let mut factor = 1.0;
    for event in events {
        match event {
            egui::Event::MouseWheel { unit, delta, .. } => {
                let points = match unit {
                    egui::MouseWheelUnit::Point => delta.y,
                    egui::MouseWheelUnit::Line => delta.y * 40.0,
                    egui::MouseWheelUnit::Page => delta.y * 400.0,
                };
                factor *= (points * 0.002).exp();
            }
            egui::Event::Zoom(zoom) => factor *= zoom,
            _ => {}
        }
    }
    factor
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.drain_events();
        let mut commands = Vec::new();
        // Keyboard shortcuts and dropped files.
        ui.input(|input| {
            if input.modifiers.command && input.key_pressed(egui::Key::O) {
                commands.push(UiCommand::ShowOpenDialog);
            }
            if input.modifiers.command && input.key_pressed(egui::Key::S) {
                commands.push(UiCommand::ShowSaveDialog);
            }
            if input.modifiers.command && input.key_pressed(egui::Key::Z) {
                commands.push(if input.modifiers.shift { UiCommand::Redo } else { UiCommand::Undo });
            }
            if input.key_pressed(egui::Key::Escape) {
                commands.extend(self.jobs.keys().map(|id| UiCommand::Cancel(*id)));
            }
            if let Some(path) = input
                .raw
                .dropped_files
                .iter()
                .map(|file| file.path().to_path_buf())
                .find(|path| !path.as_os_str().is_empty())
            {
                commands.push(UiCommand::Open(path));
            }
        });
        egui::Panel::top("menu").show(ui, |ui| {
            self.menu_ui(ui, &mut commands);
            if !self.errors.is_empty() {
                self.errors_ui(ui, &mut commands);
            }
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui));
        egui::Panel::left("tools").default_size(170.0).show(ui, |ui| self.tools_ui(ui));
        egui::Panel::right("inspector")
            .default_size(240.0)
            .show(ui, |ui| self.inspector_ui(ui, &mut commands));
        egui::CentralPanel::default()
            .frame(egui::Frame::new().fill(Color32::from_gray(32)))
            .show(ui, |ui| self.canvas_ui(ui));
        for command in commands {
            self.execute(command);
        }
        if self.pending_io > 0 || !self.jobs.is_empty() {
            // Results arrive through the waker; this keeps the status fresh meanwhile.
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
    }
}
