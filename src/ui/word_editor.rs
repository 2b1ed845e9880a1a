//! The word editor (prompt-to-prompt): the source prompt as word chips with their token counts,
//! the target prompt's word-level difference from it (swapped, inserted, deleted words), per-word
//! re-weighting written into the prompt as `(word:1.3)`, local blend, the injection windows, and
//! each word's attention map from the last edit. UI only: it returns [`UiCommand`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use egui::{Color32, RichText};

use crate::protocol::Inversion;
use crate::text::ClipTokenizer;
use crate::text::word_edit::{self, WordChange};
use crate::ui::app::UiCommand;
use crate::ui::widgets::range_slider;

/// The word editor's settings and the last edit's attention maps.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WordEditor {
    /// What the image shows (or is generated from).
    pub source_prompt: String,
    /// The edited prompt; weights as `(word:1.3)`.
    pub target_prompt: String,
    /// Fractions of the steps in which target words take the source's cross-attention.
    pub cross_window: (f64, f64),
    /// Target words with a cross-attention window of their own.
    pub word_windows: BTreeMap<String, (f64, f64)>,
    /// Fraction of the first steps in which the target takes the source's self-attention.
    pub self_window: f64,
    /// Target words whose attention marks the region to change (local blend); empty: anywhere.
    pub local_blend: BTreeSet<String>,
    /// Edit the open image (inverted first) instead of the source prompt's generated image.
    pub real_image: bool,
    /// Null-text inversion (better reconstructions under guidance, slower).
    pub null_text: bool,
    /// The target word whose controls are shown.
    #[serde(skip)]
    pub selected: Option<usize>,
    /// The attention map pinned over the canvas by "Show attention" (an index into `maps`).
    #[serde(skip)]
    pub shown_map: Option<usize>,
    /// The map of the word chip under the pointer (shown while it is there).
    #[serde(skip)]
    pub hovered_map: Option<usize>,
    /// Each target word's attention map from the last edit (word, grey image).
    #[serde(skip)]
    pub maps: Vec<(String, Arc<image::RgbaImage>)>,
    /// The same words' maps at every sampling step (index as `maps`; empty when the engine sent
    /// none).
    #[serde(skip)]
    pub step_maps: Vec<Vec<Arc<image::RgbaImage>>>,
    /// The step the maps show (the step scrubber); None: averaged over the steps.
    #[serde(skip)]
    pub map_step: Option<usize>,
    /// The open image's inversion, when "Invert" has run (edits start from it).
    #[serde(skip)]
    pub inversion: Option<Arc<Inversion>>,
}

impl Default for WordEditor {
    fn default() -> Self {
        Self {
            source_prompt: "a big red circle on a blue background".into(),
            target_prompt: "a big green circle on a blue background".into(),
            cross_window: (0.0, 0.8),
            word_windows: BTreeMap::new(),
            self_window: 0.4,
            local_blend: BTreeSet::new(),
            real_image: false,
            null_text: false,
            selected: None,
            shown_map: None,
            hovered_map: None,
            maps: Vec::new(),
            step_maps: Vec::new(),
            map_step: None,
            inversion: None,
        }
    }
}

/// Equal settings (what a project keeps); the selection, maps and inversion are not compared.
impl PartialEq for WordEditor {
    fn eq(&self, other: &Self) -> bool {
        self.source_prompt == other.source_prompt
            && self.target_prompt == other.target_prompt
            && self.cross_window == other.cross_window
            && self.word_windows == other.word_windows
            && self.self_window == other.self_window
            && self.local_blend == other.local_blend
            && self.real_image == other.real_image
            && self.null_text == other.null_text
    }
}

/// The colour of a re-weight: blue below 1, neutral at 1, orange above.
pub fn weight_colour(weight: f64) -> Color32 {
    if weight >= 1.0 {
        let t = ((weight - 1.0) / (word_edit::MAX_WEIGHT - 1.0)).clamp(0.0, 1.0) as f32;
        Color32::from_rgb(200 + (55.0 * t) as u8, (200.0 - 90.0 * t) as u8, (200.0 - 170.0 * t) as u8)
    } else {
        let t = ((1.0 - weight) / (1.0 - word_edit::MIN_WEIGHT)).clamp(0.0, 1.0) as f32;
        Color32::from_rgb((200.0 - 150.0 * t) as u8, (200.0 - 60.0 * t) as u8, 200 + (55.0 * t) as u8)
    }
}

impl WordEditor {
    /// The target prompt without weights, and the words whose attention is re-weighted.
    pub fn target_and_reweights(&self) -> (String, Vec<(String, f64)>) {
        let words = word_edit::weighted_words(&self.target_prompt);
        let reweight = words
            .iter()
            .filter(|w| (w.weight - 1.0).abs() > 1e-6)
            .map(|w| (w.word.clone(), w.weight))
            .collect();
        (word_edit::plain_prompt(&words), reweight)
    }

    /// The map drawn over the canvas: the hovered word's, else the pinned one; at the scrubbed
    /// step if one is chosen. The id tells maps apart (word and step).
    pub fn visible_map(&self) -> Option<(u64, &Arc<image::RgbaImage>)> {
        let index = self.hovered_map.or(self.shown_map)?;
        let at_step = self.map_step.and_then(|step| Some((step, self.step_maps.get(index)?.get(step)?)));
        match at_step {
            Some((step, map)) => Some(((index as u64) << 16 | (step as u64 + 1), map)),
            None => self.maps.get(index).map(|(_, map)| ((index as u64) << 16, map)),
        }
    }

    /// Takes a finished edit's maps: each word's average, and its film strip of steps (cut into
    /// frames for an image of `size`). Strips that do not cut evenly are left out.
    pub fn set_maps(
        &mut self,
        maps: Vec<(String, Arc<image::RgbaImage>)>,
        strips: &[(String, image::RgbaImage)],
        size: (u32, u32),
    ) {
        self.step_maps = vec![Vec::new(); maps.len()];
        // strips come in the words' order, so repeated words ("a … a") take theirs in turn
        let mut used = vec![false; strips.len()];
        for (index, (word, _)) in maps.iter().enumerate() {
            if let Some(at) = strips.iter().enumerate().position(|(i, (w, _))| w == word && !used[i]) {
                used[at] = true;
                self.step_maps[index] = crate::protocol::attention_frames(&strips[at].1, size.0, size.1)
                    .map(|frames| frames.into_iter().map(Arc::new).collect())
                    .unwrap_or_default();
            }
        }
        self.maps = maps;
        self.shown_map = None;
        self.map_step = self.map_step.filter(|step| self.step_count() > *step);
    }

    /// How many steps the maps were kept for (0: only their average).
    pub fn step_count(&self) -> usize {
        self.step_maps.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The per-word windows of words still in the target prompt (what an edit sends).
    pub fn sent_word_windows(&self) -> Vec<(String, (f64, f64))> {
        let words = word_edit::weighted_words(&self.target_prompt);
        self.word_windows
            .iter()
            .filter(|(word, _)| words.iter().any(|w| &w.word == *word))
            .map(|(word, window)| (word.clone(), *window))
            .collect()
    }

    /// The map of the word with this label, if the last edit made one.
    fn map_index(&self, word: &str) -> Option<usize> {
        self.maps.iter().position(|(w, _)| w == word)
    }

    /// Draws the editor; `tokenizer` gives each chip its token count when the model's is loaded.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        tokenizer: Option<&ClipTokenizer>,
        enabled: bool,
        commands: &mut Vec<UiCommand>,
    ) {
        let tokens = |word: &str| tokenizer.and_then(|t| t.encode(word).ok()).map(|ids| ids.len());
        let label = ui.label("source prompt (what the image shows)");
        ui.add(egui::TextEdit::singleline(&mut self.source_prompt)).labelled_by(label.id);
        let source = word_edit::weighted_words(&self.source_prompt);
        ui.horizontal_wrapped(|ui| {
            for word in &source {
                let count = tokens(&word.word).map_or(String::new(), |n| format!(" ({n})"));
                ui.label(
                    RichText::new(format!("{}{count}", word.word))
                        .background_color(ui.visuals().faint_bg_color),
                )
                .on_hover_text("The word and its number of CLIP tokens");
            }
        });
        let label = ui.label("target prompt (the edit)");
        ui.add(egui::TextEdit::singleline(&mut self.target_prompt)).labelled_by(label.id);

        // the target's words against the source's: swaps, insertions and deletions
        let target = word_edit::weighted_words(&self.target_prompt);
        let changes = word_edit::word_changes(&self.source_prompt, &self.target_prompt);
        let mut clicked = None;
        let mut hovered_map = None;
        ui.horizontal_wrapped(|ui| {
            for change in &changes {
                let (indices, kind): (Vec<usize>, &str) = match change {
                    WordChange::Same { target, .. } => (vec![*target], "same"),
                    WordChange::Swapped { target, .. } => (target.clone().collect(), "swapped"),
                    WordChange::Inserted { target } => (target.clone().collect(), "inserted"),
                    WordChange::Deleted { source: gone } => {
                        for i in gone.clone() {
                            let text = RichText::new(format!("-{}", source[i].word))
                                .strikethrough()
                                .color(Color32::from_rgb(230, 110, 110));
                            ui.label(text).on_hover_text("deleted from the source");
                        }
                        continue;
                    }
                };
                if let WordChange::Swapped { source: from, .. } = change {
                    let was: Vec<&str> = from.clone().map(|i| source[i].word.as_str()).collect();
                    ui.weak(format!("{} ->", was.join(" ")));
                }
                for index in indices {
                    let word = &target[index];
                    let mut text = RichText::new(if kind == "inserted" {
                        format!("+{}", word.word)
                    } else {
                        word.word.clone()
                    });
                    text = match kind {
                        "swapped" => text.color(Color32::from_rgb(240, 200, 80)).strong(),
                        "inserted" => text.color(Color32::from_rgb(120, 220, 120)).strong(),
                        _ => text,
                    };
                    if (word.weight - 1.0).abs() > 1e-6 {
                        text = text.background_color(weight_colour(word.weight).gamma_multiply(0.5));
                    }
                    if self.local_blend.contains(&word.word) {
                        text = text.underline();
                    }
                    let response = ui
                        .selectable_label(self.selected == Some(index), text)
                        .on_hover_text(format!("{kind}; weight {}", word_edit::format_weight(word.weight)));
                    if response.clicked() {
                        clicked = Some(index);
                    }
                    if response.hovered() {
                        hovered_map = self.map_index(&word.word);
                    }
                }
            }
        });
        if let Some(index) = clicked {
            self.selected = if self.selected == Some(index) { None } else { Some(index) };
        }
        // the step scrubber: the maps at one sampling step, or averaged over all
        let steps = self.step_count();
        if steps > 0 {
            let mut at = self.map_step.map_or(0, |step| step + 1);
            let slider = egui::Slider::new(&mut at, 0..=steps).text("attention at step").custom_formatter(
                move |value, _| {
                    if value < 0.5 { "all".to_string() } else { format!("{value:.0} of {steps}") }
                },
            );
            if ui
                .add(slider)
                .on_hover_text("Scrub through the sampling steps: where each word attended at that step (0: averaged over all steps). Hover a word or pin it with Show attention.")
                .changed()
            {
                self.map_step = at.checked_sub(1);
            }
        }
        // the selected word's controls
        if let Some(index) = self.selected.filter(|i| *i < target.len()) {
            let word = target[index].word.clone();
            ui.label(RichText::new(format!("\"{word}\"")).strong());
            let mut weight = target[index].weight;
            let slider = egui::Slider::new(&mut weight, word_edit::MIN_WEIGHT..=word_edit::MAX_WEIGHT)
                .text("re-weight")
                .step_by(0.05);
            if ui
                .add(slider)
                .on_hover_text(
                    "Scales this word's cross-attention: below 1 weakens it, above 1 strengthens it",
                )
                .changed()
            {
                self.target_prompt = word_edit::set_word_weight(&self.target_prompt, index, weight);
            }
            let mut blend = self.local_blend.contains(&word);
            if ui
                .checkbox(&mut blend, "local blend")
                .on_hover_text("Change the image only where this word attends (the rest stays the source's)")
                .changed()
            {
                if blend {
                    self.local_blend.insert(word.clone());
                } else {
                    self.local_blend.remove(&word);
                }
            }
            let mut own = self.word_windows.contains_key(&word);
            if ui
                .checkbox(&mut own, "own attention window")
                .on_hover_text("Inject this word's source attention in steps of its own (the paper's per-word schedules)")
                .changed()
            {
                if own {
                    self.word_windows.insert(word.clone(), self.cross_window);
                } else {
                    self.word_windows.remove(&word);
                }
            }
            if let Some(window) = self.word_windows.get_mut(&word) {
                range_slider(
                    ui,
                    window,
                    "word's window",
                    "The steps (as fractions) in which this word takes the source's cross-attention",
                );
            }
            if let Some(map) = self.map_index(&word) {
                ui.horizontal(|ui| {
                    if ui.button("Show attention").clicked() {
                        self.shown_map = if self.shown_map == Some(map) { None } else { Some(map) };
                    }
                    if ui
                        .button("Use as mask")
                        .on_hover_text("The word's attention map becomes the inpainting mask")
                        .clicked()
                    {
                        commands.push(UiCommand::AttentionToMask(map));
                    }
                });
            }
        }
        self.hovered_map = hovered_map;
        range_slider(
            ui,
            &mut self.cross_window,
            "cross-attention window",
            "The steps (as fractions) in which target words take the source's cross-attention (the paper: 0 to 0.8)",
        );
        ui.add(egui::Slider::new(&mut self.self_window, 0.0..=1.0).text("self-attention"))
            .on_hover_text("The first fraction of the steps in which the target keeps the source's self-attention (layout); the paper: 0.4");
        ui.checkbox(&mut self.real_image, "edit the open image")
            .on_hover_text("Invert the open image under the source prompt first, then edit it; off: edit the source prompt's generated image");
        if self.real_image {
            ui.horizontal(|ui| {
                ui.checkbox(&mut self.null_text, "null-text")
                    .on_hover_text("Null-text inversion (Mokady et al. 2022): faithful reconstructions under guidance, slower");
                if ui.add_enabled(enabled, egui::Button::new("Invert")).clicked() {
                    commands.push(UiCommand::RunInvert);
                }
            });
            if let Some(inversion) = &self.inversion {
                ui.weak(format!(
                    "inverted: reconstruction {:.1} dB PSNR over {} steps",
                    inversion.psnr, inversion.steps
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_sent_plain_with_its_weights_as_reweights() {
        let editor = WordEditor { target_prompt: "a (green:1.5) [circle]".into(), ..WordEditor::default() };
        let (target, reweight) = editor.target_and_reweights();
        assert_eq!(target, "a green circle");
        assert_eq!(reweight.len(), 2);
        assert_eq!(reweight[0], ("green".to_string(), 1.5));
        assert!((reweight[1].1 - 1.0 / 1.1).abs() < 1e-9);
    }

    #[test]
    fn weight_colours_run_from_blue_through_grey_to_orange() {
        let (low, one, high) = (weight_colour(-2.0), weight_colour(1.0), weight_colour(3.0));
        assert_eq!(one, Color32::from_rgb(200, 200, 200));
        assert!(low.b() > low.r() && high.r() > high.b());
    }
}
