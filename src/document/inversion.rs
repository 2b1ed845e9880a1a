//! Inversion files: an [`Inversion`]'s latent trajectory as one f32 tensor
//! `trajectory` (steps + 1, channels, height, width) in a `.safetensors` file, with what it was
//! made from in the header's metadata, so an edit can check it belongs to its model and image
//! size. The reconstruction is not stored (it is one regeneration away).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::protocol::{ImageData, Inversion};

const FORMAT: &str = "diffusion-studio inversion 1";

/// Why an inversion file could not be written, read, or used.
#[derive(Debug, thiserror::Error)]
pub enum InversionError {
    #[error("could not write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("could not read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error(
        "{path} is not an inversion file written by diffusion-studio ({reason}); make one with `diffusion-studio invert`"
    )]
    NotInversion { path: String, reason: String },
    #[error(
        "{path} was made with the model {made_with}, not {asked}; invert the image again with this model"
    )]
    OtherModel { path: String, made_with: String, asked: String },
    #[error("{path} is for a {made_width}×{made_height} image, not {width}×{height}; invert this image")]
    OtherSize { path: String, made_width: u32, made_height: u32, width: u32, height: u32 },
}

/// Writes `inversion` to `path` atomically.
pub fn save(inversion: &Inversion, path: &Path) -> Result<(), InversionError> {
    let write_error = |reason: String| InversionError::Write { path: path.display().to_string(), reason };
    let [c, h, w] = inversion.latent_shape;
    let mut bytes = Vec::with_capacity(inversion.trajectory.len() * c * h * w * 4);
    for latents in &inversion.trajectory {
        if latents.len() != c * h * w {
            return Err(write_error(format!("a latent has {} values, not {}", latents.len(), c * h * w)));
        }
        bytes.extend(latents.iter().flat_map(|v| v.to_le_bytes()));
    }
    let shape = vec![inversion.trajectory.len(), c, h, w];
    let view = TensorView::new(Dtype::F32, shape, &bytes).map_err(|e| write_error(e.to_string()))?;
    let mut tensors = vec![("trajectory".to_string(), view)];
    let null_bytes: Vec<u8>;
    if let Some(null_text) = &inversion.null_text {
        let width = null_text.first().map_or(0, Vec::len);
        if null_text.iter().any(|e| e.len() != width) || null_text.len() != inversion.steps {
            return Err(write_error("the null-text embeddings differ in size or count".into()));
        }
        null_bytes = null_text.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![null_text.len(), width], &null_bytes)
            .map_err(|e| write_error(e.to_string()))?;
        tensors.push(("null_text".to_string(), view));
    }
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("model".to_string(), inversion.model.display().to_string()),
        ("prompt".to_string(), inversion.prompt.clone()),
        ("steps".to_string(), inversion.steps.to_string()),
        ("width".to_string(), inversion.width.to_string()),
        ("height".to_string(), inversion.height.to_string()),
        ("psnr".to_string(), format!("{:.3}", inversion.psnr)),
        ("psnr_vae".to_string(), format!("{:.3}", inversion.psnr_vae)),
    ]);
    let serialized =
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| write_error(e.to_string()))?;
    super::write_atomic(path, &serialized).map_err(|e| write_error(e.to_string()))
}

/// Reads an inversion file; the reconstruction comes back empty (0×0).
pub fn load(path: &Path) -> Result<Inversion, InversionError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| InversionError::Read { path: name.clone(), reason: e.to_string() })?;
    let not = |reason: &str| InversionError::NotInversion { path: name.clone(), reason: reason.to_string() };
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| not(&e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(not("no diffusion-studio format tag"));
    }
    let field = |key: &str| metadata.get(key).cloned().ok_or_else(|| not(&format!("no {key} in its header")));
    let number = |key: &str| -> Result<u64, InversionError> {
        field(key)?.parse().map_err(|_| not(&format!("its {key} is not a number")))
    };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| not(&e.to_string()))?;
    let tensor = file.tensor("trajectory").map_err(|_| not("no trajectory tensor"))?;
    let shape = tensor.shape().to_vec();
    if tensor.dtype() != Dtype::F32 || shape.len() != 4 || shape[0] < 2 {
        return Err(not("its trajectory is not an f32 (steps + 1, c, h, w) tensor"));
    }
    let per = shape[1] * shape[2] * shape[3];
    let values: Vec<f32> =
        tensor.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let steps = number("steps")? as usize;
    if shape[0] != steps + 1 {
        return Err(not("its trajectory length does not match its steps"));
    }
    let null_text = match file.tensor("null_text") {
        Ok(view) => {
            let shape = view.shape().to_vec();
            if view.dtype() != Dtype::F32 || shape.len() != 2 || shape[0] != steps || shape[1] == 0 {
                return Err(not("its null_text is not an f32 (steps, values) tensor"));
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Some(values.chunks_exact(shape[1]).map(<[f32]>::to_vec).collect())
        }
        Err(_) => None,
    };
    Ok(Inversion {
        model: field("model")?.into(),
        prompt: field("prompt")?,
        steps,
        width: number("width")? as u32,
        height: number("height")? as u32,
        latent_shape: [shape[1], shape[2], shape[3]],
        trajectory: values.chunks_exact(per).map(<[f32]>::to_vec).collect(),
        reconstruction: ImageData::new(0, 0, Vec::new()).map_err(|e| not(&e))?,
        psnr: field("psnr")?.parse().unwrap_or(f64::NAN),
        psnr_vae: field("psnr_vae")?.parse().unwrap_or(f64::NAN),
        null_text,
    })
}

/// Checks that `inversion` (read from `path`) was made with `model` for a `width`×`height` image.
pub fn check_fits(
    inversion: &Inversion,
    path: &Path,
    model: &Path,
    width: u32,
    height: u32,
) -> Result<(), InversionError> {
    let same_model = inversion.model == model
        || matches!((inversion.model.canonicalize(), model.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if !same_model {
        return Err(InversionError::OtherModel {
            path: path.display().to_string(),
            made_with: inversion.model.display().to_string(),
            asked: model.display().to_string(),
        });
    }
    if (inversion.width, inversion.height) != (width, height) {
        return Err(InversionError::OtherSize {
            path: path.display().to_string(),
            made_width: inversion.width,
            made_height: inversion.height,
            width,
            height,
        });
    }
    Ok(())
}
