//! Outline-weighted diffusion loss: the UNet's per-element squared error weighted 1 + W on the
//! latent cells along every object's outline, from the dataset's masks.
//!
//! Why: the outline is what tells a star from a circle, and it is a small share of an image's
//! latent cells — the background and the objects' flat interiors dominate the loss, and every
//! model trained so far reads the colour words but leaves the shape words close to unused
//! (BENCHMARKS.md). The VAE's own edge weighting (`--vae-edge-weight`) was what made shapes
//! survive its round trip; this is the same idea one stage later. It reweights which errors the
//! UNet learns first, not what it learns in the limit: the best prediction of each cell is the
//! same under any positive weight.

use tch::{Kind, Tensor};

/// Per-cell loss weights (batch, 1, h, w) for latents of size (h, w): 1 + `weight` on the band
/// where any object's mask changes within one cell (its 3 × 3 dilation minus its erosion), 1
/// elsewhere. `masks`: (batch, slots, mh, mw) in [0, 1], objects first and the background last
/// (as [`super::data::MASK_SLOTS`]), at any resolution; area-resized to the latents'.
pub fn outline_weights(
    masks: &Tensor,
    latent_size: (i64, i64),
    weight: f64,
) -> Result<Tensor, tch::TchError> {
    let (_, slots, _, _) = masks.size4()?;
    let objects = masks.f_narrow(1, 0, slots - 1)?.f_adaptive_avg_pool2d([latent_size.0, latent_size.1])?;
    let dilated = objects.f_max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)?;
    let eroded = objects.f_neg()?.f_max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)?.f_neg()?;
    let band = dilated.f_sub(&eroded)?.f_amax(&[1i64][..], true)?;
    band.f_mul_scalar(weight)?.f_add_scalar(1.0)
}

/// The mean over (channels, h, w) of `squared` (batch, c, h, w) weighted by `weights`
/// (batch, 1, h, w), per sample: Σ w e² / Σ w, so that the loss keeps its scale.
pub fn weighted_mean(squared: &Tensor, weights: &Tensor) -> Result<Tensor, tch::TchError> {
    let channels = squared.size4()?.1 as f64;
    let numerator = squared.f_mul(weights)?.f_sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)?;
    let denominator =
        weights.f_sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float)?.f_mul_scalar(channels)?;
    numerator.f_div(&denominator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// One image, 6 × 6 masks: object 0 a 2 × 2 square at rows/columns 2–3, the other object
    /// slots empty, the background what is left.
    fn square() -> Tensor {
        let mut planes = vec![0f32; 4 * 36];
        for y in 2..4 {
            for x in 2..4 {
                planes[y * 6 + x] = 1.0;
            }
        }
        for cell in 0..36 {
            planes[3 * 36 + cell] = 1.0 - planes[cell];
        }
        Tensor::from_slice(&planes).view([1, 4, 6, 6])
    }

    #[test]
    fn the_band_follows_the_outline_and_not_the_background_plane() -> Result<(), tch::TchError> {
        let weights = outline_weights(&square(), (6, 6), 4.0)?;
        assert_eq!(weights.size(), [1, 1, 6, 6]);
        // rows/columns 1–4 are within one cell of the square's edge: 5; the rest: 1 (the
        // background plane's own edge is the same outline and must not count twice)
        for y in 0..6 {
            for x in 0..6 {
                let expected = if (1..5).contains(&y) && (1..5).contains(&x) { 5.0 } else { 1.0 };
                assert_eq!(weights.double_value(&[0, 0, y, x]), expected, "cell ({y}, {x})");
            }
        }
        // masks at twice the latents' resolution are area-resized first: on 3 × 3 latents the
        // square is the one cell (1, 1), and every cell is within one cell of its outline
        let coarse = outline_weights(&square(), (3, 3), 4.0)?;
        assert_eq!(coarse.size(), [1, 1, 3, 3]);
        assert_eq!(f64::try_from(coarse.min())?, 5.0);
        // no object: no band
        let empty = Tensor::zeros([1, 4, 6, 6], (Kind::Float, Device::Cpu));
        assert_eq!(f64::try_from(outline_weights(&empty, (6, 6), 4.0)?.sum(Kind::Float))?, 36.0);
        Ok(())
    }

    #[test]
    fn the_weighted_mean_keeps_the_scale_and_favours_the_band() -> Result<(), tch::TchError> {
        let squared = Tensor::rand([2, 4, 6, 6], (Kind::Float, Device::Cpu));
        // uniform weights: the plain mean
        let ones = Tensor::ones([2, 1, 6, 6], (Kind::Float, Device::Cpu));
        let plain = squared.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        assert!(f64::try_from(weighted_mean(&squared, &ones)?.f_sub(&plain)?.abs().max())? < 1e-6);
        // an error only inside the band counts more than it does unweighted, and stays per sample
        let weights = outline_weights(&square(), (6, 6), 4.0)?.repeat([2, 1, 1, 1]);
        let inside = Tensor::zeros([2, 4, 6, 6], (Kind::Float, Device::Cpu));
        let _ = inside.get(0).get(0).narrow(0, 1, 1).narrow(1, 1, 1).fill_(1.0);
        let weighted = weighted_mean(&inside, &weights)?;
        let unweighted = inside.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        // one of 144 elements at weight 5 out of Σw = 4 × (16 × 5 + 20) = 400: 5/400
        assert!((weighted.double_value(&[0]) - 5.0 / 400.0).abs() < 1e-7);
        assert!(weighted.double_value(&[0]) > unweighted.double_value(&[0]));
        assert_eq!(weighted.double_value(&[1]), 0.0);
        Ok(())
    }
}
