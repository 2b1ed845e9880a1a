//! Model modules in tch, named as diffusers/transformers name them so checkpoint keys load as
//! they are.

pub mod clip;
