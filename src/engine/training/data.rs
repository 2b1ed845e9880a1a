//! Training data from the shapes dataset: rendered image sets per aspect-ratio bucket, and the
//! latent cache (each image encoded once by the trained VAE, kept as the posterior's mean and
//! standard deviation, so every UNet step draws a fresh latent sample without running the VAE).

use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

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
}

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
    let threads = threads.clamp(1, 16);
    let pixels = (bucket.width * bucket.height * 3) as usize;
    let mut rgb = vec![0u8; count * pixels];
    let mut captions = vec![String::new(); count];
    let mut scenes = vec![None; count];
    let per_thread = count.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk, ((rgb_chunk, caption_chunk), scene_chunk)) in rgb
            .chunks_mut(per_thread * pixels)
            .zip(captions.chunks_mut(per_thread))
            .zip(scenes.chunks_mut(per_thread))
            .enumerate()
        {
            scope.spawn(move || {
                for (i, ((out, caption), scene)) in rgb_chunk
                    .chunks_mut(pixels)
                    .zip(caption_chunk.iter_mut())
                    .zip(scene_chunk.iter_mut())
                    .enumerate()
                {
                    let index = stream_start(bucket_index) + (chunk * per_thread + i) as u64;
                    let sample = shapes::sample(seed, index, split, bucket.width, bucket.height);
                    out.copy_from_slice(&sample.rgb);
                    *caption = sample.caption;
                    *scene = Some(sample.scene);
                }
            });
        }
    });
    let scenes = scenes.into_iter().map(|scene| scene.expect("every sample rendered")).collect();
    let (h, w) = (i64::from(bucket.height), i64::from(bucket.width));
    let images = Tensor::from_slice(&rgb).view([count as i64, h, w, 3]).permute([0, 3, 1, 2]).contiguous();
    ImageSet { bucket, images, captions, scenes }
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
    Ok(LatentSet { bucket: set.bucket, mean: Tensor::cat(&means, 0), std: Tensor::cat(&stds, 0), ids })
}

/// Saves latent caches to one `.safetensors` file (keys `BUCKET.mean|std|ids`).
pub fn save_latents(path: &Path, sets: &[LatentSet]) -> anyhow::Result<()> {
    let mut tensors = Vec::new();
    for set in sets {
        let name = set.bucket.name();
        tensors.push((format!("{name}.mean"), set.mean.shallow_clone()));
        tensors.push((format!("{name}.std"), set.std.shallow_clone()));
        tensors.push((format!("{name}.ids"), set.ids.shallow_clone()));
    }
    super::shapes_model::write_tensors(path, &tensors)
}

/// Loads what [`save_latents`] wrote for `buckets` (None when any bucket is missing).
pub fn load_latents(path: &Path, buckets: &[Bucket]) -> anyhow::Result<Option<Vec<LatentSet>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut tensors = crate::engine::loading::read_safetensors(path)?;
    let mut sets = Vec::new();
    for bucket in buckets {
        let name = bucket.name();
        let (Some(mean), Some(std), Some(ids)) = (
            tensors.remove(&format!("{name}.mean")),
            tensors.remove(&format!("{name}.std")),
            tensors.remove(&format!("{name}.ids")),
        ) else {
            return Ok(None);
        };
        sets.push(LatentSet { bucket: *bucket, mean, std, ids });
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
