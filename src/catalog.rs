//! Where the studio looks for models, and what it finds there: diffusers folders (a
//! `model_index.json` inside) and single `.safetensors` checkpoints.

use std::path::{Path, PathBuf};

/// Environment variable naming an extra models folder.
pub const MODELS_ENV: &str = "DIFFUSION_STUDIO_MODELS";

/// A model found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundModel {
    pub path: PathBuf,
    pub kind: ModelFileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFileKind {
    DiffusersFolder,
    SafetensorsFile,
}

/// The folders searched, in order: `$DIFFUSION_STUDIO_MODELS`, `./assets/models`, and the
/// `assets/models` of the source tree the binary was built from.
pub fn search_folders() -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if let Some(extra) = std::env::var_os(MODELS_ENV) {
        folders.push(PathBuf::from(extra));
    }
    folders.push(PathBuf::from("assets/models"));
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models");
    if !folders.iter().any(|f| same_folder(f, &built_from)) {
        folders.push(built_from);
    }
    folders
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Models directly inside `folder`.
pub fn models_in(folder: &Path) -> Vec<FoundModel> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut found: Vec<FoundModel> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter_map(|path| {
            if path.join("model_index.json").is_file() {
                Some(FoundModel { path, kind: ModelFileKind::DiffusersFolder })
            } else if path.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
                Some(FoundModel { path, kind: ModelFileKind::SafetensorsFile })
            } else {
                None
            }
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// The demo image the studio opens on when given none: `assets/samples/shapes.png` beside the
/// working folder, or in the source tree the binary was built from.
pub fn sample_image() -> Option<PathBuf> {
    let relative = Path::new("assets/samples/shapes.png");
    [relative.to_path_buf(), Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)]
        .into_iter()
        .find(|path| path.is_file())
}

/// Where the bundled shapes model lives: `assets/models/shapes` beside the working folder, or in
/// the source tree the binary was built from (that path even when it is missing, so errors name
/// where it was expected).
pub fn bundled_shapes_model() -> PathBuf {
    bundled_model("shapes")
}

/// Where the bundled music model lives (`assets/models/music`), as [`bundled_shapes_model`].
pub fn bundled_music_model() -> PathBuf {
    bundled_model("music")
}

fn bundled_model(name: &str) -> PathBuf {
    let relative = Path::new("assets/models").join(name);
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join(&relative);
    if relative.join("model_index.json").is_file() { relative } else { built_from }
}

/// The spectrogram preset an audio model's folder names (`spectrogram.json`, or an
/// audio-diffusion model's `mel/mel_config.json`), if any.
pub fn spectrogram_preset(model: &Path) -> Option<String> {
    model_spectrogram(model).map(|preset| preset.name.to_string())
}

/// An audio model's own spectrogram: an audio-diffusion model's mel config, or the preset its
/// `spectrogram.json` names. None for image models (Riffusion takes its preset by name).
pub fn model_spectrogram(model: &Path) -> Option<crate::audio::preset::SpectrogramPreset> {
    use crate::audio::preset::{MelConfig, SpectrogramPreset};
    let mel = model.join("mel/mel_config.json");
    if mel.is_file() {
        return MelConfig::from_file(&mel).ok().map(|config| SpectrogramPreset::of_mel_config(&config));
    }
    let text = std::fs::read_to_string(model.join("spectrogram.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    SpectrogramPreset::by_name(value["preset"].as_str()?).ok()
}

/// Whether `model` is an audio-diffusion pipeline folder (`AudioDiffusionPipeline` in its
/// `model_index.json`): an unconditional mel-spectrogram model, which makes audio only.
pub fn is_audio_diffusion(model: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(model.join("model_index.json")) else { return false };
    serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|index| index["_class_name"] == "AudioDiffusionPipeline")
}

/// A diffusers folder's native image side: its UNet's `sample_size` times the VAE's factor
/// (2 to the number of VAE levels less one). None for single files and unreadable configs.
pub fn native_size(model: &Path) -> Option<u32> {
    let read = |path: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let unet = read(model.join("unet/config.json"))?;
    let vae = read(model.join("vae/config.json"))?;
    let sample = unet["sample_size"].as_u64()?;
    let levels = vae["block_out_channels"].as_array()?.len().max(1) as u32;
    u32::try_from(sample * (1u64 << (levels - 1))).ok()
}

/// Every model in every search folder.
pub fn find_models() -> Vec<FoundModel> {
    let mut all: Vec<FoundModel> = Vec::new();
    for folder in search_folders() {
        for model in models_in(&folder) {
            if !all.iter().any(|m| same_folder(&m.path, &model.path)) {
                all.push(model);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_diffusers_folders_and_safetensors_files_only() {
        let root = std::env::temp_dir().join(format!("ds-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("tiny")).expect("mkdir");
        std::fs::write(root.join("tiny/model_index.json"), "{}").expect("write");
        std::fs::create_dir_all(root.join("not-a-model")).expect("mkdir");
        std::fs::write(root.join("v1.safetensors"), b"x").expect("write");
        std::fs::write(root.join("v1.ckpt"), b"x").expect("write");
        let found = models_in(&root);
        assert_eq!(
            found,
            vec![
                FoundModel { path: root.join("tiny"), kind: ModelFileKind::DiffusersFolder },
                FoundModel { path: root.join("v1.safetensors"), kind: ModelFileKind::SafetensorsFile },
            ]
        );
    }
}
