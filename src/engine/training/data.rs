//! Training data from the shapes dataset: rendered image sets per aspect-ratio bucket, and the
//! latent cache (each image encoded once by the trained VAE, kept as the posterior's mean and
//! standard deviation, so every UNet step draws a fresh latent sample without running the VAE).

use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use crate::datasets::music;
use crate::datasets::shapes::{self, Split};
use crate::engine::models::vae::AutoencoderKl;
use crate::text::tokenizer::ClipTokenizer;

/// An aspect-ratio bucket: image width × height (multiples of 32, so latents halve twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    pub width: u32,
    pub height: u32,
}

impl Bucket {
    /// Parses `"128x128,96x160,160x96"`.
    pub fn parse_list(text: &str) -> anyhow::Result<Vec<Bucket>> {
        let buckets = text
            .split(',')
            .map(|item| {
                let (w, h) = item
                    .trim()
                    .split_once('x')
                    .with_context(|| format!("bucket \"{item}\" is not WIDTHxHEIGHT (e.g. 128x128)"))?;
                let (width, height): (u32, u32) = (
                    w.parse().with_context(|| format!("bucket \"{item}\": width \"{w}\" is not a number"))?,
                    h.parse()
                        .with_context(|| format!("bucket \"{item}\": height \"{h}\" is not a number"))?,
                );
                anyhow::ensure!(
                    width >= 32
                        && height >= 32
                        && width % 32 == 0
                        && height % 32 == 0
                        && width <= 512
                        && height <= 512,
                    "bucket {item}: sides must be multiples of 32 between 32 and 512"
                );
                Ok(Bucket { width, height })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!buckets.is_empty(), "give at least one bucket");
        Ok(buckets)
    }

    pub fn name(self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// Rendered images of one bucket.
pub struct ImageSet {
    pub bucket: Bucket,
    /// (n, 3, height, width) u8.
    pub images: Tensor,
    pub captions: Vec<String>,
    /// What each image shows (for measuring reconstructions with the detectors).
    pub scenes: Vec<shapes::Scene>,
    /// (n, 4, height/4, width/4) u8: the visible share (0–255) of each 4×4 pixel block covered
    /// by objects 0, 1, 2 (zero where absent) and by the background — the regions caption
    /// words name ([`token_regions`]).
    pub masks: Tensor,
}

/// Slots of [`ImageSet::masks`]: three objects, then the background.
pub const MASK_SLOTS: usize = 4;
/// Side of the pixel blocks [`ImageSet::masks`] averages.
pub const MASK_BLOCK: u32 = 4;

/// The dataset index where bucket `b`'s stream starts (streams of different buckets never meet).
fn stream_start(bucket_index: usize) -> u64 {
    (bucket_index as u64) << 32
}

/// Renders samples `0..count` of bucket `bucket_index`'s stream from `split`, on `threads`
/// threads (the result does not depend on how many).
pub fn render_set(
    seed: u64,
    bucket_index: usize,
    bucket: Bucket,
    split: Split,
    count: usize,
    threads: usize,
) -> ImageSet {
    render_set_styled(seed, bucket_index, bucket, split, count, threads, shapes::SceneStyle::default())
}

/// [`render_set`] of scenes in `style`.
pub fn render_set_styled(
    seed: u64,
    bucket_index: usize,
    bucket: Bucket,
    split: Split,
    count: usize,
    threads: usize,
    style: shapes::SceneStyle,
) -> ImageSet {
    let threads = threads.clamp(1, 16);
    let pixels = (bucket.width * bucket.height * 3) as usize;
    let mut rgb = vec![0u8; count * pixels];
    let mut captions = vec![String::new(); count];
    let mut scenes = vec![None; count];
    let (mask_w, mask_h) = (bucket.width / MASK_BLOCK, bucket.height / MASK_BLOCK);
    let mask_len = MASK_SLOTS * (mask_w * mask_h) as usize;
    let mut masks = vec![0u8; count * mask_len];
    let per_thread = count.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk, (((rgb_chunk, caption_chunk), scene_chunk), mask_chunk)) in rgb
            .chunks_mut(per_thread * pixels)
            .zip(captions.chunks_mut(per_thread))
            .zip(scenes.chunks_mut(per_thread))
            .zip(masks.chunks_mut(per_thread * mask_len))
            .enumerate()
        {
            scope.spawn(move || {
                for (i, (((out, caption), scene), mask)) in rgb_chunk
                    .chunks_mut(pixels)
                    .zip(caption_chunk.iter_mut())
                    .zip(scene_chunk.iter_mut())
                    .zip(mask_chunk.chunks_mut(mask_len))
                    .enumerate()
                {
                    let index = stream_start(bucket_index) + (chunk * per_thread + i) as u64;
                    let sample =
                        shapes::sample_styled(seed, index, split, bucket.width, bucket.height, style);
                    out.copy_from_slice(&sample.rgb);
                    block_masks(&sample.masks, bucket, mask);
                    *caption = sample.caption;
                    *scene = Some(sample.scene);
                }
            });
        }
    });
    let scenes = scenes.into_iter().map(|scene| scene.expect("every sample rendered")).collect();
    let (h, w) = (i64::from(bucket.height), i64::from(bucket.width));
    let images = Tensor::from_slice(&rgb).view([count as i64, h, w, 3]).permute([0, 3, 1, 2]).contiguous();
    let masks = Tensor::from_slice(&masks).view([
        count as i64,
        MASK_SLOTS as i64,
        i64::from(mask_h),
        i64::from(mask_w),
    ]);
    ImageSet { bucket, images, captions, scenes, masks }
}

/// Which samples a set holds: `0..count` of bucket `bucket_index`'s stream of `split`, rendered
/// on `threads` threads.
#[derive(Debug, Clone, Copy)]
pub struct SetRequest {
    pub seed: u64,
    pub bucket_index: usize,
    pub bucket: Bucket,
    pub split: Split,
    pub count: usize,
    pub threads: usize,
}

/// Renders music clips `0..count` of bucket `bucket_index`'s stream from `split` (synthesised on
/// `threads` threads) as studio-preset spectrogram images, grey in all three channels as
/// Riffusion's are: `bucket.height` must be the preset's mel rows and `bucket.width` at most
/// [`music::FRAMES`]. Music has no object regions: `scenes` is empty and the masks are zeros.
pub fn render_music_set(request: SetRequest, style: music::PieceStyle) -> anyhow::Result<ImageSet> {
    let SetRequest { seed, bucket_index, bucket, split, count, threads } = request;
    let preset = crate::engine::spectrogram::SpectrogramPreset::studio();
    anyhow::ensure!(
        bucket.height as usize == preset.n_mels && bucket.width as usize <= music::FRAMES,
        "music buckets are {} mel rows high and at most {} frames wide, not {}",
        preset.n_mels,
        music::FRAMES,
        bucket.name()
    );
    let threads = threads.clamp(1, 16);
    let mut clips: Vec<Option<music::Sample>> = vec![None; count];
    let per_thread = count.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk, part) in clips.chunks_mut(per_thread).enumerate() {
            scope.spawn(move || {
                for (i, clip) in part.iter_mut().enumerate() {
                    let index = stream_start(bucket_index) + (chunk * per_thread + i) as u64;
                    *clip = Some(music::sample_styled(seed, index, split, style));
                }
            });
        }
    });
    let spectrogram = crate::engine::spectrogram::Spectrogram::new(preset, Device::Cpu)?;
    let (w, h) = (bucket.width as usize, bucket.height as usize);
    let mut grey = Vec::with_capacity(count * w * h);
    let mut captions = Vec::with_capacity(count);
    for clip in clips.into_iter().flatten() {
        let image = spectrogram.image_of(&clip.samples, w)?;
        grey.extend_from_slice(image.as_raw());
        captions.push(clip.caption);
    }
    anyhow::ensure!(captions.len() == count, "every clip rendered");
    let images = Tensor::from_slice(&grey)
        .view([count as i64, 1, h as i64, w as i64])
        .expand([count as i64, 3, h as i64, w as i64], false)
        .contiguous();
    let masks = Tensor::zeros([count as i64, MASK_SLOTS as i64, 1, 1], (Kind::Uint8, Device::Cpu));
    Ok(ImageSet { bucket, images, captions, scenes: Vec::new(), masks })
}

/// Averages full-resolution object coverages over [`MASK_BLOCK`]² blocks into `out`
/// ([`MASK_SLOTS`] planes, u8); the background's plane is what no object covers.
fn block_masks(objects: &[Vec<f32>], bucket: Bucket, out: &mut [u8]) {
    let (width, height) = (bucket.width as usize, bucket.height as usize);
    let block = MASK_BLOCK as usize;
    let (mask_w, mask_h) = (width / block, height / block);
    let plane = mask_w * mask_h;
    let mut covered = vec![0f32; plane];
    for (slot, mask) in objects.iter().take(MASK_SLOTS - 1).enumerate() {
        for by in 0..mask_h {
            for bx in 0..mask_w {
                let mut sum = 0.0;
                for y in by * block..(by + 1) * block {
                    sum += mask[y * width + bx * block..y * width + (bx + 1) * block].iter().sum::<f32>();
                }
                let share = sum / (block * block) as f32;
                covered[by * mask_w + bx] += share;
                out[slot * plane + by * mask_w + bx] = (share * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    for (cell, share) in covered.iter().enumerate() {
        out[(MASK_SLOTS - 1) * plane + cell] = ((1.0 - share) * 255.0).round().clamp(0.0, 255.0) as u8;
    }
}

/// For each caption's tokens (n, 77) u8: the region the token's word names, as a mask slot + 1
/// (1–3: objects, 4: the background), or 0 (a word that names nothing, BOS, EOS, padding).
/// Checks that each word is one token, as the shapes vocabulary makes it.
pub fn token_regions(ids: &Tensor, scenes: &[shapes::Scene], eos: u32) -> anyhow::Result<Tensor> {
    if scenes.is_empty() {
        // music: no word names a region
        return Ok(Tensor::zeros([ids.size()[0], 77], (Kind::Uint8, Device::Cpu)));
    }
    let mut regions = vec![0u8; scenes.len() * 77];
    for (row, scene) in scenes.iter().enumerate() {
        let words = scene.words();
        anyhow::ensure!(
            ids.int64_value(&[row as i64, words.len() as i64 + 1]) == i64::from(eos),
            "caption \"{}\": its words are not one token each",
            scene.caption()
        );
        for (position, (_, region)) in words.iter().enumerate() {
            regions[row * 77 + position + 1] = match region {
                None => 0,
                Some(shapes::Region::Object(index)) => (index + 1).min(MASK_SLOTS - 1) as u8,
                Some(shapes::Region::Background) => MASK_SLOTS as u8,
            };
        }
    }
    Ok(Tensor::from_slice(&regions).view([scenes.len() as i64, 77]))
}

/// u8 images (n, 3, h, w) → f32 in [-1, 1] on `device`.
pub fn to_unit(images: &Tensor, device: Device) -> Result<Tensor, tch::TchError> {
    images.f_to_device(device)?.f_to_kind(Kind::Float)?.f_div_scalar(127.5)?.f_sub_scalar(1.0)
}

/// The token ids (n, 77) of `captions`.
pub fn token_ids(tokenizer: &ClipTokenizer, captions: &[String]) -> anyhow::Result<Tensor> {
    let mut ids = Vec::with_capacity(captions.len() * 77);
    for caption in captions {
        let chunks = tokenizer.encode_prompt(caption)?;
        anyhow::ensure!(chunks.len() == 1, "caption \"{caption}\" is longer than 75 tokens");
        ids.extend(chunks[0].ids.iter().map(|&id| i64::from(id)));
    }
    Ok(Tensor::from_slice(&ids).view([captions.len() as i64, 77]))
}

/// One bucket's latent cache.
pub struct LatentSet {
    pub bucket: Bucket,
    /// (n, 4, h/8, w/8): the posterior mean and standard deviation, unscaled.
    pub mean: Tensor,
    pub std: Tensor,
    /// (n, 77) int64.
    pub ids: Tensor,
    /// (n, 77) u8, [`token_regions`].
    pub regions: Tensor,
    /// (n, 4, h/4, w/4) u8, [`ImageSet::masks`].
    pub masks: Tensor,
}

impl LatentSet {
    pub fn len(&self) -> i64 {
        self.mean.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes `set` with `vae` in batches (no gradients).
pub fn encode_set(
    vae: &AutoencoderKl,
    set: &ImageSet,
    ids: Tensor,
    regions: Tensor,
    device: Device,
    on_batch: &mut dyn FnMut(usize),
) -> anyhow::Result<LatentSet> {
    let n = set.images.size()[0];
    let (mut means, mut stds) = (Vec::new(), Vec::new());
    let batch = 64;
    let mut start = 0;
    while start < n {
        let length = batch.min(n - start);
        let images = to_unit(&set.images.narrow(0, start, length), device)?;
        let posterior = vae.encode(&images)?;
        means.push(posterior.mean.to_device(Device::Cpu));
        stds.push(posterior.std.to_device(Device::Cpu));
        start += length;
        on_batch(length as usize);
    }
    Ok(LatentSet {
        bucket: set.bucket,
        mean: Tensor::cat(&means, 0),
        std: Tensor::cat(&stds, 0),
        ids,
        regions,
        masks: set.masks.shallow_clone(),
    })
}

/// Saves latent caches to one `.safetensors` file (keys `BUCKET.mean|std|ids|regions|masks`).
pub fn save_latents(path: &Path, sets: &[LatentSet]) -> anyhow::Result<()> {
    let mut tensors = Vec::new();
    for set in sets {
        let name = set.bucket.name();
        tensors.push((format!("{name}.mean"), set.mean.shallow_clone()));
        tensors.push((format!("{name}.std"), set.std.shallow_clone()));
        tensors.push((format!("{name}.ids"), set.ids.shallow_clone()));
        // bytes go to the file as int64 and f16 (exact for 0–255): the weight loader refuses
        // u8, which in weights would be quantised values
        tensors.push((format!("{name}.regions"), set.regions.f_to_kind(Kind::Int64)?));
        tensors.push((format!("{name}.masks"), set.masks.f_to_kind(Kind::Half)?));
    }
    super::shapes_model::write_tensors(path, &tensors)
}

/// Loads what [`save_latents`] wrote for `buckets` (None when any bucket or tensor is missing,
/// as in caches written before the regions and masks were).
pub fn load_latents(path: &Path, buckets: &[Bucket]) -> anyhow::Result<Option<Vec<LatentSet>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut tensors = crate::engine::loading::read_safetensors(path)?;
    let mut sets = Vec::new();
    for bucket in buckets {
        let name = bucket.name();
        let mut take = |what: &str| tensors.remove(&format!("{name}.{what}"));
        let (Some(mean), Some(std), Some(ids), Some(regions), Some(masks)) =
            (take("mean"), take("std"), take("ids"), take("regions"), take("masks"))
        else {
            return Ok(None);
        };
        let (regions, masks) = (regions.f_to_kind(Kind::Uint8)?, masks.f_to_kind(Kind::Uint8)?);
        sets.push(LatentSet { bucket: *bucket, mean, std, ids, regions, masks });
    }
    Ok(Some(sets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_and_bad_ones_are_named() {
        let buckets = Bucket::parse_list("128x128, 96x160,160x96").expect("parses");
        assert_eq!(buckets[1], Bucket { width: 96, height: 160 });
        for bad in ["128", "128x100", "axb", "", "1024x128"] {
            let error = Bucket::parse_list(bad).expect_err(bad).to_string();
            assert!(error.contains("bucket") || error.contains("at least one"), "{bad}: {error}");
        }
    }

    #[test]
    fn token_regions_name_each_objects_words_and_masks_cover_them() -> anyhow::Result<()> {
        let folder = std::env::temp_dir().join(format!("ds-regions-{}", std::process::id()));
        super::super::shapes_model::vocabulary().write(&folder)?;
        let tokenizer = ClipTokenizer::from_folder(&folder)?;
        std::fs::remove_dir_all(&folder)?;
        let bucket = Bucket { width: 64, height: 32 };
        let set = render_set(5, 0, bucket, Split::Train, 40, 2);
        let ids = token_ids(&tokenizer, &set.captions)?;
        let regions = token_regions(&ids, &set.scenes, tokenizer.eos_id)?;
        assert_eq!(set.masks.size(), [40, 4, 8, 16]);
        for (row, scene) in set.scenes.iter().enumerate() {
            let row = row as i64;
            for (position, (word, region)) in scene.words().into_iter().enumerate() {
                let position = position as i64 + 1;
                // the token at the word's position is that word
                assert_eq!(ids.int64_value(&[row, position]), i64::from(tokenizer.encode(word)?[0]));
                let code = regions.int64_value(&[row, position]);
                match region {
                    None => assert_eq!(code, 0),
                    Some(shapes::Region::Background) => assert_eq!(code, 4),
                    Some(shapes::Region::Object(index)) => {
                        assert_eq!(code, index as i64 + 1);
                        // the object's plane covers about its visible area
                        let plane = set.masks.get(row).get(index as i64).to_kind(Kind::Float);
                        let area = plane.sum(Kind::Float).double_value(&[]) / 255.0 * 16.0;
                        let visible: f32 =
                            shapes::sample(5, row as u64, Split::Train, 64, 32).masks[index].iter().sum();
                        assert!((area - f64::from(visible)).abs() < 0.02 * f64::from(visible) + 2.0);
                    }
                }
            }
            assert_eq!(regions.get(row).int64_value(&[0]), 0, "BOS names nothing");
            // the planes add up to the whole image
            let total = set.masks.get(row).to_kind(Kind::Float).sum_dim_intlist(0, false, Kind::Float);
            let (low, high) = (total.min().double_value(&[]), total.max().double_value(&[]));
            assert!(low >= 253.0 && high <= 257.0, "{low}..{high}");
        }
        // a caption whose words are not one token each is refused
        let mut wrong = set.scenes[0].clone();
        wrong.says_background = !wrong.says_background;
        assert!(token_regions(&ids.narrow(0, 0, 1), &[wrong], tokenizer.eos_id).is_err());
        // the cache keeps regions and masks exactly
        let latents = Tensor::zeros([40, 4, 8, 16], (Kind::Float, Device::Cpu));
        let cache = LatentSet {
            bucket,
            mean: latents.shallow_clone(),
            std: latents,
            ids,
            regions: regions.shallow_clone(),
            masks: set.masks.shallow_clone(),
        };
        let path = std::env::temp_dir().join(format!("ds-latents-{}.safetensors", std::process::id()));
        save_latents(&path, &[cache])?;
        let loaded = load_latents(&path, &[bucket])?.context("loads")?;
        std::fs::remove_file(&path)?;
        assert!(loaded[0].regions.equal(&regions) && loaded[0].masks.equal(&set.masks));
        Ok(())
    }

    #[test]
    fn rendering_does_not_depend_on_the_thread_count() {
        let bucket = Bucket { width: 64, height: 32 };
        let one = render_set(3, 1, bucket, Split::Train, 5, 1);
        let three = render_set(3, 1, bucket, Split::Train, 5, 3);
        assert_eq!(one.captions, three.captions);
        assert!(one.images.equal(&three.images));
        assert_eq!(one.images.size(), [5, 3, 32, 64]);
        // another bucket index is another stream
        let other = render_set(3, 2, bucket, Split::Train, 5, 1);
        assert_ne!(one.captions, other.captions);
    }
}
