//! Images ⇄ tensors: RGBA bytes to `(1, 3, h, w)` floats in [-1, 1] (what diffusers' VAE and
//! pipelines take), and back, with a downscaled copy for previews.

use tch::{Device, Kind, Tensor};

use crate::engine::JobError;
use crate::protocol::ImageData;

/// RGBA bytes → `(1, 3, height, width)` f32 in [-1, 1] on `device`; alpha is dropped.
pub fn tensor_from_image(image: &ImageData, device: Device) -> Result<Tensor, JobError> {
    let (width, height) = (i64::from(image.width), i64::from(image.height));
    let expected = (width * height * 4) as usize;
    if image.rgba.len() != expected || width == 0 || height == 0 {
        return Err(JobError::Failed(format!(
            "the image is {}×{} but holds {} bytes ({expected} expected); reload it",
            image.width,
            image.height,
            image.rgba.len()
        )));
    }
    let bytes = Tensor::f_from_slice(image.rgba.as_slice())?;
    let pixels = bytes
        .f_view([height, width, 4])?
        .f_narrow(2, 0, 3)?
        .f_permute([2, 0, 1])?
        .f_unsqueeze(0)?
        .f_to_kind(Kind::Float)?;
    Ok(pixels.f_div_scalar(127.5)?.f_sub_scalar(1.0)?.f_to_device(device)?)
}

/// `(1, 3, h, w)` (or `(3, h, w)`) in [-1, 1] → opaque RGBA bytes, clamped.
pub fn image_from_tensor(tensor: &Tensor) -> Result<ImageData, JobError> {
    let tensor = if tensor.dim() == 4 { tensor.f_squeeze_dim(0)? } else { tensor.shallow_clone() };
    let size = tensor.size();
    let [channels, height, width] = size[..] else {
        return Err(JobError::Failed(format!("expected an image tensor, got shape {size:?}")));
    };
    if channels != 3 {
        return Err(JobError::Failed(format!("expected 3 channels, got shape {size:?}")));
    }
    let rgb = tensor
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_add_scalar(1.0)?
        .f_mul_scalar(127.5)?
        .f_round()?
        .f_clamp(0.0, 255.0)?
        .f_to_kind(Kind::Uint8)?
        .f_permute([1, 2, 0])?;
    let alpha = Tensor::f_full([height, width, 1], 255, (Kind::Uint8, Device::Cpu))?;
    let rgba = Tensor::f_cat(&[rgb, alpha], 2)?.f_contiguous()?.f_view([-1])?;
    let bytes = Vec::<u8>::try_from(&rgba)?;
    ImageData::new(width as u32, height as u32, bytes).map_err(JobError::Failed)
}

/// A copy whose longer side is at most `max_side` pixels (area-averaged), for progress previews.
pub fn preview_from_tensor(tensor: &Tensor, max_side: i64) -> Result<ImageData, JobError> {
    let size = tensor.size();
    let (height, width) = (size[size.len() - 2], size[size.len() - 1]);
    let longer = height.max(width);
    if longer <= max_side {
        return image_from_tensor(tensor);
    }
    let scale = max_side as f64 / longer as f64;
    let target =
        [((height as f64 * scale).round() as i64).max(1), ((width as f64 * scale).round() as i64).max(1)];
    let batched = if tensor.dim() == 3 { tensor.f_unsqueeze(0)? } else { tensor.shallow_clone() };
    image_from_tensor(&batched.f_adaptive_avg_pool2d(target)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_rgb_byte_and_makes_alpha_opaque() {
        let rgba: Vec<u8> = (0..4 * 5 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let image = ImageData::new(5, 3, rgba.clone()).expect("valid");
        let tensor = tensor_from_image(&image, Device::Cpu).expect("to tensor");
        assert_eq!(tensor.size(), vec![1, 3, 3, 5]);
        let back = image_from_tensor(&tensor).expect("to image");
        for (i, (a, b)) in rgba.chunks(4).zip(back.rgba.chunks(4)).enumerate() {
            assert_eq!(&a[..3], &b[..3], "pixel {i}");
            assert_eq!(b[3], 255);
        }
    }

    #[test]
    fn a_buffer_that_does_not_fit_is_an_error_not_a_panic() {
        let image = ImageData { width: 4, height: 4, rgba: std::sync::Arc::new(vec![0; 10]) };
        let error = tensor_from_image(&image, Device::Cpu).expect_err("must fail");
        assert!(error.to_string().contains("4×4"), "{error}");
    }

    #[test]
    fn preview_is_downscaled_to_the_longer_side() {
        let tensor = Tensor::zeros([1, 3, 100, 400], (Kind::Float, Device::Cpu));
        let preview = preview_from_tensor(&tensor, 64).expect("preview");
        assert_eq!((preview.width, preview.height), (64, 16));
    }
}
