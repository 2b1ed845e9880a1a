//! The audio room: generate clips as spectrograms, see them (colormapped spectrogram with time
//! and frequency rulers, zoom and scroll, waveform strip), play them (play/pause/loop/seek, a
//! playhead that follows playback), select a stretch by dragging (Shift: a box of time and
//! frequency) to regenerate it, compare with the clip before (A/B), and export WAV.
//!
//! The room never touches the engine or the disk itself: it returns [`AudioAction`]s for the
//! app to run (jobs, dialogs, file writes). Playback goes through an [`AudioOutput`]; with no
//! sound card the room says so and everything else works.

use std::sync::Arc;

use egui::{Color32, Pos2, Rect, RichText, Sense, Stroke, Vec2};

use crate::audio::playback::{self, AudioOutput, Command, Transport};
use crate::protocol::AudioClip;
use crate::ui::spectrogram_view::{self, SpectrogramCallback, TimeView};

/// A clip the room shows: the engine's result and its spectrogram, with an id for textures.
pub struct RoomClip {
    pub id: u64,
    pub clip: AudioClip,
    pub grey: Arc<image::RgbaImage>,
    /// Where it came from ("text to audio", a file name).
    pub label: String,
}

impl RoomClip {
    pub fn seconds(&self) -> f64 {
        self.clip.samples.len() as f64 / f64::from(self.clip.sample_rate.max(1))
    }
}

/// A selected stretch, in seconds, and optionally a band of frequencies (Hz).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    pub start: f64,
    pub end: f64,
    pub band: Option<(f64, f64)>,
}

/// What the inspector's Run button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AudioMethod {
    #[default]
    Generate,
    Transform,
    Regenerate,
    Continue,
    Loop,
    Interpolate,
}

impl AudioMethod {
    pub const ALL: [AudioMethod; 6] = [
        AudioMethod::Generate,
        AudioMethod::Transform,
        AudioMethod::Regenerate,
        AudioMethod::Continue,
        AudioMethod::Loop,
        AudioMethod::Interpolate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AudioMethod::Generate => "Text to audio",
            AudioMethod::Transform => "Audio to audio",
            AudioMethod::Regenerate => "Regenerate selection",
            AudioMethod::Continue => "Continue",
            AudioMethod::Loop => "Make a loop",
            AudioMethod::Interpolate => "Interpolate",
        }
    }

    /// Whether it starts from the clip shown.
    pub fn needs_clip(self) -> bool {
        matches!(self, AudioMethod::Transform | AudioMethod::Regenerate | AudioMethod::Continue)
    }
}

/// The inspector's settings of the audio room.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioSettings {
    pub method: AudioMethod,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub random_seed: bool,
    pub strength: f64,
    pub to_prompt: String,
    pub to_seed: u64,
    pub clips: usize,
    pub iterations: usize,
    /// "" for the model's own.
    pub preset: String,
}

impl Default for AudioSettings {
    fn default() -> Self {
        Self {
            method: AudioMethod::Generate,
            prompt: "a fast drum beat".into(),
            negative_prompt: String::new(),
            steps: 20,
            guidance: 4.0,
            seed: 0,
            random_seed: false,
            strength: 0.6,
            to_prompt: "a slow minor pad".into(),
            to_seed: 1,
            clips: 4,
            iterations: 32,
            preset: String::new(),
        }
    }
}

/// What the room asks the app to do.
#[derive(Debug, Clone)]
pub enum AudioAction {
    /// Run an audio job with these settings (the app adds the model); the source clip is the
    /// one shown, the selection the room's.
    Run {
        task: crate::protocol::AudioTask,
        settings: Box<AudioSettings>,
    },
    ShowOpenDialog,
    ShowExportDialog,
    /// Choose another audio model folder.
    ShowModelDialog,
}

/// Makes the playback output and its transport (cpal in the studio; the tests' null output).
pub type OutputFactory = Box<dyn FnMut() -> (Transport, Box<dyn AudioOutput>)>;

struct Playback {
    transport: Transport,
    output: Box<dyn AudioOutput>,
    /// The id of the clip loaded into the player, and whether it is the A side.
    loaded: Option<(u64, bool)>,
    /// A long clip being resampled to the output's rate on another thread.
    pending: Option<PendingLoad>,
}

/// A clip on its way to the player: where to start and whether to play once it arrives.
struct PendingLoad {
    key: (u64, bool),
    samples: std::sync::mpsc::Receiver<Vec<f32>>,
    seconds: f64,
    play: bool,
}

/// Clips longer than this (seconds) are resampled for playback off the UI thread; shorter ones
/// (a few milliseconds of work) load at once.
const RESAMPLE_IN_BACKGROUND: f64 = 20.0;

/// `samples` at `from` Hz as mono samples at `to` Hz (the clip as it is if resampling fails).
fn for_output(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    let clip = crate::audio::wav::Clip { sample_rate: from, channels: vec![samples.to_vec()] };
    match clip.resampled(to) {
        Ok(clip) => clip.mono(),
        Err(_) => samples.to_vec(),
    }
}

/// What the audio room holds.
pub struct AudioRoom {
    /// The newest clip (B), and the one before it (A).
    pub clip: Option<Arc<RoomClip>>,
    pub previous: Option<Arc<RoomClip>>,
    /// Whether A (the clip before) is shown and played instead of B.
    pub showing_previous: bool,
    pub selection: Option<Selection>,
    pub view: TimeView,
    pub settings: AudioSettings,
    /// Loop the selection (or the whole clip) while playing.
    pub looping: bool,
    output_factory: Option<OutputFactory>,
    playback: Option<Playback>,
    /// What the output is ("no audio output (…)").
    pub output_status: String,
    next_id: u64,
    /// A drag in progress: where it started (seconds, Hz when Shift was held).
    drag_from: Option<(f64, Option<f64>)>,
    /// The CPU-coloured spectrogram texture (no wgpu) and the clip id it shows.
    texture: Option<(u64, egui::TextureHandle)>,
    /// Whether the wgpu spectrogram renderer is installed.
    pub gpu: bool,
    /// Where the spectrogram was drawn last frame (screen points).
    pub spectrogram_rect: Rect,
    pub waveform_rect: Rect,
    /// The audio model takes no text (audio-diffusion): the prompts are greyed out.
    pub unconditional: bool,
}

impl Default for AudioRoom {
    fn default() -> Self {
        Self::new(None)
    }
}

impl AudioRoom {
    /// A room whose playback opens through `output_factory` on first use (None: no playback).
    pub fn new(output_factory: Option<OutputFactory>) -> Self {
        Self {
            clip: None,
            previous: None,
            showing_previous: false,
            selection: None,
            view: TimeView::whole(1.0),
            settings: AudioSettings::default(),
            looping: false,
            output_factory,
            playback: None,
            output_status: String::new(),
            next_id: 1,
            drag_from: None,
            texture: None,
            gpu: false,
            spectrogram_rect: Rect::NOTHING,
            waveform_rect: Rect::NOTHING,
            unconditional: false,
        }
    }

    /// The output factory of the studio: the default cpal device, or a silent output that says
    /// why there is none.
    pub fn studio_output() -> OutputFactory {
        Box::new(|| {
            let (player, transport) = playback::player();
            match playback::CpalOutput::open(player) {
                Ok(output) => (transport, Box::new(output) as Box<dyn AudioOutput>),
                Err(reason) => {
                    // the player went with the failed stream: a fresh pair that plays nowhere
                    let (player, transport) = playback::player();
                    (transport, Box::new(playback::NullOutput::new(player, 48_000, reason)))
                }
            }
        })
    }

    /// Playback opens through `factory` from now on (the current output is closed).
    pub fn set_output_factory(&mut self, factory: OutputFactory) {
        self.output_factory = Some(factory);
        self.playback = None;
    }

    /// A finished job's clip becomes the shown one (B); the one before is kept as A.
    pub fn set_result(&mut self, clip: AudioClip, label: &str) {
        let grey = clip.spectrogram.to_rgba_image().unwrap_or_default();
        let room_clip = RoomClip { id: self.next_id, clip, grey: Arc::new(grey), label: label.to_string() };
        self.next_id += 1;
        self.previous = self.clip.take();
        let seconds = room_clip.seconds();
        self.clip = Some(Arc::new(room_clip));
        self.showing_previous = false;
        // a selection past the new clip's end is dropped; the view keeps its zoom where it can
        if self.selection.is_some_and(|s| s.end > seconds) {
            self.selection = None;
        }
        if self.view.start + self.view.span > seconds || self.previous.is_none() {
            self.view = TimeView::whole(seconds);
        }
        self.sync_player();
    }

    /// The clip shown: B, or A while comparing.
    pub fn shown(&self) -> Option<&Arc<RoomClip>> {
        if self.showing_previous { self.previous.as_ref().or(self.clip.as_ref()) } else { self.clip.as_ref() }
    }

    fn playback(&mut self) -> Option<&mut Playback> {
        if self.playback.is_none() {
            let factory = self.output_factory.as_mut()?;
            let (transport, output) = factory();
            self.output_status = output.describe();
            self.playback = Some(Playback { transport, output, loaded: None, pending: None });
        }
        self.playback.as_mut()
    }

    /// Loads the shown clip into the player (resampled to the output's rate), keeping the
    /// playhead's time, when it is not loaded already.
    fn sync_player(&mut self) {
        let Some(shown) = self.shown().cloned() else { return };
        let key = (shown.id, self.showing_previous);
        let looping = self.looping;
        let selection = self.selection;
        let Some(playback) = self.playback() else { return };
        if playback.loaded == Some(key) || playback.pending.as_ref().is_some_and(|p| p.key == key) {
            return;
        }
        let rate = playback.output.sample_rate();
        let (seconds, play) = match &playback.pending {
            Some(pending) => (pending.seconds, pending.play),
            None => (
                playback.loaded.map(|_| position_seconds(playback, rate)).unwrap_or(0.0),
                playback.transport.playing(),
            ),
        };
        let from = shown.clip.sample_rate;
        if from != rate && shown.seconds() > RESAMPLE_IN_BACKGROUND {
            // a long clip: the old one stops, the new one plays from here once it is resampled
            playback.transport.send(Command::Pause);
            let (sender, receiver) = std::sync::mpsc::channel();
            let source = Arc::clone(&shown.clip.samples);
            std::thread::spawn(move || {
                let _ = sender.send(for_output(&source, from, rate));
            });
            playback.pending = Some(PendingLoad { key, samples: receiver, seconds, play });
            return;
        }
        let samples = for_output(&shown.clip.samples, from, rate);
        playback.pending = None;
        Self::load(playback, key, samples, seconds, play);
        self.send_loop(looping, selection);
    }

    fn load(playback: &mut Playback, key: (u64, bool), samples: Vec<f32>, seconds: f64, play: bool) {
        let rate = playback.output.sample_rate();
        playback.transport.send(Command::Load(samples.into()));
        playback.transport.send(Command::Seek((seconds * f64::from(rate)) as u64));
        if play {
            playback.transport.send(Command::Play);
        }
        playback.loaded = Some(key);
    }

    /// Loads a clip resampled in the background once it is ready; true while one is on its way.
    pub fn poll_pending(&mut self) -> bool {
        let Some(playback) = self.playback.as_mut() else { return false };
        let Some(pending) = &playback.pending else { return false };
        match pending.samples.try_recv() {
            Ok(samples) => {
                let (key, seconds, play) = (pending.key, pending.seconds, pending.play);
                playback.pending = None;
                Self::load(playback, key, samples, seconds, play);
                self.send_loop(self.looping, self.selection);
                false
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                playback.pending = None;
                false
            }
        }
    }

    fn send_loop(&mut self, looping: bool, selection: Option<Selection>) {
        let duration = self.shown().map_or(0.0, |c| c.seconds());
        let Some(playback) = self.playback.as_mut() else { return };
        let rate = f64::from(playback.output.sample_rate());
        let range = looping.then(|| {
            let (start, end) = selection.map_or((0.0, duration), |s| (s.start, s.end));
            ((start * rate) as u64, ((end * rate) as u64).max((start * rate) as u64 + 1))
        });
        playback.transport.send(Command::Loop(range));
    }

    /// Play or pause.
    pub fn toggle_play(&mut self) {
        self.sync_player();
        let Some(playback) = self.playback() else { return };
        if let Some(pending) = &mut playback.pending {
            pending.play = !pending.play;
            return;
        }
        let command = if playback.transport.playing() { Command::Pause } else { Command::Play };
        playback.transport.send(command);
    }

    /// Moves the playhead to `seconds`.
    pub fn seek(&mut self, seconds: f64) {
        self.sync_player();
        let Some(playback) = self.playback() else { return };
        if let Some(pending) = &mut playback.pending {
            pending.seconds = seconds.max(0.0);
            return;
        }
        let rate = f64::from(playback.output.sample_rate());
        playback.transport.send(Command::Seek((seconds.max(0.0) * rate) as u64));
    }

    /// The playhead, in seconds, and whether it plays.
    pub fn playhead(&self) -> Option<(f64, bool)> {
        let playback = self.playback.as_ref()?;
        if let Some(pending) = &playback.pending {
            return Some((pending.seconds, pending.play));
        }
        playback.loaded?;
        let rate = playback.output.sample_rate();
        Some((position_seconds(playback, rate), playback.transport.playing()))
    }

    pub fn set_looping(&mut self, looping: bool) {
        self.looping = looping;
        self.sync_player();
        self.send_loop(looping, self.selection);
    }

    /// Shows (and plays) A, the clip before, or B, the newest.
    pub fn show_previous(&mut self, previous: bool) {
        self.showing_previous = previous && self.previous.is_some();
        self.sync_player();
    }

    pub fn set_selection(&mut self, selection: Option<Selection>) {
        self.selection = selection;
        self.send_loop(self.looping, selection);
    }

    /// The task the inspector's method makes of the shown clip and selection, or why it cannot.
    pub fn task(&self) -> Result<crate::protocol::AudioTask, String> {
        use crate::protocol::AudioTask;
        let source = self.shown().map(|c| Arc::clone(&c.clip.samples));
        let settings = &self.settings;
        let need = || source.clone().ok_or_else(|| "open or generate a clip first".to_string());
        Ok(match settings.method {
            AudioMethod::Generate => AudioTask::Generate,
            AudioMethod::Transform => AudioTask::Transform { source: need()?, strength: settings.strength },
            AudioMethod::Regenerate => {
                let selection =
                    self.selection.ok_or("drag over the spectrogram to select what to regenerate")?;
                AudioTask::Inpaint {
                    source: need()?,
                    start: selection.start,
                    end: selection.end,
                    band: selection.band,
                    strength: settings.strength.max(0.05),
                }
            }
            AudioMethod::Continue => AudioTask::Continue { source: need()? },
            AudioMethod::Loop => AudioTask::Loop { source },
            AudioMethod::Interpolate => AudioTask::Interpolate {
                to_prompt: settings.to_prompt.clone(),
                to_seed: settings.to_seed,
                clips: settings.clips,
            },
        })
    }

    /// The inspector: method, prompts, sampler, Run.
    /// `progress`: the running job's step and steps, if one runs.
    pub fn inspector_ui(
        &mut self,
        ui: &mut egui::Ui,
        model: &str,
        progress: Option<(usize, usize)>,
        actions: &mut Vec<AudioAction>,
    ) {
        ui.heading("Audio");
        ui.horizontal(|ui| {
            ui.label(format!("Model: {model}"));
            if ui
                .small_button("Change…")
                .on_hover_text("A diffusers folder: the music model, Riffusion, …")
                .clicked()
            {
                actions.push(AudioAction::ShowModelDialog);
            }
        });
        ui.separator();
        let label = ui.label("Method");
        egui::ComboBox::from_id_salt("audio method")
            .selected_text(self.settings.method.name())
            .show_ui(ui, |ui| {
                for method in AudioMethod::ALL {
                    ui.selectable_value(&mut self.settings.method, method, method.name());
                }
            })
            .response
            .labelled_by(label.id);
        let text = !self.unconditional;
        if !text {
            ui.label("An unconditional model: the seed (and the source clip) decide what plays; prompts are not used.");
        }
        let label = ui.label("Prompt");
        ui.add_enabled(text, egui::TextEdit::multiline(&mut self.settings.prompt).desired_rows(2))
            .labelled_by(label.id);
        let label = ui.label("Negative prompt");
        ui.add_enabled(text, egui::TextEdit::singleline(&mut self.settings.negative_prompt))
            .labelled_by(label.id);
        let method = self.settings.method;
        if matches!(method, AudioMethod::Transform | AudioMethod::Regenerate) {
            let label = ui.label("Strength");
            ui.add(egui::Slider::new(&mut self.settings.strength, 0.05..=1.0)).labelled_by(label.id);
        }
        if method == AudioMethod::Interpolate {
            let label = ui.label("To prompt");
            ui.add_enabled(text, egui::TextEdit::singleline(&mut self.settings.to_prompt))
                .labelled_by(label.id);
            ui.horizontal(|ui| {
                let label = ui.label("To seed");
                ui.add(egui::DragValue::new(&mut self.settings.to_seed)).labelled_by(label.id);
                let label = ui.label("Clips");
                ui.add(egui::DragValue::new(&mut self.settings.clips).range(2..=16)).labelled_by(label.id);
            });
        }
        ui.horizontal(|ui| {
            let label = ui.label("Steps");
            ui.add(egui::DragValue::new(&mut self.settings.steps).range(1..=150)).labelled_by(label.id);
            let label = ui.label("Guidance");
            ui.add(egui::DragValue::new(&mut self.settings.guidance).range(1.0..=20.0).speed(0.1))
                .labelled_by(label.id);
        });
        ui.horizontal(|ui| {
            let label = ui.label("Seed");
            ui.add(egui::DragValue::new(&mut self.settings.seed)).labelled_by(label.id);
            ui.checkbox(&mut self.settings.random_seed, "Random");
        });
        let label = ui.label("Griffin-Lim iterations");
        ui.add(egui::DragValue::new(&mut self.settings.iterations).range(1..=256)).labelled_by(label.id);
        match method {
            AudioMethod::Regenerate => {
                let text = match self.selection {
                    Some(s) => match s.band {
                        Some((low, high)) => {
                            format!("Selection: {:.2}-{:.2} s, {low:.0}-{high:.0} Hz", s.start, s.end)
                        }
                        None => format!("Selection: {:.2}-{:.2} s", s.start, s.end),
                    },
                    None => "Drag over the spectrogram to select (Shift: a frequency band too)".into(),
                };
                ui.label(text);
            }
            AudioMethod::Loop if self.shown().is_none() => {
                ui.label("No clip yet: a clip is generated from the prompt, then looped");
            }
            _ => {}
        }
        ui.separator();
        let task = self.task();
        let run = ui.add_enabled(task.is_ok(), egui::Button::new(RichText::new("Run").strong()));
        let run = match &task {
            Err(reason) => run.on_disabled_hover_text(reason.as_str()),
            Ok(_) => run.on_hover_text("Ctrl+Enter"),
        };
        if let Some((step, of)) = progress {
            let share = if of == 0 { 0.0 } else { step as f32 / of as f32 };
            ui.add(egui::ProgressBar::new(share).text(format!("step {step} of {of} (Esc cancels)")));
        }
        if run.clicked()
            && let Ok(task) = task
        {
            if self.settings.random_seed {
                self.settings.seed = rand::random::<u32>().into();
            }
            actions.push(AudioAction::Run { task, settings: Box::new(self.settings.clone()) });
        }
    }

    /// The toolbar, rulers, spectrogram and waveform.
    pub fn central_ui(&mut self, ui: &mut egui::Ui, actions: &mut Vec<AudioAction>) {
        if self.poll_pending() {
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(20));
        }
        // keys: space plays and pauses (outside text fields)
        let typing = ui.ctx().egui_wants_keyboard_input();
        if !typing && ui.input(|i| i.key_pressed(egui::Key::Space)) && self.shown().is_some() {
            self.toggle_play();
        }
        ui.horizontal(|ui| {
            if ui.button("Open WAV…").clicked() {
                actions.push(AudioAction::ShowOpenDialog);
            }
            let has = self.shown().is_some();
            if ui.add_enabled(has, egui::Button::new("Export WAV…")).clicked() {
                actions.push(AudioAction::ShowExportDialog);
            }
            ui.separator();
            let playing = self.playhead().is_some_and(|(_, playing)| playing);
            let label = if playing { "Pause" } else { "Play" };
            if ui.add_enabled(has, egui::Button::new(label)).on_hover_text("Space").clicked() {
                self.toggle_play();
            }
            let mut looping = self.looping;
            if ui
                .checkbox(&mut looping, "Loop")
                .on_hover_text("Loop the selection, or the whole clip")
                .changed()
            {
                self.set_looping(looping);
            }
            let has_a = self.previous.is_some();
            let mut a = self.showing_previous;
            if ui
                .add_enabled(has_a, egui::Checkbox::new(&mut a, "A/B: before"))
                .on_hover_text("Show and play the clip before the last result")
                .changed()
            {
                self.show_previous(a);
            }
            if ui.add_enabled(has, egui::Button::new("Fit")).clicked()
                && let Some(clip) = self.shown()
            {
                self.view = TimeView::whole(clip.seconds());
            }
            if self.selection.is_some() && ui.button("Clear selection").clicked() {
                self.set_selection(None);
            }
            if let Some((seconds, _)) = self.playhead() {
                ui.monospace(format!("{seconds:6.2} s"));
            }
        });
        if !self.output_status.is_empty() {
            ui.label(RichText::new(&self.output_status).weak());
        }
        let Some(clip) = self.shown().cloned() else {
            ui.centered_and_justified(|ui| {
                ui.label("Generate a clip from a prompt (the inspector's Run), or open a WAV file");
            });
            return;
        };
        let duration = clip.seconds();
        let available = ui.available_size();
        let ruler = 46.0;
        let (time_ruler, _) = ui.allocate_exact_size(Vec2::new(available.x, 18.0), Sense::hover());
        let height = (available.y - 18.0 - 90.0).max(80.0);
        let (area, _) = ui.allocate_exact_size(Vec2::new(available.x, height), Sense::hover());
        let spectrogram = Rect::from_min_max(Pos2::new(area.min.x + ruler, area.min.y), area.max);
        let (wave_area, _) = ui.allocate_exact_size(Vec2::new(available.x, 80.0), Sense::hover());
        let waveform =
            Rect::from_min_max(Pos2::new(wave_area.min.x + ruler, wave_area.min.y + 4.0), wave_area.max);
        self.spectrogram_rect = spectrogram;
        self.waveform_rect = waveform;
        let time_ruler =
            Rect::from_min_max(Pos2::new(time_ruler.min.x + ruler, time_ruler.min.y), time_ruler.max);
        // interaction: wheel zooms (Ctrl) or scrolls, click seeks, drag selects
        let response = ui.interact(
            spectrogram.union(waveform),
            ui.scope_id().with("audio view"),
            Sense::click_and_drag(),
        );
        if response.hovered() {
            let (scroll, zoom, pointer) =
                ui.input(|i| (i.smooth_scroll_delta, i.zoom_delta(), i.pointer.hover_pos()));
            if let Some(pointer) = pointer {
                if zoom != 1.0 {
                    self.view.zoom_at(f64::from(zoom), pointer.x, spectrogram, duration);
                } else if scroll.y != 0.0 || scroll.x != 0.0 {
                    let amount =
                        f64::from(-(scroll.x + scroll.y)) / f64::from(spectrogram.width()) * self.view.span;
                    self.view.scroll(amount, duration);
                }
            }
        }
        if response.clicked()
            && let Some(at) = response.interact_pointer_pos()
        {
            self.seek(self.view.seconds_at(at.x, spectrogram).clamp(0.0, duration));
        }
        // a drag starts where the button went down, not where it was noticed
        if response.drag_started()
            && let Some(at) = ui.input(|i| i.pointer.press_origin()).or(response.interact_pointer_pos())
        {
            let shift = ui.input(|i| i.modifiers.shift);
            let hz = (shift && spectrogram.contains(at))
                .then(|| spectrogram_view::frequency_at(at.y, spectrogram, &clip.clip.row_hz))
                .flatten();
            self.drag_from = Some((self.view.seconds_at(at.x, spectrogram).clamp(0.0, duration), hz));
        }
        if response.dragged()
            && let (Some((from, from_hz)), Some(at)) = (self.drag_from, response.interact_pointer_pos())
        {
            let at = spectrogram_view::clamp_to(spectrogram.union(waveform), at);
            let to = self.view.seconds_at(at.x, spectrogram).clamp(0.0, duration);
            let band = from_hz.and_then(|low| {
                let high = spectrogram_view::frequency_at(
                    at.y.min(spectrogram.max.y),
                    spectrogram,
                    &clip.clip.row_hz,
                )?;
                Some((low.min(high), low.max(high)))
            });
            if (to - from).abs() > 0.01 {
                self.set_selection(Some(Selection { start: from.min(to), end: from.max(to), band }));
            }
        }
        if response.drag_stopped() {
            // a press held without moving is a click: it seeks
            if let (Some((from, _)), Some(at)) = (self.drag_from, response.interact_pointer_pos())
                && (self.view.seconds_at(at.x, spectrogram).clamp(0.0, duration) - from).abs() <= 0.01
            {
                self.seek(from);
            }
            self.drag_from = None;
        }
        // the playhead follows playback
        let playhead = self.playhead();
        if let Some((seconds, true)) = playhead {
            self.view.follow(seconds, duration);
            ui.ctx().request_repaint();
        }
        self.draw(ui, &clip, spectrogram, waveform, time_ruler, area, playhead);
    }

    #[allow(clippy::too_many_arguments)]
    fn draw(
        &mut self,
        ui: &mut egui::Ui,
        clip: &RoomClip,
        spectrogram: Rect,
        waveform: Rect,
        time_ruler: Rect,
        area: Rect,
        playhead: Option<(f64, bool)>,
    ) {
        let painter = ui.painter().clone();
        let columns = clip.grey.width().max(1) as f64;
        let column_seconds = clip.clip.hop as f64 / f64::from(clip.clip.sample_rate.max(1));
        // texture u of a second: column centres at multiples of the hop
        let u_of = |seconds: f64| ((seconds / column_seconds + 0.5) / columns) as f32;
        let uv = [u_of(self.view.start), u_of(self.view.start + self.view.span)];
        let selection_uv = self.selection.map(|s| {
            let (v0, v1) = match s.band {
                Some((low, high)) => {
                    let top = spectrogram_view::y_of_frequency(high, spectrogram, &clip.clip.row_hz);
                    let bottom = spectrogram_view::y_of_frequency(low, spectrogram, &clip.clip.row_hz);
                    let v = |y: f32| (y - spectrogram.min.y) / spectrogram.height().max(1.0);
                    (v(top.min(bottom)), v(top.max(bottom)))
                }
                None => (0.0, 1.0),
            };
            [u_of(s.start), u_of(s.end), v0, v1]
        });
        if self.gpu {
            let callback = SpectrogramCallback::new(
                clip.id,
                Arc::clone(&clip.grey),
                spectrogram,
                uv,
                selection_uv,
                ui.ctx().pixels_per_point(),
            );
            painter.add(eframe::egui_wgpu::Callback::new_paint_callback(spectrogram, callback));
        } else {
            if self.texture.as_ref().is_none_or(|(id, _)| *id != clip.id) {
                let texture = ui.ctx().load_texture(
                    format!("spectrogram {}", clip.id),
                    spectrogram_view::coloured(&clip.grey),
                    egui::TextureOptions::LINEAR,
                );
                self.texture = Some((clip.id, texture));
            }
            if let Some((_, texture)) = &self.texture {
                let uv_rect = Rect::from_min_max(Pos2::new(uv[0], 0.0), Pos2::new(uv[1], 1.0));
                painter.image(texture.id(), spectrogram, uv_rect, Color32::WHITE);
            }
            if let Some([u0, u1, v0, v1]) = selection_uv {
                let x = |u: f32| spectrogram.min.x + (u - uv[0]) / (uv[1] - uv[0]) * spectrogram.width();
                let rect = Rect::from_min_max(
                    Pos2::new(x(u0), spectrogram.min.y + v0 * spectrogram.height()),
                    Pos2::new(x(u1), spectrogram.min.y + v1 * spectrogram.height()),
                )
                .intersect(spectrogram);
                painter.rect_filled(rect, 0.0, Color32::from_rgba_unmultiplied(140, 200, 255, 60));
            }
        }
        let text = ui.visuals().text_color();
        let font = egui::FontId::monospace(10.0);
        // the time ruler
        let step = spectrogram_view::tick_step(self.view.span, spectrogram.width(), 70.0);
        let mut tick = (self.view.start / step).ceil() * step;
        while tick <= self.view.start + self.view.span + 1e-9 {
            let x = self.view.x_of(tick, spectrogram);
            painter.line_segment(
                [Pos2::new(x, time_ruler.max.y - 5.0), Pos2::new(x, time_ruler.max.y)],
                Stroke::new(1.0, text),
            );
            painter.text(
                Pos2::new(x + 2.0, time_ruler.min.y),
                egui::Align2::LEFT_TOP,
                format!("{tick:.2} s"),
                font.clone(),
                text,
            );
            tick += step;
        }
        // the frequency ruler: a label every ~24 points
        let rows = clip.clip.row_hz.len();
        if rows > 0 {
            let every = ((24.0 / (spectrogram.height() / rows as f32)).ceil() as usize).max(1);
            for row in (0..rows).step_by(every) {
                let y = spectrogram.min.y + (row as f32 + 0.5) / rows as f32 * spectrogram.height();
                let hz = clip.clip.row_hz[row];
                let label = if hz >= 1000.0 { format!("{:.1}k", hz / 1000.0) } else { format!("{hz:.0}") };
                painter.text(
                    Pos2::new(area.min.x + 2.0, y),
                    egui::Align2::LEFT_CENTER,
                    label,
                    font.clone(),
                    text,
                );
            }
        }
        // the waveform's envelope
        painter.rect_filled(waveform, 0.0, Color32::from_gray(24));
        let columns = waveform.width().max(1.0) as usize;
        let envelope = spectrogram_view::envelope(
            &clip.clip.samples,
            clip.clip.sample_rate,
            self.view.start,
            self.view.start + self.view.span,
            columns,
        );
        let middle = waveform.center().y;
        let half = waveform.height() / 2.0;
        for (c, (low, high)) in envelope.iter().enumerate() {
            let x = waveform.min.x + c as f32 + 0.5;
            painter.line_segment(
                [Pos2::new(x, middle - high * half), Pos2::new(x, middle - low * half + 0.5)],
                Stroke::new(1.0, Color32::from_rgb(120, 190, 240)),
            );
        }
        if let Some(selection) = self.selection {
            let rect = Rect::from_min_max(
                Pos2::new(self.view.x_of(selection.start, waveform), waveform.min.y),
                Pos2::new(self.view.x_of(selection.end, waveform), waveform.max.y),
            )
            .intersect(waveform);
            painter.rect_filled(rect, 0.0, Color32::from_rgba_unmultiplied(140, 200, 255, 40));
        }
        // the playhead over both
        if let Some((seconds, _)) = playhead {
            let x = self.view.x_of(seconds, spectrogram);
            if (spectrogram.min.x..=spectrogram.max.x).contains(&x) {
                let stroke = Stroke::new(1.5, Color32::WHITE);
                painter
                    .line_segment([Pos2::new(x, spectrogram.min.y), Pos2::new(x, spectrogram.max.y)], stroke);
                painter.line_segment([Pos2::new(x, waveform.min.y), Pos2::new(x, waveform.max.y)], stroke);
            }
        }
        let side = if self.showing_previous { "A (before)" } else { "B" };
        painter.text(
            spectrogram.right_top() + Vec2::new(-6.0, 4.0),
            egui::Align2::RIGHT_TOP,
            format!("{side}: {} ({:.2} s, {} preset)", clip.label, clip.seconds(), clip.clip.preset),
            egui::FontId::proportional(12.0),
            Color32::WHITE,
        );
    }
}

fn position_seconds(playback: &Playback, rate: u32) -> f64 {
    playback.transport.position() as f64 / f64::from(rate.max(1))
}
