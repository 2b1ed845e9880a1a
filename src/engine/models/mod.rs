//! Model modules in tch, named as diffusers/transformers name them so checkpoint keys load as
//! they are.

pub mod blocks;
pub mod clip;
pub mod vae;
