//! The procedural music dataset of the bundled music model: short clips of drums, a bass line,
//! chords, an arpeggio or a pad (alone or two together), slow or fast, major or minor, in one of
//! a few keys, rendered by a small additive synthesiser at 16 kHz and captioned ("a fast drum
//! beat", "slow minor chords in d", "a slow minor bass line with a pad").
//!
//! Pure data: a sample is a fixed function of (seed, index, split); no files, no tensors. The
//! training code turns the samples into spectrogram images with the studio preset.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::shapes::Split;

/// The clips' sample rate (the studio spectrogram preset's).
pub const SAMPLE_RATE: u32 = 16_000;
/// Spectrogram frames of one clip (the studio preset's image width).
pub const FRAMES: usize = 256;
/// The studio preset's hop.
pub const HOP: usize = 256;
/// Samples of one clip: `FRAMES × HOP` (4.096 s).
pub const CLIP_SAMPLES: usize = FRAMES * HOP;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instrument {
    Drums,
    Bass,
    Chords,
    Arpeggio,
    Pad,
}

impl Instrument {
    pub const ALL: [Instrument; 5] =
        [Instrument::Drums, Instrument::Bass, Instrument::Chords, Instrument::Arpeggio, Instrument::Pad];

    pub fn name(self) -> &'static str {
        match self {
            Instrument::Drums => "drums",
            Instrument::Bass => "bass",
            Instrument::Chords => "chords",
            Instrument::Arpeggio => "arpeggio",
            Instrument::Pad => "pad",
        }
    }

    pub fn from_name(name: &str) -> Option<Instrument> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether it plays pitches (everything but the drums).
    pub fn tonal(self) -> bool {
        self != Instrument::Drums
    }

    /// The caption's words for it: article (if any) and noun phrase.
    fn phrase(self) -> (&'static str, &'static str) {
        match self {
            Instrument::Drums => ("a", "drum beat"),
            Instrument::Bass => ("a", "bass line"),
            Instrument::Chords => ("", "chords"),
            Instrument::Arpeggio => ("an", "arpeggio"),
            Instrument::Pad => ("a", "pad"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tempo {
    Slow,
    Fast,
}

impl Tempo {
    pub fn name(self) -> &'static str {
        match self {
            Tempo::Slow => "slow",
            Tempo::Fast => "fast",
        }
    }

    /// The beats per minute this tempo draws from.
    pub fn bpm_range(self) -> (f32, f32) {
        match self {
            Tempo::Slow => (70.0, 90.0),
            Tempo::Fast => (130.0, 150.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Major,
    Minor,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Major => "major",
            Mode::Minor => "minor",
        }
    }

    /// Semitones of the scale's seven degrees above the tonic (natural minor).
    pub fn scale(self) -> [i32; 7] {
        match self {
            Mode::Major => [0, 2, 4, 5, 7, 9, 11],
            Mode::Minor => [0, 2, 3, 5, 7, 8, 10],
        }
    }

    /// Chord progressions, as scale degrees from 0 (I–V–vi–IV, …; i–VI–III–VII, …).
    fn progressions(self) -> &'static [[usize; 4]] {
        match self {
            Mode::Major => &[[0, 4, 5, 3], [0, 3, 4, 0], [0, 5, 3, 4], [0, 3, 0, 4]],
            Mode::Minor => &[[0, 5, 2, 6], [0, 3, 4, 0], [0, 6, 5, 6], [0, 3, 0, 4]],
        }
    }
}

/// The keys the clips are in, by tonic (C, D, E, F, G).
pub const KEYS: [(&str, i32); 5] = [("c", 0), ("d", 2), ("e", 4), ("f", 5), ("g", 7)];

/// What one clip plays.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Piece {
    /// One or two instruments, the first named first.
    pub parts: Vec<Instrument>,
    pub tempo: Tempo,
    pub bpm: f32,
    pub mode: Mode,
    /// Index into [`KEYS`].
    pub key: usize,
    /// Whether the caption names the key (tonal pieces only).
    pub says_key: bool,
}

impl Piece {
    /// "a fast drum beat", "slow minor chords in d", "a slow minor bass line with a pad".
    pub fn caption(&self) -> String {
        let mut words: Vec<&str> = Vec::new();
        let mut said_mode = false;
        for (index, part) in self.parts.iter().enumerate() {
            let (article, noun) = part.phrase();
            if index > 0 {
                words.push("with");
            }
            let mode = (part.tonal() && !said_mode).then_some(self.mode.name());
            said_mode |= mode.is_some();
            // the article agrees with the word after it: "a minor arpeggio", "an arpeggio"
            let article = match (index, article, mode) {
                (_, "", _) => "",
                (_, "an", Some(_)) => "a",
                (_, article, _) => article,
            };
            if !article.is_empty() {
                words.push(article);
            }
            if index == 0 {
                words.push(self.tempo.name());
            }
            if let Some(mode) = mode {
                words.push(mode);
            }
            words.push(noun);
        }
        if self.says_key && self.parts.iter().any(|p| p.tonal()) {
            words.push("in");
            words.push(KEYS[self.key].0);
        }
        words.join(" ")
    }

    /// Whether `instrument` plays in it.
    pub fn has(&self, instrument: Instrument) -> bool {
        self.parts.contains(&instrument)
    }
}

/// Every word the captions use (the text encoder's vocabulary).
pub fn vocabulary() -> Vec<&'static str> {
    let mut words = vec![
        "a", "an", "with", "in", "slow", "fast", "major", "minor", "drum", "beat", "bass", "line", "chords",
        "arpeggio", "pad",
    ];
    for (key, _) in KEYS {
        if !words.contains(&key) {
            words.push(key);
        }
    }
    words
}

/// A rendered clip.
#[derive(Debug, Clone)]
pub struct Sample {
    pub piece: Piece,
    pub caption: String,
    /// Mono samples at [`SAMPLE_RATE`], [`CLIP_SAMPLES`] long, peak 0.9.
    pub samples: Vec<f32>,
}

/// How a run's pieces are drawn (all instruments, or one only: the evaluation's prompts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PieceStyle {
    /// Share of two-instrument pieces.
    pub mixes: f64,
}

impl Default for PieceStyle {
    fn default() -> Self {
        Self { mixes: 0.3 }
    }
}

/// A random piece.
pub fn random_piece(rng: &mut impl Rng, style: PieceStyle) -> Piece {
    let first = Instrument::ALL[rng.random_range(0..Instrument::ALL.len())];
    let mut parts = vec![first];
    if rng.random_bool(style.mixes.clamp(0.0, 1.0)) {
        let others: Vec<Instrument> = Instrument::ALL.into_iter().filter(|i| *i != first).collect();
        parts.push(others[rng.random_range(0..others.len())]);
    }
    let tempo = if rng.random_bool(0.5) { Tempo::Slow } else { Tempo::Fast };
    let (low, high) = tempo.bpm_range();
    Piece {
        parts,
        tempo,
        bpm: rng.random_range(low..high),
        mode: if rng.random_bool(0.5) { Mode::Major } else { Mode::Minor },
        key: rng.random_range(0..KEYS.len()),
        says_key: rng.random_bool(0.5),
    }
}

fn rng_of(seed: u64, index: u64, split: Split) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006d_7573_6963); // "music"
    let stream = match split {
        Split::Train => 0,
        Split::Eval => 1u64 << 63,
    };
    rng.set_stream(stream | index);
    rng
}

/// Sample `index` of `split` (the two splits draw from disjoint random streams).
pub fn sample(seed: u64, index: u64, split: Split) -> Sample {
    sample_styled(seed, index, split, PieceStyle::default())
}

/// [`sample`] with pieces drawn in `style`.
pub fn sample_styled(seed: u64, index: u64, split: Split, style: PieceStyle) -> Sample {
    let mut rng = rng_of(seed, index, split);
    let piece = random_piece(&mut rng, style);
    let samples = render(&piece, &mut rng);
    Sample { caption: piece.caption(), piece, samples }
}

/// Frequency of MIDI note `note`.
fn hz(note: f32) -> f32 {
    440.0 * 2f32.powf((note - 69.0) / 12.0)
}

/// A sine bank: adds `Σ_k weight_k sin(2π k f t)` from `start` to `end` seconds (a note that
/// began before the clip sounds from its first sample on), shaped by `envelope(seconds since
/// start)`.
fn tone(out: &mut [f32], start: f32, end: f32, freq: f32, harmonics: &[f32], envelope: impl Fn(f32) -> f32) {
    let rate = SAMPLE_RATE as f32;
    let first = (start * rate).ceil().max(0.0) as usize;
    let end = ((end * rate).max(0.0) as usize).min(out.len());
    if first >= end {
        return;
    }
    let lead = first as f32 / rate - start;
    let nyquist = rate / 2.0 * 0.95;
    for (k, weight) in harmonics.iter().enumerate() {
        let f = freq * (k + 1) as f32;
        if f >= nyquist || *weight == 0.0 {
            continue;
        }
        let step = std::f32::consts::TAU * f / rate;
        // phase by recurrence (rotation), renormalised now and then
        let (mut s, mut c) = (std::f32::consts::TAU * f * lead).sin_cos();
        let (ds, dc) = step.sin_cos();
        for (i, sample) in out[first..end].iter_mut().enumerate() {
            *sample += weight * s * envelope(lead + i as f32 / rate);
            let next_s = s * dc + c * ds;
            c = c * dc - s * ds;
            s = next_s;
            if i % 4096 == 4095 {
                let norm = (s * s + c * c).sqrt();
                s /= norm;
                c /= norm;
            }
        }
    }
}

/// A tiny xorshift for noise (the clip's rng seeds it).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Renders `piece` (the rng draws the start offset, progression, voicings and small variations).
pub fn render(piece: &Piece, rng: &mut impl Rng) -> Vec<f32> {
    let rate = SAMPLE_RATE as f32;
    let beat = 60.0 / piece.bpm;
    // the clip starts somewhere in a bar
    let offset = rng.random_range(0.0..4.0 * beat);
    let scale = piece.mode.scale();
    let progressions = piece.mode.progressions();
    let progression = progressions[rng.random_range(0..progressions.len())];
    let tonic = 48.0 + KEYS[piece.key].1 as f32; // C3 … G3
    // a chord lasts a bar when fast, half a bar when slow
    let chord_beats = match piece.tempo {
        Tempo::Fast => 4.0,
        Tempo::Slow => 2.0,
    };
    let seconds = CLIP_SAMPLES as f32 / rate;
    let chord_at = |time: f32| -> [f32; 3] {
        let index = ((time + offset) / (chord_beats * beat)).floor().max(0.0) as usize;
        let degree = progression[index % 4];
        let note = |step: usize| {
            let d = degree + step;
            scale[d % 7] as f32 + 12.0 * (d / 7) as f32
        };
        [note(0), note(2), note(4)]
    };
    let mut noise = Noise(rng.random::<u64>() | 1);
    let mut mix = vec![0f32; CLIP_SAMPLES];
    for (index, part) in piece.parts.iter().enumerate() {
        let mut out = vec![0f32; CLIP_SAMPLES];
        // the events of a grid of `per_beat` notes per beat that sound in the clip: (time,
        // count); those up to two beats before it still ring into it
        let grid = |per_beat: f32| -> Vec<(f32, usize)> {
            let step = beat / per_beat;
            let first = ((offset - 2.0 * beat) / step).ceil().max(0.0) as usize;
            (first..).map(|n| (n as f32 * step - offset, n)).take_while(|(t, _)| *t < seconds).collect()
        };
        let at = |t: f32| (t * rate) as usize;
        match part {
            Instrument::Drums => {
                let per_beat = 2.0;
                for (time, n) in grid(per_beat) {
                    let position = n % 8; // eighths of a bar
                    if time < 0.0 {
                        continue; // hits are short: those before the clip have died away
                    }
                    let start = at(time);
                    if position == 0 || position == 4 || (position == 5 && rng.random_bool(0.3)) {
                        // kick: a sine swept 120 → 45 Hz
                        let length = at(0.3);
                        let mut phase = 0f32;
                        for i in 0..length.min(CLIP_SAMPLES.saturating_sub(start)) {
                            let t = i as f32 / rate;
                            let f = 45.0 + 75.0 * (-t / 0.03).exp();
                            phase += std::f32::consts::TAU * f / rate;
                            out[start + i] += 0.9 * phase.sin() * (-t / 0.12).exp();
                        }
                    }
                    if position == 2 || position == 6 {
                        // snare: noise and a 190 Hz body
                        let length = at(0.25);
                        for i in 0..length.min(CLIP_SAMPLES.saturating_sub(start)) {
                            let t = i as f32 / rate;
                            out[start + i] += 0.5 * noise.next() * (-t / 0.06).exp();
                        }
                        tone(&mut out, time, time + 0.25, 190.0, &[0.4], |t| (-t / 0.05).exp());
                    }
                    // hats on every eighth: high-passed noise
                    let length = at(0.06);
                    let mut last = 0f32;
                    let accent = if position % 2 == 0 { 0.25 } else { 0.15 };
                    for i in 0..length.min(CLIP_SAMPLES.saturating_sub(start)) {
                        let t = i as f32 / rate;
                        let white = noise.next();
                        out[start + i] += accent * (white - last) * (-t / 0.015).exp();
                        last = white;
                    }
                }
            }
            Instrument::Bass => {
                let per_beat = if piece.tempo == Tempo::Fast { 2.0 } else { 1.0 };
                let length = beat / per_beat;
                for (time, n) in grid(per_beat) {
                    let chord = chord_at(time.max(0.0) + 1e-3);
                    // the root, now and then its fifth, in octave 1–2
                    let note = if n % 4 == 3 && rng.random_bool(0.5) { chord[2] } else { chord[0] };
                    let note = tonic - 12.0 + note;
                    let harmonics = [1.0, 0.5, 0.33, 0.25, 0.2, 0.16];
                    tone(&mut out, time, time + length * 0.9, hz(note), &harmonics, |t| {
                        let attack = (t / 0.005).min(1.0);
                        let release = ((length * 0.9 - t) / 0.02).clamp(0.0, 1.0);
                        0.35 * attack * release * (0.6 + 0.4 * (-t / 0.1).exp())
                    });
                }
            }
            Instrument::Chords => {
                // struck on every beat (fast) or every second beat (slow), decaying like a piano
                let per_beat = if piece.tempo == Tempo::Fast { 1.0 } else { 0.5 };
                let length = beat / per_beat;
                for (time, _) in grid(per_beat) {
                    let chord = chord_at(time.max(0.0) + 1e-3);
                    for note in chord {
                        let note = tonic + 12.0 + note;
                        let harmonics = [1.0, 0.4, 0.2, 0.1, 0.05];
                        tone(&mut out, time, time + length, hz(note), &harmonics, |t| {
                            let release = ((length - t) / 0.03).clamp(0.0, 1.0);
                            0.2 * (t / 0.003).min(1.0) * release * (-t / 0.5).exp()
                        });
                    }
                }
            }
            Instrument::Arpeggio => {
                // chord tones upwards, eighths (slow) or sixteenths (fast), plucked
                let per_beat = if piece.tempo == Tempo::Fast { 4.0 } else { 2.0 };
                let length = beat / per_beat;
                for (time, n) in grid(per_beat) {
                    let chord = chord_at(time.max(0.0) + 1e-3);
                    let pattern = [chord[0], chord[1], chord[2], chord[0] + 12.0];
                    let note = tonic + 24.0 + pattern[n % 4];
                    tone(&mut out, time, time + length, hz(note), &[1.0, 0.3, 0.1], |t| {
                        let release = ((length - t) / 0.01).clamp(0.0, 1.0);
                        0.3 * (t / 0.002).min(1.0) * release * (-t / 0.12).exp()
                    });
                }
            }
            Instrument::Pad => {
                // the chords held, slow attack, two detuned voices per note, crossfaded
                let change = chord_beats * beat;
                let first = (offset / change).floor() as i64;
                let mut k = first;
                loop {
                    let start_time = k as f32 * change - offset;
                    if start_time >= seconds {
                        break;
                    }
                    let chord = chord_at(start_time.max(0.0) + 1e-3);
                    let notes = [chord[0], chord[1], chord[2], chord[0] + 12.0];
                    let end_time = (start_time + change + 0.3).min(seconds);
                    for note in notes {
                        let note = tonic + note;
                        for detune in [-0.06f32, 0.06] {
                            tone(&mut out, start_time, end_time, hz(note + detune), &[1.0, 0.15], |t| {
                                let attack = (t / 0.4).min(1.0);
                                let release = ((change + 0.3 - t) / 0.3).clamp(0.0, 1.0);
                                let tremolo = 1.0 + 0.1 * (std::f32::consts::TAU * 4.0 * t).sin();
                                0.06 * attack * release * tremolo
                            });
                        }
                    }
                    k += 1;
                }
            }
        }
        // each part at its own level, the second a little under the first
        let peak = out.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let gain = if index == 0 { 1.0 } else { rng.random_range(0.5..0.8) } / peak;
        for (m, o) in mix.iter_mut().zip(&out) {
            *m += gain * o;
        }
    }
    // a faint noise floor, then peak 0.9
    for m in mix.iter_mut() {
        *m += 1e-4 * noise.next();
    }
    let peak = mix.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for m in mix.iter_mut() {
        *m *= 0.9 / peak;
    }
    mix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_read_naturally_and_use_the_vocabulary() {
        let words = vocabulary();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let piece = random_piece(&mut rng, PieceStyle::default());
            let caption = piece.caption();
            for word in caption.split(' ') {
                assert!(words.contains(&word), "{word} of \"{caption}\" is not in the vocabulary");
            }
            assert!(!caption.contains("an minor") && !caption.contains("a arpeggio"), "{caption}");
        }
        let piece = Piece {
            parts: vec![Instrument::Bass, Instrument::Pad],
            tempo: Tempo::Slow,
            bpm: 80.0,
            mode: Mode::Minor,
            key: 1,
            says_key: true,
        };
        assert_eq!(piece.caption(), "a slow minor bass line with a pad in d");
        let drums = Piece { parts: vec![Instrument::Drums, Instrument::Arpeggio], ..piece.clone() };
        assert_eq!(drums.caption(), "a slow drum beat with a minor arpeggio in d");
        let alone = Piece { parts: vec![Instrument::Drums], ..piece };
        assert_eq!(alone.caption(), "a slow drum beat");
    }

    #[test]
    fn samples_are_deterministic_and_the_splits_differ() {
        let a = sample(3, 7, Split::Train);
        let b = sample(3, 7, Split::Train);
        let c = sample(3, 7, Split::Eval);
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.caption, b.caption);
        assert_ne!(a.samples, c.samples);
        assert_eq!(a.samples.len(), CLIP_SAMPLES);
        let peak = a.samples.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.9).abs() < 1e-4, "peak {peak}");
    }

    /// The share of the energy up to 4 kHz that lies below `hz`, in a 4096-sample window from
    /// the clip's middle (a direct DFT).
    fn energy_below(samples: &[f32], hz: f32) -> f32 {
        let n = 4096;
        let window = &samples[samples.len() / 2 - n / 2..samples.len() / 2 + n / 2];
        let (mut low, mut all) = (0.0, 0.0);
        for bin in 1..n / 2 {
            let f = bin as f32 * SAMPLE_RATE as f32 / n as f32;
            if f > 4000.0 {
                break;
            }
            let (mut re, mut im) = (0f32, 0f32);
            for (i, x) in window.iter().enumerate() {
                let angle = std::f32::consts::TAU * ((bin * i) % n) as f32 / n as f32;
                re += x * angle.cos();
                im += x * angle.sin();
            }
            let power = re * re + im * im;
            all += power;
            if f < hz {
                low += power;
            }
        }
        low / all.max(1e-12)
    }

    #[test]
    fn the_bass_is_low_and_the_arpeggio_is_not() {
        let piece = |part| Piece {
            parts: vec![part],
            tempo: Tempo::Slow,
            bpm: 80.0,
            mode: Mode::Major,
            key: 0,
            says_key: false,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let bass = render(&piece(Instrument::Bass), &mut rng);
        let arpeggio = render(&piece(Instrument::Arpeggio), &mut rng);
        assert!(energy_below(&bass, 200.0) > 0.5, "bass {}", energy_below(&bass, 200.0));
        assert!(energy_below(&arpeggio, 200.0) < 0.1, "arpeggio {}", energy_below(&arpeggio, 200.0));
    }
}
