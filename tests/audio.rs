//! The spectrogram presets against torchaudio's numbers (tests/fixtures/audio/presets.json, made
//! by make_presets.py beside it from the same test signal).

use diffusion_studio::engine::spectrogram::{Spectrogram, SpectrogramPreset, reference_signal};
use tch::Device;

#[test]
fn every_preset_matches_torchaudio_on_the_recorded_signal() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audio/presets.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the fixture")).expect("json");
    for preset in SpectrogramPreset::all() {
        let recorded = &fixture["presets"][preset.name];
        let seconds = recorded["seconds"].as_f64().expect("seconds");
        let spectrogram = Spectrogram::new(preset.clone(), Device::Cpu).expect("tensors");
        let mel = spectrogram.mel(&reference_signal(preset.sample_rate, seconds)).expect("mel");
        let shape: Vec<i64> =
            recorded["shape"].as_array().expect("shape").iter().filter_map(|v| v.as_i64()).collect();
        assert_eq!(mel.size(), shape, "{}", preset.name);
        let peak = recorded["max"].as_f64().expect("max");
        let ours_peak = f64::try_from(mel.max()).expect("a number");
        assert!((ours_peak - peak).abs() <= 1e-4 * peak, "{}: peak {ours_peak} vs {peak}", preset.name);
        let sum = recorded["sum"].as_f64().expect("sum");
        let ours_sum = f64::try_from(mel.sum(tch::Kind::Double)).expect("a number");
        assert!((ours_sum - sum).abs() <= 1e-4 * sum, "{}: sum {ours_sum} vs {sum}", preset.name);
        for point in recorded["points"].as_array().expect("points") {
            let (m, f, value) = (
                point[0].as_i64().expect("mel"),
                point[1].as_i64().expect("frame"),
                point[2].as_f64().expect("value"),
            );
            let ours = f64::try_from(mel.get(m).get(f)).expect("a number");
            assert!(
                (ours - value).abs() <= 1e-5 * peak + 1e-3 * value.abs(),
                "{} at mel {m}, frame {f}: {ours} vs torchaudio {value}",
                preset.name
            );
        }
    }
}
