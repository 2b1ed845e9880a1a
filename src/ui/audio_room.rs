//! The audio room: spectrogram clips to generate, see, play and edit.

use crate::protocol::AudioClip;

/// What the audio room holds.
#[derive(Default)]
pub struct AudioRoom {
    /// The clip shown and played.
    pub clip: Option<AudioClip>,
    /// The clip before the last result (A/B).
    pub previous: Option<AudioClip>,
}

impl AudioRoom {
    /// A finished job's clip becomes the current one; the current one is kept for A/B.
    pub fn set_result(&mut self, clip: AudioClip) {
        self.previous = self.clip.take();
        self.clip = Some(clip);
    }
}
