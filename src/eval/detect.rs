//! Analytic detectors for shapes images: each pixel takes its nearest palette colour, the
//! background is the commonest colour on the border, every other colour's pixels (opened by one
//! pixel, so anti-aliased rims between two colours vanish) form that colour's object, and the
//! object's shape is the upright template that best overlaps it inside its bounding box.
//! No learning: what they report can be checked against the dataset's ground truth.

use crate::datasets::shapes::{Colour, Scene, Shape, Size};
use crate::protocol::ImageData;

/// What the detectors found in an image.
#[derive(Debug, Clone)]
pub struct Detected {
    pub width: u32,
    pub height: u32,
    pub background: Option<Colour>,
    pub objects: Vec<DetectedObject>,
}

/// One colour's object.
#[derive(Debug, Clone)]
pub struct DetectedObject {
    pub colour: Colour,
    pub shape: Shape,
    /// How well the shape's template overlaps the object (IoU in its bounding box).
    pub fit: f32,
    /// The object's pixels, `width × height`.
    pub mask: Vec<bool>,
    pub area: usize,
}

impl Detected {
    pub fn object(&self, colour: Colour) -> Option<&DetectedObject> {
        self.objects.iter().find(|object| object.colour == colour)
    }
}

/// The palette colour nearest `rgb`, and the distance.
pub fn nearest_colour(rgb: [u8; 3]) -> (Colour, f32) {
    let mut best = (Colour::ALL[0], f32::MAX);
    for colour in Colour::ALL {
        let reference = colour.rgb();
        let distance = (0..3)
            .map(|c| {
                let d = f32::from(rgb[c]) - f32::from(reference[c]);
                d * d
            })
            .sum::<f32>()
            .sqrt();
        if distance < best.1 {
            best = (colour, distance);
        }
    }
    best
}

/// Pixels further than this from every palette colour belong to none.
const MAX_COLOUR_DISTANCE: f32 = 90.0;

/// Each pixel's palette colour (None when nothing is near).
pub fn segment(rgb: &[u8], width: u32, height: u32) -> Vec<Option<Colour>> {
    let pixels = (width * height) as usize;
    (0..pixels)
        .map(|p| {
            let (colour, distance) = nearest_colour([rgb[p * 3], rgb[p * 3 + 1], rgb[p * 3 + 2]]);
            (distance <= MAX_COLOUR_DISTANCE).then_some(colour)
        })
        .collect()
}

/// Objects smaller than this share of the image are noise.
const MIN_AREA_SHARE: f32 = 0.004;

/// Finds the background and the objects of `rgb` (`width × height × 3`).
pub fn detect(rgb: &[u8], width: u32, height: u32) -> Detected {
    let labels = segment(rgb, width, height);
    let (w, h) = (width as usize, height as usize);
    // the background: the commonest colour on the border
    let mut counts = [0usize; Colour::ALL.len()];
    for y in 0..h {
        for x in 0..w {
            if (x == 0 || y == 0 || x == w - 1 || y == h - 1)
                && let Some(colour) = labels[y * w + x]
            {
                counts[colour_index(colour)] += 1;
            }
        }
    }
    let background = counts
        .iter()
        .enumerate()
        .max_by_key(|(_, count)| **count)
        .filter(|(_, count)| **count > 0)
        .map(|(index, _)| Colour::ALL[index]);
    let min_area = ((w * h) as f32 * MIN_AREA_SHARE).ceil() as usize;
    let mut objects = Vec::new();
    for colour in Colour::ALL {
        if Some(colour) == background {
            continue;
        }
        let raw: Vec<bool> = labels.iter().map(|label| *label == Some(colour)).collect();
        // the parts of that colour that survive an opening, whole: thin rims go, thin points stay
        let mask = reconstruct(&open(&raw, w, h), &raw, w, h);
        let area = mask.iter().filter(|v| **v).count();
        if area < min_area {
            continue;
        }
        let (shape, fit) = classify_shape(&mask, w, h);
        objects.push(DetectedObject { colour, shape, fit, mask, area });
    }
    Detected { width, height, background, objects }
}

fn colour_index(colour: Colour) -> usize {
    Colour::ALL.iter().position(|c| *c == colour).unwrap_or(0)
}

/// Morphological opening with a 3 × 3 square: erosion, then dilation.
fn open(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let pass = |source: &[bool], all: bool| {
        let mut out = vec![false; source.len()];
        for y in 0..h {
            for x in 0..w {
                let mut hit = all;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        let value = nx >= 0
                            && ny >= 0
                            && (nx as usize) < w
                            && (ny as usize) < h
                            && source[ny as usize * w + nx as usize];
                        if all { hit &= value } else { hit |= value }
                    }
                }
                out[y * w + x] = hit;
            }
        }
        out
    };
    pass(&pass(mask, true), false)
}

/// The 8-connected parts of `mask` that contain a `seed` pixel (morphological reconstruction).
fn reconstruct(seed: &[bool], mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    let mut stack: Vec<usize> = (0..mask.len()).filter(|p| seed[*p] && mask[*p]).collect();
    for p in &stack {
        out[*p] = true;
    }
    while let Some(p) = stack.pop() {
        let (x, y) = ((p % w) as i64, (p / w) as i64);
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                    continue;
                }
                let q = ny as usize * w + nx as usize;
                if mask[q] && !out[q] {
                    out[q] = true;
                    stack.push(q);
                }
            }
        }
    }
    out
}

/// The extent of a shape's template in radius units: (x min, x max, y min, y max).
fn template_extent(shape: Shape) -> (f32, f32, f32, f32) {
    let n = 400;
    let mut extent = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for j in 0..n {
        for i in 0..n {
            let (u, v) = (2.0 * (i as f32 + 0.5) / n as f32 - 1.0, 2.0 * (j as f32 + 0.5) / n as f32 - 1.0);
            if shape.contains(u, v) {
                extent = (extent.0.min(u), extent.1.max(u), extent.2.min(v), extent.3.max(v));
            }
        }
    }
    extent
}

/// The shape whose template, stretched over the mask's bounding box, overlaps it best (IoU).
pub fn classify_shape(mask: &[bool], w: usize, h: usize) -> (Shape, f32) {
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    if x0 > x1 {
        return (Shape::Circle, 0.0);
    }
    let (box_w, box_h) = ((x1 + 1 - x0) as f32, (y1 + 1 - y0) as f32);
    let mut best = (Shape::Circle, -1.0f32);
    for shape in Shape::ALL {
        let (u0, u1, v0, v1) = template_extent(shape);
        let (mut both, mut either) = (0usize, 0usize);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let u = u0 + (x as f32 + 0.5 - x0 as f32) / box_w * (u1 - u0);
                let v = v0 + (y as f32 + 0.5 - y0 as f32) / box_h * (v1 - v0);
                let template = shape.contains(u, v);
                let observed = mask[y * w + x];
                both += usize::from(template && observed);
                either += usize::from(template || observed);
            }
        }
        let iou = if either == 0 { 0.0 } else { both as f32 / either as f32 };
        if iou > best.1 {
            best = (shape, iou);
        }
    }
    best
}

/// Intersection over union of two masks (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f32 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let either = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if either == 0 { 1.0 } else { both as f32 / either as f32 }
}

/// How many of a scene's attributes an image shows: each object's colour (an object of that
/// colour is there) and shape (that object has the shape), and the background colour when the
/// caption names it. Returns (correct, total).
pub fn attributes_correct(scene: &Scene, detected: &Detected) -> (usize, usize) {
    let (mut correct, mut total) = (0, 0);
    for object in &scene.objects {
        total += 2;
        if let Some(found) = detected.object(object.colour) {
            correct += 1;
            correct += usize::from(found.shape == object.shape);
        }
    }
    if scene.says_background {
        total += 1;
        correct += usize::from(detected.background == Some(scene.background.colour));
    }
    (correct, total)
}

/// [`detect`] on an RGBA image (alpha ignored).
pub fn detect_image(image: &ImageData) -> Detected {
    let rgb: Vec<u8> = image.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    detect(&rgb, image.width, image.height)
}

/// Attribute and shape counts over scenes.
#[derive(Default)]
pub struct Tally {
    correct: usize,
    total: usize,
    /// Objects whose colour was found.
    pub colours: usize,
    shapes_right: usize,
    /// Objects in all the scenes added.
    pub objects: usize,
    /// Objects found with the right shape, and all objects, by size (small, big): a small
    /// object's outline spans few latent cells, so the two can differ widely.
    shapes_right_by_size: [usize; 2],
    objects_by_size: [usize; 2],
    /// The same by the number of objects in the scene (1, 2, 3): one object needs no binding
    /// of words to objects.
    shapes_right_by_count: [usize; 3],
    objects_by_count: [usize; 3],
}

impl Tally {
    pub fn add(&mut self, scene: &Scene, detected: &Detected) {
        let (c, t) = attributes_correct(scene, detected);
        (self.correct, self.total) = (self.correct + c, self.total + t);
        for object in &scene.objects {
            let size = usize::from(object.size == Size::Big);
            let count = scene.objects.len().clamp(1, 3) - 1;
            self.objects += 1;
            self.objects_by_size[size] += 1;
            self.objects_by_count[count] += 1;
            if let Some(found) = detected.object(object.colour) {
                self.colours += 1;
                let right = usize::from(found.shape == object.shape);
                self.shapes_right += right;
                self.shapes_right_by_size[size] += right;
                self.shapes_right_by_count[count] += right;
            }
        }
    }

    /// Share of attributes read right ([`attributes_correct`]).
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// Share of objects found with the right shape.
    pub fn shape(&self) -> f64 {
        self.shapes_right as f64 / self.objects.max(1) as f64
    }

    /// [`Tally::shape`] over the small objects and over the big ones.
    pub fn shape_by_size(&self) -> (f64, f64) {
        let share = |i: usize| self.shapes_right_by_size[i] as f64 / self.objects_by_size[i].max(1) as f64;
        (share(0), share(1))
    }

    /// [`Tally::shape`] over the objects of scenes with one, two and three objects.
    pub fn shape_by_count(&self) -> [f64; 3] {
        std::array::from_fn(|i| self.shapes_right_by_count[i] as f64 / self.objects_by_count[i].max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::shapes::{self, Split};

    #[test]
    fn the_detectors_read_dataset_images_back() {
        let (mut correct, mut total, mut shapes_right, mut shapes_total) = (0, 0, 0, 0);
        let mut confusions = Vec::new();
        for i in 0..150 {
            let sample = shapes::sample(11, i, Split::Train, 128, 128);
            let detected = detect(&sample.rgb, 128, 128);
            assert_eq!(detected.background, Some(sample.scene.background.colour), "{}", sample.caption);
            let scene = shapes::Scene { says_background: true, ..sample.scene.clone() };
            let (c, t) = attributes_correct(&scene, &detected);
            (correct, total) = (correct + c, total + t);
            for (object, truth) in sample.scene.objects.iter().zip(&sample.masks) {
                let found = detected.object(object.colour).expect("every object's colour is found");
                let truth: Vec<bool> = truth.iter().map(|v| *v >= 0.5).collect();
                let overlap = iou(&found.mask, &truth);
                assert!(overlap > 0.75, "{}: {} mask IoU {overlap}", sample.caption, object.colour.name());
                shapes_total += 1;
                if found.shape == object.shape {
                    shapes_right += 1;
                } else {
                    confusions.push(format!("{} as {}", object.shape.name(), found.shape.name()));
                }
            }
            // no object is found that is not there
            assert_eq!(detected.objects.len(), sample.scene.objects.len(), "{}", sample.caption);
        }
        let accuracy = correct as f32 / total as f32;
        let shape_accuracy = shapes_right as f32 / shapes_total as f32;
        eprintln!("attributes {accuracy:.3}, shapes {shape_accuracy:.3}; confusions {confusions:?}");
        assert!(shape_accuracy >= 0.95, "shapes {shape_accuracy:.3}: {confusions:?}");
        assert!(accuracy >= 0.97, "attributes {accuracy:.3}");
    }

    #[test]
    #[ignore = "writes target/shapes-preview.png to look at"]
    fn write_a_preview() {
        let mut sheet = image::RgbImage::new(128 * 8, 128 * 4);
        for i in 0..32u32 {
            let sample = shapes::sample(11, u64::from(i), Split::Train, 128, 128);
            let tile = image::RgbImage::from_raw(128, 128, sample.rgb).expect("rgb");
            image::imageops::replace(&mut sheet, &tile, i64::from(i % 8 * 128), i64::from(i / 8 * 128));
            eprintln!("{i}: {}", sample.caption);
        }
        sheet.save("target/shapes-preview.png").expect("saves");
    }

    #[test]
    fn a_wrong_image_scores_low() {
        let sample = shapes::sample(12, 0, Split::Train, 128, 128);
        // the same scene with every object recoloured and reshaped
        let mut scene = sample.scene.clone();
        for object in &mut scene.objects {
            object.shape = if object.shape == Shape::Circle { Shape::Cross } else { Shape::Circle };
        }
        let (wrong_rgb, _) = shapes::render(&scene);
        let detected = detect(&wrong_rgb, 128, 128);
        let (correct, total) = attributes_correct(&sample.scene, &detected);
        let objects = sample.scene.objects.len();
        assert_eq!(correct, total - objects, "every shape is wrong, every colour right");
        // a blank image of the background colour has no object at all
        let blank: Vec<u8> = (0..128 * 128).flat_map(|_| sample.scene.background.colour.rgb()).collect();
        let detected = detect(&blank, 128, 128);
        assert!(detected.objects.is_empty());
        let (correct, _) = attributes_correct(&sample.scene, &detected);
        assert_eq!(correct, usize::from(sample.scene.says_background));
    }
}
