//! Weights from disk into modules: `.safetensors` files only (pickle formats can run code and are
//! refused), every key and shape checked, errors that name the file, the key, both shapes and
//! what to do.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub mod single_file;

use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: pickle checkpoints (.ckpt, .bin, .pt, .pth) can run arbitrary code when loaded and are refused; \
         convert it to .safetensors first (e.g. with diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py \
         or safetensors' convert tool) on a machine you trust"
    )]
    Pickle { path: PathBuf },
    #[error(
        "{path} is not a valid safetensors file ({reason}); it may be truncated or damaged — download it again"
    )]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path}: key {key} has dtype {dtype:?}, which the studio does not load (use f32, f16 or bf16 weights)"
    )]
    Dtype { path: PathBuf, key: String, dtype: Dtype },
    #[error("{path}: key {key} has shape {file_shape:?}, the model expects {model_shape:?}{hint}")]
    Shape { path: PathBuf, key: String, file_shape: Vec<i64>, model_shape: Vec<i64>, hint: String },
    #[error(
        "{path}: {count} weights the model needs are missing, e.g. {examples} — is this the right file for this part of the model?"
    )]
    Missing { path: PathBuf, count: usize, examples: String },
    #[error(
        "{path}: {count} weights the model does not have, e.g. {examples} — the config.json may not match the weights"
    )]
    Unexpected { path: PathBuf, count: usize, examples: String },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("tensor operation failed while loading: {0}")]
    Tensor(#[from] tch::TchError),
}

/// Refuses pickle formats by their extension, before anything reads them.
pub fn refuse_pickle(path: &Path) -> Result<(), LoadError> {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("ckpt" | "bin" | "pt" | "pth" | "pkl") => Err(LoadError::Pickle { path: path.into() }),
        _ => Ok(()),
    }
}

/// Every tensor of a `.safetensors` file, on the CPU, in the file's dtype.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, LoadError> {
    SafetensorsFile::open(path)?.tensors(|_| true)
}

/// A `.safetensors` file mapped into memory: its header can be read without its tensors, and
/// only the tensors wanted are copied out (a checkpoint's EMA copy, for one, never is).
pub struct SafetensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl SafetensorsFile {
    /// Maps `path` (pickle formats are refused first).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        refuse_pickle(path)?;
        let file =
            std::fs::File::open(path).map_err(|source| LoadError::Read { path: path.into(), source })?;
        // SAFETY: the map is only read, and lives no longer than this value. A file changed on
        // disk while mapped is the one hazard (as for every memory-mapped reader, safetensors'
        // own included); a weights file being loaded is not written to.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|source| LoadError::Read { path: path.into(), source })?;
        let mapped = Self { path: path.into(), map };
        mapped.parsed()?;
        Ok(mapped)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>, LoadError> {
        SafeTensors::deserialize(&self.map)
            .map_err(|error| LoadError::Format { path: self.path.clone(), reason: error.to_string() })
    }

    /// Every key's shape, from the header.
    pub fn shapes(&self) -> Result<BTreeMap<String, Vec<i64>>, LoadError> {
        Ok(self
            .parsed()?
            .tensors()
            .into_iter()
            .map(|(key, view)| (key, view.shape().iter().map(|d| *d as i64).collect()))
            .collect())
    }

    /// The tensors whose keys `keep` accepts, on the CPU, in the file's dtype.
    pub fn tensors(&self, keep: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Tensor>, LoadError> {
        let mut tensors = BTreeMap::new();
        for (key, view) in self.parsed()?.tensors() {
            if !keep(&key) {
                continue;
            }
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F64 => Kind::Double,
                Dtype::I64 => Kind::Int64,
                Dtype::I32 => Kind::Int,
                dtype => return Err(LoadError::Dtype { path: self.path.clone(), key, dtype }),
            };
            let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
            tensors.insert(key, Tensor::f_from_data_size(view.data(), &shape, kind)?);
        }
        Ok(tensors)
    }
}

/// Copies `weights` into the variables of `vs` (names equal to checkpoint keys once
/// `strip_prefix` is removed), converting dtypes; `ignored` keys (buffers such as
/// `position_ids`) may be present without a variable. Every variable must be filled.
pub fn load_into(
    vs: &tch::nn::VarStore,
    weights: BTreeMap<String, Tensor>,
    source: &Path,
    strip_prefix: &str,
    ignored: &[&str],
) -> Result<(), LoadError> {
    let mut variables: HashMap<String, Tensor> = vs.variables();
    let mut unexpected = Vec::new();
    let _guard = tch::no_grad_guard();
    for (key, tensor) in weights {
        let name = key.strip_prefix(strip_prefix).unwrap_or(&key).to_string();
        let Some(mut variable) = variables.remove(&name) else {
            if !ignored.iter().any(|suffix| name.ends_with(suffix)) {
                unexpected.push(key);
            }
            continue;
        };
        if variable.size() != tensor.size() {
            return Err(LoadError::Shape {
                path: source.into(),
                key,
                file_shape: tensor.size(),
                model_shape: variable.size(),
                hint: String::new(),
            });
        }
        variable.f_copy_(&tensor)?;
    }
    let examples = |keys: &mut Vec<String>| {
        keys.sort();
        keys.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
    };
    if !variables.is_empty() {
        let mut missing: Vec<String> = variables.into_keys().map(|k| format!("{strip_prefix}{k}")).collect();
        return Err(LoadError::Missing {
            path: source.into(),
            count: missing.len(),
            examples: examples(&mut missing),
        });
    }
    if !unexpected.is_empty() {
        return Err(LoadError::Unexpected {
            path: source.into(),
            count: unexpected.len(),
            examples: examples(&mut unexpected),
        });
    }
    Ok(())
}

/// The weights of a diffusers component folder: `<stem>.safetensors`, its `.fp16` variant, or a
/// sharded set named by `<stem>.safetensors.index.json`. Returns the path to name in errors and
/// every tensor.
pub fn read_component(
    folder: &Path,
    stems: &[&str],
) -> Result<(PathBuf, BTreeMap<String, Tensor>), LoadError> {
    for stem in stems {
        for variant in ["", ".fp16"] {
            let single = folder.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                let tensors = read_safetensors(&single)?;
                return Ok((single, tensors));
            }
            let index = folder.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                return read_sharded(&index);
            }
        }
    }
    for stem in stems {
        for pickle in ["bin", "ckpt", "pt"] {
            let path = folder.join(format!("{stem}.{pickle}"));
            if path.is_file() {
                return Err(LoadError::Pickle { path });
            }
        }
    }
    Err(LoadError::Read {
        path: folder.join(format!("{}.safetensors", stems.first().copied().unwrap_or("model"))),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no .safetensors weights in this folder"),
    })
}

/// Fills `vs` from a diffusers model folder's `diffusion_pytorch_model` weights (keys as they
/// are, every variable required, none left over).
pub fn load_diffusers_weights(vs: &tch::nn::VarStore, folder: &Path) -> Result<(), LoadError> {
    let (weights_path, weights) = read_component(folder, &["diffusion_pytorch_model"])?;
    load_into(vs, weights, &weights_path, "", &[])
}

/// Every tensor of a sharded checkpoint, from its `weight_map` index.
fn read_sharded(index: &Path) -> Result<(PathBuf, BTreeMap<String, Tensor>), LoadError> {
    let text =
        std::fs::read_to_string(index).map_err(|source| LoadError::Read { path: index.into(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| LoadError::Config { path: index.into(), reason: error.to_string() })?;
    let Some(map) = json["weight_map"].as_object() else {
        return Err(LoadError::Config { path: index.into(), reason: "no weight_map object".into() });
    };
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort_unstable();
    shards.dedup();
    let folder = index.parent().unwrap_or(Path::new("."));
    let mut tensors = BTreeMap::new();
    for shard in shards {
        if shard.contains('/') || shard.contains('\\') {
            return Err(LoadError::Config {
                path: index.into(),
                reason: format!("shard name {shard} leaves the folder"),
            });
        }
        tensors.extend(read_safetensors(&folder.join(shard))?);
    }
    for key in map.keys() {
        if !tensors.contains_key(key) {
            return Err(LoadError::Config {
                path: index.into(),
                reason: format!("key {key} is listed in the index but is in none of its shards"),
            });
        }
    }
    Ok((index.into(), tensors))
}
