//! The spectrogram presets as plain data (no tch, so the studio reads them too): sample rate,
//! STFT, mel filters and image scale of each reference (see `engine::spectrogram`, which runs
//! them on tensors, for the references).

/// Slaney's mel scale: Hz per mel below 1 kHz, where the log part starts (Hz and mel), and the
/// log part's step (librosa's constants).
const SLANEY: (f64, f64, f64, f64) = (200.0 / 3.0, 1000.0, 15.0, 0.068_751_777_420_949_12);

/// How mel frequencies are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MelScale {
    /// 2595·log10(1 + f / 700).
    Htk,
    /// Linear below 1 kHz, logarithmic above (Slaney's Auditory Toolbox; librosa's default).
    Slaney,
}

/// How each mel filter is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MelNorm {
    /// Peak 1.
    None,
    /// Area 1 (2 / bandwidth), librosa's default.
    Slaney,
}

/// How spectrogram values become pixel values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ImageScale {
    /// Riffusion: pixel = 255 − 255·(S / max)^power (loud is dark); back: S = max_value ·
    /// ((255 − pixel) / 255)^(1 / power), the absolute scale being lost.
    PowerLaw { power: f64, max_value: f64 },
    /// audio-diffusion: 10·log10(S / max S) floored at −top_db, mapped to 0…255 (loud is bright).
    Decibels { top_db: f64 },
}

/// How the STFT pads the signal's ends when centring frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Reflect,
    Constant,
}

impl PadMode {
    /// The name torch's pad takes.
    pub fn name(self) -> &'static str {
        match self {
            PadMode::Reflect => "reflect",
            PadMode::Constant => "constant",
        }
    }
}

/// Everything that turns a clip into a spectrogram image and back.
#[derive(Debug, Clone, PartialEq)]
pub struct SpectrogramPreset {
    pub name: &'static str,
    pub sample_rate: u32,
    pub n_fft: usize,
    /// The Hann window's length (centred in `n_fft`, zeros around it).
    pub win_length: usize,
    pub hop: usize,
    pub n_mels: usize,
    pub f_min: f64,
    pub f_max: f64,
    pub mel_scale: MelScale,
    pub mel_norm: MelNorm,
    /// The STFT magnitude's exponent before the mel filters: 1 (amplitude) or 2 (power).
    pub power: f64,
    pub pad_mode: PadMode,
    pub image: ImageScale,
    /// Low frequencies on the image's bottom row (else on its top row).
    pub low_at_bottom: bool,
    /// The image's width in frames (its height is `n_mels`).
    pub width: usize,
}

impl SpectrogramPreset {
    pub fn riffusion() -> Self {
        Self {
            name: "riffusion",
            sample_rate: 44_100,
            n_fft: 17_640,
            win_length: 4_410,
            hop: 441,
            n_mels: 512,
            f_min: 0.0,
            f_max: 10_000.0,
            mel_scale: MelScale::Htk,
            mel_norm: MelNorm::None,
            power: 1.0,
            pad_mode: PadMode::Reflect,
            image: ImageScale::PowerLaw { power: 0.25, max_value: 30e6 },
            low_at_bottom: true,
            width: 512,
        }
    }

    pub fn audio_diffusion() -> Self {
        Self {
            name: "audio-diffusion",
            sample_rate: 22_050,
            n_fft: 2_048,
            win_length: 2_048,
            hop: 512,
            n_mels: 256,
            f_min: 0.0,
            f_max: 11_025.0,
            mel_scale: MelScale::Slaney,
            mel_norm: MelNorm::Slaney,
            power: 2.0,
            pad_mode: PadMode::Constant,
            image: ImageScale::Decibels { top_db: 80.0 },
            low_at_bottom: false,
            width: 256,
        }
    }

    pub fn studio() -> Self {
        Self {
            name: "studio",
            sample_rate: 16_000,
            n_fft: 1_024,
            win_length: 1_024,
            hop: 256,
            n_mels: 128,
            f_min: 0.0,
            f_max: 8_000.0,
            mel_scale: MelScale::Htk,
            mel_norm: MelNorm::None,
            power: 1.0,
            pad_mode: PadMode::Reflect,
            image: ImageScale::PowerLaw { power: 0.25, max_value: 1e3 },
            low_at_bottom: true,
            // the bundled music model's clips (datasets::music::FRAMES): 4.1 s
            width: 256,
        }
    }

    /// The spectrogram of an audio-diffusion model's `mel_config.json`: the audio-diffusion
    /// preset (librosa's defaults) at the config's rate, FFT, hop, size and dB range.
    pub fn of_mel_config(mel: &MelConfig) -> Self {
        Self {
            sample_rate: mel.sample_rate,
            n_fft: mel.n_fft,
            win_length: mel.n_fft,
            hop: mel.hop_length,
            n_mels: mel.y_res,
            f_max: f64::from(mel.sample_rate) / 2.0,
            image: ImageScale::Decibels { top_db: mel.top_db },
            width: mel.x_res,
            ..Self::audio_diffusion()
        }
    }

    /// Every preset, by name.
    pub fn all() -> [Self; 3] {
        [Self::riffusion(), Self::audio_diffusion(), Self::studio()]
    }

    /// The preset of this name, or an error listing the names.
    pub fn by_name(name: &str) -> Result<Self, String> {
        Self::all().into_iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = Self::all().iter().map(|p| p.name).collect();
            format!("no spectrogram preset \"{name}\"; the presets are {}", names.join(", "))
        })
    }

    /// STFT bins: n_fft / 2 + 1.
    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Samples a clip of `frames` frames spans (centred frames: the last frame's centre).
    pub fn samples_for(&self, frames: usize) -> usize {
        frames.saturating_sub(1) * self.hop
    }

    /// Seconds one image (`width` frames) covers.
    pub fn image_seconds(&self) -> f64 {
        (self.width * self.hop) as f64 / f64::from(self.sample_rate)
    }

    /// The centre frequency of each mel row, lowest first.
    pub fn mel_centres_hz(&self) -> Vec<f64> {
        let (m_min, m_max) = (self.hz_to_mel(self.f_min), self.hz_to_mel(self.f_max));
        (1..=self.n_mels)
            .map(|i| self.mel_to_hz(m_min + (m_max - m_min) * i as f64 / (self.n_mels + 1) as f64))
            .collect()
    }

    pub fn hz_to_mel(&self, hz: f64) -> f64 {
        match self.mel_scale {
            MelScale::Htk => 2595.0 * (1.0 + hz / 700.0).log10(),
            MelScale::Slaney => {
                let (f_sp, min_log_hz, min_log_mel, log_step) = SLANEY;
                if hz >= min_log_hz { min_log_mel + (hz / min_log_hz).ln() / log_step } else { hz / f_sp }
            }
        }
    }

    pub fn mel_to_hz(&self, mel: f64) -> f64 {
        match self.mel_scale {
            MelScale::Htk => 700.0 * (10f64.powf(mel / 2595.0) - 1.0),
            MelScale::Slaney => {
                let (f_sp, min_log_hz, min_log_mel, log_step) = SLANEY;
                if mel >= min_log_mel {
                    min_log_hz * (log_step * (mel - min_log_mel)).exp()
                } else {
                    f_sp * mel
                }
            }
        }
    }

    /// The mel filters as (n_freqs, n_mels), triangles between consecutive mel points over the
    /// STFT bins' frequencies (torchaudio's `melscale_fbanks`, librosa's `filters.mel`).
    pub fn mel_filters(&self) -> Vec<f32> {
        let (n_freqs, n_mels) = (self.n_freqs(), self.n_mels);
        // the bins' frequencies: 0 … sample_rate / 2 (torchaudio takes sample_rate // 2)
        let nyquist = f64::from(self.sample_rate / 2);
        let freqs: Vec<f64> =
            (0..n_freqs).map(|i| nyquist * i as f64 / (n_freqs - 1).max(1) as f64).collect();
        let (m_min, m_max) = (self.hz_to_mel(self.f_min), self.hz_to_mel(self.f_max));
        let points: Vec<f64> = (0..n_mels + 2)
            .map(|i| self.mel_to_hz(m_min + (m_max - m_min) * i as f64 / (n_mels + 1) as f64))
            .collect();
        let mut filters = vec![0f32; n_freqs * n_mels];
        for (bin, &f) in freqs.iter().enumerate() {
            for mel in 0..n_mels {
                let down = (f - points[mel]) / (points[mel + 1] - points[mel]);
                let up = (points[mel + 2] - f) / (points[mel + 2] - points[mel + 1]);
                let mut weight = down.min(up).max(0.0);
                if self.mel_norm == MelNorm::Slaney {
                    weight *= 2.0 / (points[mel + 2] - points[mel]);
                }
                filters[bin * n_mels + mel] = weight as f32;
            }
        }
        filters
    }
}

/// diffusers' `Mel` (`mel/mel_config.json` of an audio-diffusion pipeline, Robinson 2022): the
/// spectrogram image's size and the STFT that makes it. Missing fields take `Mel`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct MelConfig {
    /// Frames (the image's width).
    pub x_res: usize,
    /// Mel bins (the image's height).
    pub y_res: usize,
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    /// The dB range mapped to 0…255.
    pub top_db: f64,
    /// Griffin-Lim iterations the reference inverts with.
    pub n_iter: usize,
}

impl Default for MelConfig {
    fn default() -> Self {
        Self {
            x_res: 256,
            y_res: 256,
            sample_rate: 22_050,
            n_fft: 2_048,
            hop_length: 512,
            top_db: 80.0,
            n_iter: 32,
        }
    }
}

impl MelConfig {
    /// Reads and checks `path`; errors name the file and the field.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("could not read {}: {error}", path.display()))?;
        Self::from_json(&text).map_err(|reason| format!("{}: {reason}", path.display()))
    }

    /// Parses and checks a `mel_config.json`'s text; errors name the field.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(text).map_err(|error| error.to_string())?;
        let bad = |field: &str, why: &str| Err(format!("{field} {why}"));
        if config.x_res < 8 || config.x_res > 4096 {
            return bad("x_res", "must be 8 to 4096 frames");
        }
        if config.y_res < 8 || config.y_res > 1024 {
            return bad("y_res", "must be 8 to 1024 mel bins");
        }
        if !(1_000..=192_000).contains(&config.sample_rate) {
            return bad("sample_rate", "must be 1000 to 192000 Hz");
        }
        if config.n_fft < 16 || config.n_fft > 65_536 {
            return bad("n_fft", "must be 16 to 65536");
        }
        if config.y_res > config.n_fft / 2 + 1 {
            return bad("y_res", "is more mel bins than the FFT has frequencies (n_fft / 2 + 1)");
        }
        if config.hop_length == 0 || config.hop_length > config.n_fft {
            return bad("hop_length", "must be 1 to n_fft");
        }
        if !(config.top_db.is_finite() && config.top_db > 0.0) {
            return bad("top_db", "must be a positive number of decibels");
        }
        Ok(config)
    }
}
