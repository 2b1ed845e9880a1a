//! The messages between the UI (or CLI) and the engine thread: plain data, no tch, no egui.
//! Every feature of the studio is an [`EngineRequest`]; everything the engine says is an
//! [`EngineEvent`]. See ARCHITECTURE in README.md.

use std::fmt;
use std::sync::Arc;

/// Identifies one job for its whole life: progress, result, failure, cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// An 8-bit RGBA image as plain bytes, shared without copying between threads.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageData {
    pub width: u32,
    pub height: u32,
    /// Row-major RGBA, `width * height * 4` bytes.
    pub rgba: Arc<Vec<u8>>,
}

impl ImageData {
    /// Wraps RGBA bytes, checking that their length fits `width × height`.
    pub fn new(width: u32, height: u32, rgba: Vec<u8>) -> Result<Self, String> {
        let expected = width as usize * height as usize * 4;
        if rgba.len() != expected {
            return Err(format!(
                "image buffer holds {} bytes, a {width}×{height} RGBA image needs {expected}",
                rgba.len()
            ));
        }
        Ok(Self { width, height, rgba: Arc::new(rgba) })
    }

    pub fn from_rgba_image(image: &image::RgbaImage) -> Self {
        Self { width: image.width(), height: image.height(), rgba: Arc::new(image.as_raw().clone()) }
    }

    pub fn to_rgba_image(&self) -> Option<image::RgbaImage> {
        image::RgbaImage::from_raw(self.width, self.height, self.rgba.as_ref().clone())
    }
}

impl fmt::Debug for ImageData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageData({}×{}, {} bytes)", self.width, self.height, self.rgba.len())
    }
}

/// Where the engine runs its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// Parses "auto", "cpu", "cuda" or "cuda:N" (what `--device` and the settings take).
    pub fn from_name(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("'{other}' is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }

    /// The name [`Self::from_name`] reads back.
    pub fn to_name(self) -> String {
        match self {
            Self::Auto => "auto".into(),
            Self::Cpu => "cpu".into(),
            Self::Cuda(index) => format!("cuda:{index}"),
        }
    }
}

/// The number format of the denoiser's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    /// Half precision: the usual choice on CUDA.
    F16,
    /// bfloat16: half the memory with f32's range (CPUs with AVX-512 BF16, recent GPUs).
    Bf16,
}

impl Precision {
    /// The name `from_name` reads.
    pub fn to_name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "f32" | "fp32" => Ok(Self::F32),
            "f16" | "fp16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("'{other}' is not a dtype: use f32, f16 or bf16")),
        }
    }
}

/// Which Stable Diffusion generation a single-file checkpoint is (detected from its keys unless
/// the user says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// SD 1.x: CLIP ViT-L/14 text encoder, 768-wide cross-attention.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder, 1024-wide cross-attention.
    Sd2,
}

impl ModelFamily {
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "sd1" | "sd1.x" | "sd15" | "v1" => Ok(Self::Sd1),
            "sd2" | "sd2.x" | "sd21" | "v2" => Ok(Self::Sd2),
            other => Err(format!("'{other}' is not a model type: use sd1 or sd2")),
        }
    }
}

/// What a model's UNet predicts (the scheduler needs to know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prediction {
    Epsilon,
    /// v-prediction (Salimans & Ho 2022): the SD 2.x 768 models.
    V,
    Sample,
}

impl Prediction {
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "epsilon" | "eps" => Ok(Self::Epsilon),
            "v" | "v-prediction" | "v_prediction" => Ok(Self::V),
            "sample" => Ok(Self::Sample),
            other => Err(format!("'{other}' is not a prediction type: use epsilon, v or sample")),
        }
    }

    /// The name diffusers' `prediction_type` uses.
    pub fn diffusers_name(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::V => "v_prediction",
            Self::Sample => "sample",
        }
    }
}

/// How to load a model: for single-file checkpoints, what to take instead of what is detected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ModelOptions {
    /// SD 1.x or 2.x, instead of the guess from the checkpoint's keys.
    pub family: Option<ModelFamily>,
    /// The UNet's prediction type, instead of the checkpoint's or config's.
    pub prediction: Option<Prediction>,
    /// A diffusers folder whose configs (and tokenizer) describe a single-file checkpoint that is
    /// not a standard SD 1.x/2.x shape.
    pub config: Option<std::path::PathBuf>,
}

/// Text-to-image parameters (the `generate` command and the studio's txt2img).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// A diffusers folder or a single-file `.safetensors` checkpoint.
    pub model: std::path::PathBuf,
    /// Overrides for loading `model`.
    pub model_options: ModelOptions,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// A scheduler name: ddim, ddpm, euler, euler-a, dpm++2m, dpm++2m-karras, heun, lcm.
    pub scheduler: String,
    pub guidance_scale: f64,
    /// φ of guidance rescale (0 = off).
    pub guidance_rescale: f64,
    /// Take the text encoder's output this many layers before the last (AUTOMATIC1111's "clip
    /// skip" minus one; diffusers' `clip_skip`): 0 uses every layer.
    pub clip_skip: usize,
    pub seed: u64,
    /// Pixels; multiples of the model's VAE factor (8 for SD).
    pub width: u32,
    pub height: u32,
    /// The UNet's precision (the text encoder and VAE stay in f32).
    pub precision: Precision,
}

impl GenerateParams {
    /// The parameters as AUTOMATIC1111 writes them into a PNG's `parameters` text chunk.
    pub fn to_infotext(&self) -> String {
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", self.negative_prompt));
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps,
            self.scheduler,
            self.guidance_scale,
            self.seed,
            self.width,
            self.height,
            self.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        if self.guidance_rescale > 0.0 {
            text.push_str(&format!(", CFG rescale: {}", self.guidance_rescale));
        }
        if self.clip_skip > 0 {
            text.push_str(&format!(", Clip skip: {}", self.clip_skip + 1));
        }
        text
    }
}

/// A unit of work for the engine thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Runs an image forward through the DDPM noising process (Ho et al. 2020, linear betas
    /// 0.00085…0.012 over 1000 steps as Stable Diffusion) up to `strength` × 1000 steps, showing
    /// each of `steps` stages: what img2img / SDEdit starts from at that strength.
    ForwardNoise {
        image: ImageData,
        /// Fraction of the schedule to noise to, in (0, 1].
        strength: f32,
        /// How many stages to show (progress events).
        steps: usize,
        seed: u64,
    },
    /// Text to image with a Stable Diffusion model (loaded once, kept for later jobs).
    Generate(GenerateParams),
    /// SDEdit (Meng et al. 2021): the image noised part-way, then denoised towards the prompt.
    Img2Img(Img2ImgParams),
    /// Repaint the masked region from the prompt.
    Inpaint(InpaintParams),
    /// DDIM inversion: the latent trajectory that regenerates the image, and how well it does.
    Invert(InvertParams),
    /// Prompt-to-prompt: the source prompt's image and the target prompt's, with the target's
    /// cross-attention taken from the source's.
    PromptToPrompt(PromptToPromptParams),
    /// Load a model (and keep it for the jobs that follow).
    LoadModel(ModelRef),
    /// InstructPix2Pix: edit an image by an instruction (`base.prompt`).
    InstructPix2Pix(InstructPix2PixParams),
    /// MagicMix: the image's layout, the prompt's content.
    MagicMix(MagicMixParams),
    /// Audio through spectrogram images.
    Audio(AudioParams),
    /// Paint-with-words: painted regions bound to words of the prompt.
    PaintWithWords(PaintWithWordsParams),
    /// DiffEdit: the region where the prompts disagree, repainted with the target prompt.
    DiffEdit(DiffEditParams),
}

/// DiffEdit's default mask noise level: a quarter of the schedule. The paper noises to half, but
/// on the bundled model the disagreement at half spreads a latent cell or two past the object;
/// chosen on held-out images kept apart from the evaluation's (BENCHMARKS.md, DiffEdit mask).
pub const DIFFEDIT_MASK_STRENGTH: f64 = 0.25;
/// DiffEdit's default mask threshold: half the largest disagreement (the paper cuts at half of
/// three times the mean, which grows the mask around small objects).
pub const DIFFEDIT_MASK_THRESHOLD: f64 = 0.5;
/// DiffEdit's default colour tolerance for snapping the mask to the image's edges (joint bilateral
/// upsampling; in [-1, 1] pixel units, summed over RGB; 0 = plain bilinear upsampling). Chosen on
/// held-out images kept apart from the evaluation's (BENCHMARKS.md, DiffEdit mask).
pub const DIFFEDIT_MASK_EDGES: f64 = 0.3;

/// DiffEdit (Couairon et al. 2022): `base.prompt` is the target prompt; the size is the image's.
#[derive(Debug, Clone)]
pub struct DiffEditParams {
    pub base: GenerateParams,
    /// What the image shows now ("a red circle"); the target prompt says what it should.
    pub source_prompt: String,
    pub image: ImageData,
    /// How far to invert before re-denoising (the paper's encoding ratio r; 0.8 by default).
    pub strength: f64,
    /// Noise samples averaged for the mask (10 by default).
    pub mask_samples: usize,
    /// How far the image is noised to estimate the mask ([`DIFFEDIT_MASK_STRENGTH`] by default).
    pub mask_strength: f64,
    /// Where the mask is cut, as a share of the largest disagreement ([`DIFFEDIT_MASK_THRESHOLD`]).
    pub mask_threshold: f64,
    /// How alike in colour a pixel and a latent cell must be for the cell's estimate to reach
    /// the pixel: the estimated mask follows the image's edges ([`DIFFEDIT_MASK_EDGES`]; 0 =
    /// bilinear, the mask blurred across the latent grid).
    pub mask_edges: f64,
    /// A mask to use instead of estimating one (white = edit): the estimated mask, corrected.
    pub mask: Option<ImageData>,
}

/// Paint-with-words (eDiffi): text to image where each region's word attends more inside it.
#[derive(Debug, Clone)]
pub struct PaintWithWordsParams {
    pub base: GenerateParams,
    /// A word of the prompt and its region (white = the word's place), the output's size.
    pub regions: Vec<(String, ImageData)>,
    /// The paper's w: how hard the regions pull (0.4 by default).
    pub strength: f64,
    /// Also return each word's cross-attention map.
    pub attention_maps: bool,
}

/// MagicMix (Liew et al. 2022): `base.prompt` names the new content; the size is the image's.
#[derive(Debug, Clone)]
pub struct MagicMixParams {
    pub base: GenerateParams,
    pub image: ImageData,
    /// Noise levels, as fractions of the steps: the image is noised to `kmax`, and until `kmin`
    /// each step's latents are mixed with the image's noised to that step (the paper: 0.6, 0.3).
    pub kmin: f64,
    pub kmax: f64,
    /// The weight of the generated latents in that mix (the paper's ν; 1 keeps none of the image).
    pub mix_factor: f64,
}

/// InstructPix2Pix: `base.prompt` is the instruction; the size is the image's.
#[derive(Debug, Clone)]
pub struct InstructPix2PixParams {
    pub base: GenerateParams,
    pub image: ImageData,
    /// How strongly the result follows the source image (the paper's s_I; 1.5 by default).
    pub image_guidance_scale: f64,
}

/// Prompt-to-prompt (Hertz et al. 2022): `base.prompt` is the source prompt.
#[derive(Debug, Clone)]
pub struct PromptToPromptParams {
    pub base: GenerateParams,
    pub target_prompt: String,
    /// Fractions of the steps [start, end) in which the target takes the source's
    /// cross-attention (paper: 0 to 0.8).
    pub cross_window: (f64, f64),
    /// Target words with a cross-attention window of their own instead of `cross_window` (the
    /// paper's per-word injection schedules, its App. A: e.g. a swapped word's attention
    /// injected for fewer steps so that the new word can change the shape more).
    pub word_windows: Vec<(String, (f64, f64))>,
    /// Fraction of the first steps in which the target takes the source's self-attention in the
    /// coarse layers (paper: 0.4).
    pub self_window: f64,
    /// Words of the target prompt whose attention is scaled (re-weighting), with the factor.
    pub reweight: Vec<(String, f64)>,
    /// Also return each target word's cross-attention map.
    pub attention_maps: bool,
    /// Local blend: words (of the source or target prompt) whose attention marks the region to
    /// edit; outside it the target keeps the source's latents. Empty: edit everywhere.
    pub local_blend: Vec<String>,
    /// What the source is: a generated image (seeded noise), or a real image inverted.
    pub source: EditSource,
}

/// What a prompt-to-prompt edit starts from.
#[derive(Debug, Clone, Default)]
pub enum EditSource {
    /// The source prompt's image from `base.seed`'s noise.
    #[default]
    Generated,
    /// An inverted real image (an `Invert` job's output or an inversion file): start from its
    /// z_T and sample with DDIM over its steps, with its null-text embeddings if it has them.
    Inversion(Box<Inversion>),
    /// A real image, inverted under the source prompt over `base.steps` first (with null-text
    /// optimisation for `base.guidance_scale` with `null_text` Adam steps per step if given); the engine keeps the inversion, so
    /// later edits of the same image skip it.
    Image { image: ImageData, null_text: Option<usize> },
}

/// An image a job produced, with what it is ("source", "target", "attention: red", …).
#[derive(Debug, Clone)]
pub struct LabelledImage {
    pub label: String,
    pub image: ImageData,
}

/// The label prefix of a word's attention map averaged over the steps ("attention: red").
pub const ATTENTION_LABEL: &str = "attention: ";
/// The label prefix of a word's attention at every step, as a film strip ("attention steps: red"):
/// one grey frame per sampling step, left to right, each [`attention_frame_width`] wide and as
/// tall as the strip, normalised to its own peak.
pub const ATTENTION_STEPS_LABEL: &str = "attention steps: ";

/// The width of one frame of an attention film strip of this height, for an image of this size:
/// the image's aspect ratio, rounded (the engine draws the frames so, the studio cuts them so).
pub fn attention_frame_width(strip_height: u32, image_width: u32, image_height: u32) -> u32 {
    let width = (f64::from(strip_height) * f64::from(image_width) / f64::from(image_height.max(1))).round();
    (width as u32).max(1)
}

/// Cuts an attention film strip into its frames (see [`ATTENTION_STEPS_LABEL`]); None when its
/// width is not a whole number of frames.
pub fn attention_frames(
    strip: &image::RgbaImage,
    image_width: u32,
    image_height: u32,
) -> Option<Vec<image::RgbaImage>> {
    let frame = attention_frame_width(strip.height(), image_width, image_height);
    if strip.height() == 0 || strip.width() == 0 || !strip.width().is_multiple_of(frame) {
        return None;
    }
    let frames = (0..strip.width() / frame)
        .map(|i| image::imageops::crop_imm(strip, i * frame, 0, frame, strip.height()).to_image())
        .collect();
    Some(frames)
}

/// Null-text inversion's Adam steps per sampling step unless asked otherwise. The paper uses up
/// to 10 (with an early stop that a real model often reaches sooner); 6 keeps a null-text
/// inversion within 10 plain generations' time (BENCHMARKS.md) and still reconstructs far better
/// than DDIM inversion alone under guidance (tests/editing.rs).
pub const DEFAULT_NULL_TEXT_STEPS: usize = 6;

/// DDIM inversion of `image` under `base.prompt` over `base.steps` steps (no guidance, as
/// Song et al. invert); the reconstruction then uses `base.guidance_scale` and
/// `base.negative_prompt`, so its PSNR shows what an edit at that guidance starts from.
#[derive(Debug, Clone)]
pub struct InvertParams {
    pub base: GenerateParams,
    pub image: ImageData,
    /// Null-text inversion (Mokady et al. 2022) with this many Adam steps per sampling step
    /// ([`DEFAULT_NULL_TEXT_STEPS`]): optimise an unconditional embedding per step so that
    /// regeneration at `base.guidance_scale` reconstructs the image. None: DDIM inversion only.
    pub null_text: Option<usize>,
}

/// What an inversion produced: plain data, saved and loaded by `document::inversion`.
#[derive(Debug, Clone)]
pub struct Inversion {
    /// The model it was made with (edits must use the same).
    pub model: std::path::PathBuf,
    pub prompt: String,
    pub steps: usize,
    pub width: u32,
    pub height: u32,
    /// (channels, height, width) of one latent.
    pub latent_shape: [usize; 3],
    /// z₀ (the image's latents) … z_T, each `latent_shape` in f32.
    pub trajectory: Vec<Vec<f32>>,
    /// DDIM regeneration from z_T with the prompt.
    pub reconstruction: ImageData,
    /// PSNR of the reconstruction against the image, in dB.
    pub psnr: f64,
    /// PSNR against the VAE's own round trip of the image (decode(z₀)): the inversion's error
    /// without the autoencoder's.
    pub psnr_vae: f64,
    /// Null-text inversion's unconditional embedding per step (77 × width each, flattened), in
    /// sampling order; None for plain DDIM inversion.
    pub null_text: Option<Vec<Vec<f32>>>,
}

/// img2img: `base` gives the model, prompts, sampler and seed; the size is the image's.
#[derive(Debug, Clone)]
pub struct Img2ImgParams {
    pub base: GenerateParams,
    /// Width and height multiples of the model's VAE factor (8).
    pub image: ImageData,
    /// How far down the schedule to start, in (0, 1]: the fraction of `steps` that run.
    pub strength: f64,
}

/// How a painted mask is prepared (white = repaint).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskOptions {
    /// Grow the white region by this many pixels first.
    pub dilate: u32,
    /// Gaussian feather (σ in pixels) of the mask's edge; 0 keeps it as painted.
    pub feather: f32,
    /// Repaint the black region instead.
    pub invert: bool,
}

impl Default for MaskOptions {
    fn default() -> Self {
        Self { dilate: 0, feather: 4.0, invert: false }
    }
}

/// Inpainting: blended latent diffusion for any model, or the 9-channel inpainting UNets.
#[derive(Debug, Clone)]
pub struct InpaintParams {
    pub base: GenerateParams,
    pub image: ImageData,
    /// The same size as `image`; its luminance is the mask (white = repaint).
    pub mask: ImageData,
    /// 1 repaints from pure noise; less keeps more of the masked region's content.
    pub strength: f64,
    pub mask_options: MaskOptions,
    /// Put the pixels outside the mask back exactly from `image` (feathered seam), undoing
    /// the VAE round trip there.
    pub composite: bool,
}

/// Audio as spectrogram images: what to do.
#[derive(Debug, Clone)]
pub enum AudioTask {
    /// Text to audio.
    Generate,
    /// No generation: the source's spectrogram at the preset (what the studio shows of a WAV
    /// file it opens); needs no model when a preset is given.
    Analyse { source: Arc<Vec<f32>> },
    /// Audio to audio: img2img on the source's spectrogram (its first image's worth).
    Transform { source: Arc<Vec<f32>>, strength: f64 },
    /// Regenerate `start..end` seconds of the source (and only the `band` of frequencies, in
    /// Hz, when given); outside the range, after a short crossfade, the source is kept as it was.
    Inpaint { source: Arc<Vec<f32>>, start: f64, end: f64, band: Option<(f64, f64)>, strength: f64 },
    /// Continue the source: the next half image's worth, generated after its end (outpainting
    /// in time); the result is the source with the continuation appended.
    Continue { source: Arc<Vec<f32>> },
    /// A seamless loop of the source (or of a clip generated from the prompt): the seam between
    /// its end and its start is regenerated.
    Loop { source: Option<Arc<Vec<f32>>> },
    /// Riffusion-style interpolation: `clips` clips from the prompt and seed to `to_prompt` and
    /// `to_seed` (text embeddings mixed linearly, starting noise spherically), crossfaded.
    Interpolate { to_prompt: String, to_seed: u64, clips: usize },
}

impl AudioTask {
    pub fn label(&self) -> &'static str {
        match self {
            AudioTask::Generate => "text to audio",
            AudioTask::Analyse { .. } => "spectrogram",
            AudioTask::Transform { .. } => "audio to audio",
            AudioTask::Inpaint { .. } => "regenerate a range",
            AudioTask::Continue { .. } => "continue",
            AudioTask::Loop { .. } => "loop",
            AudioTask::Interpolate { .. } => "interpolate",
        }
    }

    /// The source clip, for the tasks that take one.
    pub fn source_mut(&mut self) -> Option<&mut Arc<Vec<f32>>> {
        match self {
            AudioTask::Analyse { source }
            | AudioTask::Transform { source, .. }
            | AudioTask::Inpaint { source, .. }
            | AudioTask::Continue { source } => Some(source),
            AudioTask::Loop { source } => source.as_mut(),
            AudioTask::Generate | AudioTask::Interpolate { .. } => None,
        }
    }
}

/// An audio job: `base.width` × `base.height` is one spectrogram image (frames × mel rows; 0
/// for the model's own), `preset` the spectrogram preset ("" for the model's own).
#[derive(Debug, Clone)]
pub struct AudioParams {
    pub base: GenerateParams,
    pub preset: String,
    pub task: AudioTask,
    /// Griffin-Lim iterations (32 as torchaudio's default).
    pub griffin_lim_iterations: usize,
}

/// A finished audio job: mono samples and the spectrogram they came from.
#[derive(Debug, Clone)]
pub struct AudioClip {
    pub sample_rate: u32,
    pub samples: Arc<Vec<f32>>,
    /// The whole clip's spectrogram at the preset: a column per hop (low frequencies at the
    /// bottom or top as the preset draws them).
    pub spectrogram: ImageData,
    /// The preset's name.
    pub preset: String,
    /// Samples per spectrogram column.
    pub hop: usize,
    /// Each spectrogram row's centre frequency in Hz, top row first.
    pub row_hz: Vec<f64>,
}

impl Job {
    /// A short name for job lists and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Job::ForwardNoise { .. } => "forward noise",
            Job::Generate(_) => "generate",
            Job::Img2Img(_) => "img2img",
            Job::Inpaint(_) => "inpaint",
            Job::Invert(_) => "invert",
            Job::PromptToPrompt(_) => "prompt-to-prompt",
            Job::LoadModel(_) => "load model",
            Job::InstructPix2Pix(_) => "InstructPix2Pix",
            Job::MagicMix(_) => "MagicMix",
            Job::PaintWithWords(_) => "paint-with-words",
            Job::DiffEdit(_) => "DiffEdit",
            Job::Audio(params) => params.task.label(),
        }
    }
}

/// Which queued jobs go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Previews and other work a person is waiting on: ahead of every queued batch job (after
    /// the interactive ones already queued).
    Interactive,
    /// In order of arrival.
    Batch,
}

/// A model to load, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub path: std::path::PathBuf,
    pub options: ModelOptions,
    pub precision: Precision,
}

/// What the UI or CLI asks of the engine.
#[derive(Debug, Clone)]
pub enum EngineRequest {
    /// Queue a job; its events carry `id`.
    Run { id: JobId, job: Box<Job>, priority: Priority },
    /// Load a model ahead of the jobs that will use it (queued as a job: its events carry `id`).
    LoadModel { id: JobId, model: ModelRef },
    /// Free the loaded model once the running job ends (answered with `Unloaded`).
    Unload,
    /// Cancel a queued or running job; a running one stops before its next step.
    Cancel(JobId),
    /// Finish the current step, drop the queue and end the engine thread.
    Shutdown,
}

/// What a finished job produced.
#[derive(Debug, Clone)]
pub enum JobOutput {
    Image(ImageData),
    Inversion(Box<Inversion>),
    /// Several images: the first is the main result.
    Images(Vec<LabelledImage>),
    /// A model was loaded: what it is.
    Loaded(String),
    Audio(AudioClip),
}

/// The device the engine settled on, for status bars and `info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// "cpu" or "cuda:0".
    pub name: String,
    /// A person-readable line, e.g. "CPU, 2 threads" or "CUDA 0: NVIDIA H100 (80 GiB)".
    pub description: String,
    /// How many CUDA devices the engine could use (what the studio's device setting offers).
    pub cuda_devices: usize,
}

/// What the engine tells the UI or CLI. Every `Run` ends in exactly one of
/// `Done`, `Failed` or `Cancelled`.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// The engine thread is up and owns `device`.
    Ready {
        device: DeviceReport,
    },
    /// The device could not be set up; the engine fell back to the CPU and says why.
    DeviceWarning {
        message: String,
    },
    Started {
        job: JobId,
    },
    /// A job loaded a model; `description` says what it is (for single files: what was
    /// detected, and how to override it).
    ModelLoaded {
        job: JobId,
        description: String,
        /// The image size the model was trained at (the UNet's sample size × the VAE's factor):
        /// what generation defaults to.
        native_size: (u32, u32),
    },
    /// `step` of `of` is done; `preview` is a downscaled look at the work so far.
    Progress {
        job: JobId,
        step: usize,
        of: usize,
        preview: Option<ImageData>,
    },
    Done {
        job: JobId,
        output: JobOutput,
    },
    /// The job failed; `message` says what happened and what to do. The engine goes on serving.
    Failed {
        job: JobId,
        message: String,
    },
    Cancelled {
        job: JobId,
    },
    /// The loaded model was freed (after `EngineRequest::Unload`).
    Unloaded,
}

impl EngineEvent {
    /// The job an event belongs to, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            EngineEvent::Ready { .. } | EngineEvent::DeviceWarning { .. } | EngineEvent::Unloaded => None,
            EngineEvent::Started { job }
            | EngineEvent::ModelLoaded { job, .. }
            | EngineEvent::Progress { job, .. }
            | EngineEvent::Done { job, .. }
            | EngineEvent::Failed { job, .. }
            | EngineEvent::Cancelled { job } => Some(*job),
        }
    }

    /// Whether this event ends its job.
    pub fn is_final(&self) -> bool {
        matches!(self, EngineEvent::Done { .. } | EngineEvent::Failed { .. } | EngineEvent::Cancelled { .. })
    }
}
