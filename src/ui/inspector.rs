//! The inspector's methods and their settings: one method at a time (text to image, image to
//! image, inpaint, DiffEdit, prompt-to-prompt, paint-with-words, InstructPix2Pix, MagicMix), the
//! parameters they share (prompt, negative prompt, steps, scheduler, guidance, seed and what
//! happens to it after a run) and each one's own. UI only.

use egui::RichText;

/// The editing and generation methods of the studio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    TextToImage,
    ImageToImage,
    Inpaint,
    DiffEdit,
    PromptToPrompt,
    PaintWithWords,
    InstructPix2Pix,
    MagicMix,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::TextToImage,
        Method::ImageToImage,
        Method::Inpaint,
        Method::DiffEdit,
        Method::PromptToPrompt,
        Method::PaintWithWords,
        Method::InstructPix2Pix,
        Method::MagicMix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::TextToImage => "Text to image",
            Method::ImageToImage => "Image to image (SDEdit)",
            Method::Inpaint => "Inpaint",
            Method::DiffEdit => "DiffEdit",
            Method::PromptToPrompt => "Prompt-to-prompt (word editor)",
            Method::PaintWithWords => "Paint with words",
            Method::InstructPix2Pix => "InstructPix2Pix",
            Method::MagicMix => "MagicMix",
        }
    }

    /// The run button's label.
    pub fn action(self) -> &'static str {
        match self {
            Method::TextToImage => "Generate",
            Method::ImageToImage => "Transform",
            Method::Inpaint => "Inpaint",
            Method::DiffEdit => "DiffEdit",
            Method::PromptToPrompt => "Apply edit",
            Method::PaintWithWords => "Paint",
            Method::InstructPix2Pix => "Follow instruction",
            Method::MagicMix => "Mix",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Method::TextToImage => "A new image from the prompt, from the seed's noise.",
            Method::ImageToImage => {
                "The open image noised part of the way and denoised towards the prompt (Meng et al. 2021): strength 1 keeps nothing of it, small values keep most."
            }
            Method::Inpaint => {
                "Repaints the masked region from the prompt (blended latent diffusion); the rest of the image is kept exactly."
            }
            Method::DiffEdit => {
                "Finds where the image differs between what it shows (the source prompt) and the prompt, and repaints only there (Couairon et al. 2022). The mask it found comes onto the canvas: correct it with the brush and run again with \"use my mask\"."
            }
            Method::PromptToPrompt => {
                "Edit the prompt word by word; the image changes only where the changed words act (Hertz et al. 2022). Hover a word after an edit to see its attention over the image."
            }
            Method::PaintWithWords => {
                "The painted mask is where a word of the prompt goes (eDiff-I's paint-with-words): its cross-attention is pulled into the region."
            }
            Method::InstructPix2Pix => {
                "Edits the open image by an instruction (\"make the circle green\"); needs an InstructPix2Pix model (8-channel UNet)."
            }
            Method::MagicMix => {
                "The open image's layout with the prompt's content (Liew et al. 2022): the image's noised latents mixed into the early steps."
            }
        }
    }

    /// Whether the method works on the open image.
    pub fn needs_image(self) -> bool {
        !matches!(self, Method::TextToImage | Method::PromptToPrompt)
    }
}

/// What happens to the seed after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SeedMode {
    /// The same seed again (change one setting, see only its effect).
    Fixed,
    /// A new random seed before each run.
    Random,
    /// The next seed after each run.
    Increment,
}

/// The schedulers the engine offers.
pub const SCHEDULERS: [&str; 8] =
    ["ddim", "ddpm", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "heun", "lcm"];

/// The inspector's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MethodSettings {
    pub method: Method,
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub scheduler: String,
    pub guidance: f32,
    pub seed: u64,
    pub seed_mode: SeedMode,
    /// Text to image: the size (multiples of 8).
    pub width: u32,
    pub height: u32,
    /// Image to image and inpaint: how much is repainted (1: from pure noise).
    pub strength: f32,
    /// DiffEdit: what the image shows now (the prompt says what it should show).
    pub source_prompt: String,
    /// DiffEdit: use the painted mask instead of estimating one.
    pub diffedit_use_mask: bool,
    /// DiffEdit: the estimated mask follows the image's edges (joint bilateral upsampling)
    /// rather than the latent grid's bilinear blur.
    pub diffedit_mask_edges: bool,
    /// Paint with words: the word whose place the painted mask is.
    pub region_word: String,
    /// Paint with words: how hard the region pulls (the paper's w).
    pub region_strength: f32,
    /// InstructPix2Pix: how closely the result follows the open image (s_I).
    pub image_guidance: f32,
    /// MagicMix: the noise levels (fractions of the steps) and the mix factor ν.
    pub kmin: f32,
    pub kmax: f32,
    pub mix_factor: f32,
}

impl Default for MethodSettings {
    fn default() -> Self {
        Self {
            method: Method::Inpaint,
            prompt: "a big red star".into(),
            negative_prompt: String::new(),
            steps: 20,
            scheduler: "ddim".into(),
            guidance: 5.0,
            seed: 0,
            seed_mode: SeedMode::Fixed,
            width: 128,
            height: 128,
            strength: 1.0,
            source_prompt: "a big red circle".into(),
            diffedit_use_mask: false,
            diffedit_mask_edges: true,
            region_word: "star".into(),
            region_strength: 0.4,
            image_guidance: 1.5,
            kmin: 0.3,
            kmax: 0.6,
            mix_factor: 0.5,
        }
    }
}

impl MethodSettings {
    /// The seed for the next run (a fresh one in random mode).
    pub fn seed_for_run(&mut self) -> u64 {
        if self.seed_mode == SeedMode::Random {
            self.seed = rand::random::<u32>().into();
        }
        self.seed
    }

    /// After a run: the next seed in increment mode.
    pub fn after_run(&mut self) {
        if self.seed_mode == SeedMode::Increment {
            self.seed = self.seed.wrapping_add(1);
        }
    }

    /// The shared parameters and the method's own (the word editor draws prompt-to-prompt's).
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let method = self.method;
        let label = ui.label("method");
        egui::ComboBox::from_id_salt("method")
            .selected_text(method.name())
            .width(ui.available_width().min(260.0))
            .show_ui(ui, |ui| {
                for choice in Method::ALL {
                    ui.selectable_value(&mut self.method, choice, choice.name())
                        .on_hover_text(choice.description());
                }
            })
            .response
            .labelled_by(label.id);
        ui.label(RichText::new(method.description()).weak().small());
        if method != Method::PromptToPrompt {
            let name = if method == Method::InstructPix2Pix { "instruction" } else { "prompt" };
            let label = ui.label(name);
            ui.add(egui::TextEdit::multiline(&mut self.prompt).desired_rows(2)).labelled_by(label.id);
        }
        let label = ui.label("negative prompt");
        ui.add(egui::TextEdit::singleline(&mut self.negative_prompt))
            .labelled_by(label.id)
            .on_hover_text("What the image should not show (classifier-free guidance pushes away from it)");
        ui.add(egui::Slider::new(&mut self.steps, 1..=100).text("steps")).on_hover_text("Denoising steps");
        if !matches!(method, Method::DiffEdit | Method::PromptToPrompt) {
            // DiffEdit and prompt-to-prompt invert and replay with DDIM
            egui::ComboBox::from_label("scheduler").selected_text(self.scheduler.clone()).show_ui(ui, |ui| {
                for name in SCHEDULERS {
                    ui.selectable_value(&mut self.scheduler, name.to_string(), name);
                }
            });
        }
        ui.add(egui::Slider::new(&mut self.guidance, 1.0..=15.0).text("guidance"))
            .on_hover_text("Classifier-free guidance: how strongly the prompt is followed");
        ui.horizontal(|ui| {
            let label = ui.label("seed");
            ui.add(egui::DragValue::new(&mut self.seed)).labelled_by(label.id);
            for (mode, name, tip) in [
                (SeedMode::Fixed, "lock", "Keep this seed"),
                (SeedMode::Random, "random", "A new seed for each run"),
                (SeedMode::Increment, "+1", "The next seed after each run"),
            ] {
                ui.selectable_value(&mut self.seed_mode, mode, name).on_hover_text(tip);
            }
        });
        match method {
            Method::TextToImage | Method::PromptToPrompt => {
                let tip = if method == Method::PromptToPrompt {
                    "The size of the source prompt's generated image (an edit of the open image keeps its size); the model's training size when it loads"
                } else {
                    "The generated image's size; the model's training size when it loads"
                };
                ui.add(egui::Slider::new(&mut self.width, 64..=1024).step_by(8.0).text("width"))
                    .on_hover_text(tip);
                ui.add(egui::Slider::new(&mut self.height, 64..=1024).step_by(8.0).text("height"))
                    .on_hover_text(tip);
            }
            Method::ImageToImage | Method::Inpaint => {
                ui.add(egui::Slider::new(&mut self.strength, 0.05..=1.0).text("strength"))
                    .on_hover_text("1 repaints from noise; less keeps more of what is there");
            }
            Method::DiffEdit => {
                let label = ui.label("source prompt (what the image shows)");
                ui.add(egui::TextEdit::singleline(&mut self.source_prompt)).labelled_by(label.id);
                ui.checkbox(&mut self.diffedit_use_mask, "use my mask")
                    .on_hover_text("Repaint the painted mask instead of estimating one");
                ui.add_enabled(
                    !self.diffedit_use_mask,
                    egui::Checkbox::new(&mut self.diffedit_mask_edges, "mask follows edges"),
                )
                .on_hover_text(
                    "Snap the estimated mask to the image's edges (joint bilateral upsampling); off, it is \
                     the latent grid's estimate blurred up to the image",
                );
            }
            Method::PaintWithWords => {
                let label = ui.label("the painted mask is the place of the word");
                ui.add(egui::TextEdit::singleline(&mut self.region_word)).labelled_by(label.id);
                ui.add(egui::Slider::new(&mut self.region_strength, 0.0..=2.0).text("region strength"))
                    .on_hover_text("The paper's w: how hard the word's attention is pulled into the region");
            }
            Method::InstructPix2Pix => {
                ui.add(egui::Slider::new(&mut self.image_guidance, 1.0..=5.0).text("image guidance"))
                    .on_hover_text("How closely the result follows the open image (the paper's s_I)");
            }
            Method::MagicMix => {
                ui.add(egui::Slider::new(&mut self.kmax, 0.0..=1.0).text("kmax"))
                    .on_hover_text("Noise the image to this level");
                ui.add(egui::Slider::new(&mut self.kmin, 0.0..=1.0).text("kmin"))
                    .on_hover_text("Mix the image's layout in until this level");
                ui.add(egui::Slider::new(&mut self.mix_factor, 0.0..=1.0).text("mix"))
                    .on_hover_text("The weight of the generated latents in the mix (ν)");
                if self.kmin > self.kmax {
                    self.kmin = self.kmax;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_modes() {
        let mut settings = MethodSettings { seed: 7, ..MethodSettings::default() };
        assert_eq!(settings.seed_for_run(), 7);
        settings.after_run();
        assert_eq!(settings.seed, 7, "locked");
        settings.seed_mode = SeedMode::Increment;
        settings.after_run();
        assert_eq!(settings.seed, 8);
        settings.seed_mode = SeedMode::Random;
        let seeds: std::collections::BTreeSet<u64> = (0..5).map(|_| settings.seed_for_run()).collect();
        assert!(seeds.len() > 1, "{seeds:?}");
    }

    #[test]
    fn settings_from_an_older_project_fill_in_defaults() {
        let settings: MethodSettings =
            serde_json::from_str(r#"{"prompt": "a cat", "method": "MagicMix"}"#).expect("read");
        assert_eq!(
            (settings.prompt.as_str(), settings.method, settings.steps),
            ("a cat", Method::MagicMix, 20)
        );
    }
}
