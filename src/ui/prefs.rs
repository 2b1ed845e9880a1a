//! The studio's preferences, remembered across runs: the model it opens on and the denoiser's
//! precision. A small JSON file, written atomically when they change.

use std::path::{Path, PathBuf};

/// What the studio remembers between runs.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// The model folder or single-file checkpoint last loaded (None: the bundled model).
    pub model: Option<PathBuf>,
    /// The denoiser's precision: "f32", "f16" or "bf16".
    pub precision: String,
    /// Where the engine runs: "auto", "cpu" or "cuda:N" ("" is auto).
    pub device: String,
}

impl Prefs {
    /// The precision as the engine takes it (f32 for anything unknown).
    pub fn precision(&self) -> crate::protocol::Precision {
        crate::protocol::Precision::from_name(&self.precision).unwrap_or_default()
    }

    /// The device as the engine takes it (auto for anything unknown).
    pub fn device(&self) -> crate::protocol::DeviceChoice {
        crate::protocol::DeviceChoice::from_name(&self.device).unwrap_or_default()
    }
}

/// Where they live: `$DIFFUSION_STUDIO_CONFIG`, else `$XDG_CONFIG_HOME/diffusion-studio/settings.json`,
/// else `~/.config/diffusion-studio/settings.json`.
pub fn prefs_path() -> Option<PathBuf> {
    let from = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    from("DIFFUSION_STUDIO_CONFIG")
        .or_else(|| from("XDG_CONFIG_HOME").map(|d| d.join("diffusion-studio/settings.json")))
        .or_else(|| from("HOME").map(|h| h.join(".config/diffusion-studio/settings.json")))
}

/// Reads the preferences; a missing file gives the defaults, a damaged one an error naming it.
pub fn read_prefs(path: &Path) -> Result<Prefs, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is damaged ({e}); the studio starts with its defaults", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Prefs::default()),
        Err(e) => Err(format!("could not read {}: {e}", path.display())),
    }
}

/// Writes the preferences atomically.
pub fn write_prefs(path: &Path, prefs: &Prefs) -> Result<(), String> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| format!("could not create {}: {e}", folder.display()))?;
    }
    let json = serde_json::to_vec_pretty(prefs).map_err(|e| e.to_string())?;
    crate::document::write_atomic(path, &json).map_err(|e| format!("could not write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefs_round_trip_and_damaged_files_are_named() {
        let folder = std::env::temp_dir().join(format!("ds-prefs-{}", std::process::id()));
        let path = folder.join("settings.json");
        let _ = std::fs::remove_dir_all(&folder);
        assert_eq!(read_prefs(&path), Ok(Prefs::default()), "no file yet");
        let prefs = Prefs {
            model: Some(PathBuf::from("/models/sd15")),
            precision: "f16".into(),
            device: "cuda:1".into(),
        };
        write_prefs(&path, &prefs).expect("write");
        assert_eq!(read_prefs(&path), Ok(prefs.clone()));
        assert_eq!(prefs.precision(), crate::protocol::Precision::F16);
        assert_eq!(prefs.device(), crate::protocol::DeviceChoice::Cuda(1));
        assert_eq!(Prefs::default().device(), crate::protocol::DeviceChoice::Auto);
        std::fs::write(&path, "{ nope").expect("write");
        let error = read_prefs(&path).expect_err("damaged");
        assert!(error.contains("settings.json") && error.contains("damaged"), "{error}");
    }
}
