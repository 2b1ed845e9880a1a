//! `make bench`: the studio's frame time while painting on a 4096 × 4096 image (issue 6: ≤ 8 ms of
//! CPU work per frame at the 95th percentile; a stroke reaches the screen in the frame it is
//! painted). Ignored in `make test` (timings are benchmarks, not tests); run with
//! `cargo test --release --test ui_bench -- --ignored --nocapture`.
//!
//! What a frame costs here is the studio's whole UI pass on the CPU — input, painting the
//! frame's stroke segment into the mask, copying the changed rectangle for upload, laying out and
//! tessellating every panel — under egui_kittest without a GPU renderer (the wgpu upload of that
//! rectangle is the GPU's work and not counted).

use std::time::{Duration, Instant};

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::protocol::DeviceChoice;
use diffusion_studio::ui::StudioApp;
use egui_kittest::Harness;

#[test]
#[ignore = "a benchmark: make bench runs it"]
fn painting_frame_time_on_a_4096_image() {
    let path = std::env::temp_dir().join(format!("ds-bench-{}-4096.png", std::process::id()));
    let image =
        image::RgbaImage::from_fn(4096, 4096, |x, y| image::Rgba([(x / 16) as u8, (y / 16) as u8, 128, 255]));
    image.save(&path).expect("write the test image");
    let mut harness = Harness::builder().with_size(egui::vec2(1600.0, 1000.0)).build_eframe(|cc| {
        let engine = EngineHandle::spawn(DeviceChoice::Cpu, StudioApp::repaint_waker(&cc.egui_ctx));
        StudioApp::new(cc, engine)
    });
    harness.state_mut().open(path.clone());
    let start = Instant::now();
    while harness.state().document.image.is_none() || harness.state().pending_io > 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the image did not open");
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    harness.run_steps(3);
    // a large soft brush at 100% zoom: what a painter uses on a big image
    harness.state_mut().brush.radius = 60.0;
    harness.state_mut().brush.hardness = 0.5;
    harness.state_mut().execute(diffusion_studio::ui::UiCommand::ActualSize);
    harness.run_steps(2);

    let mut frames = Vec::new();
    let mut late = 0;
    let centre = egui::pos2(800.0, 500.0);
    for stroke in 0..6 {
        let button = |pos, pressed| egui::Event::PointerButton {
            pos,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        };
        let at = |i: usize| {
            let t = i as f32 / 60.0 * std::f32::consts::TAU;
            centre + egui::vec2(300.0 * t.cos(), 200.0 * (2.0 * t).sin() + stroke as f32 * 20.0 - 50.0)
        };
        harness.event(egui::Event::PointerMoved(at(0)));
        harness.event(button(at(0), true));
        harness.step();
        // a pointer moving 5–20 points a frame, as a hand does at 60 frames a second
        for i in 1..=60 {
            harness.event(egui::Event::PointerMoved(at(i)));
            let clock = Instant::now();
            harness.step();
            frames.push(clock.elapsed());
            // what the frame painted was taken for upload in that same frame
            late += usize::from(harness.state_mut().document.take_mask_dirty().is_some());
        }
        harness.event(button(at(60), false));
        harness.step();
    }
    let _ = std::fs::remove_file(&path);
    frames.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(frames[((frames.len() - 1) as f64 * q).round() as usize]);
    let painted =
        harness.state().document.mask.as_ref().map_or(0, |m| m.pixels().iter().filter(|&&v| v > 0).count());
    assert!(painted > 100_000, "the strokes painted the mask ({painted} pixels)");
    eprintln!(
        "paint-frames: frames {} p50 {:.2} ms p95 {:.2} ms max {:.2} ms late {} painted {}",
        frames.len(),
        pick(0.5),
        pick(0.95),
        ms(frames[frames.len() - 1]),
        late,
        painted
    );
}

/// An engine that answers any job with `STEPS` previews (a 512 × 512 image each, as a TAESD
/// preview of SD at 512² is), `GAP` apart, noting when it sent each, then a result.
struct PreviewRunner(std::sync::Arc<std::sync::Mutex<Vec<Instant>>>);

const STEPS: usize = 40;
const GAP: Duration = Duration::from_millis(25);

impl diffusion_studio::engine::JobRunner for PreviewRunner {
    fn device_report(&self) -> diffusion_studio::protocol::DeviceReport {
        diffusion_studio::protocol::DeviceReport {
            name: "bench".into(),
            description: "preview bench".into(),
            cuda_devices: 0,
        }
    }

    fn run(
        &mut self,
        _job: &diffusion_studio::protocol::Job,
        ctx: &mut diffusion_studio::engine::JobContext<'_>,
    ) -> Result<diffusion_studio::protocol::JobOutput, diffusion_studio::engine::JobError> {
        let image = |shade: u8| {
            diffusion_studio::protocol::ImageData::new(512, 512, [shade, 90, 200, 255].repeat(512 * 512))
                .map_err(diffusion_studio::engine::JobError::Failed)
        };
        for step in 1..=STEPS {
            std::thread::sleep(GAP);
            let preview = image(step as u8)?;
            if let Ok(mut sent) = self.0.lock() {
                sent.push(Instant::now());
            }
            ctx.progress(step, STEPS, Some(preview));
        }
        image(255).map(diffusion_studio::protocol::JobOutput::Image)
    }
}

/// Previews reach the canvas in the first frame after the engine emits them (issue 6): the
/// engine's event wakes the UI (a repaint request), and the frame it wakes takes the preview and
/// draws it. The loop below runs a frame only when one is asked for, as eframe does, and notes
/// when the frame that shows each step ends.
#[test]
#[ignore = "a benchmark: make bench runs it"]
fn previews_reach_the_canvas_in_the_next_frame() {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = std::sync::Arc::clone(&sent);
    let mut harness = Harness::builder().with_size(egui::vec2(1280.0, 800.0)).build_eframe(move |cc| {
        let waker = StudioApp::repaint_waker(&cc.egui_ctx);
        StudioApp::new(cc, EngineHandle::spawn_with(move || (PreviewRunner(recorder), None), waker))
    });
    let image = image::RgbaImage::from_pixel(512, 512, image::Rgba([40, 40, 40, 255]));
    let path = std::env::temp_dir().join(format!("ds-bench-{}-preview.png", std::process::id()));
    image.save(&path).expect("write the test image");
    harness.state_mut().open(path.clone());
    let start = Instant::now();
    while harness.state().document.image.is_none() || harness.state().pending_io > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the image did not open");
        harness.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    harness.run_steps(2);
    harness.state_mut().execute(diffusion_studio::ui::UiCommand::RunForwardNoise);
    // frames on demand until the job is done; when each step first shows, and in how many frames
    let mut shown: Vec<Option<Instant>> = vec![None; STEPS + 1];
    let mut frame_starts = Vec::new();
    let mut last_step = 0;
    let clock = Instant::now();
    loop {
        assert!(clock.elapsed() < Duration::from_secs(30), "the job did not finish");
        if !harness.ctx.has_requested_repaint() {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        frame_starts.push(Instant::now());
        harness.step();
        let step = harness.state().jobs.values().next().map_or(usize::MAX, |job| job.step);
        if step == usize::MAX {
            if last_step > 0 {
                break; // done
            }
            continue;
        }
        if step != last_step && step <= STEPS {
            shown[step] = Some(Instant::now());
            last_step = step;
        }
    }
    let _ = std::fs::remove_file(&path);
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(sent.len(), STEPS);
    let mut latencies = Vec::new();
    let (mut skipped, mut most_frames) = (0, 0);
    for (step, emitted) in (1..=STEPS).zip(&sent) {
        match shown[step] {
            Some(at) => {
                latencies.push(at.saturating_duration_since(*emitted));
                // the frames that began after the preview was sent, up to the one that showed it
                let frames = frame_starts.iter().filter(|start| **start >= *emitted && **start <= at).count();
                most_frames = most_frames.max(frames);
            }
            None => skipped += 1, // a later preview came before a frame (the newest is shown)
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    eprintln!(
        "preview-latency: previews {} shown {} p50 {:.2} ms p95 {:.2} ms max {:.2} ms frames-after-emit {}",
        STEPS,
        latencies.len(),
        pick(0.5),
        pick(0.95),
        ms(latencies[latencies.len() - 1]),
        most_frames,
    );
    assert!(skipped < STEPS / 2, "{skipped} of {STEPS} previews never showed");
}
