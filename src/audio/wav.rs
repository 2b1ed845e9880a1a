//! WAV files (hound) and resampling (rubato): clips as per-channel sample vectors in [-1, 1].

use std::path::Path;

/// The longest clip the studio reads (an hour of 48 kHz stereo is 1.4 GB of f32).
pub const MAX_SECONDS: f64 = 600.0;

/// Audio: one vector of samples per channel, all of the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub sample_rate: u32,
    pub channels: Vec<Vec<f32>>,
}

/// What goes wrong with audio files; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: not a readable WAV file ({reason}); the studio reads PCM or float WAV")]
    Unreadable { path: String, reason: String },
    #[error("{path}: the file holds no samples")]
    Empty { path: String },
    #[error("{path}: {seconds:.0} s of audio; the studio reads clips up to {max:.0} s (cut it first)")]
    TooLong { path: String, seconds: f64, max: f64 },
    #[error("{path}: {bits}-bit {format} samples are not supported; use 8/16/24/32-bit PCM or 32-bit float")]
    Format { path: String, bits: u16, format: &'static str },
    #[error("could not write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("resampling from {from} Hz to {to} Hz failed: {reason}")]
    Resample { from: u32, to: u32, reason: String },
}

impl Clip {
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate.max(1))
    }

    /// The channels averaged into one (what the spectrogram presets take).
    pub fn mono(&self) -> Vec<f32> {
        let count = self.channels.len().max(1) as f32;
        (0..self.frames()).map(|i| self.channels.iter().map(|c| c[i]).sum::<f32>() / count).collect()
    }

    /// The clip at another sample rate (rubato's FFT resampler, band-limited), same length in time.
    pub fn resampled(&self, rate: u32) -> Result<Clip, AudioError> {
        use rubato::Resampler;
        if rate == self.sample_rate || self.frames() == 0 {
            return Ok(Clip { sample_rate: rate, channels: self.channels.clone() });
        }
        let error = |reason: String| AudioError::Resample { from: self.sample_rate, to: rate, reason };
        let channels = self.channels.len();
        let mut resampler =
            rubato::FftFixedIn::<f32>::new(self.sample_rate as usize, rate as usize, 1024, 2, channels)
                .map_err(|e| error(e.to_string()))?;
        let wanted = (self.frames() as f64 * f64::from(rate) / f64::from(self.sample_rate)).round() as usize;
        let delay = resampler.output_delay();
        let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(wanted + delay); channels];
        let mut at = 0;
        let append = |out: &mut Vec<Vec<f32>>, chunk: Vec<Vec<f32>>| {
            for (out, chunk) in out.iter_mut().zip(chunk) {
                out.extend(chunk);
            }
        };
        while at + resampler.input_frames_next() <= self.frames() {
            let next = resampler.input_frames_next();
            let input: Vec<&[f32]> = self.channels.iter().map(|c| &c[at..at + next]).collect();
            append(&mut out, resampler.process(&input, None).map_err(|e| error(e.to_string()))?);
            at += next;
        }
        if at < self.frames() {
            // (rubato refuses an empty partial chunk: a clip a whole number of chunks long has none)
            let rest: Vec<&[f32]> = self.channels.iter().map(|c| &c[at..]).collect();
            append(&mut out, resampler.process_partial(Some(&rest), None).map_err(|e| error(e.to_string()))?);
        }
        // the filter's delay: push zeros through until every wanted frame is out
        while out[0].len() < wanted + delay {
            append(
                &mut out,
                resampler.process_partial::<&[f32]>(None, None).map_err(|e| error(e.to_string()))?,
            );
        }
        for channel in &mut out {
            channel.drain(..delay);
            channel.truncate(wanted);
        }
        Ok(Clip { sample_rate: rate, channels: out })
    }
}

/// Reads a WAV file: PCM of 8 to 32 bits or 32-bit float, any number of channels.
pub fn read_wav(path: &Path) -> Result<Clip, AudioError> {
    let name = path.display().to_string();
    let unreadable = |reason: String| AudioError::Unreadable { path: name.clone(), reason };
    let mut reader = hound::WavReader::open(path).map_err(|e| unreadable(e.to_string()))?;
    let spec = reader.spec();
    let (rate, count) = (spec.sample_rate, usize::from(spec.channels));
    if rate == 0 || count == 0 {
        return Err(unreadable("its header says 0 Hz or 0 channels".into()));
    }
    let seconds = f64::from(reader.duration()) / f64::from(rate);
    if seconds > MAX_SECONDS {
        return Err(AudioError::TooLong { path: name, seconds, max: MAX_SECONDS });
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => {
            reader.samples::<f32>().collect::<Result<_, _>>().map_err(|e| unreadable(e.to_string()))?
        }
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable(e.to_string()))?
        }
        (format, bits) => {
            let format = if format == hound::SampleFormat::Float { "float" } else { "integer" };
            return Err(AudioError::Format { path: name, bits, format });
        }
    };
    if interleaved.len() < count {
        return Err(AudioError::Empty { path: name });
    }
    let frames = interleaved.len() / count;
    let channels = (0..count).map(|c| (0..frames).map(|i| interleaved[i * count + c]).collect()).collect();
    Ok(Clip { sample_rate: rate, channels })
}

/// Writes 16-bit PCM (samples clipped to [-1, 1]) atomically: a temporary file, then a rename.
pub fn write_wav(path: &Path, clip: &Clip) -> Result<(), AudioError> {
    let name = path.display().to_string();
    let failed = |reason: String| AudioError::Write { path: name.clone(), reason };
    let spec = hound::WavSpec {
        channels: clip.channels.len().max(1) as u16,
        sample_rate: clip.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let temporary = path.with_extension("wav.partial");
    let mut writer = hound::WavWriter::create(&temporary, spec).map_err(|e| failed(e.to_string()))?;
    for i in 0..clip.frames() {
        for channel in &clip.channels {
            let sample = (channel[i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
            writer.write_sample(sample).map_err(|e| failed(e.to_string()))?;
        }
    }
    writer.finalize().map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&temporary, path).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, seconds: f64) -> Vec<f32> {
        (0..(f64::from(rate) * seconds) as usize)
            .map(|i| (0.5 * (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    #[test]
    fn wav_files_round_trip_and_bad_ones_are_named() {
        let folder = std::env::temp_dir().join(format!("ds-wav-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("folder");
        let clip =
            Clip { sample_rate: 22_050, channels: vec![sine(22_050, 440.0, 0.5), sine(22_050, 660.0, 0.5)] };
        let path = folder.join("two.wav");
        write_wav(&path, &clip).expect("writes");
        let back = read_wav(&path).expect("reads");
        assert_eq!((back.sample_rate, back.channels.len(), back.frames()), (22_050, 2, 11_025));
        let worst =
            clip.channels[1].iter().zip(&back.channels[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1.0 / 32767.0, "16-bit rounding only: {worst}");
        assert_eq!(back.mono().len(), 11_025);
        // not a WAV, empty, and a header with no samples
        let junk = folder.join("junk.wav");
        std::fs::write(&junk, b"definitely not RIFF").expect("write");
        let error = read_wav(&junk).expect_err("refused").to_string();
        assert!(error.contains("junk.wav") && error.contains("not a readable WAV"), "{error}");
        let empty = folder.join("empty.wav");
        write_wav(&empty, &Clip { sample_rate: 8_000, channels: vec![Vec::new()] }).expect("writes");
        let error = read_wav(&empty).expect_err("refused").to_string();
        assert!(error.contains("empty.wav") && error.contains("no samples"), "{error}");
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn resampling_keeps_the_length_in_time_and_the_pitch() {
        let clip = Clip { sample_rate: 48_000, channels: vec![sine(48_000, 1_000.0, 1.0)] };
        let down = clip.resampled(16_000).expect("resamples");
        assert_eq!((down.sample_rate, down.frames()), (16_000, 16_000));
        // still a 1 kHz sine: 2000 zero crossings a second, and the same level
        let crossings = down.channels[0].windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        assert!((1_990..=2_010).contains(&crossings), "{crossings} zero crossings");
        let middle = &down.channels[0][2_000..14_000];
        let rms = (middle.iter().map(|s| s * s).sum::<f32>() / middle.len() as f32).sqrt();
        assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.01, "rms {rms}");
    }

    #[test]
    fn clips_a_whole_number_of_chunks_long_resample_too() {
        // 65536 frames: 64 chunks of 1024 and nothing left over (the bundled model's clips)
        let clip = Clip { sample_rate: 16_000, channels: vec![vec![0.25; 65_536]] };
        let up = clip.resampled(44_100).expect("resamples");
        assert_eq!(up.frames(), (65_536.0f64 * 44_100.0 / 16_000.0).round() as usize);
    }
}
