//! How a freshly built model's weights start. The model core builds its layers with `tch`'s
//! defaults, which only matter until weights are loaded; a model trained from scratch starts
//! from them. `tch` draws every convolution and linear kernel from Kaiming-uniform with the
//! ReLU gain (bound √(6 / fan_in)); PyTorch's `nn.Conv2d` and `nn.Linear` — what diffusers'
//! models start from — draw from bound 1/√fan_in (Kaiming-uniform with a = √5), 2.45 times
//! narrower, and their biases from the same bound. The wider start makes every attention logit
//! (a product of two projections) six times larger, so the softmax starts near one-hot.

use tch::{Kind, Tensor, nn};

/// The initial weights of a model trained from scratch (`train --unet-init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightInit {
    /// PyTorch's layer defaults: kernels and biases uniform in ±1/√fan_in.
    Torch,
    /// `tch`'s defaults: kernels Kaiming-uniform with the ReLU gain (±√(6 / fan_in)), linear
    /// biases ±1/√fan_in, convolution biases 0 (what runs before 2026-11-24 started from).
    Kaiming,
}

/// Redraws every kernel of `vs` (a variable named `…weight` of two or more dimensions) and the
/// `…bias` beside it as PyTorch's `reset_parameters` does: uniform in ±1/√fan_in, where fan_in
/// is the kernel's input channels times its spatial size. Norm scales and shifts (one-dimensional
/// weights) and embeddings named otherwise are left as built. Draws from torch's generator
/// (`tch::manual_seed` makes it repeatable). Returns how many kernels were redrawn.
pub fn torch_defaults(vs: &nn::VarStore) -> Result<usize, tch::TchError> {
    let _no_grad = tch::no_grad_guard();
    let variables = vs.variables();
    let mut count = 0;
    for (name, kernel) in &variables {
        let Some(prefix) = name.strip_suffix("weight") else { continue };
        let size = kernel.size();
        if size.len() < 2 {
            continue;
        }
        let fan_in: i64 = size[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        redraw(kernel, bound)?;
        if let Some(bias) = variables.get(&format!("{prefix}bias")) {
            redraw(bias, bound)?;
        }
        count += 1;
    }
    Ok(count)
}

fn redraw(variable: &Tensor, bound: f64) -> Result<(), tch::TchError> {
    let fresh =
        Tensor::f_zeros(variable.size(), (Kind::Float, variable.device()))?.f_uniform_(-bound, bound)?;
    variable.shallow_clone().f_copy_(&fresh.f_to_kind(variable.kind())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;

    #[test]
    fn kernels_and_their_biases_are_redrawn_as_pytorch_draws_them() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let root = vs.root();
        let conv = nn::conv2d(&root / "conv", 16, 32, 3, Default::default());
        let linear = nn::linear(&root / "proj", 256, 64, Default::default());
        let norm = nn::group_norm(&root / "norm", 4, 32, Default::default());
        assert_eq!(torch_defaults(&vs).expect("redraws"), 2);
        let max_abs = |t: &Tensor| f64::try_from(t.abs().max()).expect("a number");
        let std = |t: &Tensor| f64::try_from(t.std(true)).expect("a number");
        // fan_in 16 · 3 · 3 = 144: bound 1/12, standard deviation bound/√3
        let bound = 1.0 / 12.0;
        assert!(max_abs(&conv.ws) <= bound + 1e-7);
        assert!((std(&conv.ws) - bound / 3f64.sqrt()).abs() < 0.1 * bound);
        let conv_bias = conv.bs.as_ref().expect("a bias");
        assert!(max_abs(conv_bias) <= bound + 1e-7 && max_abs(conv_bias) > 0.2 * bound);
        // fan_in 256: bound 1/16 (tch's own start is ±√(6/256) ≈ 0.153)
        assert!(max_abs(&linear.ws) <= 1.0 / 16.0 + 1e-7);
        assert!(max_abs(&linear.ws) > 0.9 / 16.0);
        // the norm stays an identity: scale 1, shift 0
        let x = Tensor::randn([2, 32, 4, 4], (Kind::Float, tch::Device::Cpu));
        let normed = norm.forward(&x);
        let mean = f64::try_from(normed.mean(Kind::Float)).expect("a number");
        assert!(mean.abs() < 1e-4);
        assert!((std(&normed) - 1.0).abs() < 0.05);
    }

    #[test]
    fn the_same_seed_draws_the_same_weights() {
        let draw = || {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let linear = nn::linear(vs.root() / "proj", 8, 8, Default::default());
            tch::manual_seed(11);
            torch_defaults(&vs).expect("redraws");
            linear.ws.copy()
        };
        assert!(draw().equal(&draw()));
    }
}
