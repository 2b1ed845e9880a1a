//! MODEL_CARD.md for a model trained by `diffusion-studio train`: what it was trained on, its
//! parts and sizes (read from the folder), the training record the trainer wrote beside the
//! weights (TRAINING.md), and the evaluation just measured. `diffusion-studio eval --card`.

use std::path::Path;

use anyhow::Context;

use super::shapes_metrics::{EvalOptions, EvalReport};
use crate::datasets::shapes::{Colour, IMAGE_SIZE, Shape};

/// Parameters and bytes of every `*.safetensors` file directly inside `folder`.
fn weights_of(folder: &Path) -> anyhow::Result<(usize, u64)> {
    let (mut parameters, mut bytes) = (0usize, 0u64);
    let Ok(entries) = std::fs::read_dir(folder) else { return Ok((0, 0)) };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let data = std::fs::read(&path).with_context(|| format!("could not read {}", path.display()))?;
            bytes += data.len() as u64;
            let tensors = safetensors::SafeTensors::deserialize(&data)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            for (_, view) in tensors.tensors() {
                parameters += view.shape().iter().product::<usize>();
            }
        }
    }
    Ok((parameters, bytes))
}

/// One line describing a part's configuration, from its config.json.
fn config_summary(folder: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(folder.join("config.json")) else { return String::new() };
    let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else { return String::new() };
    let keys = [
        "_class_name",
        "architectures",
        "block_out_channels",
        "layers_per_block",
        "latent_channels",
        "down_block_types",
        "attention_head_dim",
        "cross_attention_dim",
        "addition_embed_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "vocab_size",
        "scaling_factor",
        "encoder_block_out_channels",
        "decoder_block_out_channels",
        "num_encoder_blocks",
    ];
    keys.iter()
        .filter_map(|key| config.get(*key).map(|value| format!("{key} {value}")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The card's Markdown.
pub fn model_card(model: &Path, report: &EvalReport, options: &EvalOptions) -> anyhow::Result<String> {
    let shapes: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
    let colours: Vec<&str> = Colour::ALL.iter().map(|c| c.name()).collect();
    let mut text = format!(
        "# Model card: the bundled shapes model\n\n\
         A small Stable-Diffusion-family text-to-image model (AutoencoderKL, CLIP text encoder, \
         UNet2DConditionModel, TAESD-style preview decoder) trained from scratch on CPU by this \
         project's own trainer (`diffusion-studio train`, src/engine/training/), so that every \
         editing method of the studio works with no download. It is a diffusers folder: \
         `StableDiffusionPipeline.from_pretrained` loads it as well.\n\n\
         ## Data\n\n\
         Procedural images from `src/datasets/shapes.rs` (seeded, deterministic; nothing \
         downloaded): {IMAGE_SIZE}×{IMAGE_SIZE} (and the 96×160 / 160×96 aspect buckets), a solid \
         or gradient background, one to three objects of distinct colours, overlapping allowed \
         with at least 60% of each visible. Shapes: {}. Colours: {}. Sizes: small, big. Captions \
         from a small grammar, e.g. \"a big red circle, a small blue star and a yellow heart on a \
         green background\" (sizes and the background phrase are said only sometimes). One \
         caption in eight (by a hash of its text) is held out of training; every number below is \
         measured on held-out captions and images.\n\n\
         ",
        shapes.join(", "),
        colours.join(", ")
    );
    text.push_str(&parts_and_training(model)?);
    text.push_str(&format!(
        "## Evaluation\n\nMeasured by `diffusion-studio eval --captions {} --edits {} --inversions {} --steps {} \
         --guidance {} --seed {}` with the analytic detectors of src/eval/detect.rs (colour \
         segmentation, connected components, template shape classification; 0.99 attribute \
         accuracy on clean dataset images):\n\n",
        options.captions, options.edits, options.inversions, options.steps, options.guidance, options.seed
    ));
    text.push_str(&report.markdown(options));
    text.push_str(
        "\n## Limits\n\nIt knows only the words of its grammar (other words become letter tokens it never saw in \
         training) and \
         draws flat shapes; it is there so that the methods can be used and tested without \
         weights, not for pictures. Larger models (SD 1.x/2.x) load from diffusers folders or \
         single checkpoints.\n",
    );
    Ok(text)
}

/// The card's parts table (parameters, file sizes, configurations read from the folder) and the
/// training record the trainer left there.
fn parts_and_training(model: &Path) -> anyhow::Result<String> {
    let mut text =
        String::from("## Parts\n\n| part | parameters | file size | configuration |\n|---|---|---|---|\n");
    let (mut total_parameters, mut total_bytes) = (0usize, 0u64);
    for part in ["text_encoder", "unet", "vae", "taesd"] {
        let folder = model.join(part);
        let (parameters, bytes) = weights_of(&folder)?;
        total_parameters += parameters;
        total_bytes += bytes;
        text.push_str(&format!(
            "| {part} | {:.2} M | {:.2} MB | {} |\n",
            parameters as f64 / 1e6,
            bytes as f64 / 1e6,
            config_summary(&folder)
        ));
    }
    text.push_str(&format!(
        "| all | {:.2} M | {:.2} MB | tokenizer: one token per word of the grammar, CLIP format |\n\n",
        total_parameters as f64 / 1e6,
        total_bytes as f64 / 1e6
    ));
    match std::fs::read_to_string(model.join("TRAINING.md")) {
        Ok(record) => {
            // the record's own title becomes a section of the card
            let body = record.trim_start().strip_prefix("# Training record").unwrap_or(&record);
            text.push_str("## Training\n");
            text.push_str(body.trim_end());
            text.push_str("\n\n");
        }
        Err(_) => text.push_str("## Training\n\nNo TRAINING.md beside the weights.\n\n"),
    }
    Ok(text)
}

/// The bundled music model's card: its data, parts, training record and `audio eval`'s numbers.
pub fn music_card(
    model: &Path,
    report: &super::music_metrics::MusicEvalReport,
    options: &super::music_metrics::MusicEvalOptions,
) -> anyhow::Result<String> {
    use crate::datasets::music;
    let instruments: Vec<&str> = music::Instrument::ALL.iter().map(|i| i.name()).collect();
    let keys: Vec<String> = music::KEYS.iter().map(|(k, _)| k.to_uppercase()).collect();
    let (slow, fast) = (music::Tempo::Slow.bpm_range(), music::Tempo::Fast.bpm_range());
    let mut text = format!(
        "# Model card: the bundled music model\n\n\
         A small Stable-Diffusion-family text-to-spectrogram model (AutoencoderKL, CLIP text \
         encoder, UNet2DConditionModel{}, TAESD-style preview decoder) trained from scratch on CPU by this project's trainer \
         (`diffusion-studio train --dataset music`), so that the studio's audio room works with \
         no download. Its images are studio-preset mel spectrograms (`spectrogram.json`: 16 kHz, \
         n_fft 1024, hop 256, 128 HTK mels to 8 kHz, Riffusion's power-law image), {} frames \
         (4.1 s) wide; sound comes back through the mel pseudo-inverse and Griffin-Lim. \
         It is a diffusers folder.\n\n\
         ## Data\n\n\
         Procedural clips from `src/datasets/music.rs` (seeded; nothing downloaded), rendered by a \
         small additive synthesiser: {} — alone, or two together (three in ten) — slow ({:.0}–{:.0} \
         bpm) or fast ({:.0}–{:.0} bpm), major or minor, in {}, with a random start within the \
         bar and chord progressions of four chords. Captions from a small grammar: \
         \"a fast drum beat\", \"slow minor chords in d\", \"a slow minor bass line with a pad\" \
         (the key is said half the time). Evaluation clips come from a separate random stream.\n\n",
        if config_summary(&model.join("unet")).contains("addition_embed_type \"text\"") {
            " with the pooled prompt added to its time embedding"
        } else {
            ""
        },
        music::FRAMES,
        instruments.join(", "),
        slow.0,
        slow.1,
        fast.0,
        fast.1,
        keys.join(", ")
    );
    text.push_str(&parts_and_training(model)?);
    text.push_str(&format!(
        "## Evaluation\n\nMeasured by `diffusion-studio audio eval --clips {} --steps {} --guidance {} --seed {} \
         --iterations {}`: a spectral-feature classifier (src/eval/music_features.rs: onset \
         strength, spectral flatness, centroid, band shares, peaks per frame, stationarity, \
         pitch-class concentration; Gaussian naive Bayes fitted on {} training clips) reads each \
         generated clip's instrument, tempo and mode after Griffin-Lim and a fresh spectrogram of \
         the audio; prompts name one instrument, the tempo, the mode and the key.\n\n",
        options.clips, options.steps, options.guidance, options.seed, options.iterations, options.fit_clips
    ));
    text.push_str(&report.markdown());
    text.push_str(
        "\n## Limits\n\nIt knows only its grammar's words and its synthesiser's five instruments; \
         Griffin-Lim's phases make its clips sound grainy. It is there so that the audio methods \
         can be used and tested without weights; Riffusion (an SD 1.5 fine-tune) loads from a \
         diffusers folder and gets the riffusion preset.\n",
    );
    Ok(text)
}
