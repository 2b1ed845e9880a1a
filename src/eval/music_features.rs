//! A spectral-feature classifier for the music dataset's clips: which instrument plays, how fast,
//! and whether it is major or minor, read from a studio-preset spectrogram image (grey, low
//! frequencies at the bottom). No learning beyond class means and variances of a handful of
//! hand-made features (onset strength, spectral flatness, centroid, band shares, peaks per
//! frame, stationarity, pitch-class concentration, pitch changes), fitted on dataset clips.

use crate::datasets::music::{Instrument, Mode, Tempo};

/// Frames per second of the studio preset (16 kHz, hop 256).
pub const FRAMES_PER_SECOND: f64 = 16_000.0 / 256.0;

/// A spectrogram as the classifier reads it: `rows` mel rows (row 0 the lowest) × `frames`,
/// values in [0, 1] as the image shows them (the power-law-compressed magnitude over the clip's
/// peak), with each row's centre frequency.
pub struct SpectrogramView {
    pub rows: usize,
    pub frames: usize,
    /// `[frame][row]`.
    pub values: Vec<f32>,
    pub centres_hz: Vec<f64>,
}

impl SpectrogramView {
    /// From a studio-preset image (dark = loud, low frequencies at the bottom) and the preset's
    /// mel row centres (lowest first).
    pub fn from_image(image: &image::GrayImage, centres_hz: Vec<f64>) -> Result<Self, String> {
        let (width, height) = image.dimensions();
        if height as usize != centres_hz.len() {
            return Err(format!(
                "the spectrogram is {height} rows high; the preset has {} mel rows",
                centres_hz.len()
            ));
        }
        if width < 16 {
            return Err(format!("the spectrogram is {width} frames wide; at least 16 are needed"));
        }
        let (rows, frames) = (height as usize, width as usize);
        let mut values = vec![0f32; rows * frames];
        for (x, y, pixel) in image.enumerate_pixels() {
            let row = rows - 1 - y as usize;
            values[x as usize * rows + row] = 1.0 - f32::from(pixel[0]) / 255.0;
        }
        Ok(Self { rows, frames, values, centres_hz })
    }

    fn frame(&self, t: usize) -> &[f32] {
        &self.values[t * self.rows..(t + 1) * self.rows]
    }
}

/// The features, in this order (names for reports).
pub const FEATURE_NAMES: [&str; 11] = [
    "onset strength",
    "onset peakiness",
    "spectral flatness",
    "spectral centroid",
    "low band share",
    "high band share",
    "peaks per frame",
    "stationarity",
    "pitch-class concentration",
    "pitch changes",
    "level variation",
];

/// Pitch classes (C = 0) of the energy between 200 Hz and 2 kHz (below, mel rows are wider
/// than a semitone), summed over the clip, as shares.
pub fn chroma(view: &SpectrogramView) -> [f64; 12] {
    let mut chroma = [0f64; 12];
    for t in 0..view.frames {
        for (row, value) in view.frame(t).iter().enumerate() {
            let hz = view.centres_hz[row];
            if !(200.0..=2000.0).contains(&hz) {
                continue;
            }
            let midi = 69.0 + 12.0 * (hz / 440.0).log2();
            let class = (midi.round() as i64).rem_euclid(12) as usize;
            chroma[class] += f64::from(value.powi(4));
        }
    }
    let total: f64 = chroma.iter().sum::<f64>().max(1e-12);
    chroma.map(|c| c / total)
}

/// The onset envelope: each frame's summed rise over the previous frame.
pub fn onset_envelope(view: &SpectrogramView) -> Vec<f64> {
    let rise = |t: usize| -> f64 {
        view.frame(t)
            .iter()
            .zip(view.frame(t - 1))
            .map(|(now, before)| f64::from((now - before).max(0.0)))
            .sum()
    };
    std::iter::once(0.0).chain((1..view.frames).map(rise)).collect()
}

/// The clip's features ([`FEATURE_NAMES`]).
pub fn features(view: &SpectrogramView) -> Vec<f64> {
    let (rows, frames) = (view.rows, view.frames);
    let power = |v: f32| f64::from(v).powi(4) + 1e-9;
    let onsets = onset_envelope(view);
    let level: Vec<f64> = (0..frames).map(|t| view.frame(t).iter().map(|v| f64::from(*v)).sum()).collect();
    let mean_level = mean(&level).max(1e-9);
    let onset_mean = mean(&onsets[1..]) / mean_level;
    let onset_peakiness = std(&onsets[1..]) / mean(&onsets[1..]).max(1e-9);
    let (mut flatness, mut centroid, mut low, mut high, mut total, mut peaks) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut stationarity, mut changes) = (0.0, 0.0);
    let tonal: Vec<usize> = (0..rows).filter(|&r| (80.0..=2000.0).contains(&view.centres_hz[r])).collect();
    let dominant = |t: usize| -> usize {
        let frame = view.frame(t);
        tonal.iter().copied().max_by(|a, b| frame[*a].total_cmp(&frame[*b])).unwrap_or(0)
    };
    for t in 0..frames {
        let frame = view.frame(t);
        let p: Vec<f64> = frame.iter().map(|v| power(*v)).collect();
        let sum: f64 = p.iter().sum();
        let log_mean = p.iter().map(|x| x.ln()).sum::<f64>() / rows as f64;
        flatness += log_mean.exp() / (sum / rows as f64);
        centroid += p.iter().enumerate().map(|(r, x)| r as f64 * x).sum::<f64>() / sum / rows as f64;
        for (r, x) in p.iter().enumerate() {
            let hz = view.centres_hz[r];
            if hz < 150.0 {
                low += x;
            }
            if hz > 3000.0 {
                high += x;
            }
            total += x;
        }
        let top = frame.iter().fold(0f32, |m, v| m.max(*v));
        peaks += (1..rows - 1)
            .filter(|&r| frame[r] > frame[r - 1] && frame[r] >= frame[r + 1] && frame[r] > 0.6 * top)
            .count() as f64;
        if t + 4 < frames {
            stationarity += cosine(frame, view.frame(t + 4));
        }
        if t + 2 < frames && dominant(t) != dominant(t + 2) {
            changes += 1.0;
        }
    }
    let n = frames as f64;
    let pitch_classes = chroma(view);
    let entropy: f64 = pitch_classes.iter().filter(|c| **c > 0.0).map(|c| -c * c.ln()).sum();
    vec![
        onset_mean,
        onset_peakiness,
        flatness / n,
        centroid / n,
        low / total.max(1e-12),
        high / total.max(1e-12),
        peaks / n,
        stationarity / (n - 4.0).max(1.0),
        1.0 - entropy / 12f64.ln(),
        changes / (n - 2.0).max(1.0),
        std(&level) / mean_level,
    ]
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn std(values: &[f64]) -> f64 {
    let m = mean(values);
    (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / values.len().max(1) as f64).sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1e-12)
}

/// The period of the onset envelope's strongest repetition, in frames, between `shortest` and
/// `longest` (autocorrelation of the mean-removed envelope).
pub fn onset_period(view: &SpectrogramView, shortest: usize, longest: usize) -> usize {
    let onsets = onset_envelope(view);
    let m = mean(&onsets);
    let centred: Vec<f64> = onsets.iter().map(|o| o - m).collect();
    (shortest..=longest.min(centred.len() / 2))
        .max_by(|a, b| autocorrelation(&centred, *a).total_cmp(&autocorrelation(&centred, *b)))
        .unwrap_or(shortest)
}

fn autocorrelation(values: &[f64], lag: usize) -> f64 {
    values.iter().zip(&values[lag..]).map(|(a, b)| a * b).sum::<f64>() / (values.len() - lag) as f64
}

/// `chroma` rotated so that `tonic` comes first.
pub fn rotated(chroma: &[f64; 12], tonic: usize) -> Vec<f64> {
    (0..12).map(|i| chroma[(tonic + i) % 12]).collect()
}

/// Major or minor, given the tonic's pitch class: the major third, sixth and seventh against
/// the minor ones (a rule for pure tones; [`MusicClassifier::mode`] learns what the
/// instruments' overtones add).
pub fn mode_given_tonic(chroma: &[f64; 12], tonic: usize) -> Mode {
    let at = |interval: usize| chroma[(tonic + interval) % 12];
    let major = at(4) + at(9) + at(11);
    let minor = at(3) + at(8) + at(10);
    if major >= minor { Mode::Major } else { Mode::Minor }
}

/// A Gaussian naive-Bayes classifier over labels `L` (per-class feature means and variances,
/// equal priors).
#[derive(Debug, Clone)]
pub struct GaussianClassifier<L> {
    classes: Vec<(L, Vec<f64>, Vec<f64>)>,
}

impl<L: Copy + PartialEq> GaussianClassifier<L> {
    /// Fits on labelled feature vectors; every label of `labels` needs at least two examples.
    pub fn fit(examples: &[(L, Vec<f64>)], labels: &[L]) -> Result<Self, String> {
        let dims = examples.first().map(|(_, f)| f.len()).ok_or("no examples to fit")?;
        let mut classes = Vec::new();
        for label in labels {
            let rows: Vec<&Vec<f64>> = examples.iter().filter(|(l, _)| l == label).map(|(_, f)| f).collect();
            if rows.len() < 2 {
                return Err(format!("a class has {} examples; at least 2 are needed", rows.len()));
            }
            let means: Vec<f64> =
                (0..dims).map(|d| rows.iter().map(|r| r[d]).sum::<f64>() / rows.len() as f64).collect();
            let variances: Vec<f64> = (0..dims)
                .map(|d| {
                    let v = rows.iter().map(|r| (r[d] - means[d]).powi(2)).sum::<f64>() / rows.len() as f64;
                    // a floor, so that one steady feature does not decide everything
                    v + 1e-4 * (1.0 + means[d].abs()).powi(2)
                })
                .collect();
            classes.push((*label, means, variances));
        }
        Ok(Self { classes })
    }

    /// The most likely label.
    pub fn predict(&self, features: &[f64]) -> Option<L> {
        self.classes
            .iter()
            .map(|(label, means, variances)| {
                let log_likelihood: f64 = features
                    .iter()
                    .zip(means)
                    .zip(variances)
                    .map(|((x, m), v)| -0.5 * ((x - m).powi(2) / v + v.ln()))
                    .sum();
                (*label, log_likelihood)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(label, _)| label)
    }
}

/// The music classifier: instrument from all features; tempo from the onset period and onset
/// strength, per instrument.
pub struct MusicClassifier {
    pub instrument: GaussianClassifier<Instrument>,
    tempo: Vec<(Instrument, GaussianClassifier<Tempo>)>,
    /// Per tonal instrument: major or minor from the pitch classes rotated to the tonic.
    mode: Vec<(Instrument, GaussianClassifier<Mode>)>,
}

/// What the tempo classifier reads: the log of the onset envelope's period (between 1/12 and
/// 1 s) and the onset strength.
fn tempo_features(view: &SpectrogramView, features: &[f64]) -> Vec<f64> {
    let shortest = (FRAMES_PER_SECOND / 12.0) as usize;
    let period = onset_period(view, shortest, FRAMES_PER_SECOND as usize);
    vec![(period as f64).ln(), features[0]]
}

/// One labelled clip for fitting: its spectrogram, instrument, tempo, mode and tonic.
pub struct LabelledClip {
    pub view: SpectrogramView,
    pub instrument: Instrument,
    pub tempo: Tempo,
    pub mode: Mode,
    /// The tonic's pitch class (C = 0).
    pub tonic: usize,
}

impl MusicClassifier {
    pub fn fit(clips: &[LabelledClip]) -> Result<Self, String> {
        let examples: Vec<(Instrument, Vec<f64>)> =
            clips.iter().map(|c| (c.instrument, features(&c.view))).collect();
        let instrument = GaussianClassifier::fit(&examples, &Instrument::ALL)?;
        let mut tempo = Vec::new();
        for label in Instrument::ALL {
            let rows: Vec<(Tempo, Vec<f64>)> = clips
                .iter()
                .zip(&examples)
                .filter(|(c, _)| c.instrument == label)
                .map(|(c, (_, f))| (c.tempo, tempo_features(&c.view, f)))
                .collect();
            tempo.push((label, GaussianClassifier::fit(&rows, &[Tempo::Slow, Tempo::Fast])?));
        }
        let mut mode = Vec::new();
        for label in Instrument::ALL.into_iter().filter(|i| i.tonal()) {
            let rows: Vec<(Mode, Vec<f64>)> = clips
                .iter()
                .filter(|c| c.instrument == label)
                .map(|c| (c.mode, rotated(&chroma(&c.view), c.tonic)))
                .collect();
            mode.push((label, GaussianClassifier::fit(&rows, &[Mode::Major, Mode::Minor])?));
        }
        Ok(Self { instrument, tempo, mode })
    }

    /// Major or minor, given the instrument and the tonic (None for drums).
    pub fn mode(&self, view: &SpectrogramView, instrument: Instrument, tonic: usize) -> Option<Mode> {
        let (_, classifier) = self.mode.iter().find(|(label, _)| *label == instrument)?;
        classifier.predict(&rotated(&chroma(view), tonic))
    }

    /// The instrument, and the tempo as that instrument's classifier reads it.
    pub fn classify(&self, view: &SpectrogramView) -> Option<(Instrument, Tempo)> {
        let features = features(view);
        let instrument = self.instrument.predict(&features)?;
        let tempo = self
            .tempo
            .iter()
            .find(|(label, _)| *label == instrument)?
            .1
            .predict(&tempo_features(view, &features))?;
        Some((instrument, tempo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gaussian_classifier_separates_two_clouds() -> Result<(), String> {
        let examples: Vec<(u8, Vec<f64>)> = (0..20)
            .map(|i| {
                let jitter = (i as f64 * 0.37).sin() * 0.1;
                if i % 2 == 0 { (0, vec![jitter, 1.0 + jitter]) } else { (1, vec![1.0 + jitter, jitter]) }
            })
            .collect();
        let classifier = GaussianClassifier::fit(&examples, &[0, 1])?;
        assert_eq!(classifier.predict(&[0.05, 0.9]), Some(0));
        assert_eq!(classifier.predict(&[0.95, -0.05]), Some(1));
        assert!(GaussianClassifier::fit(&examples[..1], &[0, 1]).is_err());
        Ok(())
    }

    #[test]
    fn the_mode_follows_the_third() {
        // C major's pitch classes against C minor's
        let mut major = [0.0; 12];
        for class in [0, 4, 7, 2, 5, 9, 11] {
            major[class] = 1.0 / 7.0;
        }
        let mut minor = [0.0; 12];
        for class in [0, 3, 7, 2, 5, 8, 10] {
            minor[class] = 1.0 / 7.0;
        }
        assert_eq!(mode_given_tonic(&major, 0), Mode::Major);
        assert_eq!(mode_given_tonic(&minor, 0), Mode::Minor);
        // the same notes read from A are minor (relative minor)
        assert_eq!(mode_given_tonic(&major, 9), Mode::Minor);
    }
}
