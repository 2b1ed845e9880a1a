//! Masks that follow the image's edges: joint bilateral upsampling (Kopf, Cohen, Lischinski and
//! Uyttendaele 2007, "Joint Bilateral Upsampling", SIGGRAPH) of a mask estimated on the latent
//! grid, with the full-resolution image as the guide. Each pixel's value is the average of the
//! nearby latent cells' values, weighted by how close the cell is (a Gaussian of one cell) and by
//! how alike the pixel's colour and the cell's mean colour are (a Gaussian of `sigma_range`, in
//! the [-1, 1] units of the image tensor). A mask that is only known per 8-pixel cell thus takes
//! the outline of the region of the image it covers, instead of a bilinear blur across it.

use tch::{Kind, Tensor};

use crate::engine::JobError;

/// Latent cells on each side that a pixel's value is drawn from.
const RADIUS: i64 = 2;
/// The spatial Gaussian's standard deviation, in latent cells.
const SIGMA_SPACE: f64 = 1.0;
/// A floor under the range weight, so a pixel whose colour is unlike every nearby cell's (a thin
/// line, a speck) takes the spatial average instead of an undefined one.
const RANGE_FLOOR: f64 = 1e-3;

/// `low`: (1, 1, h, w); `guide`: (1, C, H, W) with H = f·h and W = f·w for a whole factor f;
/// returns (1, 1, H, W) on the guide's device. A `sigma_range` of 0 (or less) upsamples bilinearly.
pub fn joint_bilateral_upsample(low: &Tensor, guide: &Tensor, sigma_range: f64) -> Result<Tensor, JobError> {
    let (low_size, guide_size) = (low.size(), guide.size());
    let (&[1, 1, h, w], &[1, _, height, width]) = (low_size.as_slice(), guide_size.as_slice()) else {
        return Err(JobError::Failed(format!(
            "joint bilateral upsampling takes a (1, 1, h, w) mask and a (1, C, H, W) guide, got {low_size:?} and {guide_size:?}"
        )));
    };
    if h == 0 || w == 0 || height % h != 0 || width % w != 0 || height / h != width / w {
        return Err(JobError::Failed(format!(
            "the guide ({width}×{height}) is not a whole multiple of the mask ({w}×{h}) on both sides"
        )));
    }
    let device = guide.device();
    let low = low.f_to_kind(Kind::Float)?.f_to_device(device)?;
    let guide = guide.f_to_kind(Kind::Float)?;
    if sigma_range.is_nan() || sigma_range <= 0.0 {
        return Ok(low.f_upsample_bilinear2d([height, width], false, None, None)?);
    }
    let factor = height / h;
    // each cell's mean colour: the guide's value at the low-resolution samples
    let cell_colour = guide.f_avg_pool2d([factor, factor], [factor, factor], [0, 0], false, true, None)?;
    // a pixel's offset from its own cell's centre, in cells: in (-0.5, 0.5)
    let offset = |n: i64| -> Result<Tensor, JobError> {
        let at = Tensor::f_arange(n, (Kind::Float, device))?;
        let cell = at.f_div_scalar(factor as f64)?.f_floor()?;
        Ok(at.f_add_scalar(0.5)?.f_div_scalar(factor as f64)?.f_sub(&cell)?.f_sub_scalar(0.5)?)
    };
    let (along_x, along_y) =
        (offset(width)?.f_view([1, 1, 1, width])?, offset(height)?.f_view([1, 1, height, 1])?);
    let pad = [RADIUS, RADIUS, RADIUS, RADIUS];
    let padded_mask = low.f_constant_pad_nd(pad)?;
    let padded_inside = low.f_ones_like()?.f_constant_pad_nd(pad)?;
    let padded_colour = cell_colour.f_constant_pad_nd(pad)?;
    let up = |t: &Tensor, dy: i64, dx: i64| -> Result<Tensor, JobError> {
        let cells = t.f_narrow(2, RADIUS + dy, h)?.f_narrow(3, RADIUS + dx, w)?;
        Ok(cells.f_upsample_nearest2d([height, width], None, None)?)
    };
    let mut numerator = Tensor::f_zeros([1, 1, height, width], (Kind::Float, device))?;
    let mut denominator = numerator.f_zeros_like()?;
    for dy in -RADIUS..=RADIUS {
        for dx in -RADIUS..=RADIUS {
            // the squared distance from the pixel to the centre of the cell (dy, dx) from its own
            let distance = along_x
                .f_neg()?
                .f_add_scalar(dx as f64)?
                .f_square()?
                .f_add(&along_y.f_neg()?.f_add_scalar(dy as f64)?.f_square()?)?;
            let spatial = distance.f_mul_scalar(-0.5 / (SIGMA_SPACE * SIGMA_SPACE))?.f_exp()?;
            let colour_distance = guide.f_sub(&up(&padded_colour, dy, dx)?)?.f_square()?.f_sum_dim_intlist(
                &[1i64][..],
                true,
                Kind::Float,
            )?;
            let range = colour_distance
                .f_mul_scalar(-0.5 / (sigma_range * sigma_range))?
                .f_exp()?
                .f_add_scalar(RANGE_FLOOR)?;
            let weight = spatial.f_mul(&range)?.f_mul(&up(&padded_inside, dy, dx)?)?;
            numerator = numerator.f_add(&weight.f_mul(&up(&padded_mask, dy, dx)?)?)?;
            denominator = denominator.f_add(&weight)?;
        }
    }
    Ok(numerator.f_div(&denominator.f_clamp_min(1e-12)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk of `radius` pixels at `centre` in a `size`² image: (1, 1, size, size) of 0/1.
    fn disk(size: i64, centre: (f64, f64), radius: f64) -> Tensor {
        let at = Tensor::arange(size, (Kind::Float, tch::Device::Cpu)) + 0.5;
        let dx = at.view([1, size]) - centre.0;
        let dy = at.view([size, 1]) - centre.1;
        (dx.square() + dy.square()).le(radius * radius).to_kind(Kind::Float).view([1, 1, size, size])
    }

    fn iou(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.gt(0.5), b.gt(0.5));
        let inter = a.logical_and(&b).to_kind(Kind::Float).sum(Kind::Float);
        let union = a.logical_or(&b).to_kind(Kind::Float).sum(Kind::Float);
        f64::try_from(inter / union).unwrap_or(f64::NAN)
    }

    #[test]
    fn follows_the_guides_outline_where_bilinear_blurs_it() -> Result<(), JobError> {
        // a small red disk on blue, off the latent grid; its mask known only per 8-pixel cell
        let truth = disk(128, (45.3, 70.9), 13.0);
        let red = Tensor::from_slice(&[0.8f32, -0.8, -0.8]).view([1, 3, 1, 1]);
        let blue = Tensor::from_slice(&[-0.8f32, -0.6, 0.8]).view([1, 3, 1, 1]);
        let guide = &red * &truth + &blue * (1.0 - &truth);
        let low = truth.avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None);
        let bilinear = joint_bilateral_upsample(&low, &guide, 0.0)?;
        let edges = joint_bilateral_upsample(&low, &guide, 0.3)?;
        let (plain, snapped) = (iou(&bilinear, &truth), iou(&edges, &truth));
        assert!(snapped > 0.97, "edge-aware IoU {snapped}");
        assert!(plain < 0.95 && snapped > plain, "bilinear {plain}, edge-aware {snapped}");
        Ok(())
    }

    #[test]
    fn a_flat_guide_gives_a_smooth_mask_in_range() -> Result<(), JobError> {
        let low = Tensor::from_slice(&[0.0f32, 1.0, 0.5, 0.25]).view([1, 1, 2, 2]);
        let guide = Tensor::zeros([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let up = joint_bilateral_upsample(&low, &guide, 0.2)?;
        assert_eq!(up.size(), vec![1, 1, 16, 16]);
        let (min, max) = (f64::try_from(up.min())?, f64::try_from(up.max())?);
        assert!((0.0..=1.0).contains(&min) && max <= 1.0 && max > min, "{min}..{max}");
        // the corner cell weighs most at its own pixels: the value rises towards the 1 cell
        let left = f64::try_from(up.get(0).get(0).get(0).get(0))?;
        let right = f64::try_from(up.get(0).get(0).get(0).get(15))?;
        assert!(right > left + 0.2, "{left} → {right}");
        Ok(())
    }

    #[test]
    fn refuses_sizes_that_are_not_whole_multiples() {
        let low = Tensor::zeros([1, 1, 3, 3], (Kind::Float, tch::Device::Cpu));
        let guide = Tensor::zeros([1, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let error =
            joint_bilateral_upsample(&low, &guide, 0.2).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("whole multiple"), "{error}");
        let flat = Tensor::zeros([3, 3], (Kind::Float, tch::Device::Cpu));
        assert!(joint_bilateral_upsample(&flat, &guide, 0.2).is_err());
    }
}
