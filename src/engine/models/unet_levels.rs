//! The level structure both UNets share (diffusers' `down_blocks` / `up_blocks`): per level,
//! resnets each optionally followed by an attention, a down- or upsampler, and the skip
//! connections from the down path into the up path. Generic over the attention: the
//! text-conditioned `Transformer2DModel` or the spatial self-attention of `UNet2DModel`.

use tch::Tensor;
use tch::nn;

use super::attention::Transformer2DModel;
use super::blocks::{Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D};
use crate::engine::attention_control::{CrossContext, Place};

/// An attention that may follow a resnet.
pub trait LevelAttention {
    /// x: (batch, channels, h, w); context: the text and attention control, for cross-attention.
    fn forward(&self, x: &Tensor, context: Option<&CrossContext<'_>>) -> Result<Tensor, tch::TchError>;
}

impl LevelAttention for Transformer2DModel {
    fn forward(&self, x: &Tensor, context: Option<&CrossContext<'_>>) -> Result<Tensor, tch::TchError> {
        let context =
            context.ok_or_else(|| tch::TchError::Shape("cross-attention needs a text context".into()))?;
        Transformer2DModel::forward(self, x, context)
    }
}

impl LevelAttention for SpatialSelfAttention {
    fn forward(&self, x: &Tensor, _context: Option<&CrossContext<'_>>) -> Result<Tensor, tch::TchError> {
        SpatialSelfAttention::forward(self, x)
    }
}

struct Level<A> {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<A>,
    downsample: Option<Downsample2D>,
    upsample: Option<Upsample2D>,
}

/// Shape of the levels.
pub struct LevelsConfig<'a> {
    pub block_out_channels: &'a [i64],
    pub layers_per_block: usize,
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
}

/// The down and up paths of a UNet.
pub struct UNetLevels<A> {
    down: Vec<Level<A>>,
    up: Vec<Level<A>>,
}

impl<A: LevelAttention> UNetLevels<A> {
    /// `down_attention(i)` / `up_attention(i)` say whether level i has attentions;
    /// `attention(path, channels, down_level)` builds one (heads chosen by the down-path level).
    pub fn new(
        root: &nn::Path,
        config: &LevelsConfig<'_>,
        down_attention: impl Fn(usize) -> bool,
        up_attention: impl Fn(usize) -> bool,
        attention: impl Fn(nn::Path, i64, usize) -> A,
    ) -> Self {
        let channels = config.block_out_channels;
        let levels = channels.len();
        let resnet = |path: nn::Path, input: i64, output: i64| {
            ResnetBlock2D::new(path, input, output, Some(config.temb_channels), config.groups, config.eps)
        };
        // 1. down path
        let mut input = channels[0];
        let down = (0..levels)
            .map(|i| {
                let output = channels[i];
                let block = root / "down_blocks" / i;
                let resnets = (0..config.layers_per_block)
                    .map(|j| resnet(&block / "resnets" / j, if j == 0 { input } else { output }, output))
                    .collect();
                let attentions = if down_attention(i) {
                    (0..config.layers_per_block)
                        .map(|j| attention(&block / "attentions" / j, output, i))
                        .collect()
                } else {
                    Vec::new()
                };
                input = output;
                let downsample =
                    (i + 1 < levels).then(|| Downsample2D::new(&block / "downsamplers" / 0, output, 1));
                Level { resnets, attentions, downsample, upsample: None }
            })
            .collect();
        // 2. up path: each resnet takes the previous output and one skip
        let reversed: Vec<i64> = channels.iter().rev().copied().collect();
        let mut output = reversed[0];
        let up = (0..levels)
            .map(|i| {
                let previous_output = output;
                output = reversed[i];
                let input = reversed[(i + 1).min(levels - 1)];
                let block = root / "up_blocks" / i;
                let layers = config.layers_per_block + 1;
                let resnets = (0..layers)
                    .map(|j| {
                        let skip = if j + 1 == layers { input } else { output };
                        let resnet_in = if j == 0 { previous_output } else { output };
                        resnet(&block / "resnets" / j, resnet_in + skip, output)
                    })
                    .collect();
                let attentions = if up_attention(i) {
                    (0..layers)
                        .map(|j| attention(&block / "attentions" / j, output, levels - 1 - i))
                        .collect()
                } else {
                    Vec::new()
                };
                let upsample = (i + 1 < levels).then(|| Upsample2D::new(&block / "upsamplers" / 0, output));
                Level { resnets, attentions, downsample: None, upsample }
            })
            .collect();
        Self { down, up }
    }

    /// The down path from `h` (after `conv_in`): the bottom features and every skip.
    pub fn down(
        &self,
        mut h: Tensor,
        temb: &Tensor,
        context: Option<&CrossContext<'_>>,
    ) -> Result<(Tensor, Vec<Tensor>), tch::TchError> {
        let context = context.map(|c| c.at(Place::Down));
        let context = context.as_ref();
        let mut skips = vec![h.shallow_clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(&h, Some(temb))?;
                if let Some(attention) = level.attentions.get(j) {
                    h = attention.forward(&h, context)?;
                }
                skips.push(h.shallow_clone());
            }
            if let Some(downsample) = &level.downsample {
                h = downsample.forward(&h)?;
                skips.push(h.shallow_clone());
            }
        }
        Ok((h, skips))
    }

    /// The up path from the middle's output, consuming the skips; with `match_skip_sizes` each
    /// upsampler targets the next skip's size (odd latent sizes).
    pub fn up(
        &self,
        mut h: Tensor,
        mut skips: Vec<Tensor>,
        temb: &Tensor,
        context: Option<&CrossContext<'_>>,
        match_skip_sizes: bool,
    ) -> Result<Tensor, tch::TchError> {
        let context = context.map(|c| c.at(Place::Up));
        let context = context.as_ref();
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| tch::TchError::Shape("the UNet ran out of skip connections".into()))?;
                h = resnet.forward(&Tensor::f_cat(&[&h, &skip], 1)?, Some(temb))?;
                if let Some(attention) = level.attentions.get(j) {
                    h = attention.forward(&h, context)?;
                }
            }
            if let Some(upsample) = &level.upsample {
                let size = match (match_skip_sizes, skips.last()) {
                    (true, Some(next)) => {
                        let s = next.size();
                        Some((s[2], s[3]))
                    }
                    _ => None,
                };
                h = upsample.forward(&h, size)?;
            }
        }
        Ok(h)
    }

    /// How many levels the paths have.
    pub fn levels(&self) -> usize {
        self.down.len()
    }
}
