//! The hook every attention layer of the UNet calls (Hertz et al. 2022, "Prompt-to-Prompt Image
//! Editing with Cross Attention Control", <https://arxiv.org/abs/2208.01626>). A layer asks the
//! control whether it wants the attention probabilities; if not it runs fused
//! `scaled_dot_product_attention`, else it computes softmax(q·kᵀ/√d) explicitly and hands the
//! probabilities to the control, which may store them (attention maps) or replace them (edits).

use std::cell::RefCell;

use tch::{Kind, Tensor};

/// Where in the UNet a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Down,
    Mid,
    Up,
}

/// One attention call, as the layer describes it to the control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionCall {
    /// Cross-attention to the text (else self-attention over the feature map).
    pub cross: bool,
    pub place: Place,
    /// The feature map the queries come from.
    pub height: i64,
    pub width: i64,
    pub heads: i64,
}

/// What the sampler tells the control before each UNet evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    /// 0-based step index among `of`.
    pub step: usize,
    pub of: usize,
    /// The batch is [unconditional…, conditional…] (classifier-free guidance).
    pub guided: bool,
}

/// A control over attention. Methods take `&self` (one UNet evaluation calls it from many
/// layers); implementations keep their state in cells.
pub trait AttentionControl {
    /// Called by the sampler before each UNet evaluation.
    fn begin_step(&self, _info: StepInfo) {}
    /// Whether this call needs explicit probabilities (false: fused attention, no `edit`).
    fn wants(&self, call: &AttentionCall) -> bool;
    /// scores: (batch, heads, queries, keys), q·kᵀ/√d before the softmax → the scores to use
    /// (paint-with-words adds to them); called only where `wants` is true.
    fn edit_scores(&self, _call: &AttentionCall, scores: Tensor) -> Result<Tensor, tch::TchError> {
        Ok(scores)
    }
    /// probs: (batch, heads, queries, keys), softmax over keys → the probabilities to use.
    fn edit(&self, call: &AttentionCall, probs: Tensor) -> Result<Tensor, tch::TchError>;
}

/// The UNet's text context and the control every attention layer sees.
#[derive(Clone, Copy)]
pub struct CrossContext<'a> {
    pub text: &'a Tensor,
    pub control: Option<&'a dyn AttentionControl>,
    pub place: Place,
}

impl<'a> CrossContext<'a> {
    pub fn new(text: &'a Tensor, control: Option<&'a dyn AttentionControl>) -> Self {
        Self { text, control, place: Place::Down }
    }

    pub fn at(self, place: Place) -> Self {
        Self { place, ..self }
    }
}

/// Stores cross-attention maps: for every evaluation, the conditional branch's probabilities of
/// the layers at `resolution` (height × width of the feature map), averaged over heads and
/// layers, summed over steps. Edits nothing.
pub struct AttentionStore {
    /// (height, width) of the layers kept; None keeps the first cross-attention layer's size.
    resolution: RefCell<Option<(i64, i64)>>,
    guided: RefCell<bool>,
    /// Sum over layers and steps: (batch, queries, keys), and how many maps went in.
    sum: RefCell<Option<Tensor>>,
    count: RefCell<usize>,
    /// The maps of the current step only (for local blend), and their count.
    step_sum: RefCell<Option<Tensor>>,
    step_count: RefCell<usize>,
    /// Each finished step's mean maps (batch, height, width, keys), when asked to keep them.
    history: RefCell<Option<Vec<Tensor>>>,
}

impl AttentionStore {
    pub fn new(resolution: Option<(i64, i64)>) -> Self {
        Self {
            resolution: RefCell::new(resolution),
            guided: RefCell::new(false),
            sum: RefCell::new(None),
            count: RefCell::new(0),
            step_sum: RefCell::new(None),
            step_count: RefCell::new(0),
            history: RefCell::new(None),
        }
    }

    /// Also keep every step's mean maps (for [`Self::step_maps`]); they are small: one
    /// (batch, height, width, keys) tensor at the stored resolution per step.
    pub fn keep_steps(&self) {
        self.history.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// Every step's mean cross-attention so far, in sampling order (steps that stored nothing are
    /// left out); empty unless [`Self::keep_steps`] was called.
    pub fn step_maps(&self) -> Result<Vec<Tensor>, tch::TchError> {
        let Some(history) = &*self.history.borrow() else { return Ok(Vec::new()) };
        let mut maps: Vec<Tensor> = history.iter().map(Tensor::shallow_clone).collect();
        maps.extend(self.step_average()?);
        Ok(maps)
    }

    /// The resolution maps are kept at (once a layer was seen).
    pub fn resolution(&self) -> Option<(i64, i64)> {
        *self.resolution.borrow()
    }

    /// Mean cross-attention over everything stored: (batch, height, width, keys), or None.
    pub fn average(&self) -> Result<Option<Tensor>, tch::TchError> {
        Self::mean(&self.sum.borrow(), *self.count.borrow(), self.resolution())
    }

    /// Mean cross-attention of the current step: (batch, height, width, keys), or None.
    pub fn step_average(&self) -> Result<Option<Tensor>, tch::TchError> {
        Self::mean(&self.step_sum.borrow(), *self.step_count.borrow(), self.resolution())
    }

    fn mean(
        sum: &Option<Tensor>,
        count: usize,
        resolution: Option<(i64, i64)>,
    ) -> Result<Option<Tensor>, tch::TchError> {
        match (sum, resolution) {
            (Some(sum), Some((height, width))) if count > 0 => {
                let (batch, _, keys) = sum.size3()?;
                Ok(Some(sum.f_div_scalar(count as f64)?.f_view([batch, height, width, keys])?))
            }
            _ => Ok(None),
        }
    }

    fn begin(&self, info: StepInfo) {
        if self.history.borrow().is_some()
            && let Ok(Some(finished)) = self.step_average()
            && let Some(history) = self.history.borrow_mut().as_mut()
        {
            history.push(finished);
        }
        *self.guided.borrow_mut() = info.guided;
        *self.step_sum.borrow_mut() = None;
        *self.step_count.borrow_mut() = 0;
    }

    fn wants(&self, call: &AttentionCall) -> bool {
        call.cross && self.resolution().is_none_or(|r| r == (call.height, call.width))
    }

    /// Adds the conditional half of `probs` (batch, heads, queries, keys).
    fn store(&self, call: &AttentionCall, probs: &Tensor) -> Result<(), tch::TchError> {
        let batch = probs.size()[0];
        let conditional = if *self.guided.borrow() {
            probs.f_narrow(0, batch / 2, batch / 2)?
        } else {
            probs.shallow_clone()
        };
        self.store_conditional(call, &conditional)
    }

    /// Adds conditional probabilities (prompts, heads, queries, keys).
    fn store_conditional(&self, call: &AttentionCall, conditional: &Tensor) -> Result<(), tch::TchError> {
        if !self.wants(call) {
            return Ok(());
        }
        self.resolution.borrow_mut().get_or_insert((call.height, call.width));
        let map = conditional.f_to_kind(Kind::Float)?.f_mean_dim(1, false, Kind::Float)?.f_detach()?;
        for (sum, count) in [(&self.sum, &self.count), (&self.step_sum, &self.step_count)] {
            let mut sum = sum.borrow_mut();
            *sum = Some(match sum.take() {
                Some(previous) => previous.f_add(&map)?,
                None => map.shallow_clone(),
            });
            *count.borrow_mut() += 1;
        }
        Ok(())
    }
}

impl AttentionControl for AttentionStore {
    fn begin_step(&self, info: StepInfo) {
        self.begin(info);
    }

    fn wants(&self, call: &AttentionCall) -> bool {
        AttentionStore::wants(self, call)
    }

    fn edit(&self, call: &AttentionCall, probs: Tensor) -> Result<Tensor, tch::TchError> {
        self.store(call, &probs)?;
        Ok(probs)
    }
}

/// Prompt-to-prompt: the batch's conditional half is [source, target]; the target's attention
/// is taken from the source's — cross-attention through a token `mapper` (word swap and added
/// words) scaled per token by `equalizer` (re-weighting) inside the cross window, self-attention
/// of the low-resolution layers inside the self window — and cross-attention is stored.
/// The source branch of a prompt-to-prompt run, recorded so that later edits of the same source
/// run the target branch only: per step, the source's conditional attention probabilities
/// (heads, queries, keys) of every call the control wanted, in call order; its latents after each
/// step; and its image.
pub struct SourceRecord {
    pub attention: Vec<Vec<Tensor>>,
    pub latents: Vec<Tensor>,
    pub image: crate::protocol::ImageData,
}

/// Whether the batch holds source and target, or the target alone against a recording.
enum Mode {
    /// [source, target] (each half, under guidance); the source's attention is recorded.
    Paired { record: RefCell<Vec<Vec<Tensor>>> },
    /// [target] (each half); the source's attention comes from the record.
    Replay { record: std::rc::Rc<SourceRecord>, call: std::cell::Cell<usize> },
}

pub struct PromptToPrompt {
    /// For each target token position, the source position whose attention it takes, or None
    /// for a new word (keeps its own attention).
    pub mapper: Vec<Option<usize>>,
    /// Per target token: a factor on its attention (1 = unchanged).
    pub equalizer: Vec<f64>,
    /// Step fractions [start, end) in which cross-attention is injected.
    pub cross_window: (f64, f64),
    /// Per target token, its own window (empty: `cross_window` for every token).
    pub token_windows: Vec<(f64, f64)>,
    /// Steps fraction [0, end) in which self-attention is injected.
    pub self_window: f64,
    /// Self-attention is injected only in layers with at most this many queries (16² as in the
    /// paper's SD code: the coarse layers that set the layout).
    pub self_max_queries: i64,
    pub store: AttentionStore,
    step: RefCell<Option<StepInfo>>,
    /// (mapper as a (keys, keys) matrix, per-key alpha, equalizer), built on the first call.
    tensors: RefCell<Option<(Tensor, Tensor, Tensor)>>,
    mode: Mode,
}

impl PromptToPrompt {
    pub fn new(
        mapper: Vec<Option<usize>>,
        equalizer: Vec<f64>,
        cross_window: (f64, f64),
        self_window: f64,
        store_resolution: Option<(i64, i64)>,
    ) -> Self {
        Self {
            mapper,
            equalizer,
            cross_window,
            token_windows: Vec::new(),
            self_window,
            self_max_queries: 16 * 16,
            store: AttentionStore::new(store_resolution),
            step: RefCell::new(None),
            tensors: RefCell::new(None),
            mode: Mode::Paired { record: RefCell::new(Vec::new()) },
        }
    }

    /// Runs the target branch alone against `record` (made by a paired run with the same
    /// source, windows and map resolution, so the wanted calls line up).
    pub fn replaying(mut self, record: std::rc::Rc<SourceRecord>) -> Self {
        self.mode = Mode::Replay { record, call: std::cell::Cell::new(0) };
        self
    }

    /// Each target token injected in its own window (the tokens of words given one) instead
    /// of `cross_window`.
    pub fn with_token_windows(mut self, windows: Vec<(f64, f64)>) -> Self {
        self.token_windows = windows;
        self
    }

    /// Whether any token takes the source's cross-attention at this step.
    fn cross_open(&self) -> bool {
        if self.token_windows.is_empty() {
            self.in_window(self.cross_window.0, self.cross_window.1)
        } else {
            self.token_windows.iter().any(|(start, end)| self.in_window(*start, *end))
        }
    }

    /// The per-key share of the source's attention at this step: `alpha` where the token's window
    /// is open, 0 where it is not.
    fn step_alpha(&self, alpha: &Tensor) -> Result<Tensor, tch::TchError> {
        if self.token_windows.is_empty() {
            return Ok(alpha.shallow_clone());
        }
        let keys = alpha.size()[0] as usize;
        let open: Vec<f32> = (0..keys)
            .map(|k| {
                let (start, end) = self.token_windows.get(k).copied().unwrap_or(self.cross_window);
                if self.in_window(start, end) { 1.0 } else { 0.0 }
            })
            .collect();
        alpha.f_mul(&Tensor::f_from_slice(&open)?.f_to_device(alpha.device())?)
    }

    /// The source attention recorded by a paired run, per step.
    pub fn take_recorded_attention(&self) -> Vec<Vec<Tensor>> {
        match &self.mode {
            Mode::Paired { record } => std::mem::take(&mut *record.borrow_mut()),
            Mode::Replay { .. } => Vec::new(),
        }
    }

    fn in_window(&self, start: f64, end: f64) -> bool {
        match *self.step.borrow() {
            Some(info) => {
                let at = info.step as f64 / info.of.max(1) as f64;
                at >= start && at < end
            }
            None => false,
        }
    }

    fn build_tensors(
        &self,
        keys: i64,
        device: tch::Device,
    ) -> Result<(Tensor, Tensor, Tensor), tch::TchError> {
        let n = keys as usize;
        let mut matrix = vec![0f32; n * n];
        let mut alpha = vec![0f32; n];
        for (target, source) in self.mapper.iter().enumerate().take(n) {
            if let Some(source) = source.filter(|s| *s < n) {
                matrix[source * n + target] = 1.0;
                alpha[target] = 1.0;
            }
        }
        let mut equalizer: Vec<f32> = self.equalizer.iter().map(|v| *v as f32).collect();
        equalizer.resize(n, 1.0);
        Ok((
            Tensor::f_from_slice(&matrix)?.f_view([keys, keys])?.f_to_device(device)?,
            Tensor::f_from_slice(&alpha)?.f_to_device(device)?,
            Tensor::f_from_slice(&equalizer)?.f_to_device(device)?,
        ))
    }
}

impl AttentionControl for PromptToPrompt {
    fn begin_step(&self, info: StepInfo) {
        *self.step.borrow_mut() = Some(info);
        self.store.begin(info);
        match &self.mode {
            Mode::Paired { record } => record.borrow_mut().push(Vec::new()),
            Mode::Replay { call, .. } => call.set(0),
        }
    }

    fn wants(&self, call: &AttentionCall) -> bool {
        if call.cross {
            self.cross_open() || self.store.wants(call)
        } else {
            call.height * call.width <= self.self_max_queries && self.in_window(0.0, self.self_window)
        }
    }

    fn edit(&self, call: &AttentionCall, probs: Tensor) -> Result<Tensor, tch::TchError> {
        let step = *self.step.borrow();
        let guided = step.is_some_and(|s| s.guided);
        let batch = probs.size()[0];
        let half = if guided { batch / 2 } else { 0 };
        let prompts = match &self.mode {
            Mode::Paired { .. } => 2,
            Mode::Replay { .. } => 1,
        };
        if batch - half != prompts {
            return Err(tch::TchError::Shape(format!(
                "prompt-to-prompt expected {prompts} prompt(s) in the batch, got a batch of {batch}"
            )));
        }
        let target = probs.f_select(0, batch - 1)?;
        let source = match &self.mode {
            Mode::Paired { record } => {
                let source = probs.f_select(0, half)?;
                if let Some(current) = record.borrow_mut().last_mut() {
                    current.push(source.f_detach()?);
                }
                source
            }
            Mode::Replay { record, call: index } => {
                let at = index.get();
                index.set(at + 1);
                let step = step.map_or(0, |s| s.step);
                record
                    .attention
                    .get(step)
                    .and_then(|calls| calls.get(at))
                    .ok_or_else(|| {
                        tch::TchError::Shape(format!(
                            "the recorded source has no attention call {at} at step {step}"
                        ))
                    })?
                    .f_to_device(target.device())?
            }
        };
        let edited = if call.cross {
            if self.cross_open() {
                let keys = probs.size()[3];
                let mut tensors = self.tensors.borrow_mut();
                if tensors.is_none() {
                    *tensors = Some(self.build_tensors(keys, probs.device())?);
                }
                let Some((matrix, alpha, equalizer)) = tensors.as_ref() else { unreachable!() };
                let kind = source.kind();
                let mapped = source.f_matmul(&matrix.f_to_kind(kind)?)?;
                let alpha = self.step_alpha(alpha)?.f_to_kind(kind)?;
                let mixed =
                    mapped.f_mul(&alpha)?.f_add(&target.f_mul(&alpha.f_neg()?.f_add_scalar(1.0)?)?)?;
                mixed.f_mul(&equalizer.f_to_kind(kind)?)?
            } else {
                target
            }
        } else {
            source.shallow_clone()
        };
        if call.cross {
            self.store.store_conditional(call, &Tensor::f_stack(&[&source, &edited], 0)?)?;
        }
        let mut parts: Vec<Tensor> =
            (0..batch - 1).map(|i| probs.f_select(0, i)).collect::<Result<_, _>>()?;
        parts.push(edited);
        Tensor::f_stack(&parts, 0)
    }
}

/// Paint-with-words (Balaji et al. 2022, eDiffi §4.3): each painted region raises its word's
/// cross-attention scores inside the region by w · log(1 + σ) · max(q·kᵀ) — strong while the
/// image is mostly noise, fading as σ falls — and the maps are stored.
pub struct PaintWithWords {
    /// Per region: the token positions of its word, and its mask (height, width) in [0, 1] at
    /// the image's resolution.
    pub regions: Vec<(Vec<i64>, Tensor)>,
    /// The paper's w.
    pub strength: f64,
    /// σ of each step (√((1 − ᾱ)/ᾱ) at its timestep).
    pub sigmas: Vec<f64>,
    pub store: AttentionStore,
    step: RefCell<Option<StepInfo>>,
}

impl PaintWithWords {
    pub fn new(
        regions: Vec<(Vec<i64>, Tensor)>,
        strength: f64,
        sigmas: Vec<f64>,
        store: Option<(i64, i64)>,
    ) -> Self {
        Self { regions, strength, sigmas, store: AttentionStore::new(store), step: RefCell::new(None) }
    }
}

impl AttentionControl for PaintWithWords {
    fn begin_step(&self, info: StepInfo) {
        *self.step.borrow_mut() = Some(info);
        self.store.begin(info);
    }

    fn wants(&self, call: &AttentionCall) -> bool {
        call.cross && (!self.regions.is_empty() || self.store.wants(call))
    }

    fn edit_scores(&self, call: &AttentionCall, scores: Tensor) -> Result<Tensor, tch::TchError> {
        let step = self.step.borrow().map_or(0, |s| s.step);
        let sigma = self.sigmas.get(step).copied().unwrap_or(0.0);
        if self.regions.is_empty() || sigma <= 0.0 {
            return Ok(scores);
        }
        let keys = scores.size()[3];
        let (kind, device) = (scores.kind(), scores.device());
        // (queries, keys) of region masks at this layer's resolution on their words' columns
        let mut bias = Tensor::f_zeros([call.height * call.width, keys], (tch::Kind::Float, device))?;
        for (positions, mask) in &self.regions {
            let cells = mask
                .f_to_device(device)?
                .f_view([1, 1, mask.size()[0], mask.size()[1]])?
                .f_to_kind(tch::Kind::Float)?
                .f_adaptive_avg_pool2d([call.height, call.width])?
                .f_view([call.height * call.width, 1])?;
            for position in positions.iter().filter(|p| **p < keys) {
                let index = Tensor::f_from_slice(&[*position])?.f_to_device(device)?;
                bias = bias.f_index_add(1, &index, &cells)?;
            }
        }
        let peak = f64::try_from(scores.f_max()?.f_to_kind(tch::Kind::Double)?)?;
        let weight = self.strength * (1.0 + sigma).ln() * peak;
        scores.f_add(&bias.f_mul_scalar(weight)?.f_to_kind(kind)?)
    }

    fn edit(&self, call: &AttentionCall, probs: Tensor) -> Result<Tensor, tch::TchError> {
        self.store.store(call, &probs)?;
        Ok(probs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One cross-attention call of a 2 × 2 map with 3 keys, where query 0 gives all its attention
    /// to `key` and the other queries to key 0.
    fn store_one(store: &AttentionStore, key: usize) {
        let mut probs = vec![0f32; 4 * 3];
        probs[key] = 1.0;
        for query in 1..4 {
            probs[query * 3] = 1.0;
        }
        let probs = Tensor::from_slice(&probs).view([1, 1, 4, 3]);
        let call = AttentionCall { cross: true, place: Place::Up, height: 2, width: 2, heads: 1 };
        store.store(&call, &probs).expect("stores");
    }

    #[test]
    fn kept_steps_are_each_steps_mean_and_average_to_the_whole() {
        let store = AttentionStore::new(None);
        store.keep_steps();
        // step 0: key 1 at query 0 (twice: two layers); step 1: key 2 at query 0
        store.begin(StepInfo { step: 0, of: 2, guided: false });
        store_one(&store, 1);
        store_one(&store, 1);
        store.begin(StepInfo { step: 1, of: 2, guided: false });
        store_one(&store, 2);
        let steps = store.step_maps().expect("maps");
        assert_eq!(steps.len(), 2);
        let at = |map: &Tensor, key: i64| f64::try_from(map.get(0).get(0).get(0).get(key)).expect("a value");
        assert_eq!((at(&steps[0], 1), at(&steps[0], 2)), (1.0, 0.0));
        assert_eq!((at(&steps[1], 1), at(&steps[1], 2)), (0.0, 1.0));
        // the whole average weighs each stored layer once: (1 + 1 + 0) / 3 for key 1
        let average = store.average().expect("average").expect("stored");
        assert!((at(&average, 1) - 2.0 / 3.0).abs() < 1e-6);
        // a store not asked to keep steps keeps none
        let plain = AttentionStore::new(None);
        plain.begin(StepInfo { step: 0, of: 1, guided: false });
        store_one(&plain, 1);
        assert!(plain.step_maps().expect("maps").is_empty());
    }
}
