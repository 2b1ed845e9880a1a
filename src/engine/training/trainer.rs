//! `diffusion-studio train`: the bundled shapes model trained in stages in one run folder —
//! the VAE, then its TAESD-style preview decoder (distilled from it), then the text encoder and
//! UNet together on cached latents — and exported as a diffusers folder.
//!
//! Every stage checkpoints its weights, optimiser moments and EMA every N steps (atomically), and
//! a stage's step draws everything from (seed, stage, step) alone, so a run that is interrupted
//! and started again with the same command continues exactly where the last checkpoint was and
//! ends with the same weights as an uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use super::contrast;
use super::data::{self, Bucket, LatentSet};
use super::grounding::{AttentionCollector, grounding_loss};
use super::init::{self, WeightInit};
use super::noise::{NoiseDistribution, Target, TrainingSchedule, training_noise};
use super::optim::{AdamW, AdamWConfig, Ema};
use super::outline::{outline_weights, weighted_mean};
use super::shapes_model::{self, Architecture, named_variables, write_json, write_tensors};
use crate::datasets::shapes::{IMAGE_SIZE, Scene, Split};
use crate::engine::attention_control::AttentionControl;
use crate::engine::image_tensor::image_from_tensor;
use crate::engine::models::clip::ClipTextModel;
use crate::engine::models::taesd::AutoencoderTiny;
use crate::engine::models::unet_2d_condition::UNet2DConditionModel;
use crate::engine::models::vae::AutoencoderKl;
use crate::eval::detect;
use crate::text::tokenizer::ClipTokenizer;

/// Every option of a run (saved in the run folder; a resumed run must be given the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainOptions {
    /// What the model learns: the shapes scenes, or the music clips (as studio-preset
    /// spectrogram images; give --buckets 256x128).
    #[arg(long, value_enum, default_value_t = Dataset::Shapes)]
    #[serde(default)]
    pub dataset: Dataset,
    /// Seed of the data, the initial weights and every step's draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// VAE optimisation steps.
    #[arg(long, default_value_t = 2500)]
    pub vae_steps: usize,
    /// Channels of the VAE's latents (16×16×C for a 128×128 image). SD uses 4; more keep
    /// more of the small shapes' outlines (SD3 went to 16 for the same reason).
    #[arg(long, default_value_t = 4)]
    #[serde(default = "four")]
    pub latent_channels: i64,
    /// VAE levels: latents 2^(levels − 1) times smaller per side (4: 8×, as SD; 3: 4×, which
    /// keeps small objects' outlines several latent pixels wide).
    #[arg(long, default_value_t = 4)]
    #[serde(default = "four_levels")]
    pub vae_levels: usize,
    /// UNet channels per level, comma-separated.
    #[arg(long, default_value = "32,64,64")]
    #[serde(default = "unet_channels")]
    pub unet_channels: String,
    /// Which UNet levels have attention (1) or not (0), comma-separated, one per level; the
    /// middle block always has it.
    #[arg(long, default_value = "1,1,0")]
    #[serde(default = "unet_attention")]
    pub unet_attention: String,
    /// Groups of the UNet's group norms (one number for every level, as in diffusers). Keep
    /// several channels per group at the narrowest level: with one channel per group the norm
    /// erases each channel's mean and scale, and the UNet can no longer predict small noise.
    #[arg(long, default_value_t = 4)]
    #[serde(default = "sixteen")]
    pub unet_norm_groups: i64,
    /// Also add the prompt, pooled into one vector, to the UNet's timestep embedding (diffusers'
    /// `addition_embed_type: "text"`), so that every resnet hears it, not only the attention
    /// levels: a direct path for words that change a whole object's form, like its shape.
    #[arg(long)]
    #[serde(default)]
    pub unet_text_time: bool,
    /// How the UNet's weights start: PyTorch's layer defaults (what diffusers' models start
    /// from), or tch's wider Kaiming draw, which runs before 2026-11-24 used. From the tch start
    /// the shape word stayed unused for thousands of steps (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = WeightInit::Torch)]
    #[serde(default = "kaiming")]
    pub unet_init: WeightInit,
    /// VAE batch (random crops).
    #[arg(long, default_value_t = 8)]
    pub vae_batch: i64,
    /// Side of the VAE's random training crops (the VAE is convolutional; 128: whole images,
    /// so that it also learns the borders).
    #[arg(long, default_value_t = 128)]
    pub vae_crop: i64,
    /// The VAE's and preview decoder's peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub vae_lr: f64,
    /// Weight of the KL term against the L1 + MSE reconstruction (each per element).
    #[arg(long, default_value_t = 1e-5)]
    pub vae_kl: f64,
    /// Extra weight of the VAE's reconstruction loss on pixels at colour edges (0: none): the
    /// outlines that tell a star from a circle are a small share of the pixels.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub vae_edge_weight: f64,
    /// Preview-decoder (TAESD) distillation steps.
    #[arg(long, default_value_t = 1500)]
    pub taesd_steps: usize,
    /// Text encoder + UNet steps.
    #[arg(long, default_value_t = 12000)]
    pub unet_steps: usize,
    /// Text encoder + UNet batch.
    #[arg(long, default_value_t = 64)]
    pub unet_batch: i64,
    /// Peak learning rate of the UNet and text encoder, after a linear warm-up, then
    /// cosine decay to a tenth.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// The text encoder's learning rate as a multiple of --lr; 0 keeps it at its random
    /// initialisation (every word stays distinct, and only the UNet learns to read them).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub text_lr_scale: f64,
    /// Weight of the cross-attention grounding loss (TokenCompose's L_token, Wang et al. 2024):
    /// each word that names an object or the background has its attention pulled inside that
    /// region's true mask, so that a shape word acts where its object is; 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub ground_weight: f64,
    /// Extra weight of the UNet's loss on the latent cells along every object's outline (from
    /// the dataset's masks; 0: none): the outlines that tell a star from a circle are a small
    /// share of the cells, and without it the shape words stay close to unused.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub unet_edge_weight: f64,
    /// Weight of the shape-contrast loss: on the noisier half of the schedule, the UNet's loss
    /// with one object's shape word swapped for another shape is pushed above its loss with the
    /// true caption by a margin, so that the prediction has to depend on the shape word the way
    /// the image does (it cannot tell a wrong shape word from x_t there); 0 turns it off. Each
    /// step then also runs the UNet on those rows with the swapped captions.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub shape_contrast: f64,
    /// The UNet stage's scenes hold at most this many objects (1 to 3; the evaluation always
    /// uses the shipped data's 1 to 3): for curricula and diagnostics.
    #[arg(long, default_value_t = 3)]
    #[serde(default = "three_objects")]
    pub max_objects: usize,
    /// The UNet stage's objects are this many times the shipped data's size (0.25 to 1.5): larger
    /// objects keep their outlines more latent cells wide.
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "one")]
    pub object_scale: f64,
    /// Warm-up steps of every stage.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Training images rendered for the VAE stage.
    #[arg(long, default_value_t = 4000)]
    pub vae_images: usize,
    /// Training images rendered and encoded for the UNet stage, split evenly over the buckets.
    #[arg(long, default_value_t = 30000)]
    pub images: usize,
    /// Aspect-ratio buckets, WIDTHxHEIGHT, comma-separated (one: no bucketing).
    #[arg(long, default_value = "128x128,96x160,160x96")]
    pub buckets: String,
    /// What the UNet predicts.
    #[arg(long, value_enum, default_value_t = Target::Epsilon)]
    pub target: Target,
    /// Min-SNR-γ loss weighting (Hang et al. 2023, γ = 5 there); 0, the default, turns it off.
    /// With v-prediction it weighs the noisy half of the schedule, where the prompt decides
    /// what is drawn, 4 to 27 times less (t = 600: 0.16, t = 800: 0.037): measured on the shapes
    /// data, the colour word's use came 12 to 24 times slower with γ = 5 (BENCHMARKS.md).
    #[arg(long, default_value_t = 0.0)]
    pub min_snr: f64,
    /// Offset noise (Guttenberg 2023): each training noise gets a random per-channel shift of
    /// this standard deviation, so that generation follows the prompt's colours, not the random
    /// mean of its starting noise; 0 turns it off.
    #[arg(long, default_value_t = 0.1)]
    #[serde(default)]
    pub offset_noise: f64,
    /// How noise levels are drawn.
    #[arg(long, value_enum, default_value_t = NoiseDistribution::Uniform)]
    pub noise: NoiseDistribution,
    /// Share of captions replaced by the empty prompt (what classifier-free guidance needs).
    #[arg(long, default_value_t = 0.1)]
    pub caption_dropout: f64,
    /// EMA decay of the shipped UNet and text encoder weights; 0 ships the raw weights.
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 500)]
    #[serde(skip)]
    pub checkpoint_every: usize,
}

/// The procedural datasets a run can learn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    #[default]
    Shapes,
    Music,
}

fn one() -> f64 {
    1.0
}

fn four() -> i64 {
    4
}

fn four_levels() -> usize {
    4
}

/// What runs started before `--unet-norm-groups` existed were built with.
fn sixteen() -> i64 {
    16
}

/// Runs whose options predate `--unet-init` started from tch's draw.
fn kaiming() -> WeightInit {
    WeightInit::Kaiming
}

fn three_objects() -> usize {
    3
}

fn unet_channels() -> String {
    "32,64,64".into()
}

fn unet_attention() -> String {
    "1,1,0".into()
}

impl TrainOptions {
    /// The UNet stage's scenes.
    pub fn scene_style(&self) -> crate::datasets::shapes::SceneStyle {
        crate::datasets::shapes::SceneStyle {
            max_objects: self.max_objects,
            object_scale: self.object_scale as f32,
        }
    }

    /// The model sizes these options choose (checked).
    pub fn architecture(&self) -> anyhow::Result<Architecture> {
        let list = |text: &str, name: &str| -> anyhow::Result<Vec<i64>> {
            text.split(',')
                .map(|part| {
                    part.trim().parse::<i64>().with_context(|| format!("--{name}: {part:?} is not a number"))
                })
                .collect()
        };
        let arch = Architecture {
            latent_channels: self.latent_channels,
            vae_levels: self.vae_levels,
            unet_channels: list(&self.unet_channels, "unet-channels")?,
            unet_attention: list(&self.unet_attention, "unet-attention")?
                .into_iter()
                .map(|v| v != 0)
                .collect(),
            unet_norm_groups: self.unet_norm_groups,
            unet_text_time: self.unet_text_time,
        };
        arch.check()?;
        self.scene_style().check().map_err(anyhow::Error::msg)?;
        Ok(arch)
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            options: TrainOptions,
        }
        Wrapper::parse_from(["train"]).options
    }
}

/// The stages of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Vae,
    Taesd,
    Unet,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Vae, Stage::Taesd, Stage::Unet];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Vae => "vae",
            Stage::Taesd => "taesd",
            Stage::Unet => "unet",
        }
    }
}

/// What a finished stage reports (`STAGE/done.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: Stage,
    pub steps: usize,
    /// Wall-clock seconds of the steps (a resumed stage adds its runs).
    pub seconds: f64,
    /// The mean loss of the last 100 steps.
    pub final_loss: f64,
    /// Stage-specific numbers (the VAE's scaling factor and reconstruction PSNR, …).
    pub metrics: BTreeMap<String, f64>,
}

/// How a run reports progress.
pub trait TrainProgress {
    fn stage(&mut self, stage: Stage, steps: usize, start: usize);
    fn step(&mut self, step: usize, loss: f64);
    fn message(&mut self, text: &str);
    /// Asked after every step: true checkpoints the stage and ends the run with
    /// [`Interrupted`] (a time limit, a test); the same command resumes it.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// A run stopped on request after checkpointing; running it again resumes.
#[derive(Debug, thiserror::Error)]
#[error(
    "training stopped at step {step} of stage {stage}, checkpoint saved; run the same command again to resume"
)]
pub struct Interrupted {
    pub stage: &'static str,
    pub step: usize,
}

/// No reporting (tests).
pub struct Quiet;

impl TrainProgress for Quiet {
    fn stage(&mut self, _: Stage, _: usize, _: usize) {}
    fn step(&mut self, _: usize, _: f64) {}
    fn message(&mut self, _: &str) {}
}

/// A run folder and what it was started with.
pub struct Run {
    pub folder: PathBuf,
    pub options: TrainOptions,
    pub device: Device,
    pub threads: usize,
    /// The sizes `options` choose.
    pub arch: Architecture,
}

impl Run {
    /// Opens (or starts) `folder` with `options`; a folder started with other options is refused
    /// by name, so a resumed run never silently mixes settings.
    pub fn open(folder: &Path, options: TrainOptions, device: Device) -> anyhow::Result<Self> {
        let arch = options.architecture()?;
        for (flag, value, zero_means) in [
            ("--text-lr-scale", options.text_lr_scale, "freezes the text encoder"),
            ("--ground-weight", options.ground_weight, "turns grounding off"),
            ("--unet-edge-weight", options.unet_edge_weight, "weighs every latent cell the same"),
            ("--shape-contrast", options.shape_contrast, "turns the shape contrast off"),
        ] {
            anyhow::ensure!(
                value >= 0.0 && value.is_finite(),
                "{flag} must be 0 or more (0 {zero_means}), not {value}"
            );
        }
        if options.dataset == Dataset::Music {
            anyhow::ensure!(
                options.ground_weight == 0.0
                    && options.unet_edge_weight == 0.0
                    && options.vae_edge_weight == 0.0
                    && options.shape_contrast == 0.0,
                "--ground-weight, --unet-edge-weight, --vae-edge-weight and --shape-contrast need the shapes' objects; the music dataset has none"
            );
            for bucket in Bucket::parse_list(&options.buckets)? {
                anyhow::ensure!(
                    bucket.height == 128 && bucket.width as usize <= crate::datasets::music::FRAMES,
                    "--buckets {}: music spectrograms are 128 mel rows high and at most {} frames wide (e.g. 256x128)",
                    bucket.name(),
                    crate::datasets::music::FRAMES
                );
            }
        }
        std::fs::create_dir_all(folder)
            .with_context(|| format!("could not create run folder {}", folder.display()))?;
        let path = folder.join("options.json");
        if path.is_file() {
            let (a, b) = (read_options(folder)?, serde_json::to_value(&options)?);
            if a != b {
                let keys: Vec<&str> =
                    a.as_object().into_iter().flatten().map(|(key, _)| key.as_str()).collect();
                let differing: Vec<String> = differing_options(&a, &b, &keys)
                    .map(|(key, then, now)| format!("{key} (started with {then}, now {now})"))
                    .collect();
                anyhow::bail!(
                    "run folder {} was started with other options: {}; resume with the same options or use a new --run folder",
                    folder.display(),
                    differing.join(", ")
                );
            }
        } else {
            write_json(&path, &serde_json::to_value(&options)?)?;
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(Self { folder: folder.into(), options, device, threads, arch })
    }

    /// The options that decide the autoencoder stages (VAE, preview decoder): two runs that
    /// agree on these can share them.
    pub const AUTOENCODER_OPTIONS: [&'static str; 13] = [
        "dataset",
        "seed",
        "latent_channels",
        "vae_levels",
        "vae_batch",
        "vae_crop",
        "vae_lr",
        "vae_kl",
        "vae_edge_weight",
        "vae_steps",
        "vae_images",
        "taesd_steps",
        "warmup",
    ];

    /// What the latent cache depends on besides the autoencoder.
    pub const LATENT_OPTIONS: [&'static str; 4] = ["images", "buckets", "max_objects", "object_scale"];

    /// Starts this run's autoencoder stages and latent cache from the finished ones of run
    /// `from` (copies of `vae/`, `taesd/` and `tokenizer/`, and `latents.*` when the
    /// [`Self::LATENT_OPTIONS`] agree too), so that runs which differ only in their UNet options
    /// (the ablations) train only the UNet. Refuses, by option name, a run whose
    /// [`Self::AUTOENCODER_OPTIONS`] differ, and does nothing when this run's VAE stage has
    /// already started.
    pub fn reuse_autoencoder(&self, from: &Path) -> anyhow::Result<bool> {
        if self.folder.join(Stage::Vae.name()).exists() {
            return Ok(false);
        }
        let (theirs, ours) = (read_options(from)?, serde_json::to_value(&self.options)?);
        let differing = options_there_and_here(&theirs, &ours, &Self::AUTOENCODER_OPTIONS);
        anyhow::ensure!(
            differing.is_empty(),
            "the autoencoder of run {} was trained with other options: {differing}",
            from.display()
        );
        for stage in [Stage::Vae, Stage::Taesd] {
            anyhow::ensure!(
                from.join(stage.name()).join("done.json").is_file(),
                "stage {} of run {} has not finished; finish it first (train --run {} --until taesd)",
                stage.name(),
                from.display(),
                from.display()
            );
        }
        for name in ["vae", "taesd"] {
            copy_folder(&from.join(name), &self.folder.join(name))?;
        }
        // a run stopped after `--until taesd` has no tokenizer yet; this run writes the same one
        if from.join("tokenizer").is_dir() {
            copy_folder(&from.join("tokenizer"), &self.folder.join("tokenizer"))?;
        }
        let same_latents = differing_options(&theirs, &ours, &Self::LATENT_OPTIONS).next().is_none();
        for name in ["latents.safetensors", "latents.seconds"] {
            let source = from.join(name);
            if same_latents && source.is_file() {
                std::fs::copy(&source, self.folder.join(name))
                    .with_context(|| format!("could not copy {}", source.display()))?;
            }
        }
        Ok(true)
    }

    /// The options that give the text encoder and the UNet their shapes: a run can start its
    /// UNet stage from another's only when they agree.
    pub const UNET_SHAPE_OPTIONS: [&'static str; 6] = [
        "dataset",
        "latent_channels",
        "unet_channels",
        "unet_attention",
        "unet_norm_groups",
        "unet_text_time",
    ];

    /// Starts this run's UNet stage from the latest weights of run `from`'s (its UNet and text
    /// encoder as they stood at its last checkpoint, not their average): a curriculum, or
    /// fine-tuning a finished run on other data. The optimiser, the learning-rate warm-up and
    /// the step count start afresh; the average starts from these weights. This run's
    /// autoencoder is taken from `from` when it has none yet, and must otherwise be the same
    /// (byte for byte), or the UNet would meet latents of another space. Kept in
    /// `unet/start/` (with `start.json` naming the run and step) for a resume; does nothing
    /// when this run's UNet stage has already stepped from the same start, and refuses
    /// another start.
    pub fn start_unet_from(&self, from: &Path) -> anyhow::Result<bool> {
        let start = self.folder.join(Stage::Unet.name()).join("start");
        let record = start.join("start.json");
        // named by its full path, so that the same run given another way is the same start
        let name =
            std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf()).to_string_lossy().into_owned();
        if record.is_file() {
            let text = std::fs::read_to_string(&record)?;
            let saved: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is damaged; delete the run's unet folder", record.display()))?;
            let same = saved.get("run").and_then(|r| r.as_str()) == Some(name.as_str());
            anyhow::ensure!(
                same,
                "run {} already started its UNet from {}; leave out --unet-from or use a new --run folder",
                self.folder.display(),
                saved.get("run").map(|r| r.to_string()).unwrap_or_default()
            );
            return Ok(false);
        }
        let unet_folder = self.folder.join(Stage::Unet.name());
        anyhow::ensure!(
            !unet_folder.join("checkpoint.safetensors").exists() && !unet_folder.join("done.json").exists(),
            "run {} has trained its UNet already; --unet-from only starts a UNet stage",
            self.folder.display()
        );
        let (theirs, ours) = (read_options(from)?, serde_json::to_value(&self.options)?);
        let differing = options_there_and_here(&theirs, &ours, &Self::UNET_SHAPE_OPTIONS);
        anyhow::ensure!(
            differing.is_empty(),
            "the UNet of run {} has another shape: {differing}",
            from.display()
        );
        let checkpoint = from.join(Stage::Unet.name()).join("checkpoint.safetensors");
        anyhow::ensure!(
            checkpoint.is_file(),
            "run {} has no UNet checkpoint ({} is missing): train its UNet first",
            from.display(),
            checkpoint.display()
        );
        if !self.folder.join(Stage::Vae.name()).exists() {
            self.reuse_autoencoder(from)?;
        }
        let vae = |run: &Path| std::fs::read(run.join(Stage::Vae.name()).join("final.safetensors"));
        let same_vae = match (vae(from), vae(&self.folder)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        anyhow::ensure!(
            same_vae,
            "run {}'s UNet was trained on another autoencoder's latents than this run's (vae/final.safetensors differ or are missing); start this run with --autoencoder-from {} too",
            from.display(),
            from.display()
        );
        let tensors = crate::engine::loading::read_safetensors(&checkpoint)?;
        let step = tensors.get("step").map(i64::try_from).transpose()?.unwrap_or(0);
        std::fs::create_dir_all(&start)?;
        for part in ["unet", "text_encoder"] {
            let prefix = format!("{part}.weights.");
            let weights: Vec<(String, Tensor)> = tensors
                .iter()
                .filter_map(|(key, t)| {
                    key.strip_prefix(&prefix).map(|name| (name.to_string(), t.shallow_clone()))
                })
                .collect();
            anyhow::ensure!(!weights.is_empty(), "{} holds no {part} weights", checkpoint.display());
            write_tensors(&start.join(format!("{part}.safetensors")), &weights)?;
        }
        // written last: a start without it is redone
        write_json(&record, &serde_json::json!({ "run": name, "step": step }))?;
        Ok(true)
    }

    /// The run and step this run's UNet stage started from (`start_unet_from`), if any.
    pub fn unet_start(&self) -> anyhow::Result<Option<(String, i64)>> {
        let record = self.folder.join(Stage::Unet.name()).join("start").join("start.json");
        if !record.is_file() {
            return Ok(None);
        }
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record)?)?;
        let run = saved.get("run").and_then(|r| r.as_str()).unwrap_or_default().to_string();
        Ok(Some((run, saved.get("step").and_then(|s| s.as_i64()).unwrap_or(0))))
    }

    /// The autoencoder stages' images: the shapes' square, or the music's first bucket.
    fn autoencoder_bucket(&self) -> anyhow::Result<Bucket> {
        Ok(match self.options.dataset {
            Dataset::Shapes => Bucket { width: IMAGE_SIZE, height: IMAGE_SIZE },
            Dataset::Music => Bucket::parse_list(&self.options.buckets)?[0],
        })
    }

    /// Samples `0..count` of the dataset's bucket stream `bucket_index` from `split` (`styled`:
    /// in the UNet stage's scene style).
    fn render(
        &self,
        bucket_index: usize,
        bucket: Bucket,
        split: Split,
        count: usize,
        styled: bool,
    ) -> anyhow::Result<data::ImageSet> {
        let seed = self.options.seed;
        Ok(match self.options.dataset {
            Dataset::Shapes => {
                let style = if styled { self.options.scene_style() } else { Default::default() };
                data::render_set_styled(seed, bucket_index, bucket, split, count, self.threads, style)
            }
            Dataset::Music => data::render_music_set(
                data::SetRequest { seed, bucket_index, bucket, split, count, threads: self.threads },
                crate::datasets::music::PieceStyle::default(),
            )?,
        })
    }

    /// A random crop's top-left corner (multiples of 8) of side `crop` in `bucket`.
    fn crop_corner(rng: &mut ChaCha8Rng, bucket: Bucket, crop: i64) -> (i64, i64) {
        (
            rng.random_range(0..=(i64::from(bucket.width) - crop) / 8) * 8,
            rng.random_range(0..=(i64::from(bucket.height) - crop) / 8) * 8,
        )
    }

    fn stage_folder(&self, stage: Stage) -> anyhow::Result<PathBuf> {
        let folder = self.folder.join(stage.name());
        std::fs::create_dir_all(&folder)?;
        Ok(folder)
    }

    /// The report of a finished stage, if it finished.
    pub fn report(&self, stage: Stage) -> anyhow::Result<Option<StageReport>> {
        let path = self.folder.join(stage.name()).join("done.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?))
    }

    fn require(&self, stage: Stage) -> anyhow::Result<StageReport> {
        self.report(stage)?.with_context(|| {
            format!("stage {} of run {} has not finished; run it first", stage.name(), self.folder.display())
        })
    }

    /// The tokenizer folder of the run (written on first use).
    pub fn tokenizer(&self) -> anyhow::Result<(PathBuf, ClipTokenizer)> {
        let folder = self.folder.join("tokenizer");
        if !folder.join("vocab.json").is_file() {
            match self.options.dataset {
                Dataset::Shapes => shapes_model::vocabulary(),
                Dataset::Music => {
                    crate::text::word_vocab::WordVocabulary::new(&crate::datasets::music::vocabulary())
                }
            }
            .write(&folder)?;
        }
        let tokenizer = ClipTokenizer::from_folder(&folder)?;
        Ok((folder, tokenizer))
    }

    /// Runs every stage not yet finished (up to and including `until`), resuming from checkpoints.
    pub fn train(&self, until: Stage, progress: &mut dyn TrainProgress) -> anyhow::Result<()> {
        for stage in Stage::ALL {
            if stage > until {
                break;
            }
            if self.report(stage)?.is_some() {
                progress.message(&format!("stage {} already finished", stage.name()));
                continue;
            }
            let report = match stage {
                Stage::Vae => self.train_vae(progress)?,
                Stage::Taesd => self.train_taesd(progress)?,
                Stage::Unet => self.train_unet(progress)?,
            };
            write_json(&self.folder.join(stage.name()).join("done.json"), &serde_json::to_value(&report)?)?;
        }
        Ok(())
    }

    /// Linear warm-up to the stage's peak, then cosine decay to a tenth of it.
    fn lr(&self, stage: Stage, step: usize, total: usize) -> f64 {
        let peak = match stage {
            Stage::Vae | Stage::Taesd => self.options.vae_lr,
            Stage::Unet => self.options.lr,
        };
        let warmup = self.options.warmup.min(total / 2).max(1);
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (0.1 + 0.9 * cosine)
    }

    /// The random source of `stage`'s step `step`: a ChaCha8 stream, and torch's generator
    /// seeded from the same triple.
    fn step_rng(&self, stage: Stage, step: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.options.seed);
        rng.set_stream(((stage as u64) << 40) | step as u64);
        tch::manual_seed(rng.random::<i64>() & 0x7fff_ffff_ffff);
        rng
    }

    fn vae_model(&self) -> anyhow::Result<AutoencoderKl> {
        let config = shapes_model::parse(&shapes_model::vae_config(1.0, &self.arch))?;
        tch::manual_seed(self.options.seed as i64);
        Ok(AutoencoderKl::new(config, self.device))
    }

    /// The finished VAE (frozen) and its scaling factor.
    fn trained_vae(&self) -> anyhow::Result<(AutoencoderKl, f64)> {
        let report = self.require(Stage::Vae)?;
        let vae = self.vae_model()?;
        load_final(vae.var_store(), &self.folder.join("vae"))?;
        freeze(vae.var_store());
        let scaling =
            report.metrics.get("scaling_factor").copied().context("the VAE report has no scaling factor")?;
        Ok((vae, scaling))
    }

    fn train_vae(&self, progress: &mut dyn TrainProgress) -> anyhow::Result<StageReport> {
        let options = &self.options;
        let stage = Stage::Vae;
        let folder = self.stage_folder(stage)?;
        let vae = self.vae_model()?;
        progress.message(&format!("rendering {} training images for the VAE", options.vae_images));
        let square = self.autoencoder_bucket()?;
        let clock = Instant::now();
        let set = self.render(0, square, Split::Train, options.vae_images, false)?;
        let data_seconds = clock.elapsed().as_secs_f64();
        let mut parts = vec![Part::new("vae", vae.var_store(), 0.0)?];
        let mut losses = LossWindow::default();
        let crop = options.vae_crop.clamp(8, i64::from(square.width.min(square.height)));
        let mut report = self.run_steps(
            stage,
            &folder,
            options.vae_steps,
            &mut parts,
            progress,
            &mut losses,
            &mut |step| {
                let mut rng = self.step_rng(stage, step);
                let mut crops = Vec::new();
                for _ in 0..options.vae_batch {
                    let index = rng.random_range(0..set.captions.len()) as i64;
                    let (x, y) = Self::crop_corner(&mut rng, square, crop);
                    crops.push(set.images.get(index).narrow(1, y, crop).narrow(2, x, crop));
                }
                let images = data::to_unit(&Tensor::stack(&crops, 0), self.device)?;
                let posterior = vae.encode_train(&images)?;
                let z = posterior.sample(&posterior.mean.f_randn_like()?)?;
                let reconstruction = vae.decode_train(&z)?;
                let error = reconstruction.f_sub(&images)?;
                let per_pixel = error.f_abs()?.f_add(&error.f_square()?)?;
                let l1 = if options.vae_edge_weight > 0.0 {
                    let weights =
                        edge_map(&images)?.f_mul_scalar(options.vae_edge_weight)?.f_add_scalar(1.0)?;
                    per_pixel
                        .f_mul(&weights)?
                        .f_sum(Kind::Float)?
                        .f_div(&weights.f_sum(Kind::Float)?.f_mul_scalar(3.0)?)?
                } else {
                    per_pixel.f_mean(Kind::Float)?
                };
                let variance = posterior.std.f_square()?;
                let kl = posterior
                    .mean
                    .f_square()?
                    .f_add(&variance)?
                    .f_sub_scalar(1.0)?
                    .f_sub(&variance.f_clamp_min(1e-20)?.f_log()?)?
                    .f_mean(Kind::Float)?
                    .f_mul_scalar(0.5)?;
                Ok(l1.f_add(&kl.f_mul_scalar(options.vae_kl)?)?)
            },
        )?;
        // the scaling factor (1 / std of the latents, as SD's 0.18215 was found) and the
        // reconstruction PSNR on held-out images
        let eval = self.render(0, square, Split::Eval, options.vae_images.min(128), false)?;
        let images = data::to_unit(&eval.images, self.device)?;
        let (latents, reconstruction) = {
            let _guard = tch::no_grad_guard();
            let mean = vae.encode(&images)?.mean;
            let reconstruction = vae.decode(&mean)?.clamp(-1.0, 1.0);
            (mean, reconstruction)
        };
        let std = f64::try_from(latents.std(true))?;
        // what the detectors still read after the round trip (the ceiling of the whole model)
        let mut tally = detect::Tally::default();
        for (index, scene) in eval.scenes.iter().enumerate() {
            let image = image_from_tensor(&reconstruction.get(index as i64))?;
            tally.add(&Scene { says_background: true, ..scene.clone() }, &detect::detect_image(&image));
        }
        if self.options.dataset == Dataset::Shapes {
            report.metrics.insert("reconstruction_attribute_accuracy".into(), tally.accuracy());
            report.metrics.insert("reconstruction_shape_accuracy".into(), tally.shape());
        }
        let mse = f64::try_from(reconstruction.f_sub(&images)?.f_square()?.f_mean(Kind::Float)?)? / 4.0;
        report.metrics.insert("data_seconds".into(), data_seconds);
        report.metrics.insert("scaling_factor".into(), 1.0 / std);
        report.metrics.insert("reconstruction_psnr_db".into(), -10.0 * mse.log10());
        write_final(&folder, vae.var_store(), None)?;
        Ok(report)
    }

    fn train_taesd(&self, progress: &mut dyn TrainProgress) -> anyhow::Result<StageReport> {
        let options = &self.options;
        let stage = Stage::Taesd;
        let folder = self.stage_folder(stage)?;
        let (vae, scaling) = self.trained_vae()?;
        tch::manual_seed(options.seed as i64 + 1);
        let taesd =
            AutoencoderTiny::new(shapes_model::parse(&shapes_model::taesd_config(&self.arch))?, self.device);
        let square = self.autoencoder_bucket()?;
        progress
            .message(&format!("rendering {} training images for the preview decoder", options.vae_images));
        let clock = Instant::now();
        let set = self.render(0, square, Split::Train, options.vae_images, false)?;
        let data_seconds = clock.elapsed().as_secs_f64();
        let mut parts = vec![Part::new("taesd", taesd.var_store(), 0.0)?];
        let mut losses = LossWindow::default();
        let crop = options.vae_crop.clamp(8, i64::from(square.width.min(square.height)));
        let report = self.run_steps(
            stage,
            &folder,
            options.taesd_steps,
            &mut parts,
            progress,
            &mut losses,
            &mut |step| {
                let mut rng = self.step_rng(stage, step);
                let mut crops = Vec::new();
                for _ in 0..options.vae_batch {
                    let index = rng.random_range(0..set.captions.len()) as i64;
                    let (x, y) = Self::crop_corner(&mut rng, square, crop);
                    crops.push(set.images.get(index).narrow(1, y, crop).narrow(2, x, crop));
                }
                let images = data::to_unit(&Tensor::stack(&crops, 0), self.device)?;
                let latents = {
                    let posterior = vae.encode(&images)?;
                    posterior.sample(&posterior.mean.f_randn_like()?)?.f_mul_scalar(scaling)?
                };
                let encoded = taesd.encode_train(&images)?;
                let encoder_loss = encoded.f_sub(&latents)?.f_square()?.f_mean(Kind::Float)?;
                let decoded = taesd.decode_train(&latents)?;
                let decoder_loss = decoded.f_sub(&images)?.f_abs()?.f_mean(Kind::Float)?;
                Ok(encoder_loss.f_add(&decoder_loss)?)
            },
        )?;
        write_final(&folder, taesd.var_store(), None)?;
        let mut report = report;
        report.metrics.insert("data_seconds".into(), data_seconds);
        Ok(report)
    }

    fn train_unet(&self, progress: &mut dyn TrainProgress) -> anyhow::Result<StageReport> {
        let options = &self.options;
        let stage = Stage::Unet;
        let folder = self.stage_folder(stage)?;
        let (_, tokenizer) = self.tokenizer()?;
        let (sets, data_seconds) = self.latent_cache(&tokenizer, progress)?;
        let empty = data::token_ids(&tokenizer, &[String::new()])?;
        let (vocab, bos, eos) = (tokenizer.vocab_size(), tokenizer.bos_id, tokenizer.eos_id);
        let (_, text_config, unet_config, _) = shapes_model::configs(vocab, bos, eos, &self.arch)?;
        tch::manual_seed(options.seed as i64 + 2);
        let text_encoder = ClipTextModel::new(text_config, self.device);
        let mut unet = UNet2DConditionModel::new(unet_config, self.device);
        if options.unet_init == WeightInit::Torch {
            init::torch_defaults(unet.var_store())?;
        }
        let start = folder.join("start");
        if start.join("start.json").is_file() {
            // started from another run's UNet (`start_unet_from`); a checkpoint still wins below
            load_final_from(unet.var_store(), &start.join("unet.safetensors"))?;
            load_final_from(text_encoder.var_store(), &start.join("text_encoder.safetensors"))?;
        }
        unet.make_trainable();
        let scaling =
            self.require(Stage::Vae)?.metrics.get("scaling_factor").copied().context("no scaling factor")?;
        let schedule = TrainingSchedule::default();
        let ema = options.ema;
        let mut parts = vec![
            Part::scaled(text_encoder.var_store(), "text_encoder", ema, options.text_lr_scale)?,
            Part::new("unet", unet.var_store(), ema)?,
        ];
        let sizes: Vec<i64> = sets.iter().map(LatentSet::len).collect();
        let total: i64 = sizes.iter().sum();
        let mut losses = LossWindow::default();
        let min_snr = (options.min_snr > 0.0).then_some(options.min_snr);
        let collector = AttentionCollector::default();
        let grounding = (options.ground_weight > 0.0).then_some(&collector);
        let mut ground_losses = LossWindow::default();
        let shape_ids =
            if options.shape_contrast > 0.0 { contrast::shape_token_ids(&tokenizer)? } else { Vec::new() };
        let report = self.run_steps(
            stage,
            &folder,
            options.unet_steps,
            &mut parts,
            progress,
            &mut losses,
            &mut |step| {
                let mut rng = self.step_rng(stage, step);
                // a bucket in proportion to its size, then a batch from it
                let mut pick = rng.random_range(0..total);
                let mut bucket = 0;
                while pick >= sizes[bucket] {
                    pick -= sizes[bucket];
                    bucket += 1;
                }
                let set = &sets[bucket];
                let indices: Vec<i64> =
                    (0..options.unet_batch).map(|_| rng.random_range(0..set.len())).collect();
                let dropped: Vec<bool> = (0..options.unet_batch)
                    .map(|_| rng.random_bool(options.caption_dropout.clamp(0.0, 1.0)))
                    .collect();
                let timesteps = schedule.draw(options.noise, options.unet_batch as usize, &mut rng);
                let index = Tensor::from_slice(&indices);
                let mean = set.mean.f_index_select(0, &index)?.f_to_device(self.device)?;
                let std = set.std.f_index_select(0, &index)?.f_to_device(self.device)?;
                let x0 = mean.f_add(&std.f_mul(&mean.f_randn_like()?)?)?.f_mul_scalar(scaling)?;
                let ids = set.ids.f_index_select(0, &index)?;
                for (row, drop) in dropped.iter().enumerate() {
                    if *drop {
                        ids.get(row as i64).copy_(&empty.get(0));
                    }
                }
                let context = text_encoder.forward_train(&ids.f_to_device(self.device)?, 0)?;
                let noise = training_noise(&x0, options.offset_noise)?;
                let (noisy, target, weights) =
                    schedule.noisy_and_target(&x0, &noise, &timesteps, options.target, min_snr)?;
                let t: Vec<f32> = timesteps.iter().map(|t| *t as f32).collect();
                let t = Tensor::f_from_slice(&t)?.f_to_device(self.device)?;
                let prediction =
                    unet.forward_train(&noisy, &t, &context, grounding.map(|c| c as &dyn AttentionControl))?;
                // the batch's masks, read once for the outline weights and the grounding loss
                let masks = if options.unet_edge_weight > 0.0 || grounding.is_some() {
                    let masks = set.masks.f_index_select(0, &index)?.f_to_device(self.device)?;
                    Some(masks.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?)
                } else {
                    None
                };
                let squared = prediction.f_sub(&target)?.f_square()?;
                let edge_weight = options.unet_edge_weight;
                let outline_masks = masks.as_ref().filter(|_| edge_weight > 0.0);
                let per_sample = sample_losses(&squared, outline_masks, edge_weight)?;
                let mut loss = per_sample.f_mul(&weights)?.f_mean(Kind::Float)?;
                if options.shape_contrast > 0.0 {
                    let width = ids.size()[1];
                    let flat = Vec::<i64>::try_from(&ids.f_flatten(0, -1)?)?;
                    let swapped = contrast::swap_shape_words(
                        &flat,
                        width as usize,
                        &dropped,
                        &timesteps,
                        &shape_ids,
                        &mut rng,
                    );
                    if let Some(swapped) = swapped {
                        let rows = Tensor::f_from_slice(&swapped.rows)?.f_to_device(self.device)?;
                        let swapped_ids = Tensor::f_from_slice(&swapped.ids)?.f_view([-1, width])?;
                        let context =
                            text_encoder.forward_train(&swapped_ids.f_to_device(self.device)?, 0)?;
                        let prediction = unet.forward_train(
                            &noisy.f_index_select(0, &rows)?,
                            &t.f_index_select(0, &rows)?,
                            &context,
                            None,
                        )?;
                        let squared = prediction.f_sub(&target.f_index_select(0, &rows)?)?.f_square()?;
                        let masks = outline_masks.map(|masks| masks.f_index_select(0, &rows)).transpose()?;
                        let swapped_loss = sample_losses(&squared, masks.as_ref(), edge_weight)?;
                        let hinge = contrast::hinge(&per_sample.f_index_select(0, &rows)?, &swapped_loss)?
                            .f_mul(&weights.f_index_select(0, &rows)?)?;
                        // summed over the rows, averaged over the whole batch: the loss's scale
                        let batch = options.unet_batch as f64;
                        loss = loss.f_add(
                            &hinge.f_sum(Kind::Float)?.f_mul_scalar(options.shape_contrast / batch)?,
                        )?;
                    }
                }
                let Some(collector) = grounding else { return Ok(loss) };
                // the regions of the dropped captions' tokens are gone with their words
                let kept: Vec<u8> = dropped.iter().map(|drop| u8::from(!drop)).collect();
                let kept = Tensor::f_from_slice(&kept)?.f_view([-1, 1])?;
                let regions = set.regions.f_index_select(0, &index)?.f_mul(&kept)?;
                let masks = masks.context("the masks are read whenever grounding is on")?;
                let ground = grounding_loss(&collector.take(), &regions, &masks)?;
                ground_losses.push(f64::try_from(&ground)?);
                Ok(loss.f_add(&ground.f_mul_scalar(options.ground_weight)?)?)
            },
        )?;
        write_final(&folder.join("text_encoder"), text_encoder.var_store(), parts[0].ema.as_ref())?;
        write_final(&folder.join("unet"), unet.var_store(), parts[1].ema.as_ref())?;
        let mut report = report;
        report.metrics.insert("data_seconds".into(), data_seconds);
        if grounding.is_some() {
            // the grounding loss alone (mean of the last 100 steps run by this process)
            report.metrics.insert("ground_loss".into(), ground_losses.mean());
        }
        Ok(report)
    }

    /// The latent caches of every bucket: loaded from `latents.safetensors`, or rendered,
    /// encoded and saved; with the seconds that took (`latents.seconds` keeps it for a resume).
    fn latent_cache(
        &self,
        tokenizer: &ClipTokenizer,
        progress: &mut dyn TrainProgress,
    ) -> anyhow::Result<(Vec<LatentSet>, f64)> {
        let buckets = Bucket::parse_list(&self.options.buckets)?;
        let path = self.folder.join("latents.safetensors");
        let seconds_path = self.folder.join("latents.seconds");
        if let Some(sets) = data::load_latents(&path, &buckets)? {
            let seconds = std::fs::read_to_string(&seconds_path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0.0);
            return Ok((sets, seconds));
        }
        let clock = Instant::now();
        let (vae, _) = self.trained_vae()?;
        let mut sets = Vec::new();
        for (index, bucket) in buckets.iter().enumerate() {
            let count = self.options.images / buckets.len()
                + usize::from(index == 0) * (self.options.images % buckets.len());
            progress.message(&format!("rendering and encoding {count} images at {}", bucket.name()));
            let set = self.render(index, *bucket, Split::Train, count, true)?;
            let ids = data::token_ids(tokenizer, &set.captions)?;
            let regions = data::token_regions(&ids, &set.scenes, tokenizer.eos_id)?;
            sets.push(data::encode_set(&vae, &set, ids, regions, self.device, &mut |_| {})?);
        }
        data::save_latents(&path, &sets)?;
        let seconds = clock.elapsed().as_secs_f64();
        std::fs::write(&seconds_path, format!("{seconds}\n"))?;
        Ok((sets, seconds))
    }

    /// The loop every stage shares: resume from the checkpoint, step, clip, update, average,
    /// checkpoint, report.
    #[allow(clippy::too_many_arguments)]
    fn run_steps(
        &self,
        stage: Stage,
        folder: &Path,
        steps: usize,
        parts: &mut [Part],
        progress: &mut dyn TrainProgress,
        losses: &mut LossWindow,
        loss_of_step: &mut dyn FnMut(usize) -> anyhow::Result<Tensor>,
    ) -> anyhow::Result<StageReport> {
        let (start, mut seconds) = load_checkpoint(folder, parts)?.unwrap_or((0, 0.0));
        progress.stage(stage, steps, start);
        let mut clock = Instant::now();
        let mut log = String::new();
        for step in start..steps {
            for part in parts.iter_mut() {
                part.adam.zero_grad();
            }
            let loss = loss_of_step(step)?;
            let value = f64::try_from(&loss)?;
            anyhow::ensure!(
                value.is_finite(),
                "stage {}: the loss became {value} at step {step}; lower --lr and start a new run",
                stage.name()
            );
            loss.backward();
            let lr = self.lr(stage, step, steps);
            for part in parts.iter_mut() {
                part.adam.clip_grad_norm(1.0)?;
                part.adam.step(lr * part.lr_scale)?;
                if let Some(ema) = &mut part.ema {
                    ema.update(part.vs)?;
                }
            }
            losses.push(value);
            progress.step(step + 1, losses.mean());
            if (step + 1) % 100 == 0 {
                log.push_str(&format!("{},{:.6},{:.6}\n", step + 1, losses.mean(), lr));
            }
            let last = step + 1 == steps;
            let stop = !last && progress.should_stop();
            if (self.options.checkpoint_every > 0 && (step + 1) % self.options.checkpoint_every == 0)
                || last
                || stop
            {
                seconds += clock.elapsed().as_secs_f64();
                clock = Instant::now();
                save_checkpoint(folder, step + 1, seconds, parts)?;
                append(&folder.join("loss.csv"), &std::mem::take(&mut log))?;
            }
            if stop {
                return Err(Interrupted { stage: stage.name(), step: step + 1 }.into());
            }
        }
        Ok(StageReport { stage, steps, seconds, final_loss: losses.mean(), metrics: BTreeMap::new() })
    }

    /// Writes the diffusers folder of the finished run to `out`.
    pub fn export(&self, out: &Path) -> anyhow::Result<()> {
        let vae_report = self.require(Stage::Vae)?;
        self.require(Stage::Taesd)?;
        self.require(Stage::Unet)?;
        let scaling = vae_report.metrics.get("scaling_factor").copied().context("no scaling factor")?;
        let (tokenizer_folder, tokenizer) = self.tokenizer()?;
        let write = |sub: &str, config: &serde_json::Value, config_name: &str| -> anyhow::Result<PathBuf> {
            let folder = out.join(sub);
            std::fs::create_dir_all(&folder)?;
            write_json(&folder.join(config_name), config)?;
            Ok(folder)
        };
        std::fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))?;
        write_json(&out.join("model_index.json"), &shapes_model::model_index())?;
        write("scheduler", &shapes_model::scheduler_config(self.options.target), "scheduler_config.json")?;
        let tokenizer_out = out.join("tokenizer");
        std::fs::create_dir_all(&tokenizer_out)?;
        for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
            std::fs::copy(tokenizer_folder.join(name), tokenizer_out.join(name))?;
        }
        write_json(
            &tokenizer_out.join("special_tokens_map.json"),
            &serde_json::json!({
                "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"
            }),
        )?;
        let text =
            shapes_model::text_encoder_config(tokenizer.vocab_size(), tokenizer.bos_id, tokenizer.eos_id);
        let folder = write("text_encoder", &text, "config.json")?;
        let weights = read_final(&self.folder.join("unet").join("text_encoder"))?;
        let prefixed: Vec<(String, Tensor)> =
            weights.into_iter().map(|(name, tensor)| (format!("text_model.{name}"), tensor)).collect();
        write_tensors(&folder.join("model.safetensors"), &prefixed)?;
        for (sub, config, source) in [
            ("unet", shapes_model::unet_config(&self.arch), self.folder.join("unet").join("unet")),
            ("vae", shapes_model::vae_config(scaling, &self.arch), self.folder.join("vae")),
            ("taesd", shapes_model::taesd_config(&self.arch), self.folder.join("taesd")),
        ] {
            let folder = write(sub, &config, "config.json")?;
            let weights: Vec<(String, Tensor)> = read_final(&source)?.into_iter().collect();
            write_tensors(&folder.join("diffusion_pytorch_model.safetensors"), &weights)?;
        }
        if self.options.dataset == Dataset::Music {
            // which spectrogram images the model makes (the audio room reads it)
            let bucket = self.autoencoder_bucket()?;
            write_json(
                &out.join("spectrogram.json"),
                &serde_json::json!({ "preset": "studio", "width": bucket.width, "height": bucket.height }),
            )?;
        }
        std::fs::write(out.join("TRAINING.md"), self.training_record()?)?;
        Ok(())
    }

    /// What the run was: the command that reproduces it, and each stage's steps, time and numbers
    /// (written beside the weights as `TRAINING.md`; MODEL_CARD.md quotes it).
    pub fn training_record(&self) -> anyhow::Result<String> {
        let options = serde_json::to_value(&self.options)?;
        let mut command = String::from("diffusion-studio train --run RUN --out OUT");
        for (key, value) in options.as_object().into_iter().flatten() {
            let flag = key.replace('_', "-");
            match value {
                // a switch: named when on, left out when off
                serde_json::Value::Bool(true) => command.push_str(&format!(" --{flag}")),
                serde_json::Value::Bool(false) => {}
                serde_json::Value::String(text) => command.push_str(&format!(" --{flag} {text}")),
                other => command.push_str(&format!(" --{flag} {other}")),
            }
        }
        let mut text = format!(
            "# Training record\n\nWritten by `diffusion-studio train` when it exported this folder.\n\n\
             Reproduce (same seed, same data, same weights on the same CPU build of libtorch):\n\n\
             ```sh\n{command}\n```\n\n| stage | steps | seconds | final loss (mean of the last 100 steps) | numbers |\n|---|---|---|---|---|\n"
        );
        if let Some((run, step)) = self.unet_start()? {
            text.insert_str(
                text.find("| stage |").unwrap_or(text.len()),
                &format!(
                    "The UNet stage started from the weights of run `{run}` at its step {step} (`--unet-from`); reproduce that run first.\n\n"
                ),
            );
        }
        let mut total = 0.0;
        for stage in Stage::ALL {
            if let Some(report) = self.report(stage)? {
                total += report.seconds + report.metrics.get("data_seconds").copied().unwrap_or(0.0);
                let numbers: Vec<String> =
                    report.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                text.push_str(&format!(
                    "| {} | {} | {:.0} | {:.4} | {} |\n",
                    stage.name(),
                    report.steps,
                    report.seconds,
                    report.final_loss,
                    numbers.join(", ")
                ));
            }
        }
        text.push_str(&format!(
            "\nThe run took {total:.0} s in all ({:.2} h: steps, data rendering and latent encoding; `data_seconds` is the latter), on {} thread(s) of: {}.\n",
            total / 3600.0,
            self.threads,
            cpu_name()
        ));
        Ok(text)
    }
}

/// 1 where a pixel is within one pixel of an edge of `images` ((n, 3, h, w) in [-1, 1]: a colour
/// step larger than 0.1 to a 4-neighbour), else 0; shape (n, 1, h, w).
fn edge_map(images: &Tensor) -> Result<Tensor, tch::TchError> {
    let (h, w) = (images.size()[2], images.size()[3]);
    let dx = images.f_narrow(3, 1, w - 1)?.f_sub(&images.f_narrow(3, 0, w - 1)?)?.f_abs()?;
    let dy = images.f_narrow(2, 1, h - 1)?.f_sub(&images.f_narrow(2, 0, h - 1)?)?.f_abs()?;
    let dx = dx.f_amax(&[1i64][..], true)?.f_constant_pad_nd(&[0i64, 1][..])?;
    let dy = dy.f_amax(&[1i64][..], true)?.f_constant_pad_nd(&[0i64, 0, 0, 1][..])?;
    let edges = dx.f_maximum(&dy)?.f_gt(0.1)?.f_to_kind(Kind::Float)?;
    edges.f_max_pool2d(&[3i64, 3][..], &[1i64, 1][..], &[1i64, 1][..], &[1i64, 1][..], false)
}

/// Each sample's mean of `squared` (batch, c, h, w): weighted 1 + `edge_weight` along the objects'
/// outlines when `masks` (the batch's object masks) are given, plain otherwise.
fn sample_losses(squared: &Tensor, masks: Option<&Tensor>, edge_weight: f64) -> anyhow::Result<Tensor> {
    Ok(match masks {
        Some(masks) => {
            let (_, _, height, width) = squared.size4()?;
            weighted_mean(squared, &outline_weights(masks, (height, width), edge_weight)?)?
        }
        None => squared.f_mean_dim(&[1i64, 2, 3][..], false, Kind::Float)?,
    })
}

/// The options a run folder was started with, as JSON, with the values of options added
/// since then filled in as the folder's run was built (the serde defaults).
fn read_options(folder: &Path) -> anyhow::Result<serde_json::Value> {
    let path = folder.join("options.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("could not read {}: is {} a run folder?", path.display(), folder.display())
    })?;
    let saved: TrainOptions = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a training options file", path.display()))?;
    Ok(serde_json::to_value(&saved)?)
}

/// The options of `keys` on which another run (`there`) and this one (`here`) differ, as
/// "key (value there, value here), …"; empty when they agree.
fn options_there_and_here(there: &serde_json::Value, here: &serde_json::Value, keys: &[&str]) -> String {
    differing_options(there, here, keys)
        .map(|(key, a, b)| format!("{key} ({a} there, {b} here)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Those of `keys` on which the options `a` and `b` differ, with both values.
fn differing_options<'a>(
    a: &'a serde_json::Value,
    b: &'a serde_json::Value,
    keys: &'a [&'a str],
) -> impl Iterator<Item = (&'a str, String, String)> + 'a {
    let show =
        |value: Option<&serde_json::Value>| value.map_or_else(|| "(unset)".to_string(), |v| v.to_string());
    keys.iter()
        .filter(move |key| a.get(**key) != b.get(**key))
        .map(move |key| (*key, show(a.get(*key)), show(b.get(*key))))
}

/// Copies the folder `from`, subfolders included, to `to`.
fn copy_folder(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_folder(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("could not copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The CPU's model name (Linux), for records.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| "an unknown CPU".into())
}

/// One trained module of a stage: its variables, optimiser and (optional) EMA.
struct Part<'a> {
    name: &'static str,
    vs: &'a nn::VarStore,
    adam: AdamW,
    ema: Option<Ema>,
    /// The part's learning rate as a multiple of the stage's.
    lr_scale: f64,
}

impl<'a> Part<'a> {
    fn new(name: &'static str, vs: &'a nn::VarStore, ema: f64) -> anyhow::Result<Self> {
        let adam = AdamW::new(vs, AdamWConfig::default())?;
        Ok(Self { name, vs, adam, ema: (ema > 0.0).then(|| Ema::new(vs, ema)), lr_scale: 1.0 })
    }

    /// This part learning `scale` times as fast as the others; 0 freezes its weights.
    fn scaled(vs: &'a nn::VarStore, name: &'static str, ema: f64, scale: f64) -> anyhow::Result<Self> {
        if scale == 0.0 {
            freeze(vs);
            // a frozen part needs no average: its weights are what it ships, bit for bit
            return Ok(Self { lr_scale: 0.0, ..Self::new(name, vs, 0.0)? });
        }
        Ok(Self { lr_scale: scale, ..Self::new(name, vs, ema)? })
    }
}

/// No gradients for any weight of `vs`.
fn freeze(vs: &nn::VarStore) {
    for (_, mut variable) in vs.variables() {
        let _ = variable.requires_grad_(false);
    }
}

/// The mean of the last 100 losses.
#[derive(Default)]
struct LossWindow {
    values: std::collections::VecDeque<f64>,
}

impl LossWindow {
    fn push(&mut self, value: f64) {
        if self.values.len() == 100 {
            self.values.pop_front();
        }
        self.values.push_back(value);
    }

    fn mean(&self) -> f64 {
        if self.values.is_empty() {
            f64::NAN
        } else {
            self.values.iter().sum::<f64>() / self.values.len() as f64
        }
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Saves every part's weights, moments and EMA, the step and the seconds spent, to
/// `folder/checkpoint.safetensors` in one atomic write.
fn save_checkpoint(folder: &Path, step: usize, seconds: f64, parts: &[Part]) -> anyhow::Result<()> {
    let mut tensors = vec![
        ("step".to_string(), Tensor::from_slice(&[step as i64])),
        ("seconds".to_string(), Tensor::from_slice(&[seconds])),
    ];
    for part in parts {
        for (name, tensor) in named_variables(part.vs) {
            tensors.push((format!("{}.weights.{name}", part.name), tensor));
        }
        for (name, tensor) in part.adam.state_tensors() {
            tensors.push((format!("{}.adam.{name}", part.name), tensor));
        }
        if let Some(ema) = &part.ema {
            for (name, tensor) in &ema.shadow {
                tensors.push((format!("{}.ema.{name}", part.name), tensor.shallow_clone()));
            }
            tensors.push((format!("{}.ema_updates", part.name), Tensor::from_slice(&[ema.updates])));
        }
    }
    write_tensors(&folder.join("checkpoint.safetensors"), &tensors)
}

/// Restores [`save_checkpoint`]: Some((step, seconds)) when there is one.
fn load_checkpoint(folder: &Path, parts: &mut [Part]) -> anyhow::Result<Option<(usize, f64)>> {
    let path = folder.join("checkpoint.safetensors");
    if !path.is_file() {
        return Ok(None);
    }
    let damaged =
        |what: String| anyhow::anyhow!("{}: {what}; delete it to restart this stage", path.display());
    let tensors = crate::engine::loading::read_safetensors(&path)?;
    let scalar_i64 = |key: &str| -> anyhow::Result<i64> {
        let tensor = tensors.get(key).ok_or_else(|| damaged(format!("no {key}")))?;
        Ok(i64::try_from(tensor)?)
    };
    let step = scalar_i64("step")? as usize;
    let seconds = f64::try_from(tensors.get("seconds").ok_or_else(|| damaged("no seconds".into()))?)?;
    let _guard = tch::no_grad_guard();
    for part in parts.iter_mut() {
        let prefix = |kind: &str| format!("{}.{kind}.", part.name);
        for (name, mut variable) in part.vs.variables() {
            let key = format!("{}{name}", prefix("weights"));
            let saved = tensors.get(&key).ok_or_else(|| damaged(format!("no {key}")))?;
            anyhow::ensure!(saved.size() == variable.size(), damaged(format!("{key} has another shape")));
            variable.copy_(saved);
        }
        let adam_prefix = prefix("adam");
        let adam: BTreeMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&adam_prefix).map(|n| (n.to_string(), t.shallow_clone())))
            .collect();
        part.adam.load_state(&adam).map_err(damaged)?;
        if let Some(ema) = &mut part.ema {
            for (name, shadow) in ema.shadow.iter_mut() {
                let key = format!("{}{name}", prefix("ema"));
                let saved = tensors.get(&key).ok_or_else(|| damaged(format!("no {key}")))?;
                shadow.copy_(saved);
            }
            ema.updates = scalar_i64(&format!("{}.ema_updates", part.name))?;
        }
    }
    Ok(Some((step, seconds)))
}

/// Writes the weights a stage ships (`final.safetensors`): the EMA's when there is one.
fn write_final(folder: &Path, vs: &nn::VarStore, ema: Option<&Ema>) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    let tensors: Vec<(String, Tensor)> = match ema {
        Some(ema) => ema.shadow.iter().map(|(name, t)| (name.clone(), t.shallow_clone())).collect(),
        None => named_variables(vs),
    };
    write_tensors(&folder.join("final.safetensors"), &tensors)
}

fn read_final(folder: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    Ok(crate::engine::loading::read_safetensors(&folder.join("final.safetensors"))?)
}

fn load_final(vs: &nn::VarStore, folder: &Path) -> anyhow::Result<()> {
    load_final_from(vs, &folder.join("final.safetensors"))
}

fn load_final_from(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let weights = crate::engine::loading::read_safetensors(path)?;
    crate::engine::loading::load_into(vs, weights, path, "", &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_map_marks_pixels_next_to_a_colour_step() {
        // left half black, right half white: the step lies between columns 2 and 3
        let row: Vec<f32> = (0..6).map(|x| if x < 3 { -1.0 } else { 1.0 }).collect();
        let image = Tensor::from_slice(&row).view([1, 1, 1, 6]).expand([1, 3, 6, 6], false).contiguous();
        let edges = edge_map(&image).expect("edges");
        assert_eq!(edges.size(), [1, 1, 6, 6]);
        let first_row = Vec::<f32>::try_from(edges.get(0).get(0).get(0)).expect("row");
        assert_eq!(first_row, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        let flat = edge_map(&Tensor::zeros([1, 3, 6, 6], (Kind::Float, Device::Cpu))).expect("edges");
        assert_eq!(f64::try_from(flat.sum(Kind::Float)).expect("sum"), 0.0);
    }
}
