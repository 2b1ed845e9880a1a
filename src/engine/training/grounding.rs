//! Token-level grounding of cross-attention (Wang et al. 2024, "TokenCompose: Text-to-Image
//! Diffusion with Token-level Supervision", <https://arxiv.org/abs/2312.03626>, their L_token):
//! while the UNet trains, each cross-attention layer's map of a word that names an object (or
//! the background) is pulled inside that object's true mask — the shapes dataset knows every
//! mask. The loss of one word is (1 − attention inside its mask / all its attention)², averaged
//! over heads first, then over the words and layers.
//!
//! Why: a small model trained from scratch learns the colour words early but leaves the shape
//! words close to unused (BENCHMARKS.md): with every object's words mixed over the image, the
//! UNet can read a colour from the mix, not an outline. Grounded, a shape word's value vector
//! arrives where that object is, and only there. Attention maps that follow the objects are also
//! what prompt-to-prompt edits and DiffEdit's masks rely on.

use std::cell::RefCell;

use tch::{Kind, Tensor};

use crate::engine::attention_control::{AttentionCall, AttentionControl};

/// Keeps every cross-attention layer's probabilities of one training forward (with their
/// gradients); changes nothing.
#[derive(Default)]
pub struct AttentionCollector {
    maps: RefCell<Vec<(AttentionCall, Tensor)>>,
}

impl AttentionCollector {
    /// The maps collected since the last call: (call, (batch, heads, queries, keys)).
    pub fn take(&self) -> Vec<(AttentionCall, Tensor)> {
        std::mem::take(&mut *self.maps.borrow_mut())
    }
}

impl AttentionControl for AttentionCollector {
    fn wants(&self, call: &AttentionCall) -> bool {
        call.cross
    }

    fn edit(&self, call: &AttentionCall, probs: Tensor) -> Result<Tensor, tch::TchError> {
        self.maps.borrow_mut().push((*call, probs.shallow_clone()));
        Ok(probs)
    }
}

/// The grounding loss of `maps` (from [`AttentionCollector::take`]).
/// regions: (batch, keys) integers, 0 for a token that names nothing, else its mask slot + 1;
/// masks: (batch, slots, h, w) floats in [0, 1] at any resolution (area-resized to each layer's).
/// Returns a scalar; zero when no token names a region.
pub fn grounding_loss(
    maps: &[(AttentionCall, Tensor)],
    regions: &Tensor,
    masks: &Tensor,
) -> Result<Tensor, tch::TchError> {
    let device = masks.device();
    let (batch, slots, _, _) = masks.size4()?;
    let regions = regions.f_to_device(device)?.f_to_kind(Kind::Int64)?;
    // (batch, keys, slots): which mask each token names
    let choice = regions.f_one_hot(slots + 1)?.f_narrow(2, 1, slots)?.f_to_kind(Kind::Float)?;
    let named = choice.f_sum_dim_intlist(&[2i64][..], false, Kind::Float)?;
    // with no token named every term is zero, and so is the loss: no host read needed to say so
    let count = named.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    let mut total = Tensor::f_zeros([], (Kind::Float, device))?;
    if maps.is_empty() {
        return Ok(total);
    }
    for (call, probs) in maps {
        // (batch, queries, keys), heads averaged
        let attention = probs.f_to_kind(Kind::Float)?.f_mean_dim(&[1i64][..], false, Kind::Float)?;
        let resized = masks.f_adaptive_avg_pool2d([call.height, call.width])?.f_view([batch, slots, -1])?;
        // (batch, keys, queries): each token's target mask
        let target = choice.f_bmm(&resized)?;
        let per_token = attention.f_transpose(1, 2)?;
        let inside = per_token.f_mul(&target)?.f_sum_dim_intlist(&[2i64][..], false, Kind::Float)?;
        let all = per_token.f_sum_dim_intlist(&[2i64][..], false, Kind::Float)?.f_clamp_min(1e-8)?;
        let outside = inside.f_div(&all)?.f_neg()?.f_add_scalar(1.0)?;
        let layer = outside.f_square()?.f_mul(&named)?.f_sum(Kind::Float)?.f_div(&count)?;
        total = total.f_add(&layer)?;
    }
    total.f_div_scalar(maps.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attention_control::Place;

    fn call(height: i64, width: i64) -> AttentionCall {
        AttentionCall { cross: true, place: Place::Down, height, width, heads: 1 }
    }

    /// One image, a 2×2 map, 3 keys: key 1 names slot 0 (the left column), key 2 slot 1.
    fn setup() -> (Tensor, Tensor) {
        let regions = Tensor::from_slice(&[0i64, 1, 2]).view([1, 3]);
        let masks = Tensor::from_slice(&[1f32, 0., 1., 0., 0., 1., 0., 1.]).view([1, 2, 2, 2]);
        (regions, masks)
    }

    #[test]
    fn attention_inside_the_mask_costs_nothing_and_outside_costs_one() -> Result<(), tch::TchError> {
        let (regions, masks) = setup();
        // queries in row-major order: (0,0) (0,1) (1,0) (1,1); left column = queries 0 and 2
        let grounded = Tensor::from_slice(&[
            0.5f32, 0.5, 0.0, // query 0: key 1
            0.5, 0.0, 0.5, // query 1: key 2
            0.5, 0.5, 0.0, // query 2: key 1
            0.5, 0.0, 0.5, // query 3: key 2
        ])
        .view([1, 1, 4, 3]);
        let loss = grounding_loss(&[(call(2, 2), grounded)], &regions, &masks)?;
        assert!(f64::try_from(&loss)?.abs() < 1e-6);
        // the keys' attention swapped between the columns: all of it outside
        let swapped = Tensor::from_slice(&[0.5f32, 0.0, 0.5, 0.5, 0.5, 0.0, 0.5, 0.0, 0.5, 0.5, 0.5, 0.0])
            .view([1, 1, 4, 3]);
        let loss = grounding_loss(&[(call(2, 2), swapped)], &regions, &masks)?;
        assert!((f64::try_from(&loss)? - 1.0).abs() < 1e-6);
        // uniform attention: half inside, (1 − ½)² = ¼; the key naming nothing does not count
        let uniform = Tensor::full([1, 1, 4, 3], 1.0 / 3.0, (Kind::Float, tch::Device::Cpu));
        let loss = grounding_loss(&[(call(2, 2), uniform)], &regions, &masks)?;
        assert!((f64::try_from(&loss)? - 0.25).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn masks_are_resized_to_each_layer_and_gradients_reach_the_scores() -> Result<(), tch::TchError> {
        let (regions, masks) = setup();
        // a 1×1 layer sees each mask as ½: any attention is half inside
        let scores = Tensor::zeros([1, 1, 1, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let probs = scores.softmax(-1, Kind::Float);
        let loss = grounding_loss(&[(call(1, 1), probs)], &regions, &masks)?;
        assert!((f64::try_from(&loss)? - 0.25).abs() < 1e-6);
        // a 2×2 layer from scores: the loss has a gradient that pulls key 1 to the left column
        let scores = Tensor::zeros([1, 2, 4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let loss = grounding_loss(&[(call(2, 2), scores.softmax(-1, Kind::Float))], &regions, &masks)?;
        loss.backward();
        let grad = scores.grad();
        // lowering the loss = raising key 1's score at the left queries (negative gradient)
        assert!(grad.double_value(&[0, 0, 0, 1]) < 0.0);
        assert!(grad.double_value(&[0, 0, 1, 1]) > 0.0);
        // no token names a region: zero
        let none = Tensor::zeros([1, 3], (Kind::Int64, tch::Device::Cpu));
        let loss = grounding_loss(&[(call(2, 2), scores.softmax(-1, Kind::Float))], &none, &masks)?;
        assert_eq!(f64::try_from(&loss)?, 0.0);
        Ok(())
    }
}
