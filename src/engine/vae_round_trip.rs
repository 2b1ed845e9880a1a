//! An image through a model folder's VAE and back (posterior mean, no sampling): what the latent
//! space keeps of it. `eval` measures the bundled model's ceiling with it.

use std::path::Path;

use crate::engine::device;
use crate::engine::image_tensor::{image_from_tensor, tensor_from_image};
use crate::engine::loading::load_diffusers_weights;
use crate::engine::models::vae::{AutoencoderKl, AutoencoderKlConfig};
use crate::protocol::{DeviceChoice, ImageData};

/// A diffusers folder's `vae/`, loaded for round trips.
pub struct VaeRoundTrip {
    vae: AutoencoderKl,
}

impl VaeRoundTrip {
    /// Loads `model/vae` (config and weights) on `choice`.
    pub fn load(model: &Path, choice: DeviceChoice) -> anyhow::Result<Self> {
        let folder = model.join("vae");
        let config = AutoencoderKlConfig::from_file(&folder.join("config.json"))?;
        let device = device::select(choice).map_err(anyhow::Error::msg)?;
        let vae = AutoencoderKl::new(config, device);
        load_diffusers_weights(vae.var_store(), &folder)?;
        Ok(Self { vae })
    }

    /// `image` encoded (the posterior's mean) and decoded.
    pub fn run(&self, image: &ImageData) -> anyhow::Result<ImageData> {
        let _guard = tch::no_grad_guard();
        let pixels = tensor_from_image(image, self.vae.var_store().device())?;
        let decoded = self.vae.decode(&self.vae.encode(&pixels)?.mean)?;
        Ok(image_from_tensor(&decoded)?)
    }
}
