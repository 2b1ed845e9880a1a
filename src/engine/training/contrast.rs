//! Shape-contrast loss (`train --shape-contrast W`): a second UNet pass on part of each batch with
//! one object's shape word swapped for another shape, and a hinge that keeps the loss under the
//! wrong caption at least [`MARGIN`] above the loss under the true one.
//!
//! Why: every shapes model trained so far reads the colour words and leaves the shape words close
//! to unused (BENCHMARKS.md, `word_sensitivity.py`: the loss rises 30–70% with the colour word
//! swapped, 1–6% with the shape word swapped). A colour changes every pixel of an object, a shape
//! only its outline, so the plain loss gives the shape word a weak signal, learnt last (as Okawa et
//! al. 2023 and Park et al. 2024 found for colour and shape concepts on synthetic data). The hinge
//! asks for the shape word's effect directly. It applies only from timestep [`FROM_TIMESTEP`] on,
//! where the outline is hidden by the noise: there a prediction can only be worse under a wrong
//! shape word by depending on the word the way the image does; at low noise the model could
//! instead learn to spot a caption that does not match what it sees.
//!
//! Measured (bench/ablations/shapes-f4.md, 2026-11-24): with W = 1 on the f = 8, 8-channel
//! autoencoder, the shape word was still unused after 1500 steps (+0.07% loss with it swapped),
//! and colour and background were learnt more slowly than without the hinge. While the UNet
//! ignores the shape word, the prediction under a swapped word is the prediction under the true
//! one, so the hinge's gradient (raise the swapped loss) is minus the main loss's gradient on
//! the same rows: it cancels their learning rather than adding a signal. Kept as an option for
//! a model that already uses the word a little (fine-tuning), where the two gradients differ.

use rand::Rng;
use tch::Tensor;

use crate::datasets::shapes::Shape;
use crate::text::tokenizer::ClipTokenizer;

/// The hinge's margin: the loss under a swapped shape word is pushed up to (1 + MARGIN) times the
/// loss under the true caption, and no further.
pub const MARGIN: f64 = 0.1;

/// The first timestep (of 1000) the contrast applies to.
pub const FROM_TIMESTEP: usize = 300;

/// The token id of every shape word, in [`Shape::ALL`] order; each must be one token.
pub fn shape_token_ids(tokenizer: &ClipTokenizer) -> anyhow::Result<Vec<i64>> {
    Shape::ALL
        .iter()
        .map(|shape| {
            let ids = tokenizer.encode(shape.name())?;
            anyhow::ensure!(
                ids.len() == 1,
                "the tokenizer splits the shape word \"{}\" into {} tokens; --shape-contrast needs one each",
                shape.name(),
                ids.len()
            );
            Ok(i64::from(ids[0]))
        })
        .collect()
}

/// The rows of a batch that the contrast applies to, and their captions with one shape word
/// swapped.
#[derive(Debug, PartialEq)]
pub struct Swapped {
    /// Row indices into the batch.
    pub rows: Vec<i64>,
    /// (rows.len() × `width`) token ids: each row's caption with one of its shape words (drawn
    /// at random) replaced by another shape's (drawn at random).
    pub ids: Vec<i64>,
}

/// Swaps one shape word in every row of `ids` (rows of `width` tokens) that has one, was not
/// dropped (empty caption) and was noised to at least [`FROM_TIMESTEP`]; `None` when no row
/// qualifies.
pub fn swap_shape_words(
    ids: &[i64],
    width: usize,
    dropped: &[bool],
    timesteps: &[usize],
    shape_ids: &[i64],
    rng: &mut impl Rng,
) -> Option<Swapped> {
    if shape_ids.len() < 2 {
        return None;
    }
    let (mut rows, mut swapped) = (Vec::new(), Vec::new());
    for (row, caption) in ids.chunks_exact(width).enumerate() {
        if dropped[row] || timesteps[row] < FROM_TIMESTEP {
            continue;
        }
        let positions: Vec<usize> =
            caption.iter().enumerate().filter(|(_, id)| shape_ids.contains(id)).map(|(p, _)| p).collect();
        if positions.is_empty() {
            continue;
        }
        let position = positions[rng.random_range(0..positions.len())];
        let others: Vec<i64> = shape_ids.iter().copied().filter(|id| *id != caption[position]).collect();
        let mut caption = caption.to_vec();
        caption[position] = others[rng.random_range(0..others.len())];
        rows.push(row as i64);
        swapped.extend(caption);
    }
    (!rows.is_empty()).then_some(Swapped { rows, ids: swapped })
}

/// Per row: max(0, (1 + [`MARGIN`]) · true_loss − swapped_loss), the true loss held constant
/// (the hinge moves only the prediction under the wrong word).
pub fn hinge(true_loss: &Tensor, swapped_loss: &Tensor) -> Result<Tensor, tch::TchError> {
    true_loss.f_detach()?.f_mul_scalar(1.0 + MARGIN)?.f_sub(swapped_loss)?.f_clamp_min(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn one_shape_word_is_swapped_in_the_noisy_kept_rows_only() {
        let shapes = [10, 11, 12];
        let width = 6;
        #[rustfmt::skip]
        let ids = vec![
            1, 5, 10, 2, 2, 2, // a shape word, kept, noisy: swapped
            1, 5, 11, 6, 12, 2, // two shape words, but dropped
            1, 5, 12, 2, 2, 2, // too little noise
            1, 5, 6, 2, 2, 2, // no shape word
            1, 11, 6, 12, 2, 2, // two shape words: one of them swapped
        ];
        let dropped = [false, true, false, false, false];
        let timesteps = [300, 900, 299, 999, 500];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut both = [false, false];
        for _ in 0..40 {
            let swapped =
                swap_shape_words(&ids, width, &dropped, &timesteps, &shapes, &mut rng).expect("rows");
            assert_eq!(swapped.rows, vec![0, 4]);
            let (first, last) = swapped.ids.split_at(width);
            assert_eq!(first[..2], [1, 5]);
            assert!(first[2] != 10 && shapes.contains(&first[2]), "{first:?}");
            assert_eq!(first[3..], ids[3..width]);
            let changed: Vec<usize> = (0..width).filter(|&p| last[p] != ids[4 * width + p]).collect();
            assert_eq!(changed.len(), 1, "{last:?}");
            assert!(shapes.contains(&last[changed[0]]));
            both[usize::from(changed[0] == 3)] = true;
        }
        assert_eq!(both, [true, true], "either shape word of a row may be the swapped one");
        let none = swap_shape_words(&ids[..2 * width], width, &[true, true], &[999, 999], &shapes, &mut rng);
        assert_eq!(none, None);
    }

    #[test]
    fn the_hinge_stops_at_the_margin_and_moves_only_the_swapped_loss() {
        let true_loss = Tensor::from_slice(&[1.0f32, 1.0, 2.0]).set_requires_grad(true);
        let swapped = Tensor::from_slice(&[1.0f32, 1.2, 2.0]).set_requires_grad(true);
        let value = hinge(&true_loss, &swapped).expect("hinge");
        let values: Vec<f32> = Vec::try_from(&value).expect("floats");
        assert!((values[0] - 0.1).abs() < 1e-6 && values[1] == 0.0 && (values[2] - 0.2).abs() < 1e-6);
        value.sum(tch::Kind::Float).backward();
        let grad: Vec<f32> = Vec::try_from(&swapped.grad()).expect("floats");
        assert_eq!(grad, vec![-1.0, 0.0, -1.0]);
        assert!(!true_loss.grad().defined(), "the true loss gets no gradient from the hinge");
    }
}
