//! The inpainting mask: soft alpha (0 keep … 255 repaint) at the image's resolution, painted by
//! strokes in image coordinates and changed by whole-mask operations (fill, clear, invert, grow,
//! shrink, feather). Plain data — no egui, no tch.
//!
//! A stroke keeps, per 64 × 64 tile it touches, the tile's pixels from before the stroke and the
//! stroke's own coverage (the largest of its dabs), so that dabs overlapping within one stroke do
//! not build up past the brush's opacity (as in Krita and Photoshop), a stroke costs time in
//! proportion to the area it covers (not the image's), and undo stores only those tiles.

use std::collections::BTreeMap;

/// Side of a stroke tile, in pixels.
pub const TILE: u32 = 64;

/// A rectangle of mask pixels: `x0..x1` × `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl PixelRect {
    pub fn is_empty(&self) -> bool {
        self.x0 >= self.x1 || self.y0 >= self.y1
    }

    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }

    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }

    /// The smallest rectangle holding both (an empty one is ignored).
    pub fn union(self, other: PixelRect) -> PixelRect {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        PixelRect {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }
}

/// A brush: radius in image pixels, hardness (the share of the radius painted at full
/// strength; the rest falls off smoothly), opacity (the most one stroke adds), paint or erase.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Brush {
    pub radius: f32,
    pub hardness: f32,
    pub opacity: f32,
    pub erase: bool,
}

impl Default for Brush {
    fn default() -> Self {
        Self { radius: 24.0, hardness: 0.7, opacity: 1.0, erase: false }
    }
}

impl Brush {
    /// Smallest and largest radius the studio offers.
    pub const MIN_RADIUS: f32 = 0.5;
    pub const MAX_RADIUS: f32 = 1024.0;

    /// The brush with its values in their ranges (NaN becomes the default).
    pub fn clamped(self) -> Self {
        let fix = |value: f32, low: f32, high: f32, default: f32| {
            if value.is_nan() { default } else { value.clamp(low, high) }
        };
        let default = Brush::default();
        Self {
            radius: fix(self.radius, Self::MIN_RADIUS, Self::MAX_RADIUS, default.radius),
            hardness: fix(self.hardness, 0.0, 1.0, default.hardness),
            opacity: fix(self.opacity, 0.0, 1.0, default.opacity),
            erase: self.erase,
        }
    }

    /// Coverage (0…1) of a dab at distance `d` from its centre.
    fn coverage(&self, d: f32) -> f32 {
        let inner = self.radius * self.hardness;
        if d <= inner {
            1.0
        } else if d >= self.radius {
            0.0
        } else {
            let t = (self.radius - d) / (self.radius - inner).max(1e-6);
            t * t * (3.0 - 2.0 * t)
        }
    }
}

/// A rectangle of mask pixels saved for undo: putting it back restores that part of the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskPatch {
    pub rect: PixelRect,
    pub pixels: Vec<u8>,
}

/// The mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Mask {
    /// An empty (all-keep) mask.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, pixels: vec![0; width as usize * height as usize] }
    }

    /// A mask from 8-bit alpha, row-major; None when the length does not match.
    pub fn from_pixels(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        (pixels.len() == width as usize * height as usize).then_some(Self { width, height, pixels })
    }

    /// A mask from an image's luminance (white = repaint), as inpainting tools save masks.
    pub fn from_luma_image(image: &image::RgbaImage) -> Self {
        let pixels = image
            .pixels()
            .map(|p| ((u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114) / 1000) as u8)
            .collect();
        Self { width: image.width(), height: image.height(), pixels }
    }

    /// The mask as a grey image (white = repaint): what inpainting jobs and mask PNGs take.
    pub fn to_luma_image(&self) -> image::RgbaImage {
        let rgba = self.pixels.iter().flat_map(|&v| [v, v, v, 255]).collect();
        image::RgbaImage::from_raw(self.width, self.height, rgba).unwrap_or_default()
    }

    /// The mask scaled to `width` × `height` (bilinear), or itself when it has that size.
    pub fn resized(self, width: u32, height: u32) -> Self {
        if (self.width, self.height) == (width, height) {
            return self;
        }
        let Some(grey) = image::GrayImage::from_raw(self.width, self.height, self.pixels) else {
            return Self::new(width, height);
        };
        if grey.width() == 0 || grey.height() == 0 {
            return Self::new(width, height);
        }
        let scaled = image::imageops::resize(&grey, width, height, image::imageops::FilterType::Triangle);
        Self { width, height, pixels: scaled.into_raw() }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn get(&self, x: u32, y: u32) -> u8 {
        self.pixels[(y * self.width + x) as usize]
    }

    pub fn bounds(&self) -> PixelRect {
        PixelRect { x0: 0, y0: 0, x1: self.width, y1: self.height }
    }

    /// Whether nothing is marked for repainting.
    pub fn is_empty(&self) -> bool {
        self.pixels.iter().all(|&v| v == 0)
    }

    /// The pixels of `rect` (clipped to the mask), row by row.
    pub fn copy_rect(&self, rect: PixelRect) -> MaskPatch {
        let rect = self.clip(rect);
        let mut pixels = Vec::with_capacity(rect.width() as usize * rect.height() as usize);
        for y in rect.y0..rect.y1 {
            let start = (y * self.width + rect.x0) as usize;
            pixels.extend_from_slice(&self.pixels[start..start + rect.width() as usize]);
        }
        MaskPatch { rect, pixels }
    }

    /// Puts `patch` in and returns what it covered (so that undo and redo are the same swap).
    pub fn swap_patch(&mut self, patch: MaskPatch) -> MaskPatch {
        let old = self.copy_rect(patch.rect);
        if old.rect != patch.rect || patch.pixels.len() != old.pixels.len() {
            // a patch from a mask of another size: nothing to restore
            return patch;
        }
        let width = patch.rect.width() as usize;
        for (row, y) in (patch.rect.y0..patch.rect.y1).enumerate() {
            let start = (y * self.width + patch.rect.x0) as usize;
            self.pixels[start..start + width].copy_from_slice(&patch.pixels[row * width..(row + 1) * width]);
        }
        old
    }

    fn clip(&self, rect: PixelRect) -> PixelRect {
        PixelRect {
            x0: rect.x0.min(self.width),
            y0: rect.y0.min(self.height),
            x1: rect.x1.min(self.width),
            y1: rect.y1.min(self.height),
        }
    }

    /// Everything marked for repainting.
    pub fn fill(&mut self) {
        self.pixels.fill(255);
    }

    /// Nothing marked.
    pub fn clear(&mut self) {
        self.pixels.fill(0);
    }

    /// Repaint what was kept and keep what was repainted.
    pub fn invert(&mut self) {
        self.pixels.iter_mut().for_each(|v| *v = 255 - *v);
    }

    /// Grows the marked region by `radius` pixels (grey-scale dilation by a square, separable).
    pub fn grow(&mut self, radius: u32) {
        self.morphology(radius, u8::max);
    }

    /// Shrinks the marked region by `radius` pixels (grey-scale erosion by a square).
    pub fn shrink(&mut self, radius: u32) {
        self.morphology(radius, u8::min);
    }

    fn morphology(&mut self, radius: u32, pick: fn(u8, u8) -> u8) {
        if radius == 0 || self.pixels.is_empty() {
            return;
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let r = radius as usize;
        let mut line = Vec::new();
        let mut out = Vec::new();
        // rows, then columns: a (2r+1)² square is a row window followed by a column window
        for y in 0..h {
            line.clear();
            line.extend_from_slice(&self.pixels[y * w..(y + 1) * w]);
            window_extreme(&line, r, pick, &mut out);
            self.pixels[y * w..(y + 1) * w].copy_from_slice(&out);
        }
        for x in 0..w {
            line.clear();
            line.extend((0..h).map(|y| self.pixels[y * w + x]));
            window_extreme(&line, r, pick, &mut out);
            for (y, v) in out.iter().enumerate() {
                self.pixels[y * w + x] = *v;
            }
        }
    }

    /// Softens the edge: three box blurs approximating a Gaussian of σ = `sigma` pixels.
    pub fn feather(&mut self, sigma: f32) {
        if sigma.is_nan() || sigma < 0.5 || self.pixels.is_empty() {
            return;
        }
        // three boxes of width 2r + 1 have variance 3 × ((2r + 1)² − 1) / 12 = σ²
        let r = ((((4.0 * sigma * sigma + 1.0).sqrt()) - 1.0) / 2.0).round().max(1.0) as usize;
        let (w, h) = (self.width as usize, self.height as usize);
        let mut values: Vec<f32> = self.pixels.iter().map(|&v| f32::from(v)).collect();
        let mut line = Vec::new();
        let mut out = Vec::new();
        for _ in 0..3 {
            for y in 0..h {
                line.clear();
                line.extend_from_slice(&values[y * w..(y + 1) * w]);
                box_blur(&line, r, &mut out);
                values[y * w..(y + 1) * w].copy_from_slice(&out);
            }
            for x in 0..w {
                line.clear();
                line.extend((0..h).map(|y| values[y * w + x]));
                box_blur(&line, r, &mut out);
                for (y, v) in out.iter().enumerate() {
                    values[y * w + x] = *v;
                }
            }
        }
        for (pixel, value) in self.pixels.iter_mut().zip(values) {
            *pixel = value.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// `out[i]` = `pick` over `line[i − r ..= i + r]` (clipped to the line), in O(n) for any r
/// (van Herk / Gil–Werman: prefix and suffix extremes over blocks of 2r + 1, on the line padded
/// with `pick`'s neutral value so that every window is whole).
fn window_extreme(line: &[u8], r: usize, pick: fn(u8, u8) -> u8, out: &mut Vec<u8>) {
    let n = line.len();
    out.clear();
    if n == 0 {
        return;
    }
    let neutral = 255 - pick(0, 255);
    let k = 2 * r + 1;
    let mut padded = vec![neutral; n + 2 * r];
    padded[r..r + n].copy_from_slice(line);
    let mut prefix = padded.clone();
    let mut suffix = padded.clone();
    for i in 1..padded.len() {
        if i % k != 0 {
            prefix[i] = pick(prefix[i - 1], padded[i]);
        }
    }
    for i in (0..padded.len() - 1).rev() {
        if (i + 1) % k != 0 {
            suffix[i] = pick(suffix[i + 1], padded[i]);
        }
    }
    // the window padded[i ..= i + 2r] is one whole block or spans one block boundary: the
    // suffix of its first block and the prefix of the next
    out.extend((0..n).map(|i| pick(suffix[i], prefix[i + 2 * r])));
}

/// Box blur of half-width `r`, edges clamped (the mask's border value continues outwards).
fn box_blur(line: &[f32], r: usize, out: &mut Vec<f32>) {
    let n = line.len();
    out.clear();
    if n == 0 {
        return;
    }
    let at = |i: isize| line[i.clamp(0, n as isize - 1) as usize];
    let r = r as isize;
    let mut sum: f32 = (-r..=r).map(at).sum();
    let scale = 1.0 / (2 * r + 1) as f32;
    for i in 0..n as isize {
        out.push(sum * scale);
        sum += at(i + r + 1) - at(i - r);
    }
}

/// A stroke being painted: call [`Stroke::add_point`] as the pointer moves and
/// [`Stroke::finish`] when it is released.
pub struct Stroke {
    brush: Brush,
    last: Option<(f32, f32)>,
    /// Per touched tile (by tile column, row): its pixels before the stroke and the stroke's
    /// coverage so far (0…1).
    tiles: BTreeMap<(u32, u32), (Vec<u8>, Vec<f32>)>,
}

impl Stroke {
    pub fn new(brush: Brush) -> Self {
        Self { brush: brush.clamped(), last: None, tiles: BTreeMap::new() }
    }

    pub fn brush(&self) -> Brush {
        self.brush
    }

    /// Where the stroke is now (image pixels), once it has a point.
    pub fn last_point(&self) -> Option<(f32, f32)> {
        self.last
    }

    /// Paints up to `point` (image pixels; may lie outside the image) from the previous point
    /// with dabs a quarter of the radius apart; returns the mask pixels it changed.
    pub fn add_point(&mut self, mask: &mut Mask, point: (f32, f32)) -> PixelRect {
        if !(point.0.is_finite() && point.1.is_finite()) {
            return PixelRect { x0: 0, y0: 0, x1: 0, y1: 0 };
        }
        let spacing = (self.brush.radius * 0.25).max(0.5);
        let mut changed = PixelRect { x0: 0, y0: 0, x1: 0, y1: 0 };
        match self.last {
            None => changed = self.dab(mask, point),
            Some(from) => {
                let (dx, dy) = (point.0 - from.0, point.1 - from.1);
                let length = (dx * dx + dy * dy).sqrt();
                // at most one dab per pixel of the path: a huge jump stays bounded
                let dabs = ((length / spacing).ceil() as usize).clamp(1, 100_000);
                for i in 1..=dabs {
                    let t = i as f32 / dabs as f32;
                    changed = changed.union(self.dab(mask, (from.0 + dx * t, from.1 + dy * t)));
                }
            }
        }
        self.last = Some(point);
        changed
    }

    fn dab(&mut self, mask: &mut Mask, centre: (f32, f32)) -> PixelRect {
        let r = self.brush.radius;
        let span = |low: f32, high: f32, size: u32| {
            let size = size as f32;
            (low.floor().clamp(0.0, size) as u32, (high.ceil() + 1.0).clamp(0.0, size) as u32)
        };
        let (x0, x1) = span(centre.0 - r, centre.0 + r, mask.width);
        let (y0, y1) = span(centre.1 - r, centre.1 + r, mask.height);
        let rect = PixelRect { x0, y0, x1, y1 };
        if rect.is_empty() {
            return rect;
        }
        for ty in y0 / TILE..=(y1 - 1) / TILE {
            for tx in x0 / TILE..=(x1 - 1) / TILE {
                let tile = PixelRect {
                    x0: tx * TILE,
                    y0: ty * TILE,
                    x1: ((tx + 1) * TILE).min(mask.width),
                    y1: ((ty + 1) * TILE).min(mask.height),
                };
                let (before, coverage) = self.tiles.entry((tx, ty)).or_insert_with(|| {
                    let before = mask.copy_rect(tile).pixels;
                    let coverage = vec![0.0; before.len()];
                    (before, coverage)
                });
                let tw = tile.width();
                for y in y0.max(tile.y0)..y1.min(tile.y1) {
                    for x in x0.max(tile.x0)..x1.min(tile.x1) {
                        let (px, py) = (x as f32 + 0.5 - centre.0, y as f32 + 0.5 - centre.1);
                        let c = self.brush.coverage((px * px + py * py).sqrt());
                        let i = ((y - tile.y0) * tw + (x - tile.x0)) as usize;
                        if c <= coverage[i] {
                            continue;
                        }
                        coverage[i] = c;
                        let base = f32::from(before[i]);
                        let amount = c * self.brush.opacity;
                        let value = if self.brush.erase {
                            base * (1.0 - amount)
                        } else {
                            base + (255.0 - base) * amount
                        };
                        mask.pixels[(y * mask.width + x) as usize] = value.round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
        rect
    }

    /// Ends the stroke: the touched tiles as they were before it, for undo (empty when the
    /// stroke never touched the mask).
    pub fn finish(self, mask: &Mask) -> Vec<MaskPatch> {
        self.tiles
            .into_iter()
            .map(|((tx, ty), (before, _))| {
                let rect = PixelRect {
                    x0: tx * TILE,
                    y0: ty * TILE,
                    x1: ((tx + 1) * TILE).min(mask.width),
                    y1: ((ty + 1) * TILE).min(mask.height),
                };
                MaskPatch { rect, pixels: before }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn painted(brush: Brush, points: &[(f32, f32)], size: u32) -> (Mask, Vec<MaskPatch>) {
        let mut mask = Mask::new(size, size);
        let mut stroke = Stroke::new(brush);
        for point in points {
            stroke.add_point(&mut mask, *point);
        }
        let patches = stroke.finish(&mask);
        (mask, patches)
    }

    #[test]
    fn a_hard_dab_paints_a_disc_of_its_radius() {
        let brush = Brush { radius: 10.0, hardness: 1.0, opacity: 1.0, erase: false };
        let (mask, _) = painted(brush, &[(50.0, 50.0)], 100);
        assert_eq!(mask.get(50, 50), 255);
        assert_eq!(mask.get(58, 50), 255, "inside the radius");
        assert_eq!(mask.get(61, 50), 0, "outside the radius");
        let area = mask.pixels().iter().filter(|&&v| v > 127).count() as f32;
        let disc = std::f32::consts::PI * 100.0;
        assert!((area - disc).abs() / disc < 0.05, "area {area} against π r² = {disc}");
    }

    #[test]
    fn a_soft_dab_falls_off_towards_its_edge() {
        let brush = Brush { radius: 20.0, hardness: 0.0, opacity: 1.0, erase: false };
        let (mask, _) = painted(brush, &[(50.0, 50.0)], 100);
        let profile: Vec<u8> = (50..72).map(|x| mask.get(x, 50)).collect();
        assert!(profile.windows(2).all(|w| w[0] >= w[1]), "{profile:?}");
        assert!(profile[0] > 240 && profile[10] > 60 && profile[10] < 200 && profile[21] == 0, "{profile:?}");
    }

    #[test]
    fn overlapping_dabs_of_one_stroke_do_not_build_up_past_the_opacity() {
        let brush = Brush { radius: 8.0, hardness: 1.0, opacity: 0.5, erase: false };
        // back and forth over the same line many times
        let points: Vec<(f32, f32)> = (0..40).map(|i| (if i % 2 == 0 { 20.0 } else { 80.0 }, 50.0)).collect();
        let (mask, _) = painted(brush, &points, 100);
        assert_eq!(mask.get(50, 50), 128, "one stroke at opacity 0.5 gives half");
        // a second stroke builds on the first
        let mut mask = mask;
        let mut stroke = Stroke::new(brush);
        stroke.add_point(&mut mask, (50.0, 50.0));
        assert_eq!(mask.get(50, 50), 192);
    }

    #[test]
    fn a_stroke_fills_the_path_between_its_points() {
        let brush = Brush { radius: 3.0, hardness: 1.0, opacity: 1.0, erase: false };
        let (mask, _) = painted(brush, &[(10.0, 10.0), (190.0, 150.0)], 200);
        for i in 0..=18 {
            let t = i as f32 / 18.0;
            let (x, y) = (10.0 + 180.0 * t, 10.0 + 140.0 * t);
            assert_eq!(mask.get(x as u32, y as u32), 255, "gap at {x}, {y}");
        }
        assert_eq!(mask.get(190, 10), 0);
    }

    #[test]
    fn the_eraser_removes_and_undo_patches_restore_exactly() {
        let mut mask = Mask::new(130, 70);
        mask.fill();
        let original = mask.clone();
        let eraser = Brush { radius: 12.0, hardness: 0.5, opacity: 1.0, erase: true };
        let mut stroke = Stroke::new(eraser);
        stroke.add_point(&mut mask, (60.0, 30.0));
        stroke.add_point(&mut mask, (128.0, 68.0));
        let patches = stroke.finish(&mask);
        assert_eq!(mask.get(60, 30), 0);
        assert_eq!(mask.get(5, 65), 255, "far away: untouched");
        // only the touched tiles are saved: the stroke spans tile columns 0..=2, rows 0..=1
        assert!(!patches.is_empty() && patches.len() <= 6, "{} patches", patches.len());
        let erased = mask.clone();
        let redo: Vec<MaskPatch> = patches.into_iter().map(|p| mask.swap_patch(p)).collect();
        assert_eq!(mask, original, "undo restores every pixel");
        for patch in redo {
            mask.swap_patch(patch);
        }
        assert_eq!(mask, erased, "redo puts the stroke back");
    }

    #[test]
    fn points_outside_the_image_and_nan_are_harmless() {
        let brush = Brush { radius: 5.0, ..Brush::default() };
        let (mask, patches) = painted(brush, &[(-50.0, -50.0), (f32::NAN, 3.0), (-40.0, -60.0)], 32);
        assert!(mask.is_empty());
        assert!(patches.is_empty());
        let nan_brush = Brush { radius: f32::NAN, hardness: f32::INFINITY, opacity: -1.0, erase: false };
        assert_eq!(
            nan_brush.clamped(),
            Brush { radius: Brush::default().radius, hardness: 1.0, opacity: 0.0, erase: false }
        );
    }

    /// A `size`² mask with `xs` × `ys` marked.
    fn with_rect(size: u32, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> Mask {
        let mut mask = Mask::new(size, size);
        mask.swap_patch(MaskPatch {
            rect: PixelRect { x0: xs.start, y0: ys.start, x1: xs.end, y1: ys.end },
            pixels: vec![255; xs.len() * ys.len()],
        });
        mask
    }

    #[test]
    fn grow_and_shrink_move_the_edge_by_the_radius() {
        let mut mask = with_rect(60, 20..40, 20..40);
        let square = mask.clone();
        mask.grow(5);
        assert_eq!(mask.get(15, 30), 255);
        assert_eq!(mask.get(14, 30), 0);
        assert_eq!(mask.get(44, 44), 255, "a square structuring element");
        mask.shrink(5);
        assert_eq!(mask, square, "closing a square by the same square gives it back");
        mask.shrink(3);
        assert_eq!(mask.get(23, 30), 255);
        assert_eq!(mask.get(22, 30), 0);
    }

    #[test]
    fn window_extremes_match_a_direct_computation() {
        let line: Vec<u8> = (0..97u32).map(|i| ((i * 37 + 11) % 251) as u8).collect();
        for r in [1usize, 2, 5, 13, 200] {
            let mut out = Vec::new();
            window_extreme(&line, r, u8::max, &mut out);
            let mut lows = Vec::new();
            window_extreme(&line, r, u8::min, &mut lows);
            for (i, (high, low)) in out.iter().zip(&lows).enumerate() {
                let window = &line[i.saturating_sub(r)..=(i + r).min(line.len() - 1)];
                assert_eq!(Some(*high), window.iter().max().copied(), "max, r {r} at {i}");
                assert_eq!(Some(*low), window.iter().min().copied(), "min, r {r} at {i}");
            }
        }
    }

    #[test]
    fn feather_softens_the_edge_and_keeps_the_mass() {
        let mut mask = with_rect(80, 40..80, 0..80);
        let before: u64 = mask.pixels().iter().map(|&v| u64::from(v)).sum();
        mask.feather(4.0);
        let after: u64 = mask.pixels().iter().map(|&v| u64::from(v)).sum();
        let row: Vec<u8> = (30..50).map(|x| mask.get(x, 40)).collect();
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
        assert!(mask.get(34, 40) > 0 && mask.get(45, 40) < 255, "{row:?}");
        assert!(mask.get(0, 40) == 0 && mask.get(79, 40) == 255);
        assert!((before as f64 - after as f64).abs() / (before as f64) < 0.01, "{before} vs {after}");
    }

    #[test]
    fn invert_and_the_luma_round_trip() {
        let mut mask = Mask::new(4, 3);
        mask.pixels[5] = 200;
        mask.invert();
        assert_eq!(mask.get(1, 1), 55);
        assert_eq!(mask.get(0, 0), 255);
        assert_eq!(Mask::from_luma_image(&mask.to_luma_image()), mask);
        assert!(Mask::from_pixels(4, 3, vec![0; 11]).is_none());
    }
}
