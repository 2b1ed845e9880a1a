//! Audio files and playback, with no tch and no egui: WAV files and resampling (`wav`), and what
//! the `info` command and the status bar say about the output device. Every cpal call is guarded: with no sound card the
//! default device exists but its configuration fails (see HEADLESS notes in README.md).

pub mod playback;
pub mod preset;
pub mod wav;

use cpal::traits::{DeviceTrait, HostTrait};

/// A person-readable line about the default audio output, or why there is none.
pub fn describe_output() -> String {
    if alsa_has_no_card() {
        return "no audio output device (ALSA lists no sound card)".into();
    }
    let host = cpal::default_host();
    let Some(device) = host.default_output_device() else {
        return format!("no audio output device ({} host)", host.id().name());
    };
    let name = device.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "unnamed device".into());
    match device.default_output_config() {
        Ok(config) => format!(
            "{name} ({} host), {} Hz, {} channels",
            host.id().name(),
            config.sample_rate(),
            config.channels()
        ),
        Err(error) => format!("no usable audio output: {name} ({} host): {error}", host.id().name()),
    }
}

/// True on Linux when ALSA's own configuration is in use and the kernel has no sound card (or no
/// ALSA at all): then opening the default device only prints ALSA's errors, so the studio does
/// not try.
pub(crate) fn alsa_has_no_card() -> bool {
    cfg!(target_os = "linux")
        && std::env::var_os("ALSA_CONFIG_PATH").is_none()
        && std::fs::read_to_string("/proc/asound/cards").map_or(true, |cards| cards.contains("no soundcards"))
}
