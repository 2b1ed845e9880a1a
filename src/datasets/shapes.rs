//! Procedural shapes: one to three coloured shapes on a solid or gradient background, a caption
//! from a small grammar ("a big red circle and a small blue star on a green background"), and
//! each object's visible mask (ground truth for DiffEdit masks and inpainting). Pure and
//! deterministic: a sample is a function of (seed, index, size) alone, so training runs and
//! evaluations are reproducible and need no files.
//!
//! Every object in a scene has its own colour, different from the background's, so a colour
//! names one object — the caption and the masks stay unambiguous, and the evaluation can find
//! objects by colour.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The side of the images the bundled model is trained at (8× VAE → 16×16 latents).
pub const IMAGE_SIZE: u32 = 128;

/// Shapes, upright, each drawn inside a circle of the object's radius.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Heart,
    Ring,
    Diamond,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 8] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Heart,
        Shape::Ring,
        Shape::Diamond,
        Shape::Cross,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Heart => "heart",
            Shape::Ring => "ring",
            Shape::Diamond => "diamond",
            Shape::Cross => "cross",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|shape| shape.name() == name)
    }

    /// Whether the point (x, y), in units of the radius from the centre (y down), is inside.
    pub fn contains(self, x: f32, y: f32) -> bool {
        let r2 = x * x + y * y;
        match self {
            Shape::Circle => r2 <= 0.9 * 0.9,
            Shape::Ring => (0.5 * 0.5..=0.92 * 0.92).contains(&r2),
            Shape::Square => x.abs().max(y.abs()) <= 0.72,
            Shape::Diamond => x.abs() + y.abs() <= 0.95,
            Shape::Cross => {
                let (ax, ay) = (x.abs(), y.abs());
                (ax <= 0.3 && ay <= 0.9) || (ay <= 0.3 && ax <= 0.9)
            }
            Shape::Triangle => {
                // equilateral, pointing up, circumradius 0.95, centred on its centroid
                let (top, bottom) = (-0.95f32, 0.475f32);
                if y < top || y > bottom {
                    return false;
                }
                let half_width = (y - top) / (bottom - top) * 0.95 * 3f32.sqrt() / 2.0;
                x.abs() <= half_width
            }
            Shape::Star => {
                // five points, outer radius 0.95, inner 0.42, one point up
                let radius = r2.sqrt();
                if radius > 0.95 {
                    return false;
                }
                let angle = x.atan2(-y).rem_euclid(std::f32::consts::TAU / 5.0);
                let sector = std::f32::consts::TAU / 10.0;
                // the star's boundary between an outer point (angle 0) and an inner one (sector)
                let (outer, inner) = (0.95f32, 0.42f32);
                let local = if angle > sector { 2.0 * sector - angle } else { angle };
                let (px, py) = (0.0, outer);
                let (qx, qy) = (inner * sector.sin(), inner * sector.cos());
                let (dx, dy) = (local.sin(), local.cos());
                // distance along the ray (dx, dy) to the segment p–q
                let (ex, ey) = (qx - px, qy - py);
                let denominator = dx * ey - dy * ex;
                if denominator.abs() < 1e-9 {
                    return radius <= inner;
                }
                let t = (px * ey - py * ex) / denominator;
                radius <= t
            }
            Shape::Heart => {
                // (x² + y² − 1)³ − x² y³ ≤ 0, y up, scaled to fit the radius
                let (hx, hy) = (x * 1.3, -y * 1.3 + 0.25);
                let a = hx * hx + hy * hy - 1.0;
                a * a * a - hx * hx * hy * hy * hy <= 0.0
            }
        }
    }
}

/// Colours of objects and backgrounds: far apart in RGB so that a pixel's nearest one names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Pink,
    White,
    Black,
    Brown,
}

impl Colour {
    pub const ALL: [Colour; 10] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
        Colour::White,
        Colour::Black,
        Colour::Brown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::White => "white",
            Colour::Black => "black",
            Colour::Brown => "brown",
        }
    }

    pub fn from_name(name: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|colour| colour.name() == name)
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Orange => [250, 140, 20],
            Colour::Yellow => [245, 225, 40],
            Colour::Green => [40, 165, 60],
            Colour::Blue => [35, 75, 215],
            Colour::Purple => [135, 55, 185],
            Colour::Pink => [250, 140, 200],
            Colour::White => [245, 245, 245],
            Colour::Black => [25, 25, 25],
            Colour::Brown => [120, 75, 35],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Big,
}

impl Size {
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Big => "big",
        }
    }

    /// The radius range as a fraction of the image's shorter side (the shipped data's; a
    /// [`SceneStyle`] may scale it).
    fn radius_range(self) -> (f32, f32) {
        match self {
            Size::Small => (0.09, 0.13),
            Size::Big => (0.19, 0.26),
        }
    }
}

/// A solid background, or a gradient of one colour (lighter to darker along `angle`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Background {
    pub colour: Colour,
    /// 0 for solid; else the brightness change from the centre to either end (±).
    pub gradient: f32,
    pub angle: f32,
}

/// One object of a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// Centre in pixels.
    pub centre: (f32, f32),
    /// Radius in pixels.
    pub radius: f32,
}

/// What an image shows, and which attributes its caption states.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub background: Background,
    /// In drawing order (later ones on top) and caption order.
    pub objects: Vec<Object>,
    /// Whether the caption names each object's size.
    pub says_size: bool,
    /// Whether the caption names the background.
    pub says_background: bool,
}

/// What a caption word names: an object (by its index in the scene) or the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Object(usize),
    Background,
}

impl Scene {
    /// The caption: "a big red circle, a small blue star and a yellow heart on a green
    /// background".
    pub fn caption(&self) -> String {
        let mut caption = String::new();
        for (word, _) in self.words() {
            if !caption.is_empty() && word != "," {
                caption.push(' ');
            }
            caption.push_str(word);
        }
        caption
    }

    /// The caption's words in order ("," is a word of its own, as the CLIP tokenizer splits
    /// it), each with the region it names: an object's size, colour and shape words name that
    /// object; the background's colour and "background" name the background; articles, "and",
    /// "on" and "," name nothing. What cross-attention grounding trains on.
    pub fn words(&self) -> Vec<(&'static str, Option<Region>)> {
        let mut words = Vec::new();
        let count = self.objects.len();
        for (index, object) in self.objects.iter().enumerate() {
            if index > 0 {
                words.push((if index + 1 == count { "and" } else { "," }, None));
            }
            let first = if self.says_size { object.size.name() } else { object.colour.name() };
            words.push((article(first), None));
            let region = Some(Region::Object(index));
            if self.says_size {
                words.push((object.size.name(), region));
            }
            words.push((object.colour.name(), region));
            words.push((object.shape.name(), region));
        }
        if self.says_background {
            let colour = self.background.colour.name();
            let region = Some(Region::Background);
            words.extend([("on", None), (article(colour), None), (colour, region), ("background", region)]);
        }
        words
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

/// Every word captions use (the bundled text encoder's vocabulary).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = vec!["a", "an", "and", "on", "background", ",", "small", "big"];
    words.extend(Colour::ALL.iter().map(|c| c.name()));
    words.extend(Shape::ALL.iter().map(|s| s.name()));
    words
}

/// Training captions and held-out evaluation captions never overlap: a caption's split is a
/// fixed function of its text (1 in 8 are held out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

pub fn split_of(caption: &str) -> Split {
    // FNV-1a: stable across platforms and Rust versions (unlike std's hasher)
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in caption.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    if hash.is_multiple_of(8) { Split::Eval } else { Split::Train }
}

/// A rendered sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub scene: Scene,
    pub caption: String,
    /// RGB, row-major, `width × height × 3`.
    pub rgb: Vec<u8>,
    /// Each object's visible coverage in [0, 1] (after those drawn over it), `width × height`.
    pub masks: Vec<Vec<f32>>,
}

/// The smallest share of an object's area that must stay visible under those drawn over it.
const MIN_VISIBLE: f32 = 0.6;

/// Variations of the scenes a training run may choose (`train --max-objects --object-scale`);
/// the default is the shipped data, which the evaluation always uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneStyle {
    /// At most this many objects (1 to 3).
    pub max_objects: usize,
    /// Every radius range times this (objects larger than 1 or smaller than 1).
    pub object_scale: f32,
}

impl Default for SceneStyle {
    fn default() -> Self {
        Self { max_objects: 3, object_scale: 1.0 }
    }
}

impl SceneStyle {
    /// Refuses styles the grammar and the image cannot hold, naming the option.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3).contains(&self.max_objects) {
            return Err(format!("--max-objects must be 1 to 3, not {}", self.max_objects));
        }
        // a big object's radius stays under 40% of the shorter side
        if !(0.25..=1.5).contains(&self.object_scale) {
            return Err(format!("--object-scale must be 0.25 to 1.5, not {}", self.object_scale));
        }
        Ok(())
    }
}

/// Sample `index` of the stream `seed` from `split`, at `width × height`: deterministic.
pub fn sample(seed: u64, index: u64, split: Split, width: u32, height: u32) -> Sample {
    sample_styled(seed, index, split, width, height, SceneStyle::default())
}

/// [`sample`] of scenes in `style`.
pub fn sample_styled(
    seed: u64,
    index: u64,
    split: Split,
    width: u32,
    height: u32,
    style: SceneStyle,
) -> Sample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    loop {
        let scene = random_scene_styled(&mut rng, width, height, style);
        let caption = scene.caption();
        if split_of(&caption) != split {
            continue;
        }
        let (rgb, masks) = render(&scene);
        let visible_enough = scene.objects.iter().zip(&masks).all(|(object, mask)| {
            let full = full_area(object, width, height);
            full > 0.0 && mask.iter().sum::<f32>() >= MIN_VISIBLE * full
        });
        if visible_enough {
            return Sample { scene, caption, rgb, masks };
        }
    }
}

/// A random scene: 1–3 objects of distinct colours, none the background's.
pub fn random_scene(rng: &mut impl Rng, width: u32, height: u32) -> Scene {
    random_scene_styled(rng, width, height, SceneStyle::default())
}

/// [`random_scene`] in `style` (the default style draws exactly what `random_scene` does).
pub fn random_scene_styled(rng: &mut impl Rng, width: u32, height: u32, style: SceneStyle) -> Scene {
    let background_colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
    let background = Background {
        colour: background_colour,
        gradient: if rng.random_bool(0.5) { rng.random_range(0.06..0.16) } else { 0.0 },
        angle: rng.random_range(0.0..std::f32::consts::TAU),
    };
    let count = rng.random_range(1..=style.max_objects.clamp(1, 3));
    let mut colours: Vec<Colour> = Colour::ALL.into_iter().filter(|c| *c != background_colour).collect();
    let side = width.min(height) as f32;
    let mut objects = Vec::with_capacity(count);
    for _ in 0..count {
        let colour = colours.swap_remove(rng.random_range(0..colours.len()));
        let size = if rng.random_bool(0.5) { Size::Small } else { Size::Big };
        let (low, high) = size.radius_range();
        let (low, high) = (low * style.object_scale, high * style.object_scale);
        let radius = rng.random_range(low..high) * side;
        let centre = (
            rng.random_range(radius..(width as f32 - radius).max(radius + 1.0)),
            rng.random_range(radius..(height as f32 - radius).max(radius + 1.0)),
        );
        objects.push(Object {
            shape: Shape::ALL[rng.random_range(0..Shape::ALL.len())],
            colour,
            size,
            centre,
            radius,
        });
    }
    Scene {
        width,
        height,
        background,
        objects,
        says_size: rng.random_bool(0.5),
        says_background: rng.random_bool(0.85),
    }
}

/// Supersampling per pixel side: 4 × 4 coverage samples give smooth edges.
const SUPERSAMPLE: u32 = 4;

/// Coverage of `object` at pixel (x, y), in [0, 1].
fn coverage(object: &Object, x: u32, y: u32) -> f32 {
    let (cx, cy) = object.centre;
    // pixels far outside the bounding circle are empty, far inside are decided per sample
    let (px, py) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
    if px.abs() > object.radius + 1.0 || py.abs() > object.radius + 1.0 {
        return 0.0;
    }
    let mut inside = 0;
    for sy in 0..SUPERSAMPLE {
        for sx in 0..SUPERSAMPLE {
            let ox = x as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32 - cx;
            let oy = y as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32 - cy;
            if object.shape.contains(ox / object.radius, oy / object.radius) {
                inside += 1;
            }
        }
    }
    inside as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32
}

fn full_area(object: &Object, width: u32, height: u32) -> f32 {
    let mut total = 0.0;
    for y in 0..height {
        for x in 0..width {
            total += coverage(object, x, y);
        }
    }
    total
}

/// Renders a scene: RGB bytes and each object's visible coverage.
pub fn render(scene: &Scene) -> (Vec<u8>, Vec<Vec<f32>>) {
    let (width, height) = (scene.width, scene.height);
    let pixels = (width * height) as usize;
    let mut rgb = vec![0f32; pixels * 3];
    let background = scene.background;
    let base = background.colour.rgb();
    let (dx, dy) = (background.angle.cos(), background.angle.sin());
    let half_diagonal = ((width * width + height * height) as f32).sqrt() / 2.0;
    for y in 0..height {
        for x in 0..width {
            let along = ((x as f32 + 0.5 - width as f32 / 2.0) * dx
                + (y as f32 + 0.5 - height as f32 / 2.0) * dy)
                / half_diagonal;
            let factor = 1.0 + background.gradient * along;
            let index = (y * width + x) as usize * 3;
            for channel in 0..3 {
                rgb[index + channel] = f32::from(base[channel]) * factor;
            }
        }
    }
    let mut masks: Vec<Vec<f32>> = Vec::with_capacity(scene.objects.len());
    for object in &scene.objects {
        let colour = object.colour.rgb();
        let mut mask = vec![0f32; pixels];
        for y in 0..height {
            for x in 0..width {
                let alpha = coverage(object, x, y);
                if alpha == 0.0 {
                    continue;
                }
                let pixel = (y * width + x) as usize;
                mask[pixel] = alpha;
                for channel in 0..3 {
                    let value = &mut rgb[pixel * 3 + channel];
                    *value = *value * (1.0 - alpha) + f32::from(colour[channel]) * alpha;
                }
                // what this object covers, earlier objects no longer show
                for earlier in &mut masks {
                    earlier[pixel] *= 1.0 - alpha;
                }
            }
        }
        masks.push(mask);
    }
    let rgb = rgb.into_iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect();
    (rgb, masks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_differ_by_index() {
        let a = sample(7, 3, Split::Train, 64, 64);
        let b = sample(7, 3, Split::Train, 64, 64);
        assert_eq!(a.rgb, b.rgb);
        assert_eq!(a.caption, b.caption);
        let c = sample(7, 4, Split::Train, 64, 64);
        assert_ne!(a.rgb, c.rgb);
        let d = sample(8, 3, Split::Train, 64, 64);
        assert_ne!(a.rgb, d.rgb);
    }

    #[test]
    fn splits_never_share_a_caption() {
        let train: std::collections::HashSet<String> =
            (0..400).map(|i| sample(1, i, Split::Train, 32, 32).caption).collect();
        for i in 0..100 {
            let caption = sample(1, i, Split::Eval, 32, 32).caption;
            assert_eq!(split_of(&caption), Split::Eval);
            assert!(!train.contains(&caption), "{caption} is in both splits");
        }
    }

    #[test]
    fn captions_follow_the_grammar() {
        let object = |shape, colour, size| Object { shape, colour, size, centre: (30.0, 30.0), radius: 10.0 };
        let scene = Scene {
            width: 64,
            height: 64,
            background: Background { colour: Colour::Green, gradient: 0.0, angle: 0.0 },
            objects: vec![
                object(Shape::Circle, Colour::Red, Size::Big),
                object(Shape::Star, Colour::Blue, Size::Small),
                object(Shape::Heart, Colour::Orange, Size::Small),
            ],
            says_size: true,
            says_background: true,
        };
        assert_eq!(
            scene.caption(),
            "a big red circle, a small blue star and a small orange heart on a green background"
        );
        let one = Scene { objects: scene.objects[2..].to_vec(), says_size: false, ..scene.clone() };
        assert_eq!(one.caption(), "an orange heart on a green background");
        let two = Scene { objects: scene.objects[..2].to_vec(), says_background: false, ..scene.clone() };
        assert_eq!(two.caption(), "a big red circle and a small blue star");
        // the words' regions: each object's size, colour and shape; the background's colour
        let named: Vec<(&str, Option<Region>)> =
            scene.words().into_iter().filter(|(_, region)| region.is_some()).collect();
        let object = |i| Some(Region::Object(i));
        assert_eq!(
            named,
            [
                ("big", object(0)),
                ("red", object(0)),
                ("circle", object(0)),
                ("small", object(1)),
                ("blue", object(1)),
                ("star", object(1)),
                ("small", object(2)),
                ("orange", object(2)),
                ("heart", object(2)),
                ("green", Some(Region::Background)),
                ("background", Some(Region::Background)),
            ]
        );
        let words: Vec<&str> = scene.words().into_iter().map(|(word, _)| word).collect();
        assert_eq!(words.join(" "), scene.caption().replace(',', " ,"));
        let vocabulary = vocabulary();
        for i in 0..200 {
            for word in sample(2, i, Split::Train, 32, 32).caption.replace(',', " ,").split_whitespace() {
                assert!(vocabulary.contains(&word), "{word} is not in the vocabulary");
            }
        }
    }

    #[test]
    fn masks_cover_their_objects_colour_and_nothing_else() {
        for i in 0..20 {
            let sample = sample(3, i, Split::Train, 96, 96);
            let objects = &sample.scene.objects;
            assert!((1..=3).contains(&objects.len()));
            for (object, mask) in objects.iter().zip(&sample.masks) {
                let colour = object.colour.rgb();
                let mut solid = 0;
                for (pixel, &alpha) in mask.iter().enumerate() {
                    if alpha == 1.0 {
                        solid += 1;
                        assert_eq!(&sample.rgb[pixel * 3..pixel * 3 + 3], &colour, "{}", sample.caption);
                    }
                }
                assert!(solid > 20, "{}: {} has {solid} solid pixels", sample.caption, object.shape.name());
                assert_ne!(object.colour, sample.scene.background.colour);
            }
        }
    }

    #[test]
    fn shapes_have_the_expected_areas_and_holes() {
        let area = |shape: Shape| {
            let n = 200;
            let mut inside = 0;
            for y in 0..n {
                for x in 0..n {
                    let (u, v) =
                        (2.0 * (x as f32 + 0.5) / n as f32 - 1.0, 2.0 * (y as f32 + 0.5) / n as f32 - 1.0);
                    inside += usize::from(shape.contains(u, v));
                }
            }
            inside as f32 / (n * n) as f32
        };
        for shape in Shape::ALL {
            let share = area(shape);
            assert!((0.2..0.7).contains(&share), "{} covers {share} of its box", shape.name());
        }
        assert!(!Shape::Ring.contains(0.0, 0.0) && Shape::Ring.contains(0.7, 0.0));
        assert!(Shape::Star.contains(0.0, -0.9) && !Shape::Star.contains(0.6, -0.6));
        assert!(Shape::Triangle.contains(0.0, -0.8) && !Shape::Triangle.contains(0.6, -0.6));
        assert!(
            Shape::Heart.contains(0.0, 0.0)
                && Shape::Heart.contains(0.35, -0.6)
                && !Shape::Heart.contains(0.0, -0.7)
        );
    }

    #[test]
    fn a_style_limits_the_objects_and_scales_them_and_the_default_is_the_shipped_data() {
        let style = SceneStyle { max_objects: 1, object_scale: 1.3 };
        assert!(style.check().is_ok());
        assert!(
            matches!(SceneStyle { max_objects: 0, ..style }.check(), Err(e) if e.contains("--max-objects"))
        );
        assert!(
            matches!(SceneStyle { object_scale: 3.0, ..style }.check(), Err(e) if e.contains("--object-scale"))
        );
        for index in 0..40 {
            let shipped = sample(7, index, Split::Train, 128, 128);
            let same = sample_styled(7, index, Split::Train, 128, 128, SceneStyle::default());
            assert_eq!((shipped.caption, shipped.rgb), (same.caption, same.rgb));
            let styled = sample_styled(7, index, Split::Train, 128, 128, style);
            assert_eq!(styled.scene.objects.len(), 1, "{}", styled.caption);
            let object = &styled.scene.objects[0];
            let (low, high) = object.size.radius_range();
            let radius = object.radius / 128.0;
            assert!(
                radius >= low * 1.3 - 1e-4 && radius <= high * 1.3 + 1e-4,
                "{radius} for {:?}",
                object.size
            );
        }
    }
}
