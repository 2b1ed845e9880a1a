//! The `diffusion-studio` command: with no subcommand it opens the studio window; each
//! subcommand runs one job headless on the same engine, through the same requests.
#![allow(clippy::print_stdout)] // the CLI's output is its stdout

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use diffusion_studio::catalog;
use diffusion_studio::document;
use diffusion_studio::engine::schedulers::SchedulerChoice;
use diffusion_studio::engine::training::trainer::{Run, Stage, TrainOptions, TrainProgress};
use diffusion_studio::engine::{EngineHandle, device};
use diffusion_studio::protocol::{
    self as protocol, AudioTask, DEFAULT_NULL_TEXT_STEPS, DeviceChoice, DiffEditParams, EditSource,
    EngineEvent, GenerateParams, ImageData, Img2ImgParams, InpaintParams, InstructPix2PixParams,
    InvertParams, Job, JobOutput, MagicMixParams, MaskOptions, ModelFamily, ModelOptions,
    PaintWithWordsParams, Precision, Prediction, PromptToPromptParams,
};

#[derive(Parser, Debug)]
#[command(name = "diffusion-studio", version, about = "An editing studio for diffusion models")]
struct Cli {
    /// Where tensors run: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", value_parser = DeviceChoice::from_name)]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Option<Command>,
    /// An image to open in the studio.
    image: Option<PathBuf>,
}

/// The editing methods of `edit`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum EditMethod {
    /// Prompt-to-prompt (Hertz et al. 2022): --source-prompt, --target-prompt.
    P2p,
    /// InstructPix2Pix (Brooks et al. 2023): --image, the instruction as --prompt.
    Ip2p,
    /// MagicMix (Liew et al. 2022): --image gives the layout, --prompt the content.
    Magicmix,
    /// Paint-with-words (eDiffi): --region WORD=MASK.png binds painted regions to prompt words.
    Pww,
    /// DiffEdit (Couairon et al. 2022): --image, --source-prompt (what it shows), --target-prompt.
    Diffedit,
}

/// "word=mask.png" → ("word", path).
fn parse_region(text: &str) -> Result<(String, PathBuf), String> {
    let (word, path) = text.split_once('=').ok_or_else(|| format!("'{text}' is not WORD=MASK.png"))?;
    if word.trim().is_empty() || path.is_empty() {
        return Err(format!("'{text}': give a word and a mask file"));
    }
    Ok((word.trim().to_string(), PathBuf::from(path)))
}

/// "word=2.5" → ("word", 2.5).
fn parse_reweight(text: &str) -> Result<(String, f64), String> {
    let (word, factor) = text.split_once('=').ok_or_else(|| format!("'{text}' is not WORD=FACTOR"))?;
    let factor: f64 = factor.parse().map_err(|_| format!("'{factor}' in '{text}' is not a number"))?;
    if word.trim().is_empty() || !factor.is_finite() || factor < 0.0 {
        return Err(format!("'{text}': give a word and a factor of at least 0"));
    }
    Ok((word.trim().to_string(), factor))
}

/// "word=0.2:0.6" → ("word", (0.2, 0.6)).
fn parse_word_window(text: &str) -> Result<(String, (f64, f64)), String> {
    let (word, window) = text.split_once('=').ok_or_else(|| format!("'{text}' is not WORD=START:END"))?;
    let (start, end) = window.split_once(':').ok_or_else(|| format!("'{text}' is not WORD=START:END"))?;
    let number = |v: &str| v.trim().parse::<f64>().map_err(|_| format!("'{v}' in '{text}' is not a number"));
    let (start, end) = (number(start)?, number(end)?);
    if word.trim().is_empty() || !(0.0..=1.0).contains(&start) || !(0.0..=1.0).contains(&end) || start > end {
        return Err(format!("'{text}': give a word and a window START:END within 0…1"));
    }
    Ok((word.trim().to_string(), (start, end)))
}

/// Which model, and how to load it.
#[derive(clap::Args, Debug, Clone)]
struct ModelArgs {
    /// A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    /// scheduler/) or a single-file .safetensors checkpoint in the original layout. Default: the
    /// bundled shapes model (assets/models/shapes).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Single files: sd1 or sd2, instead of what the checkpoint's keys suggest.
    #[arg(long, value_parser = ModelFamily::from_name)]
    model_type: Option<ModelFamily>,
    /// epsilon, v or sample, instead of the model's own (single-file SD 2.x text-to-image
    /// checkpoints are taken as v-prediction 768 models unless told).
    #[arg(long, value_parser = Prediction::from_name)]
    prediction_type: Option<Prediction>,
    /// Single files: a diffusers folder whose configs and tokenizer describe the checkpoint,
    /// for models that are not the standard SD 1.x/2.x shape.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// The UNet's precision: f32, f16 or bf16 (the text encoder and VAE stay in f32).
    #[arg(long, default_value = "f32", value_parser = Precision::from_name)]
    dtype: Precision,
}

/// Prompts and the sampler.
#[derive(clap::Args, Debug, Clone)]
struct SamplingArgs {
    /// The prompt (for `edit`: the source prompt).
    #[arg(long, visible_alias = "source-prompt")]
    prompt: std::ffi::OsString,
    #[arg(long, default_value = "")]
    negative_prompt: std::ffi::OsString,
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// ddim, ddpm, euler, euler-a, dpm++2m, dpm++2m-karras, heun, lcm.
    #[arg(long, default_value = "dpm++2m-karras")]
    scheduler: String,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Guidance rescale φ (Lin et al. 2023), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    guidance_rescale: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the text encoder's output this many layers before the last (0: all layers;
    /// AUTOMATIC1111's "clip skip 2" is 1).
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run; boxing buys nothing
enum Command {
    /// Print the version, libtorch, CPU threads, CUDA devices, audio output and models found.
    Info,
    /// Generate an image from a prompt with a Stable Diffusion 1.x/2.x model.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Default: the model's own size (its UNet's sample_size × 8: 128 for the bundled
        /// model, 512 for SD 1.x, 768 for SD 2.x).
        #[arg(long)]
        width: Option<u32>,
        #[arg(long)]
        height: Option<u32>,
        /// Where to write the PNG (with the parameters in its "parameters" text chunk).
        #[arg(long)]
        out: PathBuf,
    },
    /// Push an image towards a prompt (SDEdit): noise it part-way, denoise it with the prompt.
    Img2img {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// The image to start from (sizes round down to multiples of 8).
        #[arg(long)]
        image: PathBuf,
        /// How much to change, in (0, 1]: the fraction of the steps that run.
        #[arg(long, default_value_t = 0.75)]
        strength: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Repaint the masked region of an image from a prompt (white in the mask = repaint).
    Inpaint {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long)]
        image: PathBuf,
        /// White = repaint, black = keep; resized to the image if its size differs.
        #[arg(long)]
        mask: PathBuf,
        /// 1 repaints from noise; less keeps more of what the masked region holds.
        #[arg(long, default_value_t = 1.0)]
        strength: f64,
        /// Grow the mask by this many pixels.
        #[arg(long, default_value_t = 0)]
        dilate: u32,
        /// Feather the mask's edge (Gaussian σ in pixels; 0 for a hard edge).
        #[arg(long, default_value_t = 4.0)]
        feather: f32,
        /// Repaint the black region instead.
        #[arg(long)]
        invert: bool,
        /// Keep the decoded pixels outside the mask too, instead of putting the source's back.
        #[arg(long)]
        no_composite: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// DDIM-invert an image: the latent trajectory that regenerates it (for editing real images),
    /// and the PSNR of regenerating it with the prompt at --guidance (DDIM; --scheduler is not used).
    Invert {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[arg(long)]
        image: PathBuf,
        /// Where to write the inversion (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Also write the regenerated image here.
        #[arg(long)]
        reconstruction: Option<PathBuf>,
        /// Null-text inversion (Mokady et al. 2022): optimise the unconditional embedding per
        /// step so that regeneration at --guidance reconstructs the image.
        #[arg(long)]
        null_text: bool,
        /// Null-text inversion's Adam steps per sampling step (the paper: up to 10).
        #[arg(long, default_value_t = DEFAULT_NULL_TEXT_STEPS)]
        null_text_steps: usize,
    },
    /// Edit a generated image word by word: `--method p2p` (prompt-to-prompt) denoises the source
    /// and target prompts side by side, the target taking the source's cross-attention.
    Edit(EditArgs),
    /// Train the bundled shapes model (VAE, preview decoder, text encoder + UNet) in a run
    /// folder that checkpoints and resumes, and write it as a diffusers folder.
    Train(TrainArgs),
    /// Measure the bundled shapes model (or a model trained like it) on held-out captions and
    /// images: attribute accuracy, prompt-to-prompt, DiffEdit, inpainting, DDIM inversion.
    Eval(EvalArgs),
    /// Time engine parts for `make bench` (see bench/run.sh).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Audio: spectrogram images to and from WAV files.
    #[command(subcommand)]
    Audio(AudioCommand),
    /// Noise an image along the diffusion forward process (what img2img starts from).
    Noise {
        /// The image to noise.
        #[arg(long)]
        image: PathBuf,
        /// Fraction of the noise schedule, in (0, 1].
        #[arg(long, default_value_t = 0.5)]
        strength: f32,
        /// Stages to run (progress steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Where to write the PNG.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `train`'s options.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// The run folder: options, checkpoints, logs (run the same command again to resume).
    #[arg(long)]
    run: PathBuf,
    /// Stop after this stage (stages: vae, taesd, unet).
    #[arg(long, value_enum, default_value_t = Stage::Unet)]
    until: Stage,
    /// When every stage has finished, write the diffusers folder here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Checkpoint and stop after this many minutes (run the same command again to go on).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Start from the finished VAE, preview decoder and latent cache of this other run (which
    /// must have used the same autoencoder options), and train only the text encoder and UNet:
    /// how UNet options are compared against each other.
    #[arg(long, value_name = "RUN")]
    autoencoder_from: Option<PathBuf>,
    /// Start the UNet stage from the latest UNet and text-encoder weights of this other run
    /// (same UNet shape, same autoencoder; taken from it when this run has none yet): train on
    /// one kind of data, then go on with another (a curriculum), or fine-tune a finished run.
    #[arg(long, value_name = "RUN")]
    unet_from: Option<PathBuf>,
    #[command(flatten)]
    options: TrainOptions,
}

/// `edit`'s options (each method reads its own; see `--help`).
#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// The model folder (default: the bundled shapes model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Held-out captions to generate for attribute accuracy.
    #[arg(long, default_value_t = 200)]
    captions: usize,
    /// Cases of each editing metric.
    #[arg(long, default_value_t = 50)]
    edits: usize,
    /// Held-out images to DDIM-invert (at 10, 25 and 50 steps).
    #[arg(long, default_value_t = 20)]
    inversions: usize,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 5.0)]
    guidance: f64,
    /// The held-out images' stream (another seed draws other images: tune settings on seed
    /// 1, report on seed 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// DiffEdit's mask settings under test (see `edit --method diffedit`).
    #[arg(long, default_value_t = 10)]
    mask_samples: usize,
    #[arg(long, default_value_t = diffusion_studio::protocol::DIFFEDIT_MASK_EDGES)]
    mask_edges: f64,
    /// Write contact sheets of what was generated here.
    #[arg(long)]
    samples: Option<PathBuf>,
    #[command(flatten)]
    report: ReportArgs,
}

/// Where an evaluation's numbers go (both `eval` and `audio eval`).
#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Write the report (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write MODEL_CARD.md into the model folder: data, parts and sizes, the training
    /// record (TRAINING.md) and these measurements.
    #[arg(long)]
    card: bool,
}

#[derive(clap::Args, Debug)]
struct EditArgs {
    #[arg(long, value_enum)]
    method: EditMethod,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// p2p: the edited prompt.
    #[arg(long)]
    target_prompt: Option<std::ffi::OsString>,
    /// ip2p, magicmix, diffedit: the image to edit; p2p: a real image to DDIM-invert under the
    /// source prompt and edit (sizes round down to multiples of 8).
    #[arg(long)]
    image: Option<PathBuf>,
    /// p2p with --image: null-text inversion (Mokady et al. 2022), so that the edit starts
    /// from a faithful reconstruction at --guidance.
    #[arg(long)]
    null_text: bool,
    /// p2p with --image --null-text: Adam steps per sampling step (the paper: up to 10).
    #[arg(long, default_value_t = DEFAULT_NULL_TEXT_STEPS)]
    null_text_steps: usize,
    /// p2p: edit an inverted real image (from `invert`, with this model; its prompt is the
    /// source prompt, its steps and DDIM are used).
    #[arg(long)]
    inversion: Option<PathBuf>,
    /// ip2p: how closely to follow the image (the paper's s_I).
    #[arg(long, default_value_t = 1.5)]
    image_guidance: f64,
    /// magicmix: the layout phase ends at this noise level (fraction of the steps)…
    #[arg(long, default_value_t = 0.3)]
    kmin: f64,
    /// …and starts at this one (the image is noised to it).
    #[arg(long, default_value_t = 0.6)]
    kmax: f64,
    /// magicmix: the weight of the generated latents in the layout phase's mix (ν).
    #[arg(long, default_value_t = 0.5)]
    mix_factor: f64,
    /// pww: WORD=MASK.png, white where the word goes (repeatable; resized to the output).
    #[arg(long, value_parser = parse_region)]
    region: Vec<(String, PathBuf)>,
    /// pww: how hard the regions pull (eDiffi's w).
    #[arg(long, default_value_t = 0.4)]
    pww_strength: f64,
    /// diffedit: how far to invert before re-denoising (the paper's encoding ratio).
    #[arg(long, default_value_t = 0.8)]
    encode_ratio: f64,
    /// diffedit: noise samples averaged for the mask.
    #[arg(long, default_value_t = 10)]
    mask_samples: usize,
    /// diffedit: how far down the schedule the image is noised to estimate the mask (0–1].
    #[arg(long, default_value_t = diffusion_studio::protocol::DIFFEDIT_MASK_STRENGTH)]
    mask_strength: f64,
    /// diffedit: the mask is where the prompts disagree by more than this share of their
    /// largest disagreement (0–1).
    #[arg(long, default_value_t = diffusion_studio::protocol::DIFFEDIT_MASK_THRESHOLD)]
    mask_threshold: f64,
    /// diffedit: colour tolerance for snapping the estimated mask to the image's edges (joint
    /// bilateral upsampling of the latent-grid estimate; 0 = bilinear, no snapping).
    #[arg(long, default_value_t = diffusion_studio::protocol::DIFFEDIT_MASK_EDGES)]
    mask_edges: f64,
    /// diffedit: use this mask (white = edit) instead of estimating one.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// diffedit: write the mask used here (to correct it and pass it back with --mask).
    #[arg(long)]
    mask_out: Option<PathBuf>,
    /// Default: the model's own size.
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    /// Cross-attention injection from this fraction of the steps…
    #[arg(long, default_value_t = 0.0)]
    cross_start: f64,
    /// …to this one (the paper's 0.8).
    #[arg(long, default_value_t = 0.8)]
    cross_replace: f64,
    /// Self-attention injection for this fraction of the first steps (the paper's 0.4).
    #[arg(long, default_value_t = 0.4)]
    self_replace: f64,
    /// WORD=FACTOR: scale a target word's attention (repeatable).
    #[arg(long, value_parser = parse_reweight)]
    reweight: Vec<(String, f64)>,
    /// WORD=START:END: this target word's own cross-attention injection window, as fractions of
    /// the steps, instead of --cross-start/--cross-replace (repeatable).
    #[arg(long, value_parser = parse_word_window)]
    word_window: Vec<(String, (f64, f64))>,
    /// Local blend: edit only where these words (of either prompt) attend (repeatable).
    #[arg(long)]
    local_blend: Vec<String>,
    /// Write each target word's cross-attention map here: NN-WORD.png averaged over the steps,
    /// NN-WORD-steps.png with every step left to right.
    #[arg(long)]
    attention_maps: Option<PathBuf>,
    /// Also write the source prompt's image here.
    #[arg(long)]
    source_out: Option<PathBuf>,
    /// The edited image.
    #[arg(long)]
    out: PathBuf,
}

/// What every audio generation job shares. The prompt may be left out for audio-diffusion
/// models, which are unconditional.
#[derive(clap::Args, Debug)]
#[command(mut_arg("prompt", |arg| arg.required(false).default_value("")))]
struct AudioJobArgs {
    /// A diffusers folder or single file (default: the bundled music model, assets/models/music;
    /// a Riffusion model gets the riffusion preset).
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// riffusion, audio-diffusion or studio (default: the model's own).
    #[arg(long)]
    preset: Option<String>,
    /// Spectrogram frames per image (default: the model's own).
    #[arg(long)]
    frames: Option<u32>,
    /// Griffin-Lim iterations.
    #[arg(long, default_value_t = 32)]
    iterations: usize,
    /// The WAV file to write (16-bit mono at the preset's rate).
    #[arg(long)]
    out: PathBuf,
    /// Also write the spectrogram image here.
    #[arg(long)]
    spectrogram: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum AudioCommand {
    /// Text to audio: a spectrogram generated from the prompt, then Griffin-Lim.
    Generate {
        #[command(flatten)]
        job: AudioJobArgs,
    },
    /// Audio to audio: img2img on the input's spectrogram (its first image's worth: 4.1 s for
    /// the bundled model, 5.1 s for Riffusion).
    Img2audio {
        #[command(flatten)]
        job: AudioJobArgs,
        /// The WAV file to transform.
        #[arg(long)]
        input: PathBuf,
        /// How much to change, in (0, 1].
        #[arg(long, default_value_t = 0.6)]
        strength: f64,
    },
    /// Regenerate a time range of the input (and only a frequency band, with --low-hz and
    /// --high-hz); outside it, after a 50 ms crossfade, the input is kept sample for sample.
    Inpaint {
        #[command(flatten)]
        job: AudioJobArgs,
        #[arg(long)]
        input: PathBuf,
        /// Start of the range, in seconds.
        #[arg(long)]
        start: f64,
        /// End of the range, in seconds.
        #[arg(long)]
        end: f64,
        #[arg(long, requires = "high_hz")]
        low_hz: Option<f64>,
        #[arg(long, requires = "low_hz")]
        high_hz: Option<f64>,
        /// 1 regenerates from noise; less keeps more of what the range holds.
        #[arg(long, default_value_t = 1.0)]
        strength: f64,
    },
    /// Continue the input: half an image's worth generated after its end, appended.
    Continue {
        #[command(flatten)]
        job: AudioJobArgs,
        #[arg(long)]
        input: PathBuf,
        /// How many continuations to append, one after the other.
        #[arg(long, default_value_t = 1)]
        times: usize,
    },
    /// A seamless loop of the input (or of a clip generated from the prompt, without --input).
    Loop {
        #[command(flatten)]
        job: AudioJobArgs,
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Clips from --prompt/--seed to --to-prompt/--to-seed (Riffusion's interpolation),
    /// crossfaded into one file.
    Interpolate {
        #[command(flatten)]
        job: AudioJobArgs,
        #[arg(long)]
        to_prompt: std::ffi::OsString,
        /// Default: the same seed.
        #[arg(long)]
        to_seed: Option<u64>,
        #[arg(long, default_value_t = 4)]
        clips: usize,
    },
    /// Play a WAV file through the default output device (mixed to mono, resampled to the
    /// device's rate), waiting until it ends.
    Play { input: PathBuf },
    /// A WAV file's mel spectrogram as a grey PNG (stereo is mixed to mono, and the clip is
    /// resampled to the preset's rate; both are said).
    ToSpec {
        /// The WAV file (PCM or float).
        input: PathBuf,
        /// riffusion, audio-diffusion or studio.
        #[arg(long, default_value = "studio")]
        preset: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// A spectrogram image back to sound: mel to linear by the pseudo-inverse, then Griffin-Lim.
    FromSpec {
        /// The spectrogram PNG (its height must be the preset's mel bins).
        input: PathBuf,
        /// riffusion, audio-diffusion or studio.
        #[arg(long, default_value = "studio")]
        preset: String,
        /// Griffin-Lim iterations.
        #[arg(long, default_value_t = 32)]
        iterations: usize,
        /// Seed of Griffin-Lim's first phases.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The WAV file to write (16-bit, mono, at the preset's rate).
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the bundled music model (or one trained like it): a spectral-feature classifier,
    /// fitted on training clips, reads generated clips' instrument, tempo and mode.
    Eval {
        /// The model folder (default: the bundled music model).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        clips: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 4.0)]
        guidance: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 32)]
        iterations: usize,
        /// Write the generated clips (WAV, spectrogram) here.
        #[arg(long)]
        samples: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Write clips of the bundled music model's procedural dataset: WAV, studio spectrogram PNG
    /// and caption (captions.txt), to listen to and look at what the model learns.
    Dataset {
        /// How many clips.
        #[arg(long, default_value_t = 8)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Held-out clips (the evaluation's) instead of training clips.
        #[arg(long)]
        eval: bool,
        /// The folder to write (created).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Whole text-to-image runs of a release-shaped model with random weights (UNet, VAE and
    /// text encoder of SD 1.5 or 2.1): text encoding, DPM++ 2M Karras steps with CFG, VAE decode;
    /// prints seconds per image.
    Pipeline {
        #[arg(long, default_value = "sd_v1_5")]
        preset: String,
        #[arg(long, default_value_t = 512)]
        size: u32,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value = "f16", value_parser = Precision::from_name)]
        dtype: Precision,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Forward passes of a randomly initialised UNet built from a config preset (speed does not
    /// depend on weight values), batch 2 as under classifier-free guidance; prints seconds per pass.
    Unet {
        /// sd_v1_5, sd_v2_1, or a UNet `config.json` (to size a new model).
        #[arg(long, default_value = "sd_v1_5")]
        preset: String,
        /// Latent height and width (64 for 512×512 images).
        #[arg(long, default_value_t = 64)]
        latent: i64,
        #[arg(long, default_value_t = 3)]
        passes: usize,
        /// Run the batch's two halves on two threads, as the engine does for small UNets on the
        /// CPU (ignored where it would not: see `engine/models/branch_parallel.rs`).
        #[arg(long)]
        split_branches: bool,
    },
    /// Plain generation and a prompt-to-prompt word swap at equal steps (DDIM, CFG); prints
    /// seconds for each and their ratio.
    Edit {
        /// A model folder or file, or sd_v1_5 / sd_v2_1 for a random-weight release-shaped model.
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 16)]
        size: u32,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Griffin-Lim on one image's worth of a preset's spectrogram (the reference signal's linear
    /// magnitudes), after a warm-up run; prints seconds per run.
    GriffinLim {
        #[arg(long, default_value = "riffusion")]
        preset: String,
        #[arg(long, default_value_t = 32)]
        iterations: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Text-to-audio jobs as the audio room's Generate sends them (DPM++ 2M Karras, CFG 4,
    /// 32 Griffin-Lim iterations), after a warm-up job: seconds from submitting to the clip's
    /// samples, median and slowest.
    AudioGenerate {
        /// Default: the bundled music model.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// Text-to-image jobs on a diffusers folder, after a warm-up job; prints seconds per job.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        size: u32,
        #[arg(long, default_value = "dpm++2m-karras")]
        scheduler: String,
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
}

/// `audio to-spec` and `audio from-spec`.
fn audio_command(device: DeviceChoice, command: AudioCommand) -> anyhow::Result<()> {
    use diffusion_studio::audio::wav;
    use diffusion_studio::engine::spectrogram::{self, SpectrogramPreset};
    match command {
        AudioCommand::Play { input } => {
            use diffusion_studio::audio::playback::{self, AudioOutput, Command};
            let clip = wav::read_wav(&input)?;
            let (player, transport) = playback::player();
            let output = playback::CpalOutput::open(player)
                .map_err(|reason| anyhow::anyhow!("no audio output ({reason}); nothing played"))?;
            let clip = clip.resampled(output.sample_rate())?;
            let samples: std::sync::Arc<[f32]> = clip.mono().into();
            let frames = samples.len() as u64;
            transport.send(Command::Load(samples));
            transport.send(Command::Play);
            let start = std::time::Instant::now();
            let limit = std::time::Duration::from_secs_f64(clip.seconds() + 5.0);
            while transport.position() < frames || transport.playing() {
                anyhow::ensure!(
                    start.elapsed() < limit,
                    "{}: playback stalled at frame {} of {frames}",
                    output.describe(),
                    transport.position()
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            eprintln!("played {} ({:.2} s) on {}", input.display(), clip.seconds(), output.describe());
            Ok(())
        }
        AudioCommand::ToSpec { input, preset, out } => {
            let preset = SpectrogramPreset::by_name(&preset).map_err(anyhow::Error::msg)?;
            let clip = wav::read_wav(&input)?;
            if clip.channels.len() > 1 {
                eprintln!("{}: {} channels mixed to mono", input.display(), clip.channels.len());
            }
            let clip = if clip.sample_rate == preset.sample_rate {
                clip
            } else {
                eprintln!(
                    "{}: resampled from {} Hz to the {} preset's {} Hz",
                    input.display(),
                    clip.sample_rate,
                    preset.name,
                    preset.sample_rate
                );
                clip.resampled(preset.sample_rate)?
            };
            let image = spectrogram::image_of_samples(&preset, &clip.mono(), device)
                .with_context(|| format!("{}", input.display()))?;
            let rgba = image::DynamicImage::ImageLuma8(image).to_rgba8();
            let text = format!("Spectrogram preset: {}, source: {}", preset.name, input.display());
            document::write_png_with_text_atomic(&rgba, &out, "parameters", &text)?;
            eprintln!(
                "wrote {} ({}×{}: {:.2} s)",
                out.display(),
                rgba.width(),
                rgba.height(),
                clip.seconds()
            );
            Ok(())
        }
        AudioCommand::Eval { model, clips, steps, guidance, seed, iterations, samples, report } => {
            let ReportArgs { out, card } = report;
            use diffusion_studio::eval::music_metrics::{MusicEvalOptions, evaluate};
            let model = model.unwrap_or_else(catalog::bundled_music_model);
            anyhow::ensure!(
                model.join("model_index.json").is_file(),
                "{} is not a diffusers folder (no model_index.json); give --model",
                model.display()
            );
            anyhow::ensure!(clips >= 2, "--clips must be at least 2");
            let options = MusicEvalOptions {
                model,
                device,
                clips,
                steps,
                guidance,
                seed,
                iterations,
                fit_clips: 300,
                held_out_clips: 150,
                samples,
            };
            let report = evaluate(&options, &mut |line| eprintln!("{line}"))?;
            let json = serde_json::to_string_pretty(&report)?;
            println!("{json}");
            eprintln!("{}", report.markdown());
            if let Some(out) = out {
                std::fs::write(&out, format!("{json}\n"))
                    .with_context(|| format!("could not write {}", out.display()))?;
            }
            if card {
                let text = diffusion_studio::eval::card::music_card(&options.model, &report, &options)?;
                let path = options.model.join("MODEL_CARD.md");
                std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        AudioCommand::Generate { job } => run_audio(device, job, |_| Ok(AudioTask::Generate)),
        AudioCommand::Img2audio { job, input, strength } => run_audio(device, job, |rate| {
            Ok(AudioTask::Transform { source: read_source(&input, rate)?, strength })
        }),
        AudioCommand::Inpaint { job, input, start, end, low_hz, high_hz, strength } => {
            run_audio(device, job, |rate| {
                Ok(AudioTask::Inpaint {
                    source: read_source(&input, rate)?,
                    start,
                    end,
                    band: low_hz.zip(high_hz),
                    strength,
                })
            })
        }
        AudioCommand::Continue { job, input, times } => {
            anyhow::ensure!((1..=32).contains(&times), "--times must be 1 to 32, not {times}");
            // each continuation starts from the last one's result
            let out = job.out.clone();
            let mut source = None;
            let mut job = job;
            for time in 0..times {
                let input = input.clone();
                let previous = source.take();
                let clip = run_audio_clip(device, &mut job, |rate| {
                    Ok(AudioTask::Continue {
                        source: match previous {
                            Some(previous) => previous,
                            None => read_source(&input, rate)?,
                        },
                    })
                })?;
                if time + 1 == times {
                    write_audio(&job, &clip, &out)?;
                }
                source = Some(clip.samples);
            }
            Ok(())
        }
        AudioCommand::Loop { job, input } => run_audio(device, job, |rate| {
            Ok(AudioTask::Loop { source: input.as_ref().map(|input| read_source(input, rate)).transpose()? })
        }),
        AudioCommand::Interpolate { job, to_prompt, to_seed, clips } => {
            let to_prompt = text_argument("--to-prompt", to_prompt)?;
            let to_seed = to_seed.unwrap_or(job.sampling.seed);
            run_audio(device, job, |_| Ok(AudioTask::Interpolate { to_prompt, to_seed, clips }))
        }
        AudioCommand::Dataset { count, seed, eval, out } => {
            use diffusion_studio::datasets::{music, shapes::Split};
            std::fs::create_dir_all(&out).with_context(|| format!("could not create {}", out.display()))?;
            // one spectrogram machine for every clip (its pseudo-inverse is computed once)
            let studio = spectrogram::Spectrogram::new(
                SpectrogramPreset::studio(),
                device::select(device).map_err(anyhow::Error::msg)?,
            )?;
            let split = if eval { Split::Eval } else { Split::Train };
            let mut captions = String::new();
            for index in 0..count {
                let clip = music::sample(seed, index as u64, split);
                let name = format!("{index:04}");
                let wav_clip =
                    wav::Clip { sample_rate: music::SAMPLE_RATE, channels: vec![clip.samples.clone()] };
                wav::write_wav(&out.join(format!("{name}.wav")), &wav_clip)?;
                let image = studio.image_of(&clip.samples, music::FRAMES)?;
                let rgba = image::DynamicImage::ImageLuma8(image).to_rgba8();
                let text = format!("Spectrogram preset: studio, caption: {}", clip.caption);
                document::write_png_with_text_atomic(
                    &rgba,
                    &out.join(format!("{name}.png")),
                    "parameters",
                    &text,
                )?;
                captions.push_str(&format!("{name}\t{}\n", clip.caption));
            }
            std::fs::write(out.join("captions.txt"), captions)?;
            eprintln!("wrote {count} clips to {}", out.display());
            Ok(())
        }
        AudioCommand::FromSpec { input, preset, iterations, seed, out } => {
            let preset = SpectrogramPreset::by_name(&preset).map_err(anyhow::Error::msg)?;
            let image = image::open(&input)
                .with_context(|| format!("{} is not a readable image", input.display()))?
                .into_rgb8();
            let samples = spectrogram::samples_of_image(&preset, &image, iterations, seed, device)
                .with_context(|| format!("{}", input.display()))?;
            // Griffin-Lim's level is relative: peak-normalise to −1 dBFS
            let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs())).max(1e-9);
            let gain = 10f32.powf(-1.0 / 20.0) / peak;
            let clip = wav::Clip {
                sample_rate: preset.sample_rate,
                channels: vec![samples.iter().map(|s| s * gain).collect()],
            };
            wav::write_wav(&out, &clip)?;
            eprintln!("wrote {} ({:.2} s at {} Hz)", out.display(), clip.seconds(), clip.sample_rate);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => diffusion_studio::ui::run_studio(cli.device, cli.image),
        Some(Command::Info) => {
            info();
            Ok(())
        }
        Some(Command::Generate { model, sampling, width, height, out }) => {
            base_params(model, sampling, width, height).and_then(|params| generate(cli.device, params, &out))
        }
        Some(Command::Img2img { model, sampling, image, strength, out }) => {
            base_params(model, sampling, 0, 0).and_then(|base| img2img(cli.device, base, &image, strength, &out))
        }
        Some(Command::Inpaint {
            model,
            sampling,
            image,
            mask,
            strength,
            dilate,
            feather,
            invert,
            no_composite,
            out,
        }) => base_params(model, sampling, 0, 0).and_then(|base| {
            let options = MaskOptions { dilate, feather, invert };
            inpaint(cli.device, base, (&image, &mask), strength, options, !no_composite, &out)
        }),
        Some(Command::Invert { model, sampling, image, out, reconstruction, null_text, null_text_steps }) => {
            base_params(model, sampling, 0, 0)
                .and_then(|base| invert(cli.device, base, &image, (&out, reconstruction.as_deref()), null_text.then_some(null_text_steps)))
        }
        Some(Command::Edit(args)) => edit(cli.device, args),
        Some(Command::Train(args)) => train(cli.device, args),
        Some(Command::Eval(args)) => {
            let options = diffusion_studio::eval::shapes_metrics::EvalOptions {
                model: args.model.unwrap_or_else(catalog::bundled_shapes_model),
                device: cli.device,
                captions: args.captions,
                edits: args.edits,
                inversions: args.inversions,
                steps: args.steps,
                guidance: args.guidance,
                seed: args.seed,
                mask_samples: args.mask_samples,
                mask_edges: args.mask_edges,
                samples: args.samples,
            };
            eval(&options, args.report.out.as_deref(), args.report.card)
        }
        Some(Command::Bench(BenchCommand::Unet { preset, latent, passes, split_branches })) => {
            diffusion_studio::engine::bench::unet_passes(cli.device, &preset, latent, passes, split_branches).map(
                |(seconds, split)| {
                    let how = if split { ", halves on two threads" } else { "" };
                    println!("unet {preset} latent {latent}x{latent} batch 2{how}: {seconds:.4} s per pass ({passes} passes after 1 warm-up)");
                },
            )
        }
        Some(Command::Bench(BenchCommand::Pipeline { preset, size, steps, dtype, runs })) => {
            diffusion_studio::engine::bench::random_pipeline_runs(cli.device, &preset, size, steps, dtype, runs).map(
                |seconds| {
                    println!("pipeline {preset} {size}x{size} {steps} steps {dtype:?} CFG: {seconds:.4} s per image ({runs} runs after 1 warm-up)");
                },
            )
        }
        Some(Command::Bench(BenchCommand::Edit { model, size, steps, runs })) => {
            diffusion_studio::engine::bench::edit_runs(cli.device, &model, size, steps, runs).map(|t| {
                println!(
                    "edit {model} {size}x{size} {steps} steps: plain {:.4} s, p2p {:.4} s, ratio {:.2}, re-edit {:.4} s, re-ratio {:.2}, null-text {:.4} s, null-ratio {:.2}, null-text-10 {:.4} s, null10-ratio {:.2}, inverted-re-edit {:.4} s, inverted-ratio {:.2}",
                    t.plain,
                    t.first,
                    t.first / t.plain,
                    t.again,
                    t.again / t.plain,
                    t.null_text,
                    t.null_text / t.plain,
                    t.null_text_paper,
                    t.null_text_paper / t.plain,
                    t.inverted_again,
                    t.inverted_again / t.plain
                );
            })
        }
        Some(Command::Bench(BenchCommand::GriffinLim { preset, iterations, runs })) => {
            diffusion_studio::engine::bench::griffin_lim_runs(cli.device, &preset, iterations, runs).map(|seconds| {
                println!("griffin-lim {preset} {iterations} iterations: {seconds:.4} s per run ({runs} runs after 1 warm-up)");
            })
        }
        Some(Command::Bench(BenchCommand::AudioGenerate { model, steps, runs })) => {
            let model = model.unwrap_or_else(catalog::bundled_music_model);
            diffusion_studio::engine::bench::audio_generate_runs(cli.device, &model, steps, runs).map(|times| {
                println!(
                    "audio-generate {} {steps} steps: {:.4} s median, {:.4} s slowest per clip ({runs} runs after 1 warm-up)",
                    model.display(),
                    times.0,
                    times.1
                );
            })
        }
        Some(Command::Bench(BenchCommand::Generate { model, steps, size, scheduler, runs })) => {
            diffusion_studio::engine::bench::generate_runs(cli.device, &model, (size, steps, &scheduler), runs).map(|seconds| {
                println!("generate {} {size}x{size} {steps} steps {scheduler}: {seconds:.4} s per image ({runs} runs after 1 warm-up)", model.display());
            })
        }
        Some(Command::Audio(command)) => audio_command(cli.device, command),
        Some(Command::Noise { image, strength, steps, seed, out }) => {
            noise(cli.device, &image, strength, steps, seed, &out)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A text argument, or an error naming it when it is not UTF-8.
fn text_argument(name: &str, value: std::ffi::OsString) -> anyhow::Result<String> {
    value.into_string().map_err(|value| {
        anyhow::anyhow!("{name} is not valid UTF-8 text ({}); re-encode it as UTF-8", value.to_string_lossy())
    })
}

fn info() {
    let report = device::system_report();
    println!("diffusion-studio {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch {} ({})", report.libtorch_version, report.libtorch_lib_dir);
    println!("CPU threads: {}", report.cpu_threads);
    println!("libtorch_cuda linked: {}", report.cuda_linked);
    if report.cuda_devices.is_empty() {
        println!("CUDA devices: no CUDA device");
    } else {
        for gpu in &report.cuda_devices {
            println!("CUDA device {}: {}", gpu.index, gpu.description());
        }
        if let Some(version) = report.cudnn_version {
            println!("cuDNN {version}");
        }
    }
    println!("audio output: {}", diffusion_studio::audio::describe_output());
    let models = catalog::find_models();
    let folders: Vec<String> = catalog::search_folders().iter().map(|f| f.display().to_string()).collect();
    if models.is_empty() {
        println!("models: none found (searched {})", folders.join(", "));
    } else {
        println!("models:");
        for model in models {
            println!("  {} ({:?})", model.path.display(), model.kind);
        }
    }
}

/// The request every model job starts from, from the shared arguments.
fn base_params(
    model: ModelArgs,
    sampling: SamplingArgs,
    width: impl Into<Option<u32>>,
    height: impl Into<Option<u32>>,
) -> anyhow::Result<GenerateParams> {
    let (path, bundled) = match model.model {
        Some(path) => (path, false),
        None => (catalog::bundled_shapes_model(), true),
    };
    if bundled && !path.join("model_index.json").is_file() {
        bail!(
            "no --model given and the bundled shapes model is not at {} (train it with `diffusion-studio train --run RUN --out {}`, or give --model)",
            path.display(),
            path.display()
        );
    }
    let native = catalog::native_size(&path).unwrap_or(512);
    let (width, height) = (width.into().unwrap_or(native), height.into().unwrap_or(native));
    let params = GenerateParams {
        model: path,
        model_options: ModelOptions {
            family: model.model_type,
            prediction: model.prediction_type,
            config: model.model_config,
        },
        prompt: text_argument("--prompt", sampling.prompt)?,
        negative_prompt: text_argument("--negative-prompt", sampling.negative_prompt)?,
        steps: sampling.steps,
        scheduler: sampling.scheduler,
        guidance_scale: sampling.guidance,
        guidance_rescale: sampling.guidance_rescale,
        clip_skip: sampling.clip_skip,
        seed: sampling.seed,
        width,
        height,
        precision: model.dtype,
    };
    SchedulerChoice::from_name(&params.scheduler).map_err(|e| anyhow::anyhow!("--scheduler: {e}"))?;
    let model = &params.model;
    if !model.exists() {
        bail!("--model {}: no such file or folder", model.display());
    }
    if model.is_dir() && !model.join("model_index.json").is_file() {
        bail!(
            "--model {}: not a diffusers folder (no model_index.json); give the folder that holds it, or a single-file .safetensors checkpoint",
            model.display()
        );
    }
    if let Some(folder) = &params.model_options.config
        && !folder.join("model_index.json").is_file()
    {
        bail!("--model-config {}: not a diffusers folder (no model_index.json)", folder.display());
    }
    Ok(params)
}

/// Rounds the output size down to multiples of 8, and says so when it changes.
fn round_size(params: &mut GenerateParams) {
    let (width, height) = (params.width / 8 * 8, params.height / 8 * 8);
    if (width, height) != (params.width, params.height) {
        eprintln!(
            "note: {}×{} rounded down to {width}×{height} (multiples of 8)",
            params.width, params.height
        );
        (params.width, params.height) = (width, height);
    }
}

/// Sizes the model cannot take are rounded down to a multiple of 8, and the user is told.
fn generate(device: DeviceChoice, mut params: GenerateParams, out: &std::path::Path) -> anyhow::Result<()> {
    device::select(device).map_err(anyhow::Error::msg)?;
    round_size(&mut params);
    let infotext = params.to_infotext();
    let steps = params.steps;
    run_and_write(device, Job::Generate(params), steps, "generate", out, &infotext)
}

/// Runs an image job and writes its PNG with `infotext` as its parameters.
fn run_and_write(
    device: DeviceChoice,
    job: Job,
    steps: usize,
    label: &str,
    out: &std::path::Path,
    infotext: &str,
) -> anyhow::Result<()> {
    let result = run_job(device, job, steps, label)?;
    document::write_png_with_text_atomic(&result, out, "parameters", infotext)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Checks the device, then reads the input image (rounded to multiples of 8), whose size the
/// job takes.
fn start_image_job(
    device: DeviceChoice,
    base: &mut GenerateParams,
    image_path: &std::path::Path,
) -> anyhow::Result<image::RgbaImage> {
    device::select(device).map_err(anyhow::Error::msg)?;
    let image = read_model_image(image_path, "--image")?;
    (base.width, base.height) = image.dimensions();
    Ok(image)
}

/// Reads a mask or region image, resized to `size` (and said so) when it differs.
/// `label` names it in the note ("--mask m.png").
fn read_mask(path: &std::path::Path, label: &str, size: (u32, u32)) -> anyhow::Result<image::RgbaImage> {
    let mask = document::read_image(path)?;
    if mask.dimensions() == size {
        return Ok(mask);
    }
    eprintln!("note: {label} resized from {}×{} to {}×{}", mask.width(), mask.height(), size.0, size.1);
    Ok(image::imageops::resize(&mask, size.0, size.1, image::imageops::FilterType::Triangle))
}

/// Reads an input image whose sides round down to multiples of 8 (resized, and said so).
fn read_model_image(path: &std::path::Path, what: &str) -> anyhow::Result<image::RgbaImage> {
    let image = document::read_image(path)?;
    let (width, height) = (image.width() / 8 * 8, image.height() / 8 * 8);
    if width == 0 || height == 0 {
        bail!("{what} {}: {}×{} is smaller than 8×8", path.display(), image.width(), image.height());
    }
    if (width, height) == image.dimensions() {
        return Ok(image);
    }
    eprintln!(
        "note: {what} {} resized from {}×{} to {width}×{height} (multiples of 8)",
        path.display(),
        image.width(),
        image.height()
    );
    Ok(image::imageops::resize(&image, width, height, image::imageops::FilterType::Lanczos3))
}

fn img2img(
    device: DeviceChoice,
    mut base: GenerateParams,
    image_path: &std::path::Path,
    strength: f64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("--strength must be in (0, 1], got {strength}");
    }
    let image = start_image_job(device, &mut base, image_path)?;
    let infotext = format!("{}, Denoising strength: {strength}", base.to_infotext());
    let steps = ((base.steps as f64 * strength) as usize).max(1);
    let job = Job::Img2Img(Img2ImgParams { base, image: ImageData::from_rgba_image(&image), strength });
    run_and_write(device, job, steps, "img2img", out, &infotext)
}

fn inpaint(
    device: DeviceChoice,
    mut base: GenerateParams,
    (image_path, mask_path): (&std::path::Path, &std::path::Path),
    strength: f64,
    mask_options: MaskOptions,
    composite: bool,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("--strength must be in (0, 1], got {strength}");
    }
    if !(mask_options.feather >= 0.0 && mask_options.feather <= 256.0) {
        bail!("--feather must be between 0 and 256 pixels, got {}", mask_options.feather);
    }
    let image = start_image_job(device, &mut base, image_path)?;
    let mask = read_mask(mask_path, &format!("--mask {}", mask_path.display()), image.dimensions())?;
    let infotext = format!(
        "{}, Denoising strength: {strength}, Mask blur: {}",
        base.to_infotext(),
        mask_options.feather
    );
    let steps = ((base.steps as f64 * strength) as usize).max(1);
    let job = Job::Inpaint(InpaintParams {
        base,
        image: ImageData::from_rgba_image(&image),
        mask: ImageData::from_rgba_image(&mask),
        strength,
        mask_options,
        composite,
    });
    run_and_write(device, job, steps, "inpaint", out, &infotext)
}

fn invert(
    device: DeviceChoice,
    mut base: GenerateParams,
    image_path: &std::path::Path,
    (out, reconstruction): (&std::path::Path, Option<&std::path::Path>),
    null_text: Option<usize>,
) -> anyhow::Result<()> {
    let image = start_image_job(device, &mut base, image_path)?;
    let (steps, guidance) = (base.steps, base.guidance_scale);
    let job = Job::Invert(InvertParams { base, image: ImageData::from_rgba_image(&image), null_text });
    let phases = if null_text.is_some() { 3 } else { 2 };
    let JobOutput::Inversion(inversion) = run_job_output(device, job, phases * steps, "invert")? else {
        bail!("the engine returned an image, not an inversion");
    };
    document::inversion::save(&inversion, out)?;
    eprintln!("wrote {}", out.display());
    if let Some(path) = reconstruction {
        let rgba =
            inversion.reconstruction.to_rgba_image().context("the engine returned a malformed image")?;
        document::write_png_atomic(&rgba, path)?;
        eprintln!("wrote {}", path.display());
    }
    println!(
        "reconstruction PSNR: {:.2} dB against the image, {:.2} dB against the VAE's round trip ({steps} DDIM steps, guidance {guidance}{})",
        inversion.psnr,
        inversion.psnr_vae,
        null_text.map(|n| format!(", null-text ({n} Adam steps per step)")).unwrap_or_default()
    );
    Ok(())
}

/// Reads an inversion for a p2p edit with `base`'s model: its size, steps and DDIM become the
/// edit's, and its prompt must be the source prompt.
fn load_inversion_for(
    path: &std::path::Path,
    base: &mut GenerateParams,
) -> anyhow::Result<diffusion_studio::protocol::Inversion> {
    let inversion = document::inversion::load(path)?;
    document::inversion::check_fits(&inversion, path, &base.model, inversion.width, inversion.height)?;
    if inversion.prompt != base.prompt {
        bail!(
            "--inversion {} was made with the prompt \"{}\"; give it as --source-prompt (not \"{}\")",
            path.display(),
            inversion.prompt,
            base.prompt
        );
    }
    if base.steps != inversion.steps || base.scheduler != "ddim" {
        eprintln!("note: editing an inversion runs DDIM over its {} steps", inversion.steps);
    }
    (base.width, base.height, base.steps, base.scheduler) =
        (inversion.width, inversion.height, inversion.steps, "ddim".into());
    Ok(inversion)
}

fn edit_ip2p(
    device: DeviceChoice,
    mut base: GenerateParams,
    image_path: &std::path::Path,
    image_guidance_scale: f64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let image = start_image_job(device, &mut base, image_path)?;
    let infotext = format!("{}, Image CFG scale: {image_guidance_scale}", base.to_infotext());
    let steps = base.steps;
    let job = Job::InstructPix2Pix(InstructPix2PixParams {
        base,
        image: ImageData::from_rgba_image(&image),
        image_guidance_scale,
    });
    run_and_write(device, job, steps, "edit", out, &infotext)
}

/// `edit`: one method's job from the command line.
fn edit(device: DeviceChoice, args: EditArgs) -> anyhow::Result<()> {
    let EditArgs {
        method,
        model,
        sampling,
        target_prompt,
        image,
        inversion,
        null_text,
        null_text_steps,
        image_guidance,
        kmin,
        kmax,
        mix_factor,
        region,
        pww_strength,
        encode_ratio,
        mask_samples,
        mask_strength,
        mask_threshold,
        mask_edges,
        mask,
        mask_out,
        width,
        height,
        cross_start,
        cross_replace,
        self_replace,
        reweight,
        word_window,
        local_blend,
        attention_maps,
        source_out,
        out,
    } = args;
    let mut base = base_params(model, sampling, width, height)?;
    match method {
        EditMethod::P2p => {
            let Some(target_prompt) = target_prompt else {
                bail!("--method p2p needs --target-prompt (the edited prompt)");
            };
            let source = match (&inversion, &image) {
                (Some(_), Some(_)) => bail!("--method p2p takes --inversion or --image, not both"),
                (Some(path), None) => EditSource::Inversion(Box::new(load_inversion_for(path, &mut base)?)),
                (None, Some(path)) => {
                    let image = start_image_job(device, &mut base, path)?;
                    base.scheduler = "ddim".into();
                    EditSource::Image {
                        image: ImageData::from_rgba_image(&image),
                        null_text: null_text.then_some(null_text_steps),
                    }
                }
                (None, None) if null_text => bail!("--null-text inverts --image; give the image to edit"),
                (None, None) => EditSource::Generated,
            };
            let params = PromptToPromptParams {
                base,
                target_prompt: text_argument("--target-prompt", target_prompt)?,
                cross_window: (cross_start, cross_replace),
                word_windows: word_window,
                self_window: self_replace,
                reweight,
                attention_maps: attention_maps.is_some(),
                local_blend,
                source,
            };
            edit_p2p(device, params, &out, source_out.as_deref(), attention_maps.as_deref())
        }
        EditMethod::Ip2p => {
            let Some(image) = image else {
                bail!("--method ip2p needs --image (the image to edit) and the instruction as --prompt");
            };
            edit_ip2p(device, base, &image, image_guidance, &out)
        }
        EditMethod::Diffedit => {
            let (Some(image), Some(target_prompt)) = (image, target_prompt) else {
                bail!("--method diffedit needs --image, --source-prompt (what it shows) and --target-prompt");
            };
            let image = start_image_job(device, &mut base, &image)?;
            let mask = match &mask {
                Some(path) => {
                    let label = format!("--mask {}", path.display());
                    Some(ImageData::from_rgba_image(&read_mask(path, &label, image.dimensions())?))
                }
                None => None,
            };
            let source_prompt =
                std::mem::replace(&mut base.prompt, text_argument("--target-prompt", target_prompt)?);
            let mask_used = if mask.is_some() {
                "given".to_string()
            } else {
                format!(
                    "estimated at strength {mask_strength}, threshold {mask_threshold}, edges {mask_edges}"
                )
            };
            let infotext = format!(
                "{}, DiffEdit from: {source_prompt}, encode ratio {encode_ratio}, mask {mask_used}",
                base.to_infotext()
            );
            let steps = base.steps;
            let params = DiffEditParams {
                base,
                source_prompt,
                image: ImageData::from_rgba_image(&image),
                strength: encode_ratio,
                mask_samples,
                mask_strength,
                mask_threshold,
                mask_edges,
                mask,
            };
            let outputs = [("image", Some(out.as_path())), ("mask", mask_out.as_deref())];
            run_and_write_images(device, Job::DiffEdit(params), steps, &outputs, None, &infotext)
        }
        EditMethod::Pww => {
            device::select(device).map_err(anyhow::Error::msg)?;
            (base.width, base.height) = (base.width / 8 * 8, base.height / 8 * 8);
            let mut regions = Vec::new();
            for (word, path) in &region {
                let label = format!("--region {word}={}", path.display());
                let mask = read_mask(path, &label, (base.width, base.height))?;
                regions.push((word.clone(), ImageData::from_rgba_image(&mask)));
            }
            let words: Vec<&str> = region.iter().map(|(word, _)| word.as_str()).collect();
            let infotext =
                format!("{}, Paint with words: {} (w {pww_strength})", base.to_infotext(), words.join(" "));
            let steps = base.steps;
            let params = PaintWithWordsParams {
                base,
                regions,
                strength: pww_strength,
                attention_maps: attention_maps.is_some(),
            };
            let outputs = [("image", Some(out.as_path()))];
            run_and_write_images(
                device,
                Job::PaintWithWords(params),
                steps,
                &outputs,
                attention_maps.as_deref(),
                &infotext,
            )
        }
        EditMethod::Magicmix => {
            let Some(image) = image else {
                bail!("--method magicmix needs --image (the layout) and the new content as --prompt");
            };
            let image = start_image_job(device, &mut base, &image)?;
            let infotext =
                format!("{}, MagicMix: kmin {kmin}, kmax {kmax}, mix {mix_factor}", base.to_infotext());
            let steps = base.steps;
            let job = Job::MagicMix(MagicMixParams {
                base,
                image: ImageData::from_rgba_image(&image),
                kmin,
                kmax,
                mix_factor,
            });
            run_and_write(device, job, steps, "edit", &out, &infotext)
        }
    }
}

fn edit_p2p(
    device: DeviceChoice,
    mut params: PromptToPromptParams,
    out: &std::path::Path,
    source_out: Option<&std::path::Path>,
    maps: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    device::select(device).map_err(anyhow::Error::msg)?;
    round_size(&mut params.base);
    let base = &params.base;
    let infotext = format!(
        "{}\nTarget prompt: {}, P2P cross: {}-{}, P2P self: {}",
        base.to_infotext(),
        params.target_prompt,
        params.cross_window.0,
        params.cross_window.1,
        params.self_window
    );
    let steps = params.base.steps;
    let outputs = [("target", Some(out)), ("source", source_out)];
    run_and_write_images(device, Job::PromptToPrompt(params), steps, &outputs, maps, &infotext)
}

/// Runs a job that makes several labelled images and writes those asked for: a label's file
/// from `outputs`, attention maps ("attention: WORD") and their per-step film strips
/// ("attention steps: WORD", written NN-WORD-steps.png) numbered into `maps`.
fn run_and_write_images(
    device: DeviceChoice,
    job: Job,
    steps: usize,
    outputs: &[(&str, Option<&std::path::Path>)],
    maps: Option<&std::path::Path>,
    infotext: &str,
) -> anyhow::Result<()> {
    if let Some(folder) = maps {
        std::fs::create_dir_all(folder).with_context(|| format!("--attention-maps {}", folder.display()))?;
    }
    let JobOutput::Images(images) = run_job_output(device, job, steps, "edit")? else {
        bail!("the engine returned no images");
    };
    let (mut map_index, mut strip_index) = (0, 0);
    let safe =
        |word: &str| -> String { word.chars().map(|c| if c.is_alphanumeric() { c } else { '_' }).collect() };
    for labelled in images {
        let mut rgba = labelled.image.to_rgba_image().context("the engine returned a malformed image")?;
        let named = outputs.iter().find(|(label, _)| *label == labelled.label).and_then(|(_, path)| *path);
        let label = labelled.label.as_str();
        let path = match (named, maps) {
            (Some(path), _) => path.to_path_buf(),
            (None, Some(folder)) => {
                if let Some(word) = label.strip_prefix(protocol::ATTENTION_LABEL) {
                    map_index += 1;
                    folder.join(format!("{map_index:02}-{}.png", safe(word)))
                } else if let Some(word) = label.strip_prefix(protocol::ATTENTION_STEPS_LABEL) {
                    // the steps left to right, each frame at least 64 pixels tall to be seen
                    strip_index += 1;
                    let scale = 64u32.div_ceil(rgba.height().max(1)).max(1);
                    rgba = image::imageops::resize(
                        &rgba,
                        rgba.width() * scale,
                        rgba.height() * scale,
                        image::imageops::FilterType::Nearest,
                    );
                    folder.join(format!("{strip_index:02}-{}-steps.png", safe(word)))
                } else {
                    continue;
                }
            }
            _ => continue,
        };
        document::write_png_with_text_atomic(&rgba, &path, "parameters", infotext)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A WAV file as mono samples at `rate` (mixing and resampling said).
fn read_source(path: &std::path::Path, rate: u32) -> anyhow::Result<std::sync::Arc<Vec<f32>>> {
    use diffusion_studio::audio::wav;
    let clip = wav::read_wav(path)?;
    if clip.channels.len() > 1 {
        eprintln!("{}: {} channels mixed to mono", path.display(), clip.channels.len());
    }
    let clip = if clip.sample_rate == rate {
        clip
    } else {
        eprintln!("{}: resampled from {} Hz to {rate} Hz", path.display(), clip.sample_rate);
        clip.resampled(rate)?
    };
    Ok(std::sync::Arc::new(clip.mono()))
}

/// The audio job's request: the model (the bundled music model by default), its preset's
/// rate, and the task made for that rate.
fn audio_params(
    job: &mut AudioJobArgs,
    task: impl FnOnce(u32) -> anyhow::Result<AudioTask>,
) -> anyhow::Result<protocol::AudioParams> {
    use diffusion_studio::engine::spectrogram::SpectrogramPreset;
    if job.model.model.is_none() {
        let bundled = catalog::bundled_music_model();
        anyhow::ensure!(
            bundled.join("model_index.json").is_file(),
            "no --model given and the bundled music model is not at {} (train it with `diffusion-studio train --dataset music --buckets 256x128 --run RUN --out {}`, or give --model)",
            bundled.display(),
            bundled.display()
        );
        job.model.model = Some(bundled);
    }
    let path = job.model.model.clone().unwrap_or_default();
    // the sample rate sources are resampled to: the asked-for preset's, else the model's own
    let preset = match &job.preset {
        Some(name) => SpectrogramPreset::by_name(name).map_err(|e| anyhow::anyhow!("--preset: {e}"))?,
        None => catalog::model_spectrogram(&path).unwrap_or_else(SpectrogramPreset::riffusion),
    };
    let base = base_params(job.model.clone(), job.sampling.clone(), job.frames.unwrap_or(0), 0)?;
    if catalog::is_audio_diffusion(&path) {
        if !base.prompt.is_empty() {
            eprintln!("note: audio-diffusion models are unconditional; the prompt is not used (the seed is)");
        }
    } else if base.prompt.is_empty() {
        bail!("--prompt is needed: {} is a text-conditioned model", path.display());
    }
    Ok(protocol::AudioParams {
        base,
        preset: job.preset.clone().unwrap_or_default(),
        task: task(preset.sample_rate)?,
        griffin_lim_iterations: job.iterations,
    })
}

/// Runs an audio job and returns its clip.
fn run_audio_clip(
    device: DeviceChoice,
    job: &mut AudioJobArgs,
    task: impl FnOnce(u32) -> anyhow::Result<AudioTask>,
) -> anyhow::Result<protocol::AudioClip> {
    let params = audio_params(job, task)?;
    let label = params.task.label();
    let steps = params.base.steps;
    match run_job_output(device, Job::Audio(params), steps, label)? {
        JobOutput::Audio(clip) => Ok(clip),
        _ => bail!("the engine returned no audio"),
    }
}

/// Writes a clip (and its spectrogram when asked).
fn write_audio(job: &AudioJobArgs, clip: &protocol::AudioClip, out: &std::path::Path) -> anyhow::Result<()> {
    use diffusion_studio::audio::wav;
    let wav_clip = wav::Clip { sample_rate: clip.sample_rate, channels: vec![clip.samples.to_vec()] };
    wav::write_wav(out, &wav_clip)?;
    eprintln!(
        "wrote {} ({:.2} s at {} Hz, {} preset)",
        out.display(),
        wav_clip.seconds(),
        clip.sample_rate,
        clip.preset
    );
    if let Some(path) = &job.spectrogram {
        let image =
            clip.spectrogram.to_rgba_image().context("the engine returned a malformed spectrogram")?;
        let text = format!("Spectrogram preset: {}", clip.preset);
        document::write_png_with_text_atomic(&image, path, "parameters", &text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run_audio(
    device: DeviceChoice,
    mut job: AudioJobArgs,
    task: impl FnOnce(u32) -> anyhow::Result<AudioTask>,
) -> anyhow::Result<()> {
    let clip = run_audio_clip(device, &mut job, task)?;
    let out = job.out.clone();
    write_audio(&job, &clip, &out)
}

/// Runs one job on a fresh engine with a progress bar on stderr; returns its image.
fn run_job(device: DeviceChoice, job: Job, steps: usize, label: &str) -> anyhow::Result<image::RgbaImage> {
    match run_job_output(device, job, steps, label)? {
        JobOutput::Image(result) => result.to_rgba_image().context("the engine returned a malformed image"),
        JobOutput::Inversion(_) => bail!("the engine returned an inversion, not an image"),
        JobOutput::Loaded(_) => bail!("the engine loaded a model but made no image"),
        JobOutput::Audio(_) => bail!("the engine returned audio, not an image"),
        JobOutput::Images(images) => images
            .first()
            .and_then(|first| first.image.to_rgba_image())
            .context("the engine returned no image"),
    }
}

fn eval(
    options: &diffusion_studio::eval::shapes_metrics::EvalOptions,
    out: Option<&std::path::Path>,
    card: bool,
) -> anyhow::Result<()> {
    let report = diffusion_studio::eval::shapes_metrics::evaluate(options, &mut |line| eprintln!("{line}"))?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    eprintln!("{}", report.markdown(options));
    if let Some(out) = out {
        std::fs::write(out, format!("{json}\n"))
            .with_context(|| format!("could not write {}", out.display()))?;
    }
    if card {
        let text = diffusion_studio::eval::card::model_card(&options.model, &report, options)?;
        let path = options.model.join("MODEL_CARD.md");
        std::fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// A training run's progress on stderr: a bar per stage with the mean loss of the last 100 steps.
struct TrainBar {
    bar: indicatif::ProgressBar,
    /// Checkpoint and stop once this instant has passed (`--time-limit`).
    deadline: Option<std::time::Instant>,
}

impl TrainProgress for TrainBar {
    fn stage(&mut self, stage: Stage, steps: usize, start: usize) {
        self.bar.finish();
        self.bar = indicatif::ProgressBar::new(steps as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>5} [{bar:30}] {pos}/{len} loss {msg} {elapsed} (eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        self.bar.set_prefix(stage.name());
        self.bar.set_position(start as u64);
        self.bar.reset_eta();
        if start > 0 {
            self.bar.suspend(|| eprintln!("{}: resuming from the checkpoint at step {start}", stage.name()));
        }
    }

    fn step(&mut self, step: usize, loss: f64) {
        self.bar.set_position(step as u64);
        self.bar.set_message(format!("{loss:.4}"));
        // no terminal (a log file): a line every 250 steps instead of the bar
        if self.bar.is_hidden() && step.is_multiple_of(250) {
            eprintln!(
                "{} step {step}/{} loss {loss:.4} after {:.0} s",
                self.bar.prefix(),
                self.bar.length().unwrap_or(0),
                self.bar.elapsed().as_secs_f64()
            );
        }
    }

    fn should_stop(&mut self) -> bool {
        self.deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline)
    }

    fn message(&mut self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }
}

fn train(device: DeviceChoice, args: TrainArgs) -> anyhow::Result<()> {
    let device = device::select(device).map_err(anyhow::Error::msg)?;
    let run = Run::open(&args.run, args.options, device)?;
    if let Some(from) = &args.autoencoder_from
        && run.reuse_autoencoder(from)?
    {
        eprintln!("autoencoder stages and latents copied from {}", from.display());
    }
    if let Some(from) = &args.unet_from
        && run.start_unet_from(from)?
    {
        eprintln!("the UNet stage starts from the weights of {}", from.display());
    }
    let deadline =
        args.time_limit.map(|minutes| std::time::Instant::now() + Duration::from_secs_f64(minutes * 60.0));
    let mut progress = TrainBar { bar: indicatif::ProgressBar::hidden(), deadline };
    run.train(args.until, &mut progress)?;
    progress.bar.finish();
    for stage in Stage::ALL {
        if let Some(report) = run.report(stage)? {
            eprintln!(
                "{}: {} steps in {:.0} s, final loss {:.4} {}",
                stage.name(),
                report.steps,
                report.seconds,
                report.final_loss,
                report.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")
            );
        }
    }
    if let Some(out) = args.out {
        run.export(&out)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// Runs one job on a fresh engine with a progress bar on stderr; returns its output.
fn run_job_output(device: DeviceChoice, job: Job, steps: usize, label: &str) -> anyhow::Result<JobOutput> {
    let engine = EngineHandle::spawn(device, std::sync::Arc::new(|| {}));
    let id = engine.submit(job);
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    loop {
        let event = engine
            .events()
            .recv_timeout(Duration::from_secs(3600))
            .context("the engine stopped answering")?;
        match event {
            EngineEvent::DeviceWarning { message } => bar.suspend(|| eprintln!("warning: {message}")),
            EngineEvent::ModelLoaded { job, description, .. } if job == id => {
                bar.suspend(|| eprintln!("model: {description}"))
            }
            EngineEvent::Progress { job, step, of, .. } if job == id => {
                bar.set_length(of as u64);
                bar.set_position(step as u64)
            }
            EngineEvent::Done { job, output } if job == id => {
                bar.finish_and_clear();
                return Ok(output);
            }
            EngineEvent::Failed { job, message } if job == id => {
                bar.abandon();
                bail!("{message}");
            }
            EngineEvent::Cancelled { job } if job == id => bail!("cancelled"),
            _ => {}
        }
    }
}

fn noise(
    device: DeviceChoice,
    image_path: &std::path::Path,
    strength: f32,
    steps: usize,
    seed: u64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    // An explicit device that is not there is an error on the command line (the studio falls
    // back to the CPU and says so instead).
    device::select(device).map_err(anyhow::Error::msg)?;
    let image = document::read_image(image_path)?;
    let job = Job::ForwardNoise { image: ImageData::from_rgba_image(&image), strength, steps, seed };
    let result = run_job(device, job, steps, "noise")?;
    document::write_png_atomic(&result, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
