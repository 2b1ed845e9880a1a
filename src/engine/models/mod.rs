//! Model modules in tch, named as diffusers/transformers name them so checkpoint keys load as
//! they are.

pub mod attention;
pub mod blocks;
pub mod branch_parallel;
pub mod clip;
pub mod embeddings;
pub mod taesd;
pub mod unet_2d;
pub mod unet_2d_condition;
pub mod unet_levels;
pub mod vae;
