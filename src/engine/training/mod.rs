//! Training the bundled models with the model core's own modules: optimiser and weight
//! averaging, what each diffusion step draws and weighs, and the trainers.

pub mod contrast;
pub mod data;
pub mod grounding;
pub mod init;
pub mod noise;
pub mod optim;
pub mod outline;
pub mod shapes_model;
pub mod trainer;
