//! Projects on disk: a folder with `project.json` (settings, history entries, the files below),
//! `image.png`, `mask.png` and `history/NNNN.png`. The studio autosaves one every few seconds
//! and on exit, and saves or opens one when asked. Every file is written atomically (temporary
//! file + rename) and `project.json` last, so a crash at any moment leaves the previous project
//! or the new one, never a mix that cannot be read. Plain data: no egui, no tch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::mask::Mask;
use super::{ImageFileError, read_image, write_atomic, write_png_atomic};

/// The project file inside a project folder.
pub const PROJECT_FILE: &str = "project.json";
/// The format this build writes and reads.
pub const PROJECT_VERSION: u32 = 1;

/// One result kept in the history strip: its image file and what made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unique within the project; names the image file (`history/{id:04}.png`).
    pub id: u64,
    /// The method, e.g. "inpaint".
    pub label: String,
    /// The parameters in AUTOMATIC1111's infotext form (also written into the PNG).
    pub parameters: String,
    /// The studio's settings when it was made (restored by clicking the entry).
    pub settings: serde_json::Value,
}

/// What `project.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectFile {
    pub version: u32,
    /// Where the image was opened from, if anywhere.
    pub source_path: Option<PathBuf>,
    pub has_image: bool,
    pub has_mask: bool,
    /// The studio's settings (prompts, brush, method parameters), as the UI wrote them.
    pub settings: serde_json::Value,
    pub history: Vec<HistoryEntry>,
    /// False while the studio runs, true once it has closed normally: an autosave that says
    /// false at start-up is what a crash left, and the studio offers to restore it.
    pub clean_exit: bool,
}

/// Everything a save writes, taken on the UI thread without copying images.
#[derive(Clone)]
pub struct ProjectSnapshot {
    pub image: Option<(u64, Arc<image::RgbaImage>)>,
    pub source_path: Option<PathBuf>,
    /// The mask and its revision.
    pub mask: Option<(u64, Mask)>,
    pub settings: serde_json::Value,
    pub history: Vec<(HistoryEntry, Arc<image::RgbaImage>)>,
    pub clean_exit: bool,
}

/// What a folder already holds from earlier saves by this writer (so unchanged images are not
/// written again).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    folder: Option<PathBuf>,
    image_revision: Option<u64>,
    mask_revision: Option<u64>,
    history: BTreeSet<u64>,
}

/// Why a project could not be saved or opened: names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("could not write the project into {folder}: {reason}")]
    Write { folder: PathBuf, reason: String },
    #[error(
        "{path} is not a diffusion-studio project file ({reason}); open the folder that holds project.json"
    )]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path} was written by a newer diffusion-studio (format {found}, this one reads {PROJECT_VERSION}); update the studio"
    )]
    Newer { path: PathBuf, found: u32 },
    #[error("{0}")]
    Image(#[from] ImageFileError),
    #[error("{path} is {found:?} but the project's image is {expected:?}; the mask was not restored")]
    MaskSize { path: PathBuf, found: (u32, u32), expected: (u32, u32) },
}

/// A project as read back.
pub struct LoadedProject {
    pub file: ProjectFile,
    pub image: Option<image::RgbaImage>,
    pub mask: Option<Mask>,
    /// History entries with their images (entries whose image is missing are left out and
    /// named in `warnings`).
    pub history: Vec<(HistoryEntry, image::RgbaImage)>,
    /// What could not be restored, for the person to read.
    pub warnings: Vec<String>,
}

fn history_file(id: u64) -> String {
    format!("history/{id:04}.png")
}

/// Writes `snapshot` into `folder`: images that changed since `written` says, then
/// `project.json`. Returns what the folder now holds.
pub fn save_project(
    folder: &Path,
    snapshot: &ProjectSnapshot,
    written: &Written,
) -> Result<Written, ProjectError> {
    let fail = |reason: String| ProjectError::Write { folder: folder.to_path_buf(), reason };
    std::fs::create_dir_all(folder.join("history")).map_err(|e| fail(e.to_string()))?;
    let mut now =
        if written.folder.as_deref() == Some(folder) { written.clone() } else { Written::default() };
    now.folder = Some(folder.to_path_buf());
    if let Some((revision, image)) = &snapshot.image
        && now.image_revision != Some(*revision)
    {
        write_png_atomic(image, &folder.join("image.png"))?;
        now.image_revision = Some(*revision);
    }
    if let Some((revision, mask)) = &snapshot.mask
        && now.mask_revision != Some(*revision)
    {
        write_png_atomic(&mask.to_luma_image(), &folder.join("mask.png"))?;
        now.mask_revision = Some(*revision);
    }
    for (entry, image) in &snapshot.history {
        if !now.history.contains(&entry.id) {
            let path = folder.join(history_file(entry.id));
            super::write_png_with_text_atomic(image, &path, "parameters", &entry.parameters)?;
            now.history.insert(entry.id);
        }
    }
    let file = ProjectFile {
        version: PROJECT_VERSION,
        source_path: snapshot.source_path.clone(),
        has_image: snapshot.image.is_some(),
        has_mask: snapshot.mask.is_some(),
        settings: snapshot.settings.clone(),
        history: snapshot.history.iter().map(|(entry, _)| entry.clone()).collect(),
        clean_exit: snapshot.clean_exit,
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| fail(e.to_string()))?;
    write_atomic(&folder.join(PROJECT_FILE), &json).map_err(|e| fail(e.to_string()))?;
    // history images no longer listed (never the case today: the strip only grows) stay on disk
    Ok(now)
}

/// Reads only `project.json` (e.g. to see whether an autosave is a crash's).
pub fn read_project_file(folder: &Path) -> Result<ProjectFile, ProjectError> {
    let path = folder.join(PROJECT_FILE);
    let bytes = std::fs::read(&path)
        .map_err(|e| ProjectError::Format { path: path.clone(), reason: e.to_string() })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ProjectError::Format { path: path.clone(), reason: e.to_string() })?;
    let found = value.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
    if found > PROJECT_VERSION {
        return Err(ProjectError::Newer { path, found });
    }
    serde_json::from_value(value).map_err(|e| ProjectError::Format { path, reason: e.to_string() })
}

/// Reads the project in `folder`.
pub fn load_project(folder: &Path) -> Result<LoadedProject, ProjectError> {
    let file = read_project_file(folder)?;
    let image = if file.has_image { Some(read_image(&folder.join("image.png"))?) } else { None };
    let mut warnings = Vec::new();
    let mask = match (&image, file.has_mask) {
        (Some(image), true) => {
            let path = folder.join("mask.png");
            match read_image(&path) {
                Ok(mask) if mask.dimensions() == image.dimensions() => Some(Mask::from_luma_image(&mask)),
                Ok(mask) => {
                    let error = ProjectError::MaskSize {
                        path,
                        found: mask.dimensions(),
                        expected: image.dimensions(),
                    };
                    warnings.push(error.to_string());
                    None
                }
                Err(error) => {
                    warnings.push(format!("the mask was not restored: {error}"));
                    None
                }
            }
        }
        _ => None,
    };
    let mut history = Vec::new();
    for entry in &file.history {
        match read_image(&folder.join(history_file(entry.id))) {
            Ok(image) => history.push((entry.clone(), image)),
            Err(error) => warnings.push(format!("history entry {} was not restored: {error}", entry.id)),
        }
    }
    Ok(LoadedProject { file, image, mask, history, warnings })
}

/// Where the studio autosaves: `$DIFFUSION_STUDIO_AUTOSAVE`, else
/// `$XDG_DATA_HOME/diffusion-studio/autosave`, else `~/.local/share/diffusion-studio/autosave`.
pub fn autosave_folder() -> Option<PathBuf> {
    let from = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    from("DIFFUSION_STUDIO_AUTOSAVE")
        .or_else(|| from("XDG_DATA_HOME").map(|d| d.join("diffusion-studio/autosave")))
        .or_else(|| from("HOME").map(|h| h.join(".local/share/diffusion-studio/autosave")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ds-project-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn snapshot() -> ProjectSnapshot {
        let image =
            image::RgbaImage::from_fn(12, 8, |x, y| image::Rgba([x as u8 * 20, y as u8 * 30, 7, 255]));
        let mut mask = Mask::new(12, 8);
        mask.invert();
        let result = image::RgbaImage::from_pixel(12, 8, image::Rgba([1, 2, 3, 255]));
        let entry = HistoryEntry {
            id: 1,
            label: "inpaint".into(),
            parameters: "a red star\nSteps: 20".into(),
            settings: serde_json::json!({ "prompt": "a red star" }),
        };
        ProjectSnapshot {
            image: Some((3, Arc::new(image))),
            source_path: Some(PathBuf::from("/photos/a.png")),
            mask: Some((5, mask)),
            settings: serde_json::json!({ "brush": 12.0 }),
            history: vec![(entry, Arc::new(result))],
            clean_exit: false,
        }
    }

    #[test]
    fn a_saved_project_reads_back_the_same() {
        let folder = scratch("round");
        let saved = snapshot();
        let written = save_project(&folder, &saved, &Written::default()).expect("save");
        let loaded = load_project(&folder).expect("load");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.image.as_ref(), saved.image.as_ref().map(|(_, i)| i.as_ref()));
        assert_eq!(loaded.mask.as_ref(), saved.mask.as_ref().map(|(_, m)| m));
        assert_eq!(loaded.file.settings, saved.settings);
        assert_eq!(loaded.file.source_path, saved.source_path);
        assert!(!loaded.file.clean_exit);
        assert_eq!(loaded.history.len(), 1);
        assert_eq!(&loaded.history[0].1, saved.history[0].1.as_ref());
        let text = super::super::read_png_text(&folder.join("history/0001.png"), "parameters");
        assert_eq!(text.as_deref(), Some("a red star\nSteps: 20"), "the PNG carries its parameters");

        // a second save with nothing changed rewrites only project.json
        let image_time = std::fs::metadata(folder.join("image.png")).and_then(|m| m.modified()).ok();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again =
            save_project(&folder, &ProjectSnapshot { clean_exit: true, ..saved }, &written).expect("save");
        assert_eq!(again, written);
        assert_eq!(std::fs::metadata(folder.join("image.png")).and_then(|m| m.modified()).ok(), image_time);
        assert!(read_project_file(&folder).expect("read").clean_exit);
        let leftovers = std::fs::read_dir(&folder)
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
        assert!(!leftovers);
    }

    #[test]
    fn damaged_projects_are_refused_or_restored_in_part_with_the_file_named() {
        let folder = scratch("damaged");
        assert!(matches!(load_project(&folder), Err(ProjectError::Format { .. })), "no folder");
        save_project(&folder, &snapshot(), &Written::default()).expect("save");

        // a mask of another size: the image comes back, the mask does not, and the reason is said
        write_png_atomic(&image::RgbaImage::new(3, 3), &folder.join("mask.png")).expect("write");
        std::fs::remove_file(folder.join("history/0001.png")).expect("remove");
        let loaded = load_project(&folder).expect("load");
        assert!(loaded.image.is_some() && loaded.mask.is_none() && loaded.history.is_empty());
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("mask.png"), "{:?}", loaded.warnings);

        std::fs::write(folder.join(PROJECT_FILE), "{ not json").expect("write");
        let error = load_project(&folder).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("project.json") && error.contains("not a diffusion-studio project"),
            "{error}"
        );

        std::fs::write(folder.join(PROJECT_FILE), r#"{"version": 99}"#).expect("write");
        let error = load_project(&folder).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("newer diffusion-studio"), "{error}");
    }
}
