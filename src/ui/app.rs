//! The studio window: menu, tool and inspector panels, the canvas, the status bar. UI code only —
//! no tch. Widgets return [`UiCommand`]s that run at the end of the frame; engine events and file
//! results are drained at the start of each frame, within a time budget.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use egui::{Color32, RichText, Vec2};

use crate::document::mask::Brush;
use crate::document::project::{self, HistoryEntry, LoadedProject, ProjectSnapshot, Written};
use crate::document::{self, Document, MaskOp};
use crate::engine::EngineHandle;
use crate::protocol::{
    DeviceChoice, DeviceReport, EngineEvent, GenerateParams, ImageData, InpaintParams, Job, JobId, JobOutput,
    MaskOptions,
};
use crate::text::ClipTokenizer;
use crate::ui::canvas::{
    CanvasCallback, CanvasImage, CanvasRenderer, CanvasView, MaskUpload, Minimap, Overlay,
};
use crate::ui::inspector::{Method, MethodSettings};
use crate::ui::word_editor::WordEditor;

/// How long one frame may spend draining engine events and file results.
const EVENT_BUDGET: Duration = Duration::from_millis(4);

/// Something a widget asked for, run after the frame's widgets are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum UiCommand {
    /// Show the open-file dialog.
    ShowOpenDialog,
    /// Open the image on the clipboard (Ctrl+V outside text fields).
    PasteImage,
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
    /// Run the inspector's method (its button, Ctrl+Enter).
    RunMethod,
    /// Run the last method job again, exactly as it was sent.
    Repeat,
    /// Invert the open image under the word editor's source prompt (DDIM or null-text).
    RunInvert,
    /// The word editor's attention map N becomes the mask.
    AttentionToMask(usize),
    Cancel(JobId),
    DismissError(usize),
    SetTool(Tool),
    /// Multiply the brush radius (`[` and `]`).
    ScaleBrush(f32),
    Mask(MaskOp),
    /// Put history entry N (its image and settings) back.
    RestoreHistory(usize),
    /// Answer the offer to restore what a crash left: true restores it.
    RestoreAutosave(bool),
    ShowSaveProjectDialog,
    ShowOpenProjectDialog,
    SaveProject(PathBuf),
    OpenProject(PathBuf),
    ShowExportMaskDialog,
    ExportMask(PathBuf),
    /// Choose a model: a diffusers folder (true) or a single-file checkpoint.
    ShowModelDialog(bool),
    /// Load this model for the jobs that follow, and remember it.
    LoadModel(PathBuf),
    /// Open or close the settings window.
    ToggleSettings,
    /// The denoiser's precision (f32, f16, bf16), remembered.
    SetPrecision(String),
    /// Run the engine on this device from now on (restarts it and reloads the model).
    SetDevice(DeviceChoice),
    /// Show the image room or the audio room.
    SetRoom(Room),
    /// Open a WAV file in the audio room (its spectrogram is made by the engine).
    OpenAudio(PathBuf),
    /// Write the audio room's shown clip as a WAV file.
    ExportAudio(PathBuf),
    /// Run the audio room's method.
    RunAudio,
    /// Pick the audio room's model folder (a dialog).
    ShowAudioModelDialog,
    /// Run the audio room on this model folder (the bundled music model, Riffusion, …).
    SetAudioModel(PathBuf),
}

/// The studio's rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Room {
    #[default]
    Image,
    Audio,
}

/// A label as a file name: letters, digits, '-' and '_' kept, the rest as '-'.
fn safe_file_stem(label: &str) -> String {
    let stem: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    if stem.trim_matches('-').is_empty() { "clip".into() } else { stem }
}

/// The settings a project keeps and a history entry restores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StudioSettings {
    pub params: MethodSettings,
    pub words: WordEditor,
    pub brush: Brush,
    pub mask_step: u32,
    pub feather_sigma: f32,
    pub show_mask: bool,
}

impl Default for StudioSettings {
    fn default() -> Self {
        Self {
            params: MethodSettings::default(),
            words: WordEditor::default(),
            brush: Brush::default(),
            mask_step: 8,
            feather_sigma: 4.0,
            show_mask: true,
        }
    }
}

/// A result in the history strip.
pub struct HistoryItem {
    pub entry: HistoryEntry,
    pub image: Arc<image::RgbaImage>,
    /// Its thumbnail, made when first drawn.
    thumbnail: Option<egui::TextureHandle>,
}

/// How often the document is autosaved while it changes.
pub const AUTOSAVE_EVERY: Duration = Duration::from_secs(5);

/// What a primary-button drag on the canvas does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Pan,
    Brush,
    Eraser,
}

/// What background file work reports back.
enum IoResult {
    /// A WAV file read for the audio room: mono samples at the preset's rate, and what was done
    /// to it (mixed, resampled).
    AudioOpened {
        path: PathBuf,
        result: Result<(Vec<f32>, String), String>,
    },
    Opened {
        path: PathBuf,
        result: Result<image::RgbaImage, String>,
    },
    Saved {
        path: PathBuf,
        result: Result<(), String>,
    },
    /// An audio job's source resampled to the audio model's rate, ready to submit.
    AudioResampled {
        result: Result<(crate::protocol::AudioTask, Box<crate::ui::audio_room::AudioSettings>), String>,
    },
    /// The audio room's clip written as WAV.
    Exported {
        path: PathBuf,
        result: Result<(), String>,
    },
    /// The dialog's choice; `None` when it was closed without one.
    DialogChose(Option<UiCommand>),
    /// An autosave or an explicit project save finished.
    ProjectSaved {
        folder: PathBuf,
        autosave: bool,
        result: Result<Written, String>,
    },
    ProjectLoaded {
        folder: PathBuf,
        result: Result<Box<LoadedProject>, String>,
    },
    MaskExported {
        path: PathBuf,
        result: Result<(), String>,
    },
    /// The model's tokenizer, for the word chips' token counts.
    Tokenizer(Result<Box<ClipTokenizer>, String>),
}

/// One job as the UI tracks it.
#[derive(Debug, Clone)]
pub struct JobState {
    pub label: &'static str,
    pub step: usize,
    pub of: usize,
    /// For the history: the job's parameters (infotext) and the settings that made it.
    pub parameters: String,
    pub settings: Option<serde_json::Value>,
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
    /// The minimap's thumbnail and the image revision it shows.
    minimap: Option<(u64, egui::TextureHandle)>,
    /// Where the canvas was drawn last frame (screen points).
    pub canvas_rect: egui::Rect,
    /// The loaded model's training size (generation's default size).
    pub native_size: Option<(u32, u32)>,
    /// The size of the image the canvas showed last frame: one of another size (a result,
    /// an undo) is fitted anew.
    shown_size: Option<Vec2>,
    pub noise: NoiseSettings,
    /// The inspector's method and its settings.
    pub params: MethodSettings,
    /// The prompt-to-prompt word editor.
    pub words: WordEditor,
    /// The last method job sent, with its parameters and settings (Repeat sends it again).
    last_job: Option<(Job, String, Option<serde_json::Value>)>,
    tokenizer: Option<Arc<ClipTokenizer>>,
    /// Changes whenever the word editor's maps do (the canvas's heat-map id).
    maps_revision: u64,
    pub tool: Tool,
    /// The brush's radius, hardness and opacity (the eraser uses them too).
    pub brush: Brush,
    /// Pixels that Grow and Shrink move the mask's edge by.
    pub mask_step: u32,
    /// σ in pixels of Feather.
    pub feather_sigma: f32,
    pub show_mask: bool,
    /// The model folder or file jobs run on.
    pub model_path: Option<PathBuf>,
    /// What the studio remembers between runs, and where (None: nothing is remembered).
    pub prefs: crate::ui::prefs::Prefs,
    pub prefs_path: Option<PathBuf>,
    /// Starts an engine on another device (the settings' device); None: the device is fixed.
    pub respawn: Option<Box<dyn FnMut(DeviceChoice) -> EngineHandle>>,
    pub show_settings: bool,
    /// The brush cursor over the canvas (screen points), when it is there.
    cursor: Option<egui::Pos2>,
    /// Whether the image before the last result is shown instead (held `\\` or the button).
    pub comparing: bool,
    /// The image pixel under the pointer: position, RGBA, mask value (the status bar shows it).
    pub inspected: Option<((u32, u32), [u8; 4], u8)>,
    started: Instant,
    /// Results, oldest first.
    pub history: Vec<HistoryItem>,
    next_history_id: u64,
    /// The autosave folder (None: no autosave).
    pub autosave: Option<PathBuf>,
    /// What a crash left in the autosave folder, offered for restoring; autosave waits until
    /// the offer is answered, so that it never overwrites it.
    pub restore_offer: Option<PathBuf>,
    /// How often the autosave runs while the document changes ([`AUTOSAVE_EVERY`]).
    pub autosave_every: Duration,
    autosave_written: Written,
    autosave_in_flight: bool,
    last_autosave: Instant,
    /// The state last autosaved (image and mask revisions, history length, settings).
    autosaved_state: Option<(u64, u64, usize, StudioSettings)>,
    io_sender: Sender<IoResult>,
    io_receiver: Receiver<IoResult>,
    /// Background file tasks still running.
    pub pending_io: usize,
    repaint: Arc<dyn Fn() + Send + Sync>,
    /// The audio room.
    pub audio: crate::ui::audio_room::AudioRoom,
    pub room: Room,
    /// The model the audio room runs (the bundled music model unless another is chosen).
    pub audio_model: PathBuf,
}

impl StudioApp {
    /// A finished audio job's clip goes to the audio room.
    fn audio_result(&mut self, clip: crate::protocol::AudioClip, label: &str) {
        self.audio.set_result(clip, label);
        self.room = Room::Audio;
    }

    /// Builds the studio around `engine`; installs the canvas renderer when eframe runs on wgpu.
    pub fn new(cc: &eframe::CreationContext<'_>, engine: EngineHandle) -> Self {
        let gpu_canvas = match cc.wgpu_render_state.as_ref() {
            Some(render_state) => {
                CanvasRenderer::install(render_state);
                crate::ui::spectrogram_view::SpectrogramRenderer::install(render_state);
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
            params: MethodSettings::default(),
            words: WordEditor::default(),
            last_job: None,
            tokenizer: None,
            maps_revision: 0,
            tool: Tool::Brush,
            brush: Brush::default(),
            mask_step: 8,
            feather_sigma: 4.0,
            show_mask: true,
            model_path: None,
            prefs: Default::default(),
            prefs_path: None,
            respawn: None,
            show_settings: false,
            cursor: None,
            comparing: false,
            inspected: None,
            minimap: None,
            canvas_rect: egui::Rect::NOTHING,
            native_size: None,
            shown_size: None,
            started: Instant::now(),
            history: Vec::new(),
            next_history_id: 1,
            autosave: None,
            restore_offer: None,
            autosave_every: AUTOSAVE_EVERY,
            autosave_written: Written::default(),
            autosave_in_flight: false,
            last_autosave: Instant::now(),
            autosaved_state: None,
            io_sender,
            io_receiver,
            pending_io: 0,
            repaint: Arc::new(move || ctx.request_repaint()),
            audio: {
                let mut room = crate::ui::audio_room::AudioRoom::default();
                room.gpu = gpu_canvas;
                room
            },
            room: Room::Image,
            audio_model: crate::catalog::bundled_music_model(),
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
        self.load_model(path);
    }

    /// Reads the preferences and loads the model they name (the bundled one when none, or when
    /// it is gone).
    pub fn load_prefs_and_model(&mut self) {
        if let Some(path) = self.prefs_path.clone() {
            match crate::ui::prefs::read_prefs(&path) {
                Ok(prefs) => self.prefs = prefs,
                Err(message) => self.errors.push(message),
            }
        }
        match self.prefs.model.clone() {
            Some(model) if model.exists() => self.load_model(model),
            Some(model) => {
                self.errors.push(format!(
                    "The model the studio used last, {}, is not there any more; it opened on the bundled model.",
                    model.display()
                ));
                self.load_default_model();
            }
            None => self.load_default_model(),
        }
    }

    /// Loads `path` (a diffusers folder or a single-file checkpoint) for the jobs that follow.
    pub fn load_model(&mut self, path: PathBuf) {
        self.model = Some(format!("loading {}…", path.display()));
        self.model_path = Some(path.clone());
        self.tokenizer = None;
        if path.join("tokenizer").is_dir() {
            self.load_tokenizer(path.join("tokenizer"));
        }
        self.engine.load_model(crate::protocol::ModelRef {
            path,
            options: Default::default(),
            precision: self.prefs.precision(),
        });
    }

    /// Remembers the device and restarts the engine there with the same model; refused while
    /// jobs run (they would be lost).
    fn set_device(&mut self, device: DeviceChoice) {
        if !self.jobs.is_empty() {
            self.errors.push(
                "Wait for the running jobs to finish (or cancel them) before changing the device.".into(),
            );
            return;
        }
        self.prefs.device = device.to_name();
        self.save_prefs();
        let Some(respawn) = self.respawn.as_mut() else {
            self.status = format!("The engine runs on {} from the next start", device.to_name());
            return;
        };
        // the old engine ends on its own thread (it is idle); the new one reports when ready
        self.engine = respawn(device);
        self.device = None;
        match self.model_path.clone() {
            Some(path) => self.load_model(path),
            None => self.load_default_model(),
        }
        self.status = format!("Restarted the engine on {}", device.to_name());
    }

    fn save_prefs(&mut self) {
        let Some(path) = self.prefs_path.clone() else { return };
        if let Err(message) = crate::ui::prefs::write_prefs(&path, &self.prefs) {
            self.errors.push(message);
        }
    }

    /// Loads the model's tokenizer in the background (the word chips' token counts).
    pub fn load_tokenizer(&mut self, folder: PathBuf) {
        self.spawn_io(move || {
            IoResult::Tokenizer(
                ClipTokenizer::from_folder(&folder).map(Box::new).map_err(|error| error.to_string()),
            )
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
            UiCommand::PasteImage => {
                self.status = "Pasting the clipboard's image…".into();
                self.spawn_io(|| {
                    let path = PathBuf::from("clipboard");
                    let result = clipboard_image();
                    IoResult::Opened { path, result }
                });
            }
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
            UiCommand::RunMethod if self.room == Room::Audio => self.run_audio(),
            UiCommand::RunMethod => self.run_method(),
            UiCommand::RunAudio => self.run_audio(),
            UiCommand::ShowAudioModelDialog => {
                if self.dialogs_available() {
                    self.spawn_io(move || {
                        let chosen = rfd::FileDialog::new().set_title("Audio model folder").pick_folder();
                        IoResult::DialogChose(chosen.map(UiCommand::SetAudioModel))
                    });
                }
            }
            UiCommand::SetAudioModel(path) => {
                if path.join("model_index.json").is_file() {
                    self.status = format!(
                        "Audio model: {} ({} preset)",
                        path.display(),
                        crate::catalog::spectrogram_preset(&path).unwrap_or_else(|| "riffusion".into())
                    );
                    self.audio.unconditional = crate::catalog::is_audio_diffusion(&path);
                    self.audio_model = path;
                } else {
                    self.errors.push(format!(
                        "{} is not a diffusers folder (no model_index.json); choose the folder that holds it",
                        path.display()
                    ));
                }
            }
            UiCommand::SetRoom(room) => self.room = room,
            UiCommand::OpenAudio(path) => self.open_audio(path),
            UiCommand::ExportAudio(path) => self.export_audio(path),
            UiCommand::Repeat => {
                if let Some((job, parameters, settings)) = self.last_job.clone() {
                    let label = job.label();
                    let id = self.submit_tracked(job, self.params.steps, parameters, settings);
                    self.status = format!("Queued {label} again ({id})");
                }
            }
            UiCommand::RunInvert => self.run_invert(),
            UiCommand::AttentionToMask(index) => {
                let step = self.words.map_step.and_then(|step| self.words.step_maps.get(index)?.get(step));
                let word = self.words.maps.get(index).map(|(word, _)| word.clone());
                let map = step.or_else(|| self.words.maps.get(index).map(|(_, map)| map)).cloned();
                if let (Some(word), Some(map), Some(layer)) = (word, map, &self.document.image) {
                    // a step's map is at the attention's own grid: smoothed up to the image
                    let (width, height) = (layer.image.width(), layer.image.height());
                    let map = if map.dimensions() == (width, height) {
                        map
                    } else {
                        Arc::new(image::imageops::resize(
                            map.as_ref(),
                            width,
                            height,
                            image::imageops::FilterType::Triangle,
                        ))
                    };
                    let mask = crate::document::mask::Mask::from_luma_image(&map);
                    if self.document.apply_mask_op(MaskOp::Set(mask)) {
                        self.status = format!("The attention of \"{word}\" is the mask now; Ctrl+Z to undo");
                    }
                }
            }
            UiCommand::Cancel(id) => self.engine.cancel(id),
            UiCommand::SetTool(tool) => self.tool = tool,
            UiCommand::ScaleBrush(factor) => {
                self.brush.radius = (self.brush.radius * factor).clamp(Brush::MIN_RADIUS, Brush::MAX_RADIUS);
            }
            UiCommand::RestoreHistory(index) => self.restore_history(index),
            UiCommand::RestoreAutosave(restore) => {
                let offered = self.restore_offer.take();
                if let (true, Some(folder)) = (restore, offered) {
                    self.load_project(folder);
                }
            }
            UiCommand::ShowSaveProjectDialog => self.spawn_folder_dialog(true),
            UiCommand::ShowOpenProjectDialog => self.spawn_folder_dialog(false),
            UiCommand::SaveProject(folder) => {
                let snapshot = self.snapshot(true);
                self.status = format!("Saving the project to {}…", folder.display());
                self.spawn_io(move || {
                    let result = project::save_project(&folder, &snapshot, &Written::default())
                        .map_err(|error| error.to_string());
                    IoResult::ProjectSaved { folder, autosave: false, result }
                });
            }
            UiCommand::OpenProject(folder) => self.load_project(folder),
            UiCommand::ShowModelDialog(folder) => {
                if self.dialogs_available() {
                    self.spawn_io(move || {
                        let dialog = rfd::FileDialog::new().set_title("Open model");
                        let chosen = if folder {
                            dialog.pick_folder()
                        } else {
                            dialog.add_filter("Checkpoints", &["safetensors", "ckpt"]).pick_file()
                        };
                        IoResult::DialogChose(chosen.map(UiCommand::LoadModel))
                    });
                }
            }
            UiCommand::LoadModel(path) => {
                self.load_model(path.clone());
                self.prefs.model = Some(path);
                self.save_prefs();
            }
            UiCommand::ToggleSettings => self.show_settings = !self.show_settings,
            UiCommand::SetPrecision(name) => {
                self.prefs.precision = name;
                self.save_prefs();
                if let Some(path) = self.model_path.clone() {
                    // the loaded model is converted on its next load
                    self.load_model(path);
                }
            }
            UiCommand::SetDevice(device) => self.set_device(device),
            UiCommand::ShowExportMaskDialog => self.spawn_dialog_for(true, "mask.png", UiCommand::ExportMask),
            UiCommand::ExportMask(path) => {
                let Some(mask) = self.document.mask.as_ref() else {
                    self.errors.push("No mask to export: open an image and paint one first.".into());
                    return;
                };
                let image = mask.to_luma_image();
                self.spawn_io(move || {
                    let result = document::write_png_atomic(&image, &path).map_err(|e| e.to_string());
                    IoResult::MaskExported { path, result }
                });
            }
            UiCommand::Mask(op) => {
                let name = match &op {
                    MaskOp::Fill => "Filled the mask",
                    MaskOp::Clear => "Cleared the mask",
                    MaskOp::Invert => "Inverted the mask",
                    MaskOp::Grow(_) => "Grew the mask",
                    MaskOp::Shrink(_) => "Shrank the mask",
                    MaskOp::Feather(_) => "Feathered the mask",
                    MaskOp::Set(_) => "Replaced the mask",
                };
                if self.document.apply_mask_op(op) {
                    self.status = format!("{name}; Ctrl+Z to undo");
                } else {
                    self.errors.push("Open an image first: the mask is painted over it.".into());
                }
            }
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
        if save {
            let suggested = self
                .document
                .image
                .as_ref()
                .and_then(|layer| layer.path.as_ref())
                .and_then(|path| path.file_stem())
                .map(|stem| format!("{}-edited.png", stem.to_string_lossy()))
                .unwrap_or_else(|| "image.png".into());
            self.spawn_dialog_for(true, &suggested, UiCommand::SaveAs);
        } else {
            self.spawn_dialog_for(false, "", UiCommand::Open);
        }
    }

    /// Whether a native dialog can open; says what to do instead when not.
    fn dialogs_available(&mut self) -> bool {
        if !desktop_bus_reachable() {
            self.errors.push(
                "No file dialog is available here (no desktop session bus for xdg-desktop-portal). \
                 Drop an image on the window, or pass it on the command line: diffusion-studio IMAGE"
                    .into(),
            );
            return false;
        }
        true
    }

    /// An image file dialog (save: with `suggested` as the name) on its own thread, so the UI
    /// keeps drawing; the chosen path becomes `then(path)`.
    fn spawn_dialog_for(&mut self, save: bool, suggested: &str, then: fn(PathBuf) -> UiCommand) {
        const IMAGES: (&str, &[&str]) =
            ("Images", &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]);
        self.spawn_dialog_filtered(save, suggested, IMAGES, then);
    }

    /// [`Self::spawn_dialog_for`] with a file filter (name, extensions).
    fn spawn_dialog_filtered(
        &mut self,
        save: bool,
        suggested: &str,
        (name, extensions): (&'static str, &'static [&'static str]),
        then: fn(PathBuf) -> UiCommand,
    ) {
        if !self.dialogs_available() {
            return;
        }
        let suggested = suggested.to_string();
        self.spawn_io(move || {
            let dialog = rfd::FileDialog::new().add_filter(name, extensions);
            let chosen = if save { dialog.set_file_name(suggested).save_file() } else { dialog.pick_file() };
            IoResult::DialogChose(chosen.map(then))
        });
    }

    /// A folder dialog for saving (true) or opening a project.
    fn spawn_folder_dialog(&mut self, save: bool) {
        if !self.dialogs_available() {
            return;
        }
        self.spawn_io(move || {
            let chosen = rfd::FileDialog::new()
                .set_title(if save { "Save project in" } else { "Open project" })
                .pick_folder();
            IoResult::DialogChose(chosen.map(if save {
                UiCommand::SaveProject
            } else {
                UiCommand::OpenProject
            }))
        });
    }

    /// Reads and decodes `path` in the background; the canvas shows it when it arrives.
    pub fn open(&mut self, path: PathBuf) {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("wav")) {
            return self.open_audio(path);
        }
        self.status = format!("Opening {}…", path.display());
        self.spawn_io(move || {
            let result = document::read_image(&path).map_err(|error| error.to_string());
            IoResult::Opened { path, result }
        });
    }

    fn save_as(&mut self, path: PathBuf) {
        let Some(layer) = self.document.image.clone() else {
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

    /// The audio room's spectrogram preset: the settings', else the audio model's own, else
    /// Riffusion's.
    fn audio_preset(&self) -> crate::audio::preset::SpectrogramPreset {
        use crate::audio::preset::SpectrogramPreset;
        if let Ok(preset) = SpectrogramPreset::by_name(&self.audio.settings.preset) {
            return preset;
        }
        crate::catalog::model_spectrogram(&self.audio_model).unwrap_or_else(SpectrogramPreset::riffusion)
    }

    /// The preset an Analyse job names: none for an audio-diffusion model whose own mel settings
    /// are not a named preset's (the engine then reads the model's).
    fn audio_preset_name(&self) -> String {
        let preset = self.audio_preset();
        match crate::audio::preset::SpectrogramPreset::by_name(preset.name) {
            Ok(named) if named == preset => preset.name.to_string(),
            _ => String::new(),
        }
    }

    /// Runs the audio room's method on the audio model.
    fn run_audio(&mut self) {
        match self.audio.task() {
            Ok(task) => {
                let settings = self.audio.settings.clone();
                self.submit_audio(task, settings);
            }
            Err(reason) => self.errors.push(reason),
        }
    }

    fn submit_audio(
        &mut self,
        mut task: crate::protocol::AudioTask,
        settings: crate::ui::audio_room::AudioSettings,
    ) {
        // a clip made at another model's rate is resampled (in the background) first
        let rate = self.audio_preset().sample_rate;
        let clip_rate = self.audio.shown().map(|shown| shown.clip.sample_rate);
        if let Some(from) = clip_rate.filter(|from| *from != rate)
            && task.source_mut().is_some()
        {
            self.status = format!("Resampling the clip from {from} Hz to {rate} Hz for this model…");
            self.spawn_io(move || {
                let result = (|| {
                    let Some(source) = task.source_mut() else { return Err("no source clip".to_string()) };
                    let clip = crate::audio::wav::Clip { sample_rate: from, channels: vec![source.to_vec()] };
                    *source = Arc::new(clip.resampled(rate).map_err(|e| e.to_string())?.mono());
                    Ok((task, Box::new(settings)))
                })();
                IoResult::AudioResampled { result }
            });
            return;
        }
        self.submit_audio_now(task, settings);
    }

    fn submit_audio_now(
        &mut self,
        task: crate::protocol::AudioTask,
        settings: crate::ui::audio_room::AudioSettings,
    ) {
        let model = self.audio_model.clone();
        if !model.join("model_index.json").is_file() && !model.is_file() {
            self.errors.push(format!(
                "No audio model at {}: train the music model (see README) or open a Riffusion folder as the audio model.",
                model.display()
            ));
            return;
        }
        let of = match &task {
            crate::protocol::AudioTask::Interpolate { clips, .. } => settings.steps * clips,
            _ => settings.steps,
        };
        let params = crate::protocol::AudioParams {
            base: GenerateParams {
                model,
                model_options: Default::default(),
                prompt: settings.prompt.clone(),
                negative_prompt: settings.negative_prompt.clone(),
                steps: settings.steps,
                scheduler: "dpm++2m-karras".into(),
                guidance_scale: settings.guidance,
                guidance_rescale: 0.0,
                clip_skip: 0,
                seed: settings.seed,
                width: 0,
                height: 0,
                precision: self.prefs.precision(),
            },
            preset: settings.preset.clone(),
            task,
            griffin_lim_iterations: settings.iterations,
        };
        let parameters = format!("{} (seed {})", settings.prompt, settings.seed);
        let id = self.submit_tracked(Job::Audio(params), of, parameters, None);
        self.status = format!("Queued {} ({id})", self.audio.settings.method.name());
    }

    /// Reads a WAV file in the background (mixed to mono, resampled to the preset's rate);
    /// the engine then makes its spectrogram.
    pub fn open_audio(&mut self, path: PathBuf) {
        let rate = Some(self.audio_preset().sample_rate);
        self.status = format!("Opening {}…", path.display());
        self.spawn_io(move || {
            let result = (|| -> Result<(Vec<f32>, String), String> {
                let clip = crate::audio::wav::read_wav(&path).map_err(|e| e.to_string())?;
                let mut notes = Vec::new();
                if clip.channels.len() > 1 {
                    notes.push(format!("{} channels mixed to mono", clip.channels.len()));
                }
                let clip = match rate {
                    Some(rate) if rate != clip.sample_rate => {
                        notes.push(format!("resampled from {} Hz to {rate} Hz", clip.sample_rate));
                        clip.resampled(rate).map_err(|e| e.to_string())?
                    }
                    _ => clip,
                };
                Ok((clip.mono(), notes.join(", ")))
            })();
            IoResult::AudioOpened { path, result }
        });
    }

    /// Writes the shown clip as a 16-bit WAV file in the background.
    pub fn export_audio(&mut self, path: PathBuf) {
        let Some(shown) = self.audio.shown().cloned() else {
            self.errors.push("Nothing to export: generate or open a clip first.".into());
            return;
        };
        self.status = format!("Exporting {}…", path.display());
        self.spawn_io(move || {
            let clip = crate::audio::wav::Clip {
                sample_rate: shown.clip.sample_rate,
                channels: vec![shown.clip.samples.to_vec()],
            };
            let result = crate::audio::wav::write_wav(&path, &clip).map_err(|e| e.to_string());
            IoResult::Exported { path, result }
        });
    }

    fn run_forward_noise(&mut self) {
        let Some(layer) = self.document.image.clone() else {
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
        let parameters = format!(
            "forward noise, strength {}, stages {}, seed {}",
            self.noise.strength, self.noise.steps, self.noise.seed
        );
        let id = self.submit_tracked(job, self.noise.steps, parameters, None);
        self.status = format!("Queued {label} ({id})");
    }

    /// Sends `job` to the engine and follows it in the Jobs list (`of` steps until the engine
    /// says otherwise); its parameters and settings go to the history with its result.
    fn submit_tracked(
        &mut self,
        job: Job,
        of: usize,
        parameters: String,
        settings: Option<serde_json::Value>,
    ) -> JobId {
        let label = job.label();
        let id = self.engine.submit(job);
        self.jobs.insert(id, JobState { label, step: 0, of, parameters, settings });
        id
    }

    /// The generation parameters of the inspector's method for a `width` × `height` output.
    fn generate_params(&mut self, model: PathBuf, width: u32, height: u32) -> GenerateParams {
        let seed = self.params.seed_for_run();
        let settings = &self.params;
        GenerateParams {
            model,
            model_options: Default::default(),
            prompt: settings.prompt.clone(),
            negative_prompt: settings.negative_prompt.clone(),
            steps: settings.steps,
            scheduler: settings.scheduler.clone(),
            guidance_scale: f64::from(settings.guidance),
            guidance_rescale: 0.0,
            clip_skip: 0,
            seed,
            width,
            height,
            precision: self.prefs.precision(),
        }
    }

    fn model_or_say(&mut self) -> Option<PathBuf> {
        if self.model_path.is_none() {
            self.errors.push("No model is loaded: this method needs one.".into());
        }
        self.model_path.clone()
    }

    /// The generation parameters for the open image, and the image, or why there are none
    /// (said to the person).
    fn method_base(&mut self) -> Option<(GenerateParams, ImageData)> {
        let Some(layer) = self.document.image.clone() else {
            self.errors.push("Open an image first: this method works on it.".into());
            return None;
        };
        let model = self.model_or_say()?;
        let base = self.generate_params(model, layer.image.width(), layer.image.height());
        Some((base, ImageData::from_rgba_image(&layer.image)))
    }

    /// The painted mask as the engine takes it, or None (with a message) when nothing is painted.
    fn painted_mask(&mut self) -> Option<ImageData> {
        match self.document.mask.as_ref() {
            Some(mask) if !mask.is_empty() => Some(ImageData::from_rgba_image(&mask.to_luma_image())),
            _ => {
                self.errors
                    .push("The mask is empty: paint the region to repaint with the brush (B) first.".into());
                None
            }
        }
    }

    fn submit_method(&mut self, job: Job, parameters: String) {
        let label = job.label();
        let settings = serde_json::to_value(self.settings()).ok();
        self.last_job = Some((job.clone(), parameters.clone(), settings.clone()));
        let id = self.submit_tracked(job, self.params.steps, parameters, settings);
        self.status = format!("Queued {label} ({id})");
        self.params.after_run();
    }

    /// Runs the inspector's method.
    fn run_method(&mut self) {
        match self.params.method {
            Method::TextToImage => {
                let Some(model) = self.model_or_say() else { return };
                let (width, height) = (self.params.width / 8 * 8, self.params.height / 8 * 8);
                let base = self.generate_params(model, width.max(8), height.max(8));
                let parameters = base.to_infotext();
                self.submit_method(Job::Generate(base), parameters);
            }
            Method::ImageToImage => {
                let Some((base, image)) = self.method_base() else { return };
                let parameters =
                    format!("{}, Denoising strength: {}", base.to_infotext(), self.params.strength);
                let strength = f64::from(self.params.strength);
                self.submit_method(
                    Job::Img2Img(crate::protocol::Img2ImgParams { base, image, strength }),
                    parameters,
                );
            }
            Method::Inpaint => self.run_inpaint(),
            Method::DiffEdit => self.run_diffedit(),
            Method::PromptToPrompt => self.run_prompt_to_prompt(),
            Method::PaintWithWords => {
                let Some((base, _)) = self.method_base() else { return };
                let Some(mask) = self.painted_mask() else { return };
                let word = self.params.region_word.trim().to_string();
                let parameters =
                    format!("{}\nPaint with words: \"{word}\" in the painted region", base.to_infotext());
                let job = Job::PaintWithWords(crate::protocol::PaintWithWordsParams {
                    base,
                    regions: vec![(word, mask)],
                    strength: f64::from(self.params.region_strength),
                    attention_maps: false,
                });
                self.submit_method(job, parameters);
            }
            Method::InstructPix2Pix => {
                let Some((base, image)) = self.method_base() else { return };
                let parameters =
                    format!("{}, Image CFG scale: {}", base.to_infotext(), self.params.image_guidance);
                let image_guidance_scale = f64::from(self.params.image_guidance);
                let job = Job::InstructPix2Pix(crate::protocol::InstructPix2PixParams {
                    base,
                    image,
                    image_guidance_scale,
                });
                self.submit_method(job, parameters);
            }
            Method::MagicMix => {
                let Some((base, image)) = self.method_base() else { return };
                let p = &self.params;
                let (kmin, kmax, mix_factor) =
                    (f64::from(p.kmin), f64::from(p.kmax), f64::from(p.mix_factor));
                let parameters =
                    format!("{}, MagicMix kmin {kmin}, kmax {kmax}, mix {mix_factor}", base.to_infotext());
                let job =
                    Job::MagicMix(crate::protocol::MagicMixParams { base, image, kmin, kmax, mix_factor });
                self.submit_method(job, parameters);
            }
        }
    }

    /// Repaints the masked region of the image from the inpaint prompt with the loaded model.
    fn run_inpaint(&mut self) {
        let Some((base, image)) = self.method_base() else { return };
        let Some(mask) = self.painted_mask() else { return };
        let parameters = base.to_infotext();
        let job = Job::Inpaint(InpaintParams {
            base,
            image,
            mask,
            strength: f64::from(self.params.strength),
            // as the CLI's inpaint: the seam feathered a little beyond what was painted
            mask_options: MaskOptions::default(),
            composite: true,
        });
        self.submit_method(job, parameters);
    }

    /// DiffEdit: the mask where the source and target prompts disagree (or the painted one),
    /// repainted with the target prompt; the mask comes back onto the canvas, to correct with
    /// the brush and run again.
    fn run_diffedit(&mut self) {
        let Some((base, image)) = self.method_base() else { return };
        let mask = if self.params.diffedit_use_mask {
            let Some(mask) = self.painted_mask() else { return };
            Some(mask)
        } else {
            None
        };
        let parameters =
            format!("{}\nDiffEdit source prompt: {}", base.to_infotext(), self.params.source_prompt);
        let job = Job::DiffEdit(crate::protocol::DiffEditParams {
            base,
            source_prompt: self.params.source_prompt.clone(),
            image,
            strength: 0.8,
            mask_samples: 10,
            mask_strength: crate::protocol::DIFFEDIT_MASK_STRENGTH,
            mask_threshold: crate::protocol::DIFFEDIT_MASK_THRESHOLD,
            mask_edges: if self.params.diffedit_mask_edges {
                crate::protocol::DIFFEDIT_MASK_EDGES
            } else {
                0.0
            },
            mask,
        });
        self.submit_method(job, parameters);
    }

    /// Prompt-to-prompt: the word editor's target prompt with the source's attention, on the
    /// source prompt's generated image or on the open image (inverted first).
    fn run_prompt_to_prompt(&mut self) {
        let Some(model) = self.model_path.clone() else {
            self.errors.push("No model is loaded: the word editor needs one.".into());
            return;
        };
        // an edit of the open image is at its size; a generated source at the generation size
        let (width, height) = match (&self.document.image, self.words.real_image) {
            (Some(layer), true) => layer.image.dimensions(),
            _ => (self.params.width / 8 * 8, self.params.height / 8 * 8),
        };
        let words = &self.words;
        let source = if words.real_image {
            match (&words.inversion, self.document.image.as_ref()) {
                (Some(inversion), _) => {
                    crate::protocol::EditSource::Inversion(Box::new(inversion.as_ref().clone()))
                }
                (None, Some(layer)) => crate::protocol::EditSource::Image {
                    image: ImageData::from_rgba_image(&layer.image),
                    null_text: words.null_text.then_some(crate::protocol::DEFAULT_NULL_TEXT_STEPS),
                },
                (None, None) => {
                    self.errors.push("Open an image to edit, or untick \"edit the open image\".".into());
                    return;
                }
            }
        } else {
            crate::protocol::EditSource::Generated
        };
        let (target_prompt, reweight) = words.target_and_reweights();
        let source_prompt = words.source_prompt.clone();
        let mut base = self.generate_params(model, width, height);
        base.prompt = source_prompt;
        // prompt-to-prompt replays the source's DDIM steps
        base.scheduler = "ddim".into();
        let words = &self.words;
        let parameters = format!("{}\nTarget prompt: {}", base.to_infotext(), words.target_prompt);
        let job = Job::PromptToPrompt(crate::protocol::PromptToPromptParams {
            base,
            target_prompt,
            cross_window: words.cross_window,
            word_windows: words.sent_word_windows(),
            self_window: words.self_window,
            reweight,
            attention_maps: true,
            local_blend: words.local_blend.iter().cloned().collect(),
            source,
        });
        self.submit_method(job, parameters);
    }

    /// Inverts the open image under the word editor's source prompt; edits then start from it.
    fn run_invert(&mut self) {
        let Some((mut base, image)) = self.method_base() else { return };
        base.prompt = self.words.source_prompt.clone();
        let parameters = format!("inversion of the open image under: {}", base.prompt);
        let null_text = self.words.null_text.then_some(crate::protocol::DEFAULT_NULL_TEXT_STEPS);
        self.words.inversion = None;
        self.submit_method(Job::Invert(crate::protocol::InvertParams { base, image, null_text }), parameters);
    }

    /// The settings a project keeps and history entries restore.
    pub fn settings(&self) -> StudioSettings {
        StudioSettings {
            params: self.params.clone(),
            words: self.words.clone(),
            brush: self.brush,
            mask_step: self.mask_step,
            feather_sigma: self.feather_sigma,
            show_mask: self.show_mask,
        }
    }

    pub fn apply_settings(&mut self, settings: StudioSettings) {
        self.params = settings.params;
        // the maps and inversion belong to the open image, not to the settings
        let (maps, inversion) = (std::mem::take(&mut self.words.maps), self.words.inversion.take());
        self.words = WordEditor { maps, inversion, ..settings.words };
        self.brush = settings.brush.clamped();
        self.mask_step = settings.mask_step.clamp(1, 256);
        self.feather_sigma =
            if settings.feather_sigma.is_finite() { settings.feather_sigma.clamp(0.5, 128.0) } else { 4.0 };
        self.show_mask = settings.show_mask;
    }

    fn push_history(
        &mut self,
        image: Arc<image::RgbaImage>,
        label: &str,
        parameters: String,
        settings: Option<serde_json::Value>,
    ) {
        let id = self.next_history_id;
        self.next_history_id += 1;
        let settings = settings.unwrap_or_else(|| serde_json::to_value(self.settings()).unwrap_or_default());
        let entry = HistoryEntry { id, label: label.to_string(), parameters, settings };
        self.history.push(HistoryItem { entry, image, thumbnail: None });
    }

    /// Puts a history entry's image back on the canvas (undoable) and its settings in the panels.
    fn restore_history(&mut self, index: usize) {
        let Some(item) = self.history.get(index) else { return };
        let image = Arc::clone(&item.image);
        let settings = serde_json::from_value::<StudioSettings>(item.entry.settings.clone());
        let label = format!("{} #{}", item.entry.label, item.entry.id);
        self.document.set_result_image(image);
        match settings {
            Ok(settings) => self.apply_settings(settings),
            Err(error) => self
                .errors
                .push(format!("{label}: its settings could not be read ({error}); the image is back")),
        }
        self.status = format!("Restored {label}; Ctrl+Z to undo");
    }

    /// What a save writes now (cheap: images are shared, the mask is copied).
    fn snapshot(&self, clean_exit: bool) -> ProjectSnapshot {
        ProjectSnapshot {
            image: self.document.image.as_ref().map(|layer| (layer.revision, Arc::clone(&layer.image))),
            source_path: self.document.image.as_ref().and_then(|layer| layer.path.clone()),
            mask: self.document.mask.as_ref().map(|mask| (self.document.mask_revision, mask.clone())),
            settings: serde_json::to_value(self.settings()).unwrap_or_default(),
            history: self.history.iter().map(|item| (item.entry.clone(), Arc::clone(&item.image))).collect(),
            clean_exit,
        }
    }

    fn autosave_state(&self) -> (u64, u64, usize, StudioSettings) {
        let revision = self.document.image.as_ref().map_or(0, |layer| layer.revision);
        (revision, self.document.mask_revision, self.history.len(), self.settings())
    }

    /// Autosaves in the background when something changed and the last autosave is
    /// `autosave_every` old; never while a crash's autosave waits to be restored or not.
    pub fn autosave_if_due(&mut self) {
        let Some(folder) = self.autosave.clone() else { return };
        if self.restore_offer.is_some()
            || self.autosave_in_flight
            || self.document.stroking()
            || self.document.image.is_none()
            || self.last_autosave.elapsed() < self.autosave_every
        {
            return;
        }
        let state = self.autosave_state();
        if self.autosaved_state.as_ref() == Some(&state) {
            return;
        }
        self.autosaved_state = Some(state);
        self.last_autosave = Instant::now();
        self.autosave_in_flight = true;
        let (snapshot, written) = (self.snapshot(false), self.autosave_written.clone());
        self.spawn_io(move || {
            let result =
                project::save_project(&folder, &snapshot, &written).map_err(|error| error.to_string());
            IoResult::ProjectSaved { folder, autosave: true, result }
        });
    }

    /// Saves the autosave now, on this thread, marked as a normal exit (what closing does).
    pub fn autosave_on_exit(&mut self) -> Result<(), String> {
        let Some(folder) = self.autosave.clone() else { return Ok(()) };
        if self.restore_offer.is_some() || self.document.image.is_none() {
            // a crash's autosave not yet answered, or nothing to keep: leave the folder as it is
            return Ok(());
        }
        let written = project::save_project(&folder, &self.snapshot(true), &self.autosave_written)
            .map_err(|error| error.to_string())?;
        self.autosave_written = written;
        Ok(())
    }

    /// Looks at the autosave folder at start-up: what a crash left there is offered for
    /// restoring.
    pub fn check_autosave(&mut self) {
        let Some(folder) = self.autosave.clone() else { return };
        if let Ok(file) = project::read_project_file(&folder)
            && !file.clean_exit
            && file.has_image
        {
            self.restore_offer = Some(folder);
        }
    }

    fn load_project(&mut self, folder: PathBuf) {
        self.status = format!("Opening the project {}…", folder.display());
        self.spawn_io(move || {
            let result = project::load_project(&folder).map(Box::new).map_err(|error| error.to_string());
            IoResult::ProjectLoaded { folder, result }
        });
    }

    fn apply_project(&mut self, folder: &std::path::Path, loaded: LoadedProject) {
        let Some(image) = loaded.image else {
            self.errors.push(format!("{} holds no image to restore", folder.display()));
            return;
        };
        let first = self.document.take_revision();
        self.document = Document::restored(image, loaded.file.source_path.clone(), loaded.mask, first);
        self.preview = None;
        self.view.fit_pending = true;
        match serde_json::from_value::<StudioSettings>(loaded.file.settings) {
            Ok(settings) => self.apply_settings(settings),
            Err(error) => {
                self.errors.push(format!("the project's settings could not be read ({error}); defaults kept"))
            }
        }
        self.history.clear();
        for (entry, image) in loaded.history {
            self.next_history_id = self.next_history_id.max(entry.id + 1);
            self.history.push(HistoryItem { entry, image: Arc::new(image), thumbnail: None });
        }
        self.errors.extend(loaded.warnings);
        self.status = format!("Restored {}", folder.display());
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
            IoResult::AudioResampled { result: Ok((task, settings)) } => {
                self.submit_audio_now(task, *settings)
            }
            IoResult::AudioResampled { result: Err(message) } => {
                self.status = "Failed — see the message above".into();
                self.errors.push(format!("Could not resample the clip for this model: {message}"));
            }
            IoResult::AudioOpened { path, result: Ok((samples, notes)) } => {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.status = if notes.is_empty() {
                    format!("Opened {name}")
                } else {
                    format!("Opened {name}: {notes}")
                };
                let params = crate::protocol::AudioParams {
                    base: GenerateParams {
                        model: self.audio_model.clone(),
                        model_options: Default::default(),
                        prompt: String::new(),
                        negative_prompt: String::new(),
                        steps: 1,
                        scheduler: "ddim".into(),
                        guidance_scale: 1.0,
                        guidance_rescale: 0.0,
                        clip_skip: 0,
                        seed: 0,
                        width: 0,
                        height: 0,
                        precision: self.prefs.precision(),
                    },
                    preset: self.audio_preset_name(),
                    task: crate::protocol::AudioTask::Analyse { source: Arc::new(samples) },
                    griffin_lim_iterations: 1,
                };
                self.submit_tracked(Job::Audio(params), 1, name, None);
                self.room = Room::Audio;
            }
            IoResult::AudioOpened { result: Err(message), .. }
            | IoResult::Exported { result: Err(message), .. } => {
                self.status = "Failed — see the message above".into();
                self.errors.push(message);
            }
            IoResult::Exported { path, result: Ok(()) } => {
                self.status = format!("Exported {}", path.display());
            }
            IoResult::DialogChose(Some(command)) => self.execute(command),
            IoResult::DialogChose(None) => {}
            IoResult::ProjectSaved { folder, autosave, result } => {
                if autosave {
                    self.autosave_in_flight = false;
                }
                match result {
                    Ok(written) if autosave => self.autosave_written = written,
                    Ok(_) => self.status = format!("Saved the project to {}", folder.display()),
                    Err(message) => {
                        // an autosave that failed is tried again at the next change
                        if autosave {
                            self.autosaved_state = None;
                        }
                        self.errors.push(message);
                    }
                }
            }
            IoResult::ProjectLoaded { folder, result: Ok(loaded) } => self.apply_project(&folder, *loaded),
            IoResult::ProjectLoaded { result: Err(message), .. } => self.errors.push(message),
            IoResult::MaskExported { path, result: Ok(()) } => {
                self.status = format!("Exported the mask to {}", path.display());
            }
            IoResult::MaskExported { result: Err(message), .. } => self.errors.push(message),
            IoResult::Tokenizer(Ok(tokenizer)) => self.tokenizer = Some(Arc::from(tokenizer)),
            // without it the chips show no token counts; nothing else depends on it
            IoResult::Tokenizer(Err(message)) => tracing::warn!("no tokenizer for the word chips: {message}"),
        }
    }

    fn on_engine_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Ready { device } => self.device = Some(device),
            EngineEvent::DeviceWarning { message } => self.errors.push(message),
            EngineEvent::Started { job } => self.status = format!("Running {job}"),
            EngineEvent::ModelLoaded { description, native_size, .. } => {
                let name = model_name(&description);
                self.status = format!("Loaded {name} (what it is: Settings, or hover its name)");
                self.model = Some(description);
                // a model of another size: generation defaults to the size it was trained at
                if self.native_size != Some(native_size) {
                    self.native_size = Some(native_size);
                    (self.params.width, self.params.height) = native_size;
                }
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
                let state = self.jobs.remove(&job);
                let label = state.as_ref().map_or("job", |state| state.label);
                self.preview = None;
                let image = match output {
                    JobOutput::Image(data) => {
                        data.to_rgba_image().ok_or_else(|| format!("{job} returned a malformed image"))
                    }
                    JobOutput::Images(images) => {
                        // prompt-to-prompt's attention maps go to the word editor
                        let labelled = |prefix: &str| -> Vec<(String, image::RgbaImage)> {
                            images
                                .iter()
                                .filter_map(|i| {
                                    let word = i.label.strip_prefix(prefix)?;
                                    Some((word.to_string(), i.image.to_rgba_image()?))
                                })
                                .collect()
                        };
                        let maps = labelled(crate::protocol::ATTENTION_LABEL);
                        if !maps.is_empty() {
                            let size = images.first().map_or((1, 1), |i| (i.image.width, i.image.height));
                            let maps = maps.into_iter().map(|(word, map)| (word, Arc::new(map))).collect();
                            self.words.set_maps(
                                maps,
                                &labelled(crate::protocol::ATTENTION_STEPS_LABEL),
                                size,
                            );
                            self.maps_revision += 1;
                        }
                        // a method that returns its mask (DiffEdit) puts it on the canvas
                        if let Some(mask) =
                            images.iter().find(|i| i.label == "mask").and_then(|i| i.image.to_rgba_image())
                        {
                            self.document.apply_mask_op(MaskOp::Set(
                                crate::document::mask::Mask::from_luma_image(&mask),
                            ));
                        }
                        images
                            .first()
                            .and_then(|first| first.image.to_rgba_image())
                            .ok_or_else(|| format!("{job} returned no image"))
                    }
                    JobOutput::Loaded(description) => {
                        // the model the studio loads itself is reported by ModelLoaded already
                        if state.is_some() {
                            self.status = format!("{label} done: {description}");
                        }
                        return;
                    }
                    JobOutput::Audio(clip) => {
                        self.status = format!(
                            "{label} done ({job}): {:.2} s of audio",
                            clip.samples.len() as f64 / f64::from(clip.sample_rate.max(1))
                        );
                        // a file's spectrogram is named after the file
                        let name = match (&state, label) {
                            (Some(state), "spectrogram") => state.parameters.clone(),
                            _ => label.to_string(),
                        };
                        self.audio_result(clip, &name);
                        return;
                    }
                    JobOutput::Inversion(inversion) => {
                        self.status = format!(
                            "{label} done ({job}): reconstruction PSNR {:.1} dB ({:.1} dB against the VAE round trip) over {} steps",
                            inversion.psnr, inversion.psnr_vae, inversion.steps
                        );
                        self.words.inversion = Some(Arc::new(*inversion));
                        return;
                    }
                };
                match image {
                    Ok(image) => {
                        let image = Arc::new(image);
                        let (parameters, settings) =
                            state.map(|state| (state.parameters, state.settings)).unwrap_or_default();
                        self.push_history(Arc::clone(&image), label, parameters, settings);
                        self.document.set_result_image(image);
                        self.status = format!("{label} done ({job}); Ctrl+Z to undo");
                    }
                    Err(message) => self.errors.push(message),
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

    /// The audio room's inspector and views, and what they ask for.
    fn audio_room_ui(&mut self, ui: &mut egui::Ui) {
        use crate::ui::audio_room::AudioAction;
        let mut actions = Vec::new();
        let model =
            self.audio_model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let progress = self.jobs.values().find(|job| job.label != "load model").map(|job| (job.step, job.of));
        egui::Panel::right("audio inspector").default_size(270.0).show(ui, |ui| {
            egui::ScrollArea::vertical()
                .show(ui, |ui| self.audio.inspector_ui(ui, &model, progress, &mut actions));
        });
        egui::CentralPanel::default()
            .frame(egui::Frame::new().fill(Color32::from_gray(32)).inner_margin(6.0))
            .show(ui, |ui| self.audio.central_ui(ui, &mut actions));
        for action in actions {
            match action {
                AudioAction::Run { task, settings } => self.submit_audio(task, *settings),
                AudioAction::ShowModelDialog => self.execute(UiCommand::ShowAudioModelDialog),
                AudioAction::ShowOpenDialog => {
                    self.spawn_dialog_filtered(false, "", ("WAV audio", &["wav"]), UiCommand::OpenAudio)
                }
                AudioAction::ShowExportDialog => {
                    let name = self.audio.shown().map_or("clip".to_string(), |c| safe_file_stem(&c.label));
                    self.spawn_dialog_filtered(
                        true,
                        &format!("{name}.wav"),
                        ("WAV audio", &["wav"]),
                        UiCommand::ExportAudio,
                    )
                }
            }
        }
    }

    fn menu_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        egui::MenuBar::new().ui(ui, |ui| {
            for (room, name) in [(Room::Image, "Image"), (Room::Audio, "Audio")] {
                if ui.selectable_label(self.room == room, name).clicked() {
                    commands.push(UiCommand::SetRoom(room));
                }
            }
            ui.separator();
            ui.menu_button("File", |ui| {
                if ui.button("Open…").clicked() {
                    commands.push(UiCommand::ShowOpenDialog);
                }
                if ui.button("Paste Image").on_hover_text("Ctrl+V").clicked() {
                    commands.push(UiCommand::PasteImage);
                }
                let has_image = self.document.image.is_some();
                if ui.add_enabled(has_image, egui::Button::new("Save As…")).clicked() {
                    commands.push(UiCommand::ShowSaveDialog);
                }
                if ui.add_enabled(has_image, egui::Button::new("Export Mask…")).clicked() {
                    commands.push(UiCommand::ShowExportMaskDialog);
                }
                ui.separator();
                if ui.button("Open Project…").clicked() {
                    commands.push(UiCommand::ShowOpenProjectDialog);
                }
                if ui.add_enabled(has_image, egui::Button::new("Save Project As…")).clicked() {
                    commands.push(UiCommand::ShowSaveProjectDialog);
                }
                ui.separator();
                if ui
                    .button("Open Model Folder…")
                    .on_hover_text("A diffusers folder (model_index.json)")
                    .clicked()
                {
                    commands.push(UiCommand::ShowModelDialog(true));
                }
                if ui
                    .button("Open Model File…")
                    .on_hover_text("A single-file .safetensors checkpoint")
                    .clicked()
                {
                    commands.push(UiCommand::ShowModelDialog(false));
                }
                if ui.button("Settings…").clicked() {
                    commands.push(UiCommand::ToggleSettings);
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

    fn tools_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        ui.heading("Tools");
        for (tool, name, key, tip) in [
            (
                Tool::Brush,
                "Brush",
                "B",
                "Paint the region to repaint (left drag; shift-click draws a straight line)",
            ),
            (Tool::Eraser, "Eraser", "E", "Take the region back out of the mask"),
            (
                Tool::Pan,
                "Pan",
                "H",
                "Drag to move the image (space-drag and the middle button pan with any tool)",
            ),
        ] {
            if ui.selectable_label(self.tool == tool, format!("{name} ({key})")).on_hover_text(tip).clicked()
            {
                commands.push(UiCommand::SetTool(tool));
            }
        }
        let compare = ui
            .add_enabled(self.document.before_image().is_some(), egui::Button::new("Compare (hold \\)"))
            .on_hover_text("Hold to see the image before the last result");
        if compare.is_pointer_button_down_on() {
            self.comparing = true;
        }
        ui.separator();
        ui.label(RichText::new("Brush").strong());
        ui.add(
            egui::Slider::new(&mut self.brush.radius, Brush::MIN_RADIUS..=512.0)
                .logarithmic(true)
                .text("size"),
        )
        .on_hover_text("Radius in image pixels; [ and ] make it smaller and larger");
        ui.add(egui::Slider::new(&mut self.brush.hardness, 0.0..=1.0).text("hardness"))
            .on_hover_text("The share of the radius painted at full strength; the rest fades out");
        ui.add(egui::Slider::new(&mut self.brush.opacity, 0.0..=1.0).text("opacity"))
            .on_hover_text("The most one stroke adds, however often it passes over a pixel");
        ui.separator();
        ui.label(RichText::new("Mask").strong());
        ui.checkbox(&mut self.show_mask, "Show mask");
        let has_mask = self.document.mask.is_some();
        ui.add_enabled_ui(has_mask, |ui| {
            ui.horizontal_wrapped(|ui| {
                if ui.button("Fill").on_hover_text("Mark everything for repainting").clicked() {
                    commands.push(UiCommand::Mask(MaskOp::Fill));
                }
                if ui.button("Clear").on_hover_text("Unmark everything").clicked() {
                    commands.push(UiCommand::Mask(MaskOp::Clear));
                }
                if ui.button("Invert").on_hover_text("Repaint what is kept, keep what is repainted").clicked()
                {
                    commands.push(UiCommand::Mask(MaskOp::Invert));
                }
            });
            ui.horizontal(|ui| {
                if ui.button("Grow").on_hover_text("Move the mask's edge outwards").clicked() {
                    commands.push(UiCommand::Mask(MaskOp::Grow(self.mask_step)));
                }
                if ui.button("Shrink").on_hover_text("Move the mask's edge inwards").clicked() {
                    commands.push(UiCommand::Mask(MaskOp::Shrink(self.mask_step)));
                }
                let label = ui.label("px");
                ui.add(egui::DragValue::new(&mut self.mask_step).range(1..=256)).labelled_by(label.id);
            });
            ui.horizontal(|ui| {
                if ui.button("Feather").on_hover_text("Soften the mask's edge (Gaussian blur)").clicked() {
                    commands.push(UiCommand::Mask(MaskOp::Feather(self.feather_sigma)));
                }
                let label = ui.label("σ");
                ui.add(egui::DragValue::new(&mut self.feather_sigma).range(0.5..=128.0).speed(0.1))
                    .labelled_by(label.id);
            });
        });
    }

    fn inspector_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        ui.heading("Inspector");
        ui.separator();
        // the run button first, where it stays put whatever the method's settings are
        let method = self.params.method;
        let ready = self.model_path.is_some() && (!method.needs_image() || self.document.image.is_some());
        let run = egui::Button::new(RichText::new(method.action()).strong()).min_size(Vec2::new(120.0, 26.0));
        if ui.add_enabled(ready, run).on_hover_text("Ctrl+Enter").clicked() {
            commands.push(UiCommand::RunMethod);
        }
        self.params.ui(ui);
        if self.params.method == Method::PromptToPrompt {
            let tokenizer = self.tokenizer.clone();
            self.words.ui(ui, tokenizer.as_deref(), self.model_path.is_some(), commands);
        }
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
        ui.horizontal(|ui| {
            ui.heading("Jobs");
            let repeat = ui
                .add_enabled(self.last_job.is_some(), egui::Button::new("Repeat"))
                .on_hover_text("Run the last job again, exactly as it was sent");
            if repeat.clicked() {
                commands.push(UiCommand::Repeat);
            }
        });
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

    fn history_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        egui::ScrollArea::horizontal().stick_to_right(true).show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(RichText::new("History").strong());
                if self.history.is_empty() {
                    ui.weak("Results appear here; click one to put it and its settings back.");
                }
                for (index, item) in self.history.iter_mut().enumerate() {
                    let texture = item.thumbnail.get_or_insert_with(|| {
                        let small = image::imageops::thumbnail(item.image.as_ref(), 56, 56);
                        let colour = egui::ColorImage::from_rgba_unmultiplied(
                            [small.width() as usize, small.height() as usize],
                            small.as_raw(),
                        );
                        ui.ctx().load_texture(
                            format!("history-{}", item.entry.id),
                            colour,
                            Default::default(),
                        )
                    });
                    let name = format!("{} #{}", item.entry.label, item.entry.id);
                    let button =
                        egui::Button::image(egui::Image::new(&*texture).fit_to_exact_size(Vec2::splat(56.0)));
                    let response = ui.add(button).on_hover_text(format!("{name}\n{}", item.entry.parameters));
                    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &name));
                    if response.clicked() {
                        commands.push(UiCommand::RestoreHistory(index));
                    }
                }
            });
        });
    }

    fn settings_ui(&self, ctx: &egui::Context, commands: &mut Vec<UiCommand>) {
        if !self.show_settings {
            return;
        }
        egui::Window::new("Settings").collapsible(false).resizable(false).show(ctx, |ui| {
            egui::Grid::new("settings").num_columns(2).show(ui, |ui| {
                ui.label("model");
                ui.label(self.model.as_deref().unwrap_or("none"));
                ui.end_row();
                ui.label("file");
                ui.monospace(self.model_path.as_ref().map_or("—".into(), |p| p.display().to_string()));
                ui.end_row();
                let label = ui.label("device");
                let current = self.prefs.device();
                let cuda = self.device.as_ref().map_or(0, |d| d.cuda_devices);
                let mut choices = vec![DeviceChoice::Auto, DeviceChoice::Cpu];
                choices.extend((0..cuda).map(DeviceChoice::Cuda));
                if !choices.contains(&current) {
                    choices.push(current);
                }
                ui.add_enabled_ui(self.jobs.is_empty(), |ui| {
                    egui::ComboBox::from_id_salt("device")
                        .selected_text(current.to_name())
                        .show_ui(ui, |ui| {
                            for choice in choices {
                                if ui.selectable_label(current == choice, choice.to_name()).clicked()
                                    && current != choice
                                {
                                    commands.push(UiCommand::SetDevice(choice));
                                }
                            }
                        })
                        .response
                        .labelled_by(label.id)
                        .on_hover_text("Where the engine runs; changing it restarts the engine and reloads the model (not while jobs run)");
                });
                ui.end_row();
                ui.label("running on");
                ui.label(self.device.as_ref().map_or("starting…", |d| d.description.as_str()));
                ui.end_row();
                let label = ui.label("precision");
                let current = self.prefs.precision().to_name();
                egui::ComboBox::from_id_salt("precision")
                    .selected_text(current)
                    .show_ui(ui, |ui| {
                        for name in ["f32", "f16", "bf16"] {
                            if ui.selectable_label(current == name, name).clicked() && current != name {
                                commands.push(UiCommand::SetPrecision(name.into()));
                            }
                        }
                    })
                    .response
                    .labelled_by(label.id)
                    .on_hover_text("The denoiser's number format: f16/bf16 halve its memory on CUDA; the model is reloaded");
                ui.end_row();
            });
            ui.horizontal(|ui| {
                if ui.button("Open Model Folder…").clicked() {
                    commands.push(UiCommand::ShowModelDialog(true));
                }
                if ui.button("Open Model File…").clicked() {
                    commands.push(UiCommand::ShowModelDialog(false));
                }
                if ui.button("Close").clicked() {
                    commands.push(UiCommand::ToggleSettings);
                }
            });
            ui.weak("The model, device and precision are remembered for the next start.");
        });
    }

    fn restore_offer_ui(&self, ctx: &egui::Context, commands: &mut Vec<UiCommand>) {
        let Some(folder) = &self.restore_offer else { return };
        egui::Window::new("Restore the last session?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, Vec2::ZERO)
            .show(ctx, |ui| {
                ui.label("The studio did not close normally last time. Its autosave holds your image, mask, settings and history:");
                ui.monospace(folder.display().to_string());
                ui.horizontal(|ui| {
                    if ui.button("Restore").clicked() {
                        commands.push(UiCommand::RestoreAutosave(true));
                    }
                    if ui.button("Start afresh").on_hover_text("The autosave is overwritten by the next one").clicked() {
                        commands.push(UiCommand::RestoreAutosave(false));
                    }
                });
            });
    }

    fn status_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<UiCommand>) {
        ui.horizontal(|ui| {
            let device = self.device.as_ref().map_or("starting…", |d| d.description.as_str());
            ui.label(format!("Engine: {device}"));
            ui.separator();
            if let Some(model) = &self.model {
                // the name here; what it was detected as on hover (and in the settings)
                let name = model_name(model);
                ui.label(format!("Model: {name}")).on_hover_text(model.as_str());
                ui.separator();
            }
            if let Some(layer) = &self.document.image {
                ui.label(format!("{}×{}", layer.image.width(), layer.image.height()));
                ui.separator();
            }
            if self.room == Room::Image {
                ui.label(format!("Zoom {:.0}%", self.view.zoom * 100.0));
                if ui.small_button("Fit").on_hover_text("Show the whole image").clicked() {
                    commands.push(UiCommand::FitToView);
                }
                if ui.small_button("100%").on_hover_text("One image pixel per screen pixel").clicked() {
                    commands.push(UiCommand::ActualSize);
                }
                ui.separator();
            }
            if let Some(((x, y), [r, g, b, a], mask)) = self.inspected {
                ui.monospace(format!("{x},{y}: {r} {g} {b} {a}, mask {mask}"));
                ui.separator();
            }
            if self.comparing {
                ui.label(RichText::new("Showing the image before the last result").strong());
                ui.separator();
            }
            ui.label(&self.status);
        });
    }

    fn canvas_ui(&mut self, ui: &mut egui::Ui) {
        let canvas = ui.available_rect_before_wrap();
        self.canvas_rect = canvas;
        let response = ui.allocate_rect(canvas, egui::Sense::click_and_drag());
        let Some(layer) = self.document.image.clone() else {
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
        if self.shown_size.replace(image_size).is_some_and(|shown| shown != image_size) {
            self.view.fit_pending = true;
        }
        if self.view.needs_fit(canvas) {
            self.view.fit(image_size, canvas);
        }
        // 1. input: painting with the brush or eraser; panning with the pan tool, space-drag or
        //    the middle button; the wheel zooms about the cursor
        // The frame's pointer events in order, so that a fast stroke keeps every point the
        // window system reported and a release ends the stroke where it happened.
        let (space, shift, events) = ui.input(|i| {
            let events: Vec<egui::Event> = i
                .events
                .iter()
                .filter(|e| matches!(e, egui::Event::PointerMoved(_) | egui::Event::PointerButton { .. }))
                .cloned()
                .collect();
            (i.key_down(egui::Key::Space), i.modifiers.shift, events)
        });
        let painting_tool = matches!(self.tool, Tool::Brush | Tool::Eraser) && !space;
        let to_image = |view: &CanvasView, pos: egui::Pos2| {
            let p = view.image_pos_from_screen(pos, image_size, canvas);
            (p.x, p.y)
        };
        // the minimap (when the image is larger than the canvas shows) takes its own clicks
        let minimap = Minimap::of(&self.view, image_size, canvas);
        let minimap_response = minimap
            .map(|m| ui.interact(m.rect, ui.scope_id().with("minimap"), egui::Sense::click_and_drag()));
        let on_minimap = |pos: egui::Pos2| minimap.is_some_and(|m| m.rect.contains(pos));
        let over_canvas =
            |pos: egui::Pos2| canvas.contains(pos) && response.contains_pointer() && !on_minimap(pos);
        for event in events {
            match event {
                egui::Event::PointerButton {
                    pos,
                    button: egui::PointerButton::Primary,
                    pressed: true,
                    ..
                } if painting_tool && over_canvas(pos) => {
                    let brush = Brush { erase: self.tool == Tool::Eraser, ..self.brush };
                    let point = to_image(&self.view, pos);
                    if shift && self.document.last_stroke_end.is_some() {
                        self.document.stroke_line_to(brush, point);
                        self.status = "Drew a straight line; Ctrl+Z to undo".into();
                    } else {
                        self.document.begin_stroke(brush, point);
                    }
                }
                egui::Event::PointerMoved(pos) if self.document.stroking() => {
                    self.document.continue_stroke(to_image(&self.view, pos));
                }
                egui::Event::PointerButton {
                    pos,
                    button: egui::PointerButton::Primary,
                    pressed: false,
                    ..
                } if self.document.stroking() => {
                    self.document.continue_stroke(to_image(&self.view, pos));
                    self.document.finish_stroke();
                    self.status = "Painted the mask; Ctrl+Z to undo".into();
                }
                _ => {}
            }
        }
        if self.document.stroking() && !ui.input(|i| i.pointer.primary_down()) {
            // the release happened outside the window
            self.document.finish_stroke();
        }
        if let (Some(map), Some(clicked)) = (minimap, &minimap_response)
            && (clicked.clicked() || clicked.dragged())
            && !self.document.stroking()
            && let Some(pos) = clicked.interact_pointer_pos()
        {
            self.view.centre_on(map.image_pos(pos, image_size), image_size);
        }
        let pans = response.dragged_by(egui::PointerButton::Middle)
            || (response.dragged_by(egui::PointerButton::Primary) && !painting_tool);
        if pans && !self.document.stroking() {
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
        self.cursor = if painting_tool { response.hover_pos() } else { None };
        // 2. draw: the preview of a running job, else the document image
        let image_rect = self.view.image_rect(image_size, canvas);
        let before = self.comparing.then(|| self.document.before_image()).flatten();
        let shown = match (before, &self.preview) {
            (Some(before), _) => CanvasImage { revision: before.revision, image: Arc::clone(&before.image) },
            (None, Some(preview)) => preview.clone(),
            (None, None) => CanvasImage { revision: layer.revision, image: Arc::clone(&layer.image) },
        };
        // the pixel under the pointer, for the status bar
        self.inspected = response.hover_pos().and_then(|pos| {
            let p = self.view.image_pos_from_screen(pos, image_size, canvas);
            let (x, y) = (p.x.floor(), p.y.floor());
            if x < 0.0 || y < 0.0 || x >= image_size.x || y >= image_size.y {
                return None;
            }
            let (x, y) = (x as u32, y as u32);
            let mask = self
                .document
                .mask
                .as_ref()
                .filter(|m| x < m.width() && y < m.height())
                .map_or(0, |m| m.get(x, y));
            Some(((x, y), layer.image.get_pixel(x, y).0, mask))
        });
        let mask_upload = self.document.take_mask_dirty().and_then(|rect| {
            let mask = self.document.mask.as_ref()?;
            let patch = mask.copy_rect(rect);
            Some(MaskUpload { size: (mask.width(), mask.height()), rect: patch.rect, pixels: patch.pixels })
        });
        if self.gpu_canvas {
            let overlay = Overlay {
                colour: [1.0, 0.2, 0.3, if self.show_mask { 0.45 } else { 0.0 }],
                cursor: self.cursor.map(|centre| (centre, self.brush.radius * self.view.zoom)),
                time: self.started.elapsed().as_secs_f32(),
                heat: self
                    .words
                    .visible_map()
                    .map(|(id, map)| ((self.maps_revision << 40) ^ id, Arc::clone(map))),
            };
            let callback = CanvasCallback::with_overlay(
                shown,
                mask_upload,
                overlay,
                image_rect,
                canvas,
                self.view.zoom,
                ui.ctx().pixels_per_point(),
            );
            ui.painter()
                .with_clip_rect(canvas)
                .add(eframe::egui_wgpu::Callback::new_paint_callback(canvas, callback));
            if self.cursor.is_some() {
                // the marching edge moves while the pointer is over the canvas
                ui.ctx().request_repaint_after(Duration::from_millis(100));
            }
        } else {
            ui.painter().rect_filled(image_rect.intersect(canvas), 0.0, Color32::DARK_GRAY);
        }
        // 3. the minimap over the canvas, with the view recomputed after this frame's pans
        if let Some(map) = Minimap::of(&self.view, image_size, canvas) {
            let texture = match &self.minimap {
                Some((revision, texture)) if *revision == layer.revision => texture.clone(),
                _ => {
                    let (w, h) = (map.rect.width().round() as u32, map.rect.height().round() as u32);
                    let small = image::imageops::thumbnail(layer.image.as_ref(), w.max(1), h.max(1));
                    let colour = egui::ColorImage::from_rgba_unmultiplied(
                        [small.width() as usize, small.height() as usize],
                        small.as_raw(),
                    );
                    let texture = ui.ctx().load_texture("minimap", colour, Default::default());
                    self.minimap = Some((layer.revision, texture.clone()));
                    texture
                }
            };
            let painter = ui.painter().with_clip_rect(canvas);
            painter.rect_filled(map.rect.expand(2.0), 2.0, Color32::from_black_alpha(200));
            painter.image(
                texture.id(),
                map.rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            painter.rect_stroke(
                map.visible.intersect(map.rect),
                0.0,
                egui::Stroke::new(1.5, Color32::from_rgb(255, 210, 60)),
                egui::StrokeKind::Middle,
            );
        }
    }
}

/// A loaded model's name: its description up to what it was detected as ("shapes: …").
fn model_name(description: &str) -> &str {
    description.split(": ").next().unwrap_or(description)
}

/// The image on the system clipboard, or why there is none (said to the person).
fn clipboard_image() -> Result<image::RgbaImage, String> {
    let mut clipboard =
        arboard::Clipboard::new().map_err(|e| format!("the clipboard cannot be read here: {e}"))?;
    let data = clipboard.get_image().map_err(|e| match e {
        arboard::Error::ContentNotAvailable => {
            "The clipboard holds no image: copy one first, or open a file.".to_string()
        }
        other => format!("could not read the clipboard's image: {other}"),
    })?;
    let (width, height) = (data.width as u32, data.height as u32);
    if width > document::MAX_IMAGE_SIDE || height > document::MAX_IMAGE_SIDE {
        return Err(format!(
            "the clipboard's image is {width}×{height}; the studio opens images up to {} pixels a side",
            document::MAX_IMAGE_SIDE
        ));
    }
    image::RgbaImage::from_raw(width, height, data.bytes.into_owned())
        .ok_or_else(|| "the clipboard's image is malformed".to_string())
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
    fn on_exit(&mut self) {
        if let Err(message) = self.autosave_on_exit() {
            tracing::error!("the autosave on exit failed: {message}");
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.drain_events();
        let mut commands = Vec::new();
        // Keyboard shortcuts (letters only while no text field has the focus) and dropped files.
        let typing = ui.ctx().egui_wants_keyboard_input();
        self.comparing = !typing && ui.input(|i| i.key_down(egui::Key::Backslash));
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
            // Ctrl+V outside text fields opens the clipboard's image (in a text field it pastes
            // text, which egui does itself)
            let paste = input.events.iter().any(|e| {
                matches!(e, egui::Event::Paste(_))
                    || matches!(e, egui::Event::Key { key: egui::Key::V, pressed: true, modifiers, .. } if modifiers.command)
            });
            if paste && !typing {
                commands.push(UiCommand::PasteImage);
            }
            if input.modifiers.command && input.key_pressed(egui::Key::Enter) {
                commands.push(UiCommand::RunMethod);
            }
            if input.key_pressed(egui::Key::Escape) {
                commands.extend(self.jobs.keys().map(|id| UiCommand::Cancel(*id)));
            }
            if !typing {
                for (key, command) in [
                    (egui::Key::OpenBracket, UiCommand::ScaleBrush(1.0 / 1.25)),
                    (egui::Key::CloseBracket, UiCommand::ScaleBrush(1.25)),
                    (egui::Key::B, UiCommand::SetTool(Tool::Brush)),
                    (egui::Key::E, UiCommand::SetTool(Tool::Eraser)),
                    (egui::Key::H, UiCommand::SetTool(Tool::Pan)),
                ] {
                    if input.key_pressed(key) && !input.modifiers.command {
                        commands.push(command);
                    }
                }
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
        egui::Panel::bottom("status").show(ui, |ui| self.status_ui(ui, &mut commands));
        if self.room == Room::Audio {
            self.audio_room_ui(ui);
        } else {
            egui::Panel::bottom("history").show(ui, |ui| self.history_ui(ui, &mut commands));
            egui::Panel::left("tools").default_size(190.0).show(ui, |ui| self.tools_ui(ui, &mut commands));
            egui::Panel::right("inspector").default_size(270.0).show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.inspector_ui(ui, &mut commands));
            });
            egui::CentralPanel::default()
                .frame(egui::Frame::new().fill(Color32::from_gray(32)))
                .show(ui, |ui| self.canvas_ui(ui));
        }
        self.restore_offer_ui(ui.ctx(), &mut commands);
        self.settings_ui(ui.ctx(), &mut commands);
        for command in commands {
            self.execute(command);
        }
        self.autosave_if_due();
        if self.autosave.is_some() && self.document.image.is_some() {
            // autosave runs from the frame loop: look again when the next one could be due
            ui.ctx().request_repaint_after(self.autosave_every.max(Duration::from_millis(100)));
        }
        if self.pending_io > 0 || !self.jobs.is_empty() {
            // Results arrive through the waker; this keeps the status fresh meanwhile.
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
    }
}
