//! Playback (issue 7): a [`Player`] that the audio callback runs — it never blocks, locks or
//! allocates — controlled from the UI thread through a [`Transport`] of bounded channels and
//! atomics; and the outputs that run it: cpal's default device, or a null output for tests and
//! for machines with no sound card.
//!
//! The UI sends commands (load a clip, play, pause, seek, loop a range) into a bounded channel;
//! the callback applies them at the start of each buffer. A clip it replaces goes back to the UI
//! thread through a second channel to be freed there, so the callback never frees memory either.
//! The playhead is an atomic the UI reads every frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Mono samples at the output's rate, shared between the UI and the callback.
pub type Samples = Arc<[f32]>;

/// What the UI asks the callback to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Play this clip from its start (paused).
    Load(Samples),
    Play,
    Pause,
    /// Move the playhead to this frame.
    Seek(u64),
    /// Loop frames [start, end) while playing; None plays to the end and stops.
    Loop(Option<(u64, u64)>),
}

/// The state the callback shares with the UI without locks.
#[derive(Debug, Default)]
pub struct Shared {
    /// The frame the callback will play next.
    pub position: AtomicU64,
    pub playing: AtomicBool,
    /// Frames of the loaded clip.
    pub length: AtomicU64,
}

/// The UI's end: commands in, replaced clips back out (to free), the playhead.
pub struct Transport {
    commands: Sender<Command>,
    retired: Receiver<Samples>,
    pub shared: Arc<Shared>,
}

impl Transport {
    /// Sends a command; false when the callback is that far behind (the queue holds 64).
    pub fn send(&self, command: Command) -> bool {
        // free what the callback has let go of
        while self.retired.try_recv().is_ok() {}
        !matches!(self.commands.try_send(command), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)))
    }

    pub fn position(&self) -> u64 {
        self.shared.position.load(Ordering::Relaxed)
    }

    pub fn playing(&self) -> bool {
        self.shared.playing.load(Ordering::Relaxed)
    }
}

/// The callback's end: renders output buffers from the loaded clip.
pub struct Player {
    commands: Receiver<Command>,
    retired: Sender<Samples>,
    shared: Arc<Shared>,
    clip: Option<Samples>,
    position: u64,
    playing: bool,
    looped: Option<(u64, u64)>,
}

/// A player and the transport that controls it.
pub fn player() -> (Player, Transport) {
    let (commands_in, commands) = crossbeam_channel::bounded(64);
    let (retired, retired_out) = crossbeam_channel::bounded(64);
    let shared = Arc::new(Shared::default());
    let player = Player {
        commands,
        retired,
        shared: Arc::clone(&shared),
        clip: None,
        position: 0,
        playing: false,
        looped: None,
    };
    (player, Transport { commands: commands_in, retired: retired_out, shared })
}

impl Player {
    /// Fills `out` (interleaved, `channels` per frame) with the next frames; silence when
    /// paused or past the end. Never blocks, locks or allocates.
    pub fn render(&mut self, out: &mut [f32], channels: usize) {
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
        }
        let channels = channels.max(1);
        let Some(clip) = &self.clip else {
            out.fill(0.0);
            return;
        };
        let length = clip.len() as u64;
        for frame in out.chunks_mut(channels) {
            let mut sample = 0.0;
            if self.playing {
                if let Some((start, end)) = self.looped
                    && self.position >= end
                {
                    self.position = start;
                }
                if self.position < length {
                    sample = clip[self.position as usize];
                    self.position += 1;
                } else {
                    self.playing = false;
                }
            }
            frame.fill(sample);
        }
        self.shared.position.store(self.position, Ordering::Relaxed);
        self.shared.playing.store(self.playing, Ordering::Relaxed);
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Load(clip) => {
                self.shared.length.store(clip.len() as u64, Ordering::Relaxed);
                if let Some(old) = self.clip.replace(clip) {
                    // freed on the UI thread; if that queue is full, keep it rather than free here
                    if let Err(crossbeam_channel::TrySendError::Full(old)) = self.retired.try_send(old) {
                        self.clip = Some(old);
                        return;
                    }
                }
                self.position = 0;
                self.playing = false;
            }
            Command::Play => {
                let length = self.clip.as_ref().map_or(0, |c| c.len() as u64);
                if self.position >= length && self.looped.is_none() {
                    self.position = 0; // play again from the start
                }
                self.playing = self.clip.is_some();
            }
            Command::Pause => self.playing = false,
            Command::Seek(frame) => self.position = frame,
            Command::Loop(range) => {
                self.looped = range.filter(|(start, end)| end > start);
                if let Some((start, end)) = self.looped
                    && (self.position < start || self.position >= end)
                {
                    self.position = start;
                }
            }
        }
        self.shared.position.store(self.position, Ordering::Relaxed);
        self.shared.playing.store(self.playing, Ordering::Relaxed);
    }
}

/// Where a player's sound goes.
pub trait AudioOutput {
    /// Frames a second the output plays (clips must be resampled to it).
    fn sample_rate(&self) -> u32;
    /// A person-readable line: the device, or why there is none.
    fn describe(&self) -> String;
}

/// An output that plays nowhere: the studio's output with no sound card (everything else,
/// export included, still works), and the tests' (they pull buffers by hand).
pub struct NullOutput {
    pub player: Player,
    rate: u32,
    reason: String,
}

impl NullOutput {
    pub fn new(player: Player, rate: u32, reason: impl Into<String>) -> Self {
        Self { player, rate, reason: reason.into() }
    }

    /// Renders `frames` frames of `channels` channels, as a device's callback would ask.
    pub fn pull(&mut self, frames: usize, channels: usize) -> Vec<f32> {
        let mut out = vec![0.0; frames * channels];
        self.player.render(&mut out, channels);
        out
    }
}

impl AudioOutput for NullOutput {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn describe(&self) -> String {
        format!("no audio output ({}); playback is silent, export works", self.reason)
    }
}

/// The default cpal output device playing a [`Player`].
pub struct CpalOutput {
    _stream: cpal::Stream,
    rate: u32,
    name: String,
}

impl CpalOutput {
    /// Opens the default output device and starts its stream with `player` in the callback, or
    /// says why it cannot (no sound card, no usable configuration).
    pub fn open(mut player: Player) -> Result<Self, String> {
        use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
        if super::alsa_has_no_card() {
            return Err("ALSA lists no sound card".into());
        }
        let host = cpal::default_host();
        let device = host
            .default_output_device()
            .ok_or_else(|| format!("no output device ({} host)", host.id().name()))?;
        let name =
            device.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "unnamed device".into());
        let supported = device.default_output_config().map_err(|e| format!("{name}: {e}"))?;
        let config = supported.config();
        let channels = usize::from(config.channels);
        let error = |e: cpal::Error| tracing::warn!("audio output: {e}");
        let stream = match supported.sample_format() {
            cpal::SampleFormat::I16 => {
                // rendered in f32 through a buffer made here, once, in chunks of its size
                let mut scratch = vec![0f32; 8192 * channels];
                device.build_output_stream::<i16, _, _>(
                    config,
                    move |out: &mut [i16], _| {
                        for chunk in out.chunks_mut(scratch.len()) {
                            let rendered = &mut scratch[..chunk.len()];
                            player.render(rendered, channels);
                            for (o, s) in chunk.iter_mut().zip(rendered.iter()) {
                                *o = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
                            }
                        }
                    },
                    error,
                    None,
                )
            }
            _ => device.build_output_stream::<f32, _, _>(
                config,
                move |out: &mut [f32], _| player.render(out, channels),
                error,
                None,
            ),
        }
        .map_err(|e| format!("{name}: {e}"))?;
        stream.play().map_err(|e| format!("{name}: {e}"))?;
        Ok(Self { _stream: stream, rate: config.sample_rate, name })
    }
}

impl AudioOutput for CpalOutput {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn describe(&self) -> String {
        format!("{} at {} Hz", self.name, self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Samples {
        (0..n).map(|i| i as f32).collect::<Vec<_>>().into()
    }

    #[test]
    fn a_known_buffer_plays_in_order_on_every_channel_then_stops() {
        let (player, transport) = player();
        let mut output = NullOutput::new(player, 8_000, "test");
        assert!(transport.send(Command::Load(ramp(10))));
        assert_eq!(output.pull(4, 2), vec![0.0; 8], "loaded paused");
        transport.send(Command::Play);
        assert_eq!(output.pull(4, 2), vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(transport.position(), 4);
        let rest = output.pull(8, 1);
        assert_eq!(rest, vec![4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 0.0], "silence after the end");
        assert!(!transport.playing(), "stopped at the end");
        // Play again starts over
        transport.send(Command::Play);
        assert_eq!(output.pull(2, 1), vec![0.0, 1.0]);
    }

    #[test]
    fn a_loop_wraps_seek_moves_and_pause_holds() {
        let (player, transport) = player();
        let mut output = NullOutput::new(player, 8_000, "test");
        transport.send(Command::Load(ramp(100)));
        transport.send(Command::Loop(Some((10, 13))));
        transport.send(Command::Play);
        assert_eq!(output.pull(7, 1), vec![10.0, 11.0, 12.0, 10.0, 11.0, 12.0, 10.0]);
        transport.send(Command::Pause);
        assert_eq!(output.pull(3, 1), vec![0.0; 3]);
        assert_eq!(transport.position(), 11, "paused where it was");
        transport.send(Command::Loop(None));
        transport.send(Command::Seek(97));
        transport.send(Command::Play);
        assert_eq!(output.pull(5, 1), vec![97.0, 98.0, 99.0, 0.0, 0.0]);
    }

    #[test]
    fn a_replaced_clip_is_freed_on_the_ui_side() {
        let (player, transport) = player();
        let mut output = NullOutput::new(player, 8_000, "test");
        let first = ramp(5);
        transport.send(Command::Load(Arc::clone(&first)));
        output.pull(1, 1);
        transport.send(Command::Load(ramp(3)));
        output.pull(1, 1);
        // the callback handed the first clip back instead of dropping it
        assert_eq!(Arc::strong_count(&first), 2);
        transport.send(Command::Play); // sending also collects what came back
        assert_eq!(Arc::strong_count(&first), 1, "freed by the transport");
    }
}
