//! What the user edits: for now the source image, its file and its revision. Plain data — no
//! tch, no egui — so the UI, the CLI and tests share it. Reading and writing images live here too.

pub mod inversion;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest side the studio opens, in pixels; larger images are refused with a message.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The image being edited.
#[derive(Clone)]
pub struct ImageLayer {
    pub image: Arc<image::RgbaImage>,
    /// The file it came from or was last saved to.
    pub path: Option<PathBuf>,
    /// Changes whenever the pixels change (the canvas re-uploads its texture then).
    pub revision: u64,
}

/// The document the studio works on.
#[derive(Default)]
pub struct Document {
    pub image: Option<ImageLayer>,
    next_revision: u64,
    /// Whether there are changes not yet saved to `image.path`.
    pub modified: bool,
    /// Earlier images, newest last, restored by [`Document::undo`].
    undo_stack: Vec<ImageLayer>,
    /// Images undone, newest last, restored by [`Document::redo`].
    redo_stack: Vec<ImageLayer>,
}

impl Document {
    /// Replaces the image with one read from `path`; the previous one can be had back by undo.
    pub fn set_opened_image(&mut self, image: image::RgbaImage, path: PathBuf) {
        self.replace_image(image, Some(path));
        self.modified = false;
    }

    /// Replaces the pixels with a result (e.g. from the engine), keeping the file name; the
    /// previous pixels can be had back by undo.
    pub fn set_result_image(&mut self, image: image::RgbaImage) {
        let path = self.image.as_ref().and_then(|layer| layer.path.clone());
        self.replace_image(image, path);
        self.modified = true;
    }

    fn replace_image(&mut self, image: image::RgbaImage, path: Option<PathBuf>) {
        self.next_revision += 1;
        let new = ImageLayer { image: Arc::new(image), path, revision: self.next_revision };
        if let Some(old) = self.image.replace(new) {
            self.undo_stack.push(old);
        }
        self.redo_stack.clear();
    }

    pub fn can_undo(&self) -> bool {
        !self.undo_stack.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo_stack.is_empty()
    }

    /// Goes back to the previous image; returns whether there was one.
    pub fn undo(&mut self) -> bool {
        let Some(previous) = self.undo_stack.pop() else { return false };
        if let Some(current) = self.image.replace(previous) {
            self.redo_stack.push(current);
        }
        self.modified = true;
        true
    }

    /// Re-applies the last undone image; returns whether there was one.
    pub fn redo(&mut self) -> bool {
        let Some(next) = self.redo_stack.pop() else { return false };
        if let Some(current) = self.image.replace(next) {
            self.undo_stack.push(current);
        }
        self.modified = true;
        true
    }

    /// A fresh revision number for images shown but not kept (previews).
    pub fn take_revision(&mut self) -> u64 {
        self.next_revision += 1;
        self.next_revision
    }
}

/// Why an image could not be opened or saved: says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("could not read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an image the studio can open ({reason}); use PNG, JPEG, WebP, BMP, GIF or TIFF")]
    Format { path: PathBuf, reason: String },
    #[error("{path} is damaged or cut short ({reason}); open another copy of it")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path} is {width}×{height}; the studio opens images up to {MAX_IMAGE_SIDE} pixels a side — scale it down first"
    )]
    TooLarge { path: PathBuf, width: u32, height: u32 },
    #[error("could not write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads and decodes an image file to RGBA.
pub fn read_image(path: &Path) -> Result<image::RgbaImage, ImageFileError> {
    let bytes = std::fs::read(path).map_err(|source| ImageFileError::Read { path: path.into(), source })?;
    let format = image::guess_format(&bytes)
        .map_err(|error| ImageFileError::Format { path: path.into(), reason: error.to_string() })?;
    let reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|error| ImageFileError::Corrupt { path: path.into(), reason: error.to_string() })?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ImageFileError::TooLarge { path: path.into(), width, height });
    }
    let decoded = image::load_from_memory_with_format(&bytes, format).map_err(|error| match error {
        image::ImageError::Unsupported(_) => {
            ImageFileError::Format { path: path.into(), reason: error.to_string() }
        }
        _ => ImageFileError::Corrupt { path: path.into(), reason: error.to_string() },
    })?;
    Ok(decoded.into_rgba8())
}

/// Writes `image` as PNG atomically: to a temporary file beside `path`, then renamed over it, so
/// a crash never leaves a half-written file.
pub fn write_png_atomic(image: &image::RgbaImage, path: &Path) -> Result<(), ImageFileError> {
    let write_error = |reason: String| ImageFileError::Write { path: path.into(), reason };
    let mut encoded = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut encoded), image::ImageFormat::Png)
        .map_err(|error| write_error(error.to_string()))?;
    write_atomic(path, &encoded).map_err(|error| write_error(error.to_string()))
}

/// Writes `image` as PNG with a `tEXt` chunk `key` = `text` (AUTOMATIC1111 keeps generation
/// parameters under "parameters"), atomically.
pub fn write_png_with_text_atomic(
    image: &image::RgbaImage,
    path: &Path,
    key: &str,
    text: &str,
) -> Result<(), ImageFileError> {
    let write_error = |reason: String| ImageFileError::Write { path: path.into(), reason };
    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        // tEXt holds Latin-1 only; other text goes in an iTXt (UTF-8) chunk, as PIL does.
        let latin1 = text.chars().all(|c| u32::from(c) < 256);
        let added = if latin1 {
            encoder.add_text_chunk(key.to_string(), text.to_string())
        } else {
            encoder.add_itxt_chunk(key.to_string(), text.to_string())
        };
        added.map_err(|e| write_error(e.to_string()))?;
        let mut writer = encoder.write_header().map_err(|e| write_error(e.to_string()))?;
        writer.write_image_data(image.as_raw()).map_err(|e| write_error(e.to_string()))?;
    }
    write_atomic(path, &encoded).map_err(|error| write_error(error.to_string()))
}

/// Reads a PNG's `tEXt`/`iTXt` chunk `key`, if it has one.
pub fn read_png_text(path: &Path, key: &str) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|chunk| chunk.keyword == key)
        .map(|chunk| chunk.text.clone())
        .or_else(|| {
            info.utf8_text.iter().find(|chunk| chunk.keyword == key).and_then(|chunk| chunk.get_text().ok())
        })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ds-doc-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    #[test]
    fn undo_and_redo_walk_the_image_history() {
        let mut document = Document::default();
        let pixel = |v: u8| image::RgbaImage::from_pixel(1, 1, image::Rgba([v, v, v, 255]));
        let value = |d: &Document| d.image.as_ref().map(|l| l.image.get_pixel(0, 0)[0]);
        document.set_opened_image(pixel(1), PathBuf::from("a.png"));
        document.set_result_image(pixel(2));
        document.set_result_image(pixel(3));
        assert!(document.undo() && document.undo());
        assert_eq!(value(&document), Some(1));
        assert!(!document.undo(), "nothing before the first image");
        assert!(document.redo());
        assert_eq!(value(&document), Some(2));
        document.set_result_image(pixel(4));
        assert!(!document.can_redo(), "a new result clears redo");
        assert_eq!(document.image.as_ref().and_then(|l| l.path.clone()), Some(PathBuf::from("a.png")));
    }

    #[test]
    fn png_round_trip_is_exact() {
        let dir = scratch("round");
        let mut image = image::RgbaImage::new(7, 5);
        for (x, y, pixel) in image.enumerate_pixels_mut() {
            *pixel = image::Rgba([x as u8 * 30, y as u8 * 40, 200, 255 - x as u8]);
        }
        let path = dir.join("a.png");
        write_png_atomic(&image, &path).expect("write");
        assert_eq!(read_image(&path).expect("read"), image);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_text_file_is_not_an_image() {
        let path = scratch("text").join("notes.png");
        std::fs::write(&path, "hello, this is text").expect("write");
        let error = read_image(&path).expect_err("must fail").to_string();
        assert!(error.contains("notes.png") && error.contains("not an image"), "{error}");
    }

    #[test]
    fn a_truncated_png_is_reported_as_damaged() {
        let dir = scratch("trunc");
        let path = dir.join("cut.png");
        write_png_atomic(&image::RgbaImage::from_pixel(64, 64, image::Rgba([1, 2, 3, 255])), &path)
            .expect("write");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let error = read_image(&path).expect_err("must fail").to_string();
        assert!(error.contains("cut.png") && error.contains("damaged"), "{error}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = read_image(Path::new("/nonexistent/x.png")).expect_err("must fail").to_string();
        assert!(error.contains("/nonexistent/x.png"), "{error}");
    }
}
