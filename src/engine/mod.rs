//! The engine thread: the only place that imports `tch`. It owns the device and the models, runs
//! one job at a time from its queue, and answers every job with `Done`, `Failed` or `Cancelled`:
//! a panic inside a job is caught and reported, and the thread goes on serving.

pub mod attention_control;
pub mod audio_diffusion;
pub mod bench;
pub mod device;
pub mod image_tensor;
pub mod loading;
pub mod methods;
pub mod models;
pub mod pipeline;
pub mod sampler;
pub mod schedulers;
pub mod spectrogram;
pub mod training;
pub mod vae_round_trip;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::protocol::{
    DeviceChoice, DeviceReport, EngineEvent, EngineRequest, ImageData, Job, JobId, JobOutput, ModelRef,
    Priority,
};

/// Called after every event the engine sends, so that the UI repaints (egui's
/// `Context::request_repaint`); the CLI passes a no-op.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// How a job ends other than with an output.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cancelled")]
    Cancelled,
    /// Says what happened and what to do about it.
    #[error("{0}")]
    Failed(String),
}

impl From<tch::TchError> for JobError {
    fn from(error: tch::TchError) -> Self {
        // libtorch appends a C++ backtrace; a person needs the first part only
        let full = error.to_string();
        let text = full.split("\nException raised from").next().unwrap_or(&full).trim_end().to_string();
        if text.contains("out of memory") {
            // libtorch frees the failed allocation; the engine goes on with the next job
            let first_line = text.lines().next().unwrap_or_default();
            JobError::Failed(format!(
                "the device ran out of memory ({first_line}); try a smaller size, fewer images at once, \
                 --dtype f16, or the CPU (--device cpu)"
            ))
        } else {
            JobError::Failed(format!("tensor operation failed: {text}"))
        }
    }
}

impl From<schedulers::SchedulerError> for JobError {
    fn from(error: schedulers::SchedulerError) -> Self {
        JobError::Failed(error.to_string())
    }
}

/// What runs jobs on the engine thread. The real one is [`TorchRunner`]; tests plug in others to
/// exercise the queue, cancellation and panic handling.
pub trait JobRunner {
    fn device_report(&self) -> DeviceReport;
    fn run(&mut self, job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError>;
    /// Frees whatever model is loaded.
    fn unload(&mut self) {}
}

/// A running job's line to the outside: progress events, and cancellation checks between steps.
pub struct JobContext<'a> {
    id: JobId,
    requests: &'a Receiver<EngineRequest>,
    queue: &'a mut VecDeque<Queued>,
    events: &'a EventSink,
    shutdown_requested: bool,
    unload_requested: bool,
}

impl JobContext<'_> {
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Reports that `step` of `of` is done, with an optional preview image.
    pub fn progress(&self, step: usize, of: usize, preview: Option<ImageData>) {
        self.events.send(EngineEvent::Progress { job: self.id, step, of, preview });
    }

    /// Says that a model was loaded for this job, and what it is.
    pub fn model_loaded(&self, description: String, native_size: (u32, u32)) {
        self.events.send(EngineEvent::ModelLoaded { job: self.id, description, native_size });
    }

    /// Reads the requests that arrived meanwhile; returns `Err(Cancelled)` if this job was
    /// cancelled or the engine is shutting down. Jobs call this between steps.
    pub fn checkpoint(&mut self) -> Result<(), JobError> {
        loop {
            match self.requests.try_recv() {
                Ok(request) => {
                    let effect = handle_request(request, self.queue, self.events);
                    match effect {
                        RequestEffect::Cancel(id) if id == self.id => return Err(JobError::Cancelled),
                        RequestEffect::Shutdown => {
                            self.shutdown_requested = true;
                            return Err(JobError::Cancelled);
                        }
                        RequestEffect::Unload => self.unload_requested = true,
                        _ => {}
                    }
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    self.shutdown_requested = true;
                    return Err(JobError::Cancelled);
                }
            }
        }
    }
}

/// Sends events and wakes whoever listens.
struct EventSink {
    sender: Sender<EngineEvent>,
    waker: Waker,
}

impl EventSink {
    fn send(&self, event: EngineEvent) {
        // The receiver is gone only when the UI or CLI has ended; nothing is left to tell.
        let _ = self.sender.send(event);
        (self.waker)();
    }
}

enum RequestEffect {
    None,
    Cancel(JobId),
    Unload,
    Shutdown,
}

/// A job waiting its turn.
struct Queued {
    id: JobId,
    job: Job,
    priority: Priority,
}

/// Applies a request to the queue; a cancel of a queued job is answered here.
fn handle_request(request: EngineRequest, queue: &mut VecDeque<Queued>, events: &EventSink) -> RequestEffect {
    match request {
        EngineRequest::Run { id, job, priority } => {
            let queued = Queued { id, job: *job, priority };
            match priority {
                Priority::Batch => queue.push_back(queued),
                Priority::Interactive => {
                    let at = queue.iter().take_while(|q| q.priority == Priority::Interactive).count();
                    queue.insert(at, queued);
                }
            }
            RequestEffect::None
        }
        EngineRequest::LoadModel { id, model } => {
            queue.push_back(Queued { id, job: Job::LoadModel(model), priority: Priority::Batch });
            RequestEffect::None
        }
        EngineRequest::Unload => RequestEffect::Unload,
        EngineRequest::Cancel(id) => {
            if let Some(position) = queue.iter().position(|queued| queued.id == id) {
                queue.remove(position);
                events.send(EngineEvent::Cancelled { job: id });
            }
            RequestEffect::Cancel(id)
        }
        EngineRequest::Shutdown => RequestEffect::Shutdown,
    }
}

/// The UI's or CLI's handle on the engine thread.
pub struct EngineHandle {
    requests: Sender<EngineRequest>,
    events: Receiver<EngineEvent>,
    next_id: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread with libtorch on `device`.
    pub fn spawn(device: DeviceChoice, waker: Waker) -> Self {
        Self::spawn_with(move || TorchRunner::new(device), waker)
    }

    /// Starts the engine thread with the runner that `make_runner` builds on that thread.
    pub fn spawn_with<R, F>(make_runner: F, waker: Waker) -> Self
    where
        R: JobRunner,
        F: FnOnce() -> (R, Option<String>) + Send + 'static,
    {
        let (request_tx, request_rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        let sink = EventSink { sender: event_tx, waker };
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || worker(make_runner, request_rx, sink))
            .ok();
        Self { requests: request_tx, events: event_rx, next_id: AtomicU64::new(1), thread }
    }

    /// Queues `job` behind the others and returns its id.
    pub fn submit(&self, job: Job) -> JobId {
        self.submit_with(job, Priority::Batch)
    }

    /// Queues `job` ahead of the batch jobs (previews a person waits on).
    pub fn submit_interactive(&self, job: Job) -> JobId {
        self.submit_with(job, Priority::Interactive)
    }

    fn submit_with(&self, job: Job, priority: Priority) -> JobId {
        let id = self.next_id();
        self.send(EngineRequest::Run { id, job: Box::new(job), priority });
        id
    }

    /// Loads `model` ahead of the jobs that use it; its events carry the returned id.
    pub fn load_model(&self, model: ModelRef) -> JobId {
        let id = self.next_id();
        self.send(EngineRequest::LoadModel { id, model });
        id
    }

    /// Frees the loaded model after the running job.
    pub fn unload(&self) {
        self.send(EngineRequest::Unload);
    }

    fn next_id(&self) -> JobId {
        JobId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn cancel(&self, id: JobId) {
        self.send(EngineRequest::Cancel(id));
    }

    fn send(&self, request: EngineRequest) {
        if self.requests.send(request).is_err() {
            tracing::error!("the engine thread has ended; request dropped");
        }
    }

    /// The events, in order. Drain with `try_recv` (UI) or `recv` (CLI).
    pub fn events(&self) -> &Receiver<EngineEvent> {
        &self.events
    }

    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the engine to stop after its current step and waits for it.
    pub fn shutdown(mut self) {
        let _ = self.requests.send(EngineRequest::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.requests.send(EngineRequest::Shutdown);
    }
}

fn worker<R, F>(make_runner: F, requests: Receiver<EngineRequest>, events: EventSink)
where
    R: JobRunner,
    F: FnOnce() -> (R, Option<String>),
{
    let (mut runner, warning) = make_runner();
    if let Some(message) = warning {
        events.send(EngineEvent::DeviceWarning { message });
    }
    events.send(EngineEvent::Ready { device: runner.device_report() });
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut unload_requested = false;
    loop {
        // 1. wait for work, applying cancels to the queue; unload between jobs
        loop {
            if std::mem::take(&mut unload_requested) {
                runner.unload();
                events.send(EngineEvent::Unloaded);
            }
            if !queue.is_empty() {
                break;
            }
            let Ok(request) = requests.recv() else { return };
            match handle_request(request, &mut queue, &events) {
                RequestEffect::Shutdown => return,
                RequestEffect::Unload => unload_requested = true,
                RequestEffect::None | RequestEffect::Cancel(_) => {}
            }
        }
        let Some(Queued { id, job, .. }) = queue.pop_front() else { continue };
        // 2. run it, turning panics into failures
        events.send(EngineEvent::Started { job: id });
        let mut ctx = JobContext {
            id,
            requests: &requests,
            queue: &mut queue,
            events: &events,
            shutdown_requested: false,
            unload_requested: false,
        };
        let result = catch_unwind(AssertUnwindSafe(|| runner.run(&job, &mut ctx)));
        let shutdown = ctx.shutdown_requested;
        unload_requested |= ctx.unload_requested;
        // 3. answer
        let event = match result {
            Ok(Ok(output)) => EngineEvent::Done { job: id, output },
            Ok(Err(JobError::Cancelled)) => EngineEvent::Cancelled { job: id },
            Ok(Err(JobError::Failed(message))) => EngineEvent::Failed { job: id, message },
            Err(panic) => EngineEvent::Failed {
                job: id,
                message: format!(
                    "{} failed with an internal error: {}. The engine is still running; \
                     please report this with the steps that led to it.",
                    job.label(),
                    panic_message(panic.as_ref())
                ),
            },
        };
        events.send(event);
        if shutdown {
            return;
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Guards libtorch's default CPU generator for the length of a job.
static DEFAULT_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds libtorch's default CPU generator until dropped. Jobs hold it from seeding to their last
/// draw; code outside the engine that draws from it — building a module initialises its weights
/// randomly — must hold it too, or a job running meanwhile in the same process loses its seed.
pub fn default_generator_lock() -> std::sync::MutexGuard<'static, ()> {
    DEFAULT_GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs jobs with libtorch on one device, keeping the last model loaded.
pub struct TorchRunner {
    device: tch::Device,
    model: Option<Loaded>,
}

/// A loaded model: a Stable Diffusion pipeline (every method), or an audio-diffusion one (audio
/// jobs only).
enum Loaded {
    StableDiffusion(Box<pipeline::StableDiffusion>),
    AudioDiffusion(Box<audio_diffusion::AudioDiffusion>),
}

impl Loaded {
    fn is(
        &self,
        path: &std::path::Path,
        options: &crate::protocol::ModelOptions,
        precision: crate::protocol::Precision,
    ) -> bool {
        match self {
            Loaded::StableDiffusion(model) => {
                model.source == path && model.options == *options && model.precision == precision
            }
            Loaded::AudioDiffusion(model) => model.source == path && model.precision == precision,
        }
    }
}

impl TorchRunner {
    /// Sets up `choice`, falling back to the CPU with a warning when it is not available.
    pub fn new(choice: DeviceChoice) -> (Self, Option<String>) {
        match device::select(choice) {
            Ok(device) => (Self { device, model: None }, None),
            Err(message) => (
                Self { device: tch::Device::Cpu, model: None },
                Some(format!("{message}; running on the CPU instead")),
            ),
        }
    }
}

impl TorchRunner {
    /// The model at `path` (folder or single file) with `options` in `precision`, loading it
    /// unless it is the one already loaded.
    fn load(
        &mut self,
        path: &std::path::Path,
        options: &crate::protocol::ModelOptions,
        precision: crate::protocol::Precision,
        ctx: &JobContext<'_>,
    ) -> Result<&Loaded, JobError> {
        if !self.model.as_ref().is_some_and(|model| model.is(path, options, precision)) {
            self.model = None; // free the old one first
            let failed = |error: loading::LoadError| JobError::Failed(error.to_string());
            let model = if crate::catalog::is_audio_diffusion(path) {
                let model = audio_diffusion::AudioDiffusion::from_folder(path, self.device, precision)
                    .map_err(failed)?;
                ctx.model_loaded(model.describe(), model.native_size());
                Loaded::AudioDiffusion(Box::new(model))
            } else {
                let model =
                    pipeline::StableDiffusion::load(path, options, self.device, precision).map_err(failed)?;
                ctx.model_loaded(model.describe(), model.native_size());
                Loaded::StableDiffusion(Box::new(model))
            };
            self.model = Some(model);
        }
        self.model.as_ref().ok_or_else(|| JobError::Failed("the model did not stay loaded".into()))
    }

    /// [`Self::load`] for the image methods, which need a Stable Diffusion model.
    fn load_model(
        &mut self,
        path: &std::path::Path,
        options: &crate::protocol::ModelOptions,
        precision: crate::protocol::Precision,
        ctx: &JobContext<'_>,
    ) -> Result<&pipeline::StableDiffusion, JobError> {
        match self.load(path, options, precision, ctx)? {
            Loaded::StableDiffusion(model) => Ok(model),
            Loaded::AudioDiffusion(_) => Err(JobError::Failed(format!(
                "{} is an audio-diffusion model (unconditional mel spectrograms): it makes audio only; \
                 use it from the audio room or `audio` commands, and a Stable Diffusion model for images",
                path.display()
            ))),
        }
    }
}

impl JobRunner for TorchRunner {
    fn device_report(&self) -> DeviceReport {
        device::report(self.device)
    }

    fn unload(&mut self) {
        self.model = None;
    }

    fn run(&mut self, job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError> {
        let _no_grad = tch::no_grad_guard();
        // Seeds go through libtorch's one default CPU generator; engines in one process (tests)
        // take turns so that no job's draws interleave with another's.
        let _generator = default_generator_lock();
        match job {
            Job::ForwardNoise { image, strength, steps, seed } => {
                methods::forward_noise::run(self.device, image, *strength, *steps, *seed, ctx)
                    .map(JobOutput::Image)
            }
            Job::Generate(params) => self
                .load_model(&params.model, &params.model_options, params.precision, ctx)?
                .generate(params, ctx)
                .map(JobOutput::Image),
            Job::Img2Img(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::img2img::run(model, params, ctx).map(JobOutput::Image)
            }
            Job::Inpaint(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::inpaint::run(model, params, ctx).map(JobOutput::Image)
            }
            Job::Invert(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::inversion::run(model, params, ctx)
                    .map(|inversion| JobOutput::Inversion(Box::new(inversion)))
            }
            // a spectrogram alone, of a named preset, needs no model
            Job::Audio(crate::protocol::AudioParams {
                preset,
                task: crate::protocol::AudioTask::Analyse { source },
                ..
            }) if !preset.is_empty() => {
                methods::audio::analyse(preset, source, self.device).map(JobOutput::Audio)
            }
            Job::Audio(params) => {
                let base = &params.base;
                let model: &dyn methods::audio::SpectrogramModel =
                    match self.load(&base.model, &base.model_options, base.precision, ctx)? {
                        Loaded::StableDiffusion(model) => model.as_ref(),
                        Loaded::AudioDiffusion(model) => model.as_ref(),
                    };
                methods::audio::run(model, params, ctx).map(JobOutput::Audio)
            }
            Job::DiffEdit(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::diffedit::run(model, params, ctx).map(JobOutput::Images)
            }
            Job::PaintWithWords(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::paint_with_words::run(model, params, ctx).map(JobOutput::Images)
            }
            Job::MagicMix(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::magic_mix::run(model, params, ctx).map(JobOutput::Image)
            }
            Job::InstructPix2Pix(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::instruct_pix2pix::run(model, params, ctx).map(JobOutput::Image)
            }
            Job::LoadModel(model) => {
                Ok(JobOutput::Loaded(match self.load(&model.path, &model.options, model.precision, ctx)? {
                    Loaded::StableDiffusion(model) => model.describe(),
                    Loaded::AudioDiffusion(model) => model.describe(),
                }))
            }
            Job::PromptToPrompt(params) => {
                let base = &params.base;
                let model = self.load_model(&base.model, &base.model_options, base.precision, ctx)?;
                methods::prompt_to_prompt::run(model, params, ctx).map(JobOutput::Images)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A runner whose jobs do `steps` steps of nothing, or panic when `strength` is negative.
    struct FakeRunner;

    impl JobRunner for FakeRunner {
        fn device_report(&self) -> DeviceReport {
            DeviceReport { name: "fake".into(), description: "fake".into(), cuda_devices: 0 }
        }

        fn run(&mut self, job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError> {
            let Job::ForwardNoise { image, strength, steps, .. } = job else {
                return Err(JobError::Failed("the fake runner only runs forward-noise jobs".into()));
            };
            assert!(*strength >= 0.0, "negative strength reached the runner");
            for step in 1..=*steps {
                ctx.checkpoint()?;
                std::thread::sleep(Duration::from_millis(20));
                ctx.progress(step, *steps, None);
            }
            Ok(JobOutput::Image(image.clone()))
        }
    }

    fn job(strength: f32, steps: usize) -> Job {
        let image = ImageData::new(1, 1, vec![0, 0, 0, 255]).expect("1×1 image");
        Job::ForwardNoise { image, strength, steps, seed: 0 }
    }

    fn final_event(engine: &EngineHandle, id: JobId) -> EngineEvent {
        loop {
            let event =
                engine.events().recv_timeout(Duration::from_secs(10)).expect("engine answered in time");
            if event.job() == Some(id) && event.is_final() {
                return event;
            }
        }
    }

    fn fake_engine() -> EngineHandle {
        EngineHandle::spawn_with(|| (FakeRunner, None), Arc::new(|| {}))
    }

    #[test]
    fn a_panicking_job_fails_and_the_next_job_succeeds() {
        let engine = fake_engine();
        let bad = engine.submit(job(-1.0, 1));
        let good = engine.submit(job(0.5, 2));
        match final_event(&engine, bad) {
            EngineEvent::Failed { message, .. } => {
                assert!(message.contains("negative strength"), "{message}");
                assert!(message.contains("still running"), "{message}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(matches!(final_event(&engine, good), EngineEvent::Done { .. }));
        assert!(engine.is_alive());
        engine.shutdown();
    }

    #[test]
    fn cancel_stops_a_running_job_within_one_step() {
        let engine = fake_engine();
        let id = engine.submit(job(0.5, 1000));
        // wait for the first progress event, then cancel
        loop {
            let event = engine.events().recv_timeout(Duration::from_secs(10)).expect("event");
            if matches!(event, EngineEvent::Progress { .. }) {
                break;
            }
        }
        engine.cancel(id);
        let mut steps_after_cancel = 0;
        loop {
            let event = engine.events().recv_timeout(Duration::from_secs(10)).expect("event");
            match event {
                EngineEvent::Progress { .. } => steps_after_cancel += 1,
                EngineEvent::Cancelled { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(steps_after_cancel <= 1, "{steps_after_cancel} steps ran after cancel");
        engine.shutdown();
    }

    #[test]
    fn cancel_removes_a_queued_job() {
        let engine = fake_engine();
        let running = engine.submit(job(0.5, 10));
        let queued = engine.submit(job(0.5, 10));
        engine.cancel(queued);
        assert!(matches!(final_event(&engine, queued), EngineEvent::Cancelled { .. }));
        assert!(matches!(final_event(&engine, running), EngineEvent::Done { .. }));
        engine.shutdown();
    }

    #[test]
    fn interactive_jobs_go_ahead_of_queued_batch_jobs() {
        let engine = fake_engine();
        let running = engine.submit(job(0.5, 5));
        let batch = engine.submit(job(0.5, 1));
        let first_preview = engine.submit_interactive(job(0.5, 1));
        let second_preview = engine.submit_interactive(job(0.5, 1));
        let mut finished = Vec::new();
        while finished.len() < 4 {
            let event = engine.events().recv_timeout(Duration::from_secs(10)).expect("event");
            if let (Some(id), true) = (event.job(), event.is_final()) {
                finished.push(id);
            }
        }
        assert_eq!(finished, [running, first_preview, second_preview, batch]);
        engine.shutdown();
    }

    /// A runner that counts unloads.
    struct CountingRunner(Arc<AtomicU64>);

    impl JobRunner for CountingRunner {
        fn device_report(&self) -> DeviceReport {
            DeviceReport { name: "fake".into(), description: "fake".into(), cuda_devices: 0 }
        }
        fn run(&mut self, job: &Job, ctx: &mut JobContext<'_>) -> Result<JobOutput, JobError> {
            FakeRunner.run(job, ctx)
        }
        fn unload(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn unload_waits_for_the_running_job_then_frees_the_model() {
        let unloads = Arc::new(AtomicU64::new(0));
        let counter = unloads.clone();
        let engine = EngineHandle::spawn_with(move || (CountingRunner(counter), None), Arc::new(|| {}));
        let running = engine.submit(job(0.5, 5));
        engine.unload();
        let mut order = Vec::new();
        while order.len() < 2 {
            match engine.events().recv_timeout(Duration::from_secs(10)).expect("event") {
                EngineEvent::Done { job, .. } if job == running => order.push("done"),
                EngineEvent::Unloaded => order.push("unloaded"),
                _ => {}
            }
        }
        assert_eq!(order, ["done", "unloaded"]);
        assert_eq!(unloads.load(Ordering::SeqCst), 1);
        engine.shutdown();
    }

    #[test]
    fn running_out_of_memory_says_what_to_do() {
        let error = tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB\nmore".into());
        let JobError::Failed(message) = JobError::from(error) else { panic!("a failure") };
        assert!(
            message.contains("ran out of memory (") && message.contains("Tried to allocate 2.00 GiB)"),
            "{message}"
        );
        assert!(message.contains("--dtype f16"), "{message}");
    }

    #[test]
    fn ready_comes_first() {
        let engine = fake_engine();
        let first = engine.events().recv_timeout(Duration::from_secs(10)).expect("event");
        assert!(matches!(first, EngineEvent::Ready { .. }), "{first:?}");
        engine.shutdown();
    }
}
