//! Methods: each a small strategy over the engine's loop (see ARCHITECTURE in README.md).

pub mod forward_noise;
pub mod img2img;
pub mod inpaint;
pub mod instruct_pix2pix;
pub mod inversion;
pub mod null_text;
pub mod prompt_to_prompt;
