//! Single-file checkpoints in the original latent-diffusion (CompVis) key layout — what most
//! users download: `model.diffusion_model.*` (the UNet), `first_stage_model.*` (the VAE) and
//! `cond_stage_model.*` (the text encoder: transformers' CLIP for SD 1.x, OpenCLIP's text tower
//! for SD 2.x). This module tells which model a file is from its keys and shapes, and maps every
//! key to the name our (diffusers-shaped) modules use.
//!
//! The mapping follows the module names of CompVis' `openaimodel.py` (UNet: `input_blocks`,
//! `middle_block`, `output_blocks`, ResBlock `in_layers`/`emb_layers`/`out_layers`), its
//! autoencoder `model.py` (`down.i.block.j`, decoder levels numbered from the lowest resolution,
//! 1×1-conv attention) and OpenCLIP (`transformer.resblocks.i`, fused `in_proj`). The fixtures in
//! tests/ were checked against diffusers' own converter.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::LoadError;
use crate::protocol::{ModelFamily, ModelOptions, Prediction};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_SD1_PREFIX: &str = "cond_stage_model.transformer.";
pub const CLIP_SD2_PREFIX: &str = "cond_stage_model.model.";
const CONV_IN: &str = "model.diffusion_model.input_blocks.0.0.weight";

/// Which of the three models a weight belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Unet,
    Vae,
    TextEncoder,
}

/// What the UNet's extra input channels are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 4 channels: text to image.
    Base,
    /// 9 channels: latents + mask + masked-image latents.
    Inpainting,
    /// 8 channels: latents + source-image latents (InstructPix2Pix).
    InstructPix2Pix,
}

impl Variant {
    /// What a UNet with `in_channels` inputs over latents of `latent_channels` is for: the
    /// latents alone, + mask + masked-image latents, or + source-image latents.
    pub fn from_channels(in_channels: i64, latent_channels: i64) -> Option<Self> {
        match in_channels - latent_channels {
            0 => Some(Variant::Base),
            extra if extra == latent_channels + 1 => Some(Variant::Inpainting),
            extra if extra == latent_channels => Some(Variant::InstructPix2Pix),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Base => "text-to-image",
            Variant::Inpainting => "inpainting",
            Variant::InstructPix2Pix => "InstructPix2Pix",
        }
    }
}

/// What a checkpoint is, and how each answer was reached (for the message the user sees).
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub family: ModelFamily,
    pub family_reason: String,
    pub variant: Variant,
    pub in_channels: i64,
    pub prediction: Prediction,
    pub prediction_reason: String,
    /// The file also holds an EMA copy of the UNet (`model_ema.*`), which is not used.
    pub has_ema: bool,
}

impl Detected {
    /// One line for the user: what was found and how to override it.
    pub fn describe(&self) -> String {
        let family = match self.family {
            ModelFamily::Sd1 => "SD 1.x",
            ModelFamily::Sd2 => "SD 2.x",
        };
        let variant = self.variant.name();
        format!(
            "{family} {variant} checkpoint ({}), {}-channel UNet, prediction type {} ({}){}",
            self.family_reason,
            self.in_channels,
            self.prediction.diffusers_name(),
            self.prediction_reason,
            if self.has_ema { "; its EMA weights are not used" } else { "" }
        )
    }
}

/// Tells the model from the checkpoint's keys and shapes; `options` overrides the guesses.
pub fn detect(
    shapes: &BTreeMap<String, Vec<i64>>,
    path: &Path,
    options: &ModelOptions,
) -> Result<Detected, LoadError> {
    let refuse = |reason: String| Err(LoadError::Config { path: path.into(), reason });
    // 1. is it an original-layout SD checkpoint at all?
    if shapes.keys().any(|k| k.starts_with("conditioner.embedders.")) {
        return refuse("this is an SDXL checkpoint; the studio loads Stable Diffusion 1.x and 2.x".into());
    }
    let Some(conv_in) = shapes.get(CONV_IN) else {
        let hint = if shapes.keys().any(|k| k.starts_with("down_blocks.") || k.starts_with("text_model.")) {
            "it looks like one component of a diffusers folder: point --model at the folder that holds model_index.json"
        } else if shapes.keys().any(|k| k.starts_with("lora_") || k.contains(".lora_")) {
            "it looks like a LoRA, which is applied on top of a model, not loaded as one"
        } else {
            "a Stable Diffusion checkpoint has model.diffusion_model.* (UNet), first_stage_model.* (VAE) and cond_stage_model.* (text encoder) weights"
        };
        return refuse(format!("not a Stable Diffusion single-file checkpoint (no {CONV_IN}); {hint}"));
    };
    // 2. SD 1.x or 2.x: the text encoder's layout, else the cross-attention width
    let has = |prefix: &str| shapes.keys().any(|k| k.starts_with(prefix));
    let context_width = shapes
        .iter()
        .find(|(k, _)| k.starts_with(UNET_PREFIX) && k.ends_with("attn2.to_k.weight"))
        .and_then(|(_, shape)| shape.get(1).copied());
    let (guessed_family, family_reason) = if has(CLIP_SD2_PREFIX) {
        (ModelFamily::Sd2, "OpenCLIP text encoder".to_string())
    } else if has(CLIP_SD1_PREFIX) {
        (ModelFamily::Sd1, "CLIP ViT-L text encoder".to_string())
    } else {
        match context_width {
            Some(1024) => (ModelFamily::Sd2, "1024-wide cross-attention".to_string()),
            Some(768) => (ModelFamily::Sd1, "768-wide cross-attention".to_string()),
            _ => {
                return refuse(
                    "the checkpoint has no text encoder (cond_stage_model.*) and its cross-attention width is not SD 1.x's 768 or SD 2.x's 1024; \
                     give --model-config with a diffusers folder describing it"
                        .into(),
                );
            }
        }
    };
    let (family, family_reason) = match options.family {
        Some(family) if family != guessed_family => {
            (family, format!("as asked; the file looks {guessed_family:?}"))
        }
        Some(family) => (family, "as asked".into()),
        None => (guessed_family, family_reason),
    };
    // 3. the UNet's input channels say what it is for
    let in_channels = conv_in.get(1).copied().unwrap_or(0);
    let Some(variant) = Variant::from_channels(in_channels, 4) else {
        return refuse(format!(
            "{CONV_IN} has {in_channels} input channels; Stable Diffusion UNets have 4 (text to image), 9 (inpainting) or 8 (InstructPix2Pix)"
        ));
    };
    // 4. prediction type: a `v_pred` marker key, else SD 2.x text-to-image models are the 768-v
    //    ones (as diffusers assumes); everything else predicts noise
    let (prediction, prediction_reason) = if let Some(prediction) = options.prediction {
        (prediction, "as asked".to_string())
    } else if shapes.contains_key("v_pred") {
        (Prediction::V, "the file has a v_pred key".into())
    } else if family == ModelFamily::Sd2 && variant == Variant::Base {
        (Prediction::V, "SD 2.x default; use --prediction-type epsilon for a 512-base model".into())
    } else {
        (Prediction::Epsilon, "default".into())
    };
    let has_ema = shapes.keys().filter(|k| k.starts_with("model_ema.")).count() > 100;
    Ok(Detected { family, family_reason, variant, in_channels, prediction, prediction_reason, has_ema })
}

/// The shape of the models the weights go into, as far as key names depend on it.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub family: ModelFamily,
    pub unet_layers_per_block: usize,
    pub vae_levels: usize,
    pub text_layers: usize,
}

/// Where one checkpoint weight goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub part: Part,
    /// The variable's name in our module (diffusers' key).
    pub name: String,
    /// For fused q/k/v projections: which third of dimension 0 this target takes.
    pub third: Option<i64>,
}

/// Where a key goes: one or more targets, nowhere for a known reason, or unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    To(Vec<Target>),
    Ignored(&'static str),
    Unknown,
}

/// Maps one checkpoint key.
pub fn route(key: &str, layout: &Layout) -> Route {
    let to = |part: Part, name: Option<String>| match name {
        Some(name) => Route::To(vec![Target { part, name, third: None }]),
        None => Route::Unknown,
    };
    if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
        return to(Part::Unet, unet_name(rest, layout.unet_layers_per_block));
    }
    if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
        if rest.starts_with("loss.") {
            return Route::Ignored("the VAE's training loss");
        }
        return to(Part::Vae, vae_name(rest, layout.vae_levels));
    }
    if let Some(rest) = key.strip_prefix(CLIP_SD1_PREFIX) {
        if layout.family != ModelFamily::Sd1 {
            return Route::Ignored("an SD 1.x text encoder in a checkpoint loaded as SD 2.x");
        }
        let name = rest.strip_prefix("text_model.").unwrap_or(rest);
        if name.ends_with("position_ids") {
            return Route::Ignored("a buffer");
        }
        return to(Part::TextEncoder, Some(name.to_string()));
    }
    if let Some(rest) = key.strip_prefix(CLIP_SD2_PREFIX) {
        if layout.family != ModelFamily::Sd2 {
            return Route::Ignored("an SD 2.x text encoder in a checkpoint loaded as SD 1.x");
        }
        return open_clip_route(rest, layout.text_layers);
    }
    if key.starts_with("model_ema.") {
        return Route::Ignored("the EMA copy of the UNet");
    }
    if key.starts_with("cond_stage_model.")
        || key.starts_with("model.")
        || key.starts_with("first_stage_model")
    {
        return Route::Unknown;
    }
    // betas, alphas_cumprod, … of the training wrapper; `v_pred` markers
    Route::Ignored("a training-schedule buffer")
}

/// openaimodel ResBlock names → diffusers ResnetBlock2D names.
fn unet_resnet(prefix: &str, tail: &str) -> Option<String> {
    const NAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    NAMES.iter().find_map(|(ldm, ours)| tail.strip_prefix(ldm).map(|rest| format!("{prefix}.{ours}{rest}")))
}

/// Splits "12.1.rest" into (12, 1, "rest").
fn block_indices(rest: &str) -> Option<(usize, usize, &str)> {
    let (block, rest) = rest.split_once('.')?;
    let (sub, tail) = rest.split_once('.')?;
    Some((block.parse().ok()?, sub.parse().ok()?, tail))
}

fn unet_name(rest: &str, per_level: usize) -> Option<String> {
    let direct = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(name) =
        direct.iter().find_map(|(ldm, ours)| rest.strip_prefix(ldm).map(|tail| format!("{ours}{tail}")))
    {
        return Some(name);
    }
    let stride = per_level + 1;
    if let Some(rest) = rest.strip_prefix("input_blocks.") {
        let (block, sub, tail) = block_indices(rest)?;
        let (level, j) = ((block.checked_sub(1)?) / stride, (block - 1) % stride);
        return match (j < per_level, sub) {
            (true, 0) => unet_resnet(&format!("down_blocks.{level}.resnets.{j}"), tail),
            (true, 1) => Some(format!("down_blocks.{level}.attentions.{j}.{tail}")),
            (false, 0) => {
                tail.strip_prefix("op.").map(|t| format!("down_blocks.{level}.downsamplers.0.conv.{t}"))
            }
            _ => None,
        };
    }
    if let Some(rest) = rest.strip_prefix("middle_block.") {
        let (sub, tail) = rest.split_once('.')?;
        return match sub {
            "0" => unet_resnet("mid_block.resnets.0", tail),
            "1" => Some(format!("mid_block.attentions.0.{tail}")),
            "2" => unet_resnet("mid_block.resnets.1", tail),
            _ => None,
        };
    }
    if let Some(rest) = rest.strip_prefix("output_blocks.") {
        let (block, sub, tail) = block_indices(rest)?;
        let (level, j) = (block / stride, block % stride);
        let upsampler =
            || tail.strip_prefix("conv.").map(|t| format!("up_blocks.{level}.upsamplers.0.conv.{t}"));
        return match sub {
            0 => unet_resnet(&format!("up_blocks.{level}.resnets.{j}"), tail),
            // an attention block has no child named `conv`; an upsampler is nothing else
            1 if tail.starts_with("conv.") => upsampler(),
            1 => Some(format!("up_blocks.{level}.attentions.{j}.{tail}")),
            2 => upsampler(),
            _ => None,
        };
    }
    None
}

fn vae_resnet(prefix: &str, tail: &str) -> Option<String> {
    const NAMES: [(&str, &str); 5] = [
        ("norm1.", "norm1."),
        ("conv1.", "conv1."),
        ("norm2.", "norm2."),
        ("conv2.", "conv2."),
        ("nin_shortcut.", "conv_shortcut."),
    ];
    NAMES.iter().find_map(|(ldm, ours)| tail.strip_prefix(ldm).map(|rest| format!("{prefix}.{ours}{rest}")))
}

fn vae_name(rest: &str, levels: usize) -> Option<String> {
    for conv in ["quant_conv.", "post_quant_conv."] {
        if rest.starts_with(conv) {
            return Some(rest.to_string());
        }
    }
    let (part, rest) = rest.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    let inner = if let Some(tail) = rest.strip_prefix("norm_out.") {
        Some(format!("conv_norm_out.{tail}"))
    } else if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        Some(rest.to_string())
    } else if let Some(tail) = rest.strip_prefix("mid.block_1.") {
        vae_resnet("mid_block.resnets.0", tail)
    } else if let Some(tail) = rest.strip_prefix("mid.block_2.") {
        vae_resnet("mid_block.resnets.1", tail)
    } else if let Some(tail) = rest.strip_prefix("mid.attn_1.") {
        const NAMES: [(&str, &str); 5] = [
            ("norm.", "group_norm."),
            ("q.", "to_q."),
            ("k.", "to_k."),
            ("v.", "to_v."),
            ("proj_out.", "to_out.0."),
        ];
        NAMES.iter().find_map(|(ldm, ours)| {
            tail.strip_prefix(ldm).map(|t| format!("mid_block.attentions.0.{ours}{t}"))
        })
    } else {
        let (level_word, rest) = rest.split_once('.')?;
        let (level, rest) = rest.split_once('.')?;
        let level: usize = level.parse().ok()?;
        // the decoder's levels count up from the lowest resolution in LDM, down in diffusers
        let (blocks, ours) = match (part, level_word) {
            ("encoder", "down") => ("down_blocks", level),
            ("decoder", "up") => ("up_blocks", levels.checked_sub(level + 1)?),
            _ => return None,
        };
        if let Some(rest) = rest.strip_prefix("block.") {
            let (j, tail) = rest.split_once('.')?;
            let j: usize = j.parse().ok()?;
            vae_resnet(&format!("{blocks}.{ours}.resnets.{j}"), tail)
        } else {
            let sampler = if blocks == "down_blocks" { "downsample.conv." } else { "upsample.conv." };
            let resampler = if blocks == "down_blocks" { "downsamplers" } else { "upsamplers" };
            rest.strip_prefix(sampler).map(|t| format!("{blocks}.{ours}.{resampler}.0.conv.{t}"))
        }
    };
    inner.map(|name| format!("{part}.{name}"))
}

/// OpenCLIP's text tower → transformers' CLIP text model names.
fn open_clip_route(rest: &str, text_layers: usize) -> Route {
    let one = |name: String| Route::To(vec![Target { part: Part::TextEncoder, name, third: None }]);
    match rest {
        "token_embedding.weight" => return one("embeddings.token_embedding.weight".into()),
        "positional_embedding" => return one("embeddings.position_embedding.weight".into()),
        "text_projection" | "logit_scale" => return Route::Ignored("used only for image–text matching"),
        "attn_mask" => return Route::Ignored("a buffer"),
        _ => {}
    }
    if let Some(tail) = rest.strip_prefix("ln_final.") {
        return one(format!("final_layer_norm.{tail}"));
    }
    let Some(rest) = rest.strip_prefix("transformer.resblocks.") else { return Route::Unknown };
    let Some((layer, tail)) = rest.split_once('.') else { return Route::Unknown };
    let Ok(layer) = layer.parse::<usize>() else { return Route::Unknown };
    if layer >= text_layers {
        // SD 2.x takes the penultimate layer's output: OpenCLIP's last block is never run
        return Route::Ignored("a text-encoder layer past the one SD uses");
    }
    let prefix = format!("encoder.layers.{layer}");
    if let Some(kind) = tail.strip_prefix("attn.in_proj_") {
        return Route::To(
            ["q", "k", "v"]
                .iter()
                .zip(0..)
                .map(|(projection, third)| Target {
                    part: Part::TextEncoder,
                    name: format!("{prefix}.self_attn.{projection}_proj.{kind}"),
                    third: Some(third),
                })
                .collect(),
        );
    }
    const NAMES: [(&str, &str); 5] = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    NAMES
        .iter()
        .find_map(|(ldm, ours)| tail.strip_prefix(ldm).map(|t| one(format!("{prefix}.{ours}{t}"))))
        .unwrap_or(Route::Unknown)
}

/// The weights of each part under our names, and for each name the checkpoint key it came from.
#[derive(Default)]
pub struct Split {
    pub parts: BTreeMap<Part, BTreeMap<String, Tensor>>,
    pub sources: BTreeMap<(Part, String), String>,
}

/// Routes every weight of a checkpoint; keys under the model prefixes that map nowhere are an
/// error naming them.
pub fn split(weights: BTreeMap<String, Tensor>, layout: &Layout, path: &Path) -> Result<Split, LoadError> {
    let mut split = Split::default();
    let mut unknown = Vec::new();
    for (key, tensor) in weights {
        match route(&key, layout) {
            Route::To(targets) => {
                for target in targets {
                    let value = match target.third {
                        Some(third) => {
                            let rows = tensor.size().first().copied().unwrap_or(0);
                            if rows % 3 != 0 {
                                return Err(LoadError::Config {
                                    path: path.into(),
                                    reason: format!("{key} has {rows} rows, not a fused q/k/v projection"),
                                });
                            }
                            tensor.f_narrow(0, third * rows / 3, rows / 3)?
                        }
                        None => tensor.shallow_clone(),
                    };
                    split.sources.insert((target.part, target.name.clone()), key.clone());
                    split.parts.entry(target.part).or_default().insert(target.name, value);
                }
            }
            Route::Ignored(_) => {}
            Route::Unknown => unknown.push(key),
        }
    }
    if !unknown.is_empty() {
        return Err(LoadError::Unexpected {
            path: path.into(),
            count: unknown.len(),
            examples: unknown.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(split)
}

/// Loads one part's weights into `vs`: shapes that differ only by unit dimensions (1×1
/// convolutions stored for linear layers and back) are reshaped; errors name the checkpoint key.
pub fn load_part(
    vs: &tch::nn::VarStore,
    part: Part,
    split: &mut Split,
    path: &Path,
    hint: &str,
) -> Result<(), LoadError> {
    let mut weights = split.parts.remove(&part).unwrap_or_default();
    let variables = vs.variables();
    for (name, tensor) in weights.iter_mut() {
        if let Some(variable) = variables.get(name) {
            let (want, have) = (variable.size(), tensor.size());
            let squeeze = |shape: &[i64]| shape.iter().copied().filter(|d| *d != 1).collect::<Vec<_>>();
            if want != have && squeeze(&want) == squeeze(&have) {
                *tensor = tensor.f_reshape(&want)?;
            }
        }
    }
    let buffers = crate::engine::models::clip::BUFFERS;
    super::load_into(vs, weights, path, "", buffers).map_err(|error| match error {
        LoadError::Shape { path, key, file_shape, model_shape, .. } => LoadError::Shape {
            key: match split.sources.get(&(part, key.clone())) {
                Some(source) => format!("{source} (our {key})"),
                None => key,
            },
            path,
            file_shape,
            model_shape,
            hint: hint.to_string(),
        },
        LoadError::Missing { path, count, examples } => {
            LoadError::Missing { path, count, examples: format!("{examples} ({part:?}){hint}") }
        }
        other => other,
    })
}
