//! AdamW (Loshchilov & Hutter 2019) and an exponential moving average of weights, over a
//! `VarStore`'s trainable variables by name, with state that saves and loads — so a run resumed
//! from a checkpoint continues exactly as if it had not stopped.

use std::collections::BTreeMap;

use tch::{Kind, Tensor, nn};

/// AdamW's settings (torch's defaults but the weight decay).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// AdamW over the trainable variables of one `VarStore`.
pub struct AdamW {
    config: AdamWConfig,
    /// (parameter, first moment, second moment) by variable name.
    state: BTreeMap<String, (Tensor, Tensor, Tensor)>,
    pub steps: i64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> Result<Self, tch::TchError> {
        let mut state = BTreeMap::new();
        for (name, variable) in vs.variables() {
            if variable.requires_grad() {
                let zeros = variable.f_zeros_like()?.f_to_kind(Kind::Float)?;
                state.insert(name, (variable, zeros.f_zeros_like()?, zeros));
            }
        }
        Ok(Self { config, state, steps: 0 })
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for (parameter, _, _) in self.state.values_mut() {
            let mut grad = parameter.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Scales gradients so that their global norm is at most `max_norm`; returns the norm.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        // One sum per parameter, read back together: a read per parameter would wait for the
        // GPU hundreds of times a step (the sums, and their order in `total`, are unchanged).
        let mut sums = Vec::with_capacity(self.state.len());
        for (parameter, _, _) in self.state.values() {
            let grad = parameter.grad();
            if grad.defined() {
                sums.push(grad.f_square()?.f_sum(Kind::Float)?);
            }
        }
        let mut total = 0.0;
        if !sums.is_empty() {
            let sums = Vec::<f32>::try_from(Tensor::f_stack(&sums, 0)?.f_to_device(tch::Device::Cpu)?)?;
            total = sums.iter().map(|s| f64::from(*s)).sum();
        }
        let norm = total.sqrt();
        if norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for (parameter, _, _) in self.state.values() {
                let mut grad = parameter.grad();
                if grad.defined() {
                    let _ = grad.f_mul_scalar_(scale)?;
                }
            }
        }
        Ok(norm)
    }

    /// One update with learning rate `lr` (decoupled weight decay on matrices and kernels only,
    /// as is usual: not on biases and norm scales).
    pub fn step(&mut self, lr: f64) -> Result<(), tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let correction1 = 1.0 - beta1.powi(self.steps as i32);
        let correction2 = 1.0 - beta2.powi(self.steps as i32);
        for (parameter, m, v) in self.state.values_mut() {
            let grad = parameter.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.f_to_kind(Kind::Float)?;
            if weight_decay > 0.0 && parameter.dim() >= 2 {
                let _ = parameter.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let _ = m.f_mul_scalar_(beta1)?.f_add_(&grad.f_mul_scalar(1.0 - beta1)?)?;
            let _ = v.f_mul_scalar_(beta2)?.f_add_(&grad.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
            let denominator = v.f_div_scalar(correction2)?.f_sqrt()?.f_add_scalar(eps)?;
            let update = m.f_div(&denominator)?.f_mul_scalar(lr / correction1)?;
            let _ = parameter.f_sub_(&update.f_to_kind(parameter.kind())?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.state.len() * 2 + 1);
        for (name, (_, m, v)) in &self.state {
            out.push((format!("m.{name}"), m.shallow_clone()));
            out.push((format!("v.{name}"), v.shallow_clone()));
        }
        out.push(("steps".into(), Tensor::from_slice(&[self.steps])));
        out
    }

    /// Restores [`Self::state_tensors`]; every moment must be there with its shape.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
        let _no_grad = tch::no_grad_guard();
        for (name, (_, m, v)) in &mut self.state {
            for (prefix, moment) in [("m", &mut *m), ("v", &mut *v)] {
                let key = format!("{prefix}.{name}");
                let saved = tensors.get(&key).ok_or_else(|| format!("the checkpoint has no {key}"))?;
                if saved.size() != moment.size() {
                    return Err(format!(
                        "{key} is {:?} in the checkpoint, {:?} here",
                        saved.size(),
                        moment.size()
                    ));
                }
                moment.copy_(saved);
            }
        }
        let steps = tensors.get("steps").ok_or("the checkpoint has no step count")?;
        self.steps = i64::try_from(steps).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// An exponential moving average of a `VarStore`'s variables (the weights shipped), with the
/// usual warm-up: decay min(`decay`, (1 + n) / (10 + n)) at update n.
pub struct Ema {
    pub decay: f64,
    pub shadow: BTreeMap<String, Tensor>,
    pub updates: i64,
}

impl Ema {
    pub fn new(vs: &nn::VarStore, decay: f64) -> Self {
        let _no_grad = tch::no_grad_guard();
        let shadow = vs.variables().into_iter().map(|(name, t)| (name, t.detach().copy())).collect();
        Self { decay, shadow, updates: 0 }
    }

    pub fn update(&mut self, vs: &nn::VarStore) -> Result<(), tch::TchError> {
        let _no_grad = tch::no_grad_guard();
        self.updates += 1;
        let n = self.updates as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n));
        for (name, variable) in vs.variables() {
            if let Some(shadow) = self.shadow.get_mut(&name) {
                let _ = shadow.f_mul_scalar_(decay)?.f_add_(&variable.f_mul_scalar(1.0 - decay)?)?;
            }
        }
        Ok(())
    }

    /// Copies the averaged weights into `vs` (for saving or evaluating).
    pub fn copy_into(&self, vs: &nn::VarStore) {
        let _no_grad = tch::no_grad_guard();
        for (name, mut variable) in vs.variables() {
            if let Some(shadow) = self.shadow.get(&name) {
                variable.copy_(shadow);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_torch_on_a_quadratic() {
        // torch.optim.AdamW(lr=0.1, weight_decay=0.01) on f(w) = sum((w - 3)^2) from w = [1, -2]
        // for three steps gives w = [1.296088, -1.694524] (run with torch 2.11)
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]));
        let mut adam = AdamW::new(&vs, AdamWConfig::default()).expect("state");
        for _ in 0..3 {
            adam.zero_grad();
            let loss = (&w - 3.0).square().sum(Kind::Float);
            loss.backward();
            adam.step(0.1).expect("steps");
        }
        let values = Vec::<f32>::try_from(w.flatten(0, -1)).expect("values");
        assert!((values[0] - 1.296_088).abs() < 1e-5 && (values[1] + 1.694_524).abs() < 1e-5, "{values:?}");
    }

    #[test]
    fn state_round_trips_and_ema_averages() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]));
        let mut adam = AdamW::new(&vs, AdamWConfig::default()).expect("state");
        let mut ema = Ema::new(&vs, 0.5);
        adam.zero_grad();
        w.square().sum(Kind::Float).backward();
        adam.step(0.1).expect("steps");
        ema.update(&vs).expect("ema");
        let saved: BTreeMap<String, Tensor> = adam.state_tensors().into_iter().collect();
        let mut other = AdamW::new(&vs, AdamWConfig::default()).expect("state");
        other.load_state(&saved).expect("loads");
        assert_eq!(other.steps, 1);
        assert!(other.load_state(&BTreeMap::new()).is_err());
        // first update: decay min(0.5, 2/11) keeps 2/11 of the start
        let expected = 1.0 * 2.0 / 11.0 + f64::try_from(w.get(0).get(0)).expect("w") * 9.0 / 11.0;
        let got = f64::try_from(ema.shadow["w"].get(0).get(0)).expect("ema");
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn clipping_scales_every_gradient_to_the_global_norm() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let a = vs.root().var_copy("a", &Tensor::from_slice(&[0.0f32, 0.0]).view([1, 2]));
        let b = vs.root().var_copy("b", &Tensor::from_slice(&[0.0f32]));
        let mut adam = AdamW::new(&vs, AdamWConfig::default()).expect("state");
        adam.zero_grad();
        // gradients 3, 0 and 4: global norm 5
        ((&a * Tensor::from_slice(&[3.0f32, 0.0]).view([1, 2])).sum(Kind::Float)
            + (&b * 4.0).sum(Kind::Float))
        .backward();
        let norm = adam.clip_grad_norm(1.0).expect("clips");
        assert!((norm - 5.0).abs() < 1e-6, "{norm}");
        let (ga, gb) = (
            Vec::<f32>::try_from(a.grad().flatten(0, -1)).expect("a"),
            f64::try_from(b.grad().get(0)).expect("b"),
        );
        assert!(
            (f64::from(ga[0]) - 0.6).abs() < 1e-5 && ga[1] == 0.0 && (gb - 0.8).abs() < 1e-5,
            "{ga:?} {gb}"
        );
        // under the limit nothing changes
        assert!((adam.clip_grad_norm(10.0).expect("clips") - 1.0).abs() < 1e-5);
        assert!((f64::try_from(b.grad().get(0)).expect("b") - 0.8).abs() < 1e-5);
    }
}
