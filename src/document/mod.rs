//! What the user edits: the source image (its file and revision), its inpainting mask, and
//! the undo history of both. Plain data — no tch, no egui — so the UI, the CLI and tests share
//! it. Reading and writing images live here too.

pub mod inversion;
pub mod mask;
pub mod project;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mask::{Brush, Mask, MaskPatch, PixelRect, Stroke};

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

/// One undoable change. Undo and redo are the same swap: the entry holds the other state.
enum Change {
    /// The image (and, when `mask` is Some, the mask; 0 × 0 for none) as they were.
    Image { image: Option<ImageLayer>, mask: Option<Mask> },
    /// Parts of the mask as they were.
    Mask(Vec<MaskPatch>),
}

/// A whole-mask operation (the canvas's mask tools).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOp {
    Fill,
    Clear,
    Invert,
    /// Grow the marked region by this many pixels.
    Grow(u32),
    /// Shrink it by this many pixels.
    Shrink(u32),
    /// Soften its edge (Gaussian σ in pixels).
    Feather(f32),
    /// Replace it (a mask from an attention map, DiffEdit, or a file); resized to the image.
    Set(Mask),
}

/// The document the studio works on.
#[derive(Default)]
pub struct Document {
    pub image: Option<ImageLayer>,
    /// The inpainting mask, the image's size; there whenever an image is.
    pub mask: Option<Mask>,
    next_revision: u64,
    /// Whether there are changes not yet saved to `image.path`.
    pub modified: bool,
    /// Earlier states, newest last, restored by [`Document::undo`].
    undo_stack: Vec<Change>,
    /// States undone, newest last, restored by [`Document::redo`].
    redo_stack: Vec<Change>,
    /// The stroke being painted.
    stroke: Option<Stroke>,
    /// Where the last stroke ended (shift-click draws a straight line from there).
    pub last_stroke_end: Option<(f32, f32)>,
    /// Mask pixels changed since the canvas last uploaded them.
    mask_dirty: Option<PixelRect>,
    /// Changes whenever the mask does.
    pub mask_revision: u64,
}

impl Document {
    /// A document holding `image` and `mask` (an empty mask when None or of another size) with
    /// a fresh undo history, as a restored project starts; its revisions start after
    /// `revisions_from` so that nothing cached for an earlier document is taken for it.
    pub fn restored(
        image: image::RgbaImage,
        path: Option<PathBuf>,
        mask: Option<Mask>,
        revisions_from: u64,
    ) -> Self {
        let (width, height) = image.dimensions();
        let mask = mask.filter(|m| (m.width(), m.height()) == (width, height));
        let mut document = Document {
            image: Some(ImageLayer { image: Arc::new(image), path, revision: revisions_from + 1 }),
            mask: Some(mask.unwrap_or_else(|| Mask::new(width, height))),
            next_revision: revisions_from + 1,
            modified: true,
            ..Document::default()
        };
        document.mark_mask_dirty(None);
        document
    }

    /// Replaces the image with one read from `path`, with an empty mask of its size; the
    /// previous image and mask can be had back by undo.
    pub fn set_opened_image(&mut self, image: image::RgbaImage, path: PathBuf) {
        self.finish_stroke();
        let mask = Mask::new(image.width(), image.height());
        let old_mask = self.mask.replace(mask).unwrap_or_else(|| Mask::new(0, 0));
        self.replace_image(Arc::new(image), Some(path), Some(old_mask));
        self.last_stroke_end = None;
        self.mark_mask_dirty(None);
        self.modified = false;
    }

    /// Replaces the pixels with a result (e.g. from the engine), keeping the file name and, when
    /// the size is the same, the mask; the previous pixels can be had back by undo. An image
    /// already shared (a history entry's) is kept without a copy.
    pub fn set_result_image(&mut self, image: impl Into<Arc<image::RgbaImage>>) {
        let image: Arc<image::RgbaImage> = image.into();
        self.finish_stroke();
        let path = self.image.as_ref().and_then(|layer| layer.path.clone());
        let same_size = self.mask.as_ref().is_some_and(|m| (m.width(), m.height()) == image.dimensions());
        let old_mask = if same_size {
            None
        } else {
            self.mark_mask_dirty(None);
            Some(
                self.mask
                    .replace(Mask::new(image.width(), image.height()))
                    .unwrap_or_else(|| Mask::new(0, 0)),
            )
        };
        self.replace_image(image, path, old_mask);
        self.modified = true;
    }

    /// `old_mask`: the mask before, when it changed with the image (0 × 0 for none).
    fn replace_image(&mut self, image: Arc<image::RgbaImage>, path: Option<PathBuf>, old_mask: Option<Mask>) {
        self.next_revision += 1;
        let new = ImageLayer { image, path, revision: self.next_revision };
        // opening the first image is not a step back to an empty studio
        if let Some(old) = self.image.replace(new) {
            self.push(Change::Image { image: Some(old), mask: old_mask });
        }
    }

    fn push(&mut self, change: Change) {
        self.undo_stack.push(change);
        self.redo_stack.clear();
    }

    pub fn can_undo(&self) -> bool {
        !self.undo_stack.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo_stack.is_empty()
    }

    /// Goes back one change (image or mask); returns whether there was one.
    pub fn undo(&mut self) -> bool {
        self.finish_stroke();
        let Some(change) = self.undo_stack.pop() else { return false };
        let redo = self.swap(change);
        self.redo_stack.push(redo);
        self.modified = true;
        true
    }

    /// Re-applies the last undone change; returns whether there was one.
    pub fn redo(&mut self) -> bool {
        self.finish_stroke();
        let Some(change) = self.redo_stack.pop() else { return false };
        let undo = self.swap(change);
        self.undo_stack.push(undo);
        self.modified = true;
        true
    }

    /// Puts `change`'s state in and returns the state it replaced.
    fn swap(&mut self, change: Change) -> Change {
        match change {
            Change::Image { image, mask } => {
                let current = std::mem::replace(&mut self.image, image);
                let mask = mask.map(|mask| {
                    self.mark_mask_dirty(None);
                    // an empty 0 × 0 mask stands for "there was none"
                    let mask = (mask.width() > 0).then_some(mask);
                    std::mem::replace(&mut self.mask, mask).unwrap_or_else(|| Mask::new(0, 0))
                });
                Change::Image { image: current, mask }
            }
            Change::Mask(patches) => {
                let Some(mask) = self.mask.as_mut() else { return Change::Mask(patches) };
                let mut dirty = None;
                let replaced = patches
                    .into_iter()
                    .map(|patch| {
                        dirty = Some(dirty.map_or(patch.rect, |d: PixelRect| d.union(patch.rect)));
                        mask.swap_patch(patch)
                    })
                    .collect();
                if let Some(rect) = dirty {
                    self.mark_mask_dirty(Some(rect));
                }
                Change::Mask(replaced)
            }
        }
    }

    /// The image the last image change replaced (what a before/after compare shows), if any.
    pub fn before_image(&self) -> Option<&ImageLayer> {
        self.undo_stack.iter().rev().find_map(|change| match change {
            Change::Image { image, .. } => Some(image.as_ref()),
            Change::Mask(_) => None,
        })?
    }

    /// A fresh revision number for images shown but not kept (previews).
    pub fn take_revision(&mut self) -> u64 {
        self.next_revision += 1;
        self.next_revision
    }

    fn mark_mask_dirty(&mut self, rect: Option<PixelRect>) {
        self.mask_revision += 1;
        let whole = self.mask.as_ref().map_or(PixelRect { x0: 0, y0: 0, x1: 0, y1: 0 }, Mask::bounds);
        let rect = rect.unwrap_or(whole);
        self.mask_dirty = Some(self.mask_dirty.map_or(rect, |d| d.union(rect)));
    }

    /// The mask pixels changed since the last call (what the canvas re-uploads).
    pub fn take_mask_dirty(&mut self) -> Option<PixelRect> {
        self.mask_dirty.take()
    }

    /// Starts a stroke at `point` (image pixels); a stroke already going is finished first.
    pub fn begin_stroke(&mut self, brush: Brush, point: (f32, f32)) {
        self.finish_stroke();
        if self.mask.is_none() {
            return;
        }
        self.stroke = Some(Stroke::new(brush));
        self.continue_stroke(point);
    }

    /// Paints the stroke on to `point`.
    pub fn continue_stroke(&mut self, point: (f32, f32)) {
        let (Some(stroke), Some(mask)) = (self.stroke.as_mut(), self.mask.as_mut()) else { return };
        let changed = stroke.add_point(mask, point);
        if !changed.is_empty() {
            self.mark_mask_dirty(Some(changed));
        }
    }

    /// Whether a stroke is being painted.
    pub fn stroking(&self) -> bool {
        self.stroke.is_some()
    }

    /// Ends the stroke being painted (if any): one undo step.
    pub fn finish_stroke(&mut self) {
        let Some(stroke) = self.stroke.take() else { return };
        self.last_stroke_end = stroke.last_point().or(self.last_stroke_end);
        let Some(mask) = self.mask.as_ref() else { return };
        let patches = stroke.finish(mask);
        if !patches.is_empty() {
            self.push(Change::Mask(patches));
            self.modified = true;
        }
    }

    /// A straight stroke from where the last one ended to `point` (shift-click), or a dab at
    /// `point` when there was none.
    pub fn stroke_line_to(&mut self, brush: Brush, point: (f32, f32)) {
        let from = self.last_stroke_end.unwrap_or(point);
        self.begin_stroke(brush, from);
        self.continue_stroke(point);
        self.finish_stroke();
    }

    /// Applies a whole-mask operation as one undo step; returns false when there is no mask.
    pub fn apply_mask_op(&mut self, op: MaskOp) -> bool {
        self.finish_stroke();
        let Some(mask) = self.mask.as_mut() else { return false };
        let before = mask.copy_rect(mask.bounds());
        match op {
            MaskOp::Fill => mask.fill(),
            MaskOp::Clear => mask.clear(),
            MaskOp::Invert => mask.invert(),
            MaskOp::Grow(radius) => mask.grow(radius),
            MaskOp::Shrink(radius) => mask.shrink(radius),
            MaskOp::Feather(sigma) => mask.feather(sigma),
            MaskOp::Set(new) => *mask = new.resized(mask.width(), mask.height()),
        }
        if mask.pixels() == before.pixels.as_slice() {
            return true;
        }
        self.push(Change::Mask(vec![before]));
        self.mark_mask_dirty(None);
        self.modified = true;
        true
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

    fn opened(width: u32, height: u32) -> Document {
        let mut document = Document::default();
        let image = image::RgbaImage::from_pixel(width, height, image::Rgba([9, 9, 9, 255]));
        document.set_opened_image(image, PathBuf::from("a.png"));
        document
    }

    fn marked(document: &Document) -> usize {
        document.mask.as_ref().map_or(0, |m| m.pixels().iter().filter(|&&v| v > 0).count())
    }

    #[test]
    fn strokes_mask_ops_and_results_share_one_undo_history() {
        let mut document = opened(96, 80);
        assert_eq!(marked(&document), 0);
        assert!(document.take_mask_dirty().is_some(), "a new mask is uploaded whole");
        let brush = Brush { radius: 6.0, hardness: 1.0, opacity: 1.0, erase: false };
        document.begin_stroke(brush, (20.0, 20.0));
        document.continue_stroke((60.0, 20.0));
        let dirty = document.take_mask_dirty().expect("the stroke dirtied the mask");
        assert!(dirty.x0 <= 14 && dirty.x1 >= 66 && dirty.y0 <= 14 && dirty.y1 <= 28, "{dirty:?}");
        document.finish_stroke();
        let stroked = marked(&document);
        assert!(stroked > 400, "{stroked}");
        assert_eq!(document.last_stroke_end, Some((60.0, 20.0)));

        assert!(document.apply_mask_op(MaskOp::Grow(2)));
        let grown = marked(&document);
        assert!(grown > stroked);
        // a result of the same size keeps the mask
        document.set_result_image(image::RgbaImage::from_pixel(96, 80, image::Rgba([1, 2, 3, 255])));
        assert_eq!(marked(&document), grown);

        assert_eq!(
            document.before_image().map(|l| l.image.get_pixel(0, 0)[0]),
            Some(9),
            "the compare shows the image before the result, past the mask steps"
        );
        assert!(document.undo(), "the result");
        assert_eq!(document.image.as_ref().map(|l| l.image.get_pixel(0, 0)[0]), Some(9));
        assert_eq!(marked(&document), grown);
        assert!(document.undo(), "the grow");
        assert_eq!(marked(&document), stroked);
        assert!(document.undo(), "the stroke");
        assert_eq!(marked(&document), 0);
        assert!(document.redo() && document.redo());
        assert_eq!(marked(&document), grown);
    }

    #[test]
    fn opening_another_image_brings_a_new_mask_and_undo_brings_the_old_one_back() {
        let mut document = opened(40, 30);
        document.apply_mask_op(MaskOp::Fill);
        document.set_opened_image(image::RgbaImage::new(64, 64), PathBuf::from("b.png"));
        let mask = document.mask.as_ref().expect("a mask");
        assert_eq!((mask.width(), mask.height(), marked(&document)), (64, 64, 0));
        assert!(document.undo());
        let mask = document.mask.as_ref().expect("a mask");
        assert_eq!((mask.width(), mask.height(), marked(&document)), (40, 30, 1200));
        assert!(document.undo(), "the fill");
        assert_eq!(marked(&document), 0);
        assert!(!document.undo(), "nothing before the first image");
        assert!(document.redo() && document.redo());
        assert_eq!(document.mask.as_ref().map(|m| (m.width(), m.height())), Some((64, 64)));
    }

    #[test]
    fn shift_click_draws_a_straight_line_from_the_last_stroke() {
        let mut document = opened(100, 100);
        let brush = Brush { radius: 2.0, hardness: 1.0, opacity: 1.0, erase: false };
        document.begin_stroke(brush, (10.0, 50.0));
        document.finish_stroke();
        document.stroke_line_to(brush, (90.0, 50.0));
        let mask = document.mask.as_ref().expect("a mask");
        assert!((10..=90).all(|x| mask.get(x, 50) == 255));
        assert!(document.undo());
        let mask = document.mask.as_ref().expect("a mask");
        assert_eq!(mask.get(50, 50), 0, "the line is one undo step");
        assert_eq!(mask.get(10, 50), 255, "the first dab stays");
    }

    #[test]
    fn a_mask_set_from_elsewhere_is_fitted_to_the_image() {
        let mut document = opened(64, 32);
        let mut small = Mask::new(16, 8);
        small.fill();
        assert!(document.apply_mask_op(MaskOp::Set(small)));
        assert_eq!(marked(&document), 64 * 32);
        assert!(!Document::default().apply_mask_op(MaskOp::Invert), "no image, no mask");
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
