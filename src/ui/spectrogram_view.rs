//! The audio room's views: which stretch of time is shown (plain math that tests check), the
//! colormap, ruler ticks, the waveform's envelope, and the wgpu renderer of the spectrogram with
//! `shaders/spectrogram.wgsl` (a CPU-coloured texture stands in where there is no wgpu).

use eframe::egui_wgpu::{self, wgpu};
use egui::{Pos2, Rect};

use crate::ui::canvas;

/// The stretch of time the views show: `start` seconds at the left edge, `span` seconds wide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeView {
    pub start: f64,
    pub span: f64,
}

/// The narrowest view: 50 ms.
pub const MIN_SPAN: f64 = 0.05;

impl TimeView {
    /// The whole of a `duration`-second clip.
    pub fn whole(duration: f64) -> Self {
        Self { start: 0.0, span: duration.max(MIN_SPAN) }
    }

    /// The second at screen x inside `rect`.
    pub fn seconds_at(&self, x: f32, rect: Rect) -> f64 {
        self.start + f64::from((x - rect.min.x) / rect.width().max(1.0)) * self.span
    }

    /// The screen x of `seconds` inside `rect` (may lie outside it).
    pub fn x_of(&self, seconds: f64, rect: Rect) -> f32 {
        rect.min.x + ((seconds - self.start) / self.span) as f32 * rect.width()
    }

    /// Zooms by `factor` (> 1 zooms in) keeping the second under `x` where it is; the view stays
    /// inside the clip.
    pub fn zoom_at(&mut self, factor: f64, x: f32, rect: Rect, duration: f64) {
        let anchor = self.seconds_at(x, rect);
        let share = (anchor - self.start) / self.span;
        self.span = (self.span / factor.max(1e-6)).clamp(MIN_SPAN, duration.max(MIN_SPAN));
        self.start = anchor - share * self.span;
        self.clamp(duration);
    }

    /// Scrolls by `seconds`, staying inside the clip.
    pub fn scroll(&mut self, seconds: f64, duration: f64) {
        self.start += seconds;
        self.clamp(duration);
    }

    /// Keeps `seconds` in view, scrolling by whole pages (the playhead while playing).
    pub fn follow(&mut self, seconds: f64, duration: f64) {
        if seconds < self.start || seconds > self.start + self.span {
            self.start = seconds - 0.05 * self.span;
            self.clamp(duration);
        }
    }

    fn clamp(&mut self, duration: f64) {
        self.span = self.span.clamp(MIN_SPAN, duration.max(MIN_SPAN));
        self.start = self.start.clamp(0.0, (duration - self.span).max(0.0));
    }
}

/// The ramp of `shaders/spectrogram.wgsl`: five stops from near-black through violet and red to
/// pale yellow, for loudness `t` in [0, 1].
pub fn colormap(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] =
        [[0.02, 0.01, 0.06], [0.30, 0.06, 0.46], [0.76, 0.16, 0.36], [0.98, 0.55, 0.16], [1.00, 0.97, 0.74]];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        let v = STOPS[i][c] + (STOPS[i + 1][c] - STOPS[i][c]) * f;
        *out = (v * 255.0).round() as u8;
    }
    rgb
}

/// A grey spectrogram (dark = loud) coloured by [`colormap`], as the CPU fallback draws it.
pub fn coloured(grey: &image::RgbaImage) -> egui::ColorImage {
    let pixels = grey
        .pixels()
        .map(|p| {
            let [r, g, b] = colormap(1.0 - f32::from(p[0]) / 255.0);
            egui::Color32::from_rgb(r, g, b)
        })
        .collect();
    egui::ColorImage {
        size: [grey.width() as usize, grey.height() as usize],
        pixels,
        source_size: Default::default(),
    }
}

/// A ruler's tick spacing: the smallest of 1, 2, 5 × 10^k that leaves at least `min_gap`
/// points between ticks when `span` units cover `width` points.
pub fn tick_step(span: f64, width: f32, min_gap: f32) -> f64 {
    let per_point = span / f64::from(width.max(1.0));
    let wanted = per_point * f64::from(min_gap);
    let mut step = 10f64.powf(wanted.max(1e-9).log10().floor());
    for multiple in [1.0, 2.0, 5.0, 10.0] {
        if step * multiple >= wanted {
            step *= multiple;
            break;
        }
    }
    step
}

/// The waveform's envelope: for each of `columns` columns over `start..end` seconds of `samples`
/// (at `rate`), the lowest and highest sample.
pub fn envelope(samples: &[f32], rate: u32, start: f64, end: f64, columns: usize) -> Vec<(f32, f32)> {
    let rate = f64::from(rate);
    (0..columns)
        .map(|c| {
            let from = ((start + (end - start) * c as f64 / columns as f64) * rate).max(0.0) as usize;
            let to = ((start + (end - start) * (c + 1) as f64 / columns as f64) * rate).max(0.0) as usize;
            let (from, to) = (from.min(samples.len()), to.max(from + 1).min(samples.len()));
            samples[from..to].iter().fold((0f32, 0f32), |(lo, hi), s| (lo.min(*s), hi.max(*s)))
        })
        .collect()
}

/// The uniform block of `spectrogram.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ViewUniform {
    rect_ndc: [f32; 4],
    uv: [f32; 4],
    selection: [f32; 4],
    flags: [f32; 4],
}

/// The spectrogram's GPU state, in egui_wgpu's callback resources.
pub struct SpectrogramRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    uniform: wgpu::Buffer,
    sampler: wgpu::Sampler,
    /// The uploaded spectrogram's id and bind group.
    texture: Option<(u64, wgpu::BindGroup)>,
}

impl SpectrogramRenderer {
    pub fn install(render_state: &egui_wgpu::RenderState) {
        let device = &render_state.device;
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("spectrogram.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/spectrogram.wgsl").into()),
        });
        let layout = canvas::uniform_and_textures_layout(
            device,
            "spectrogram",
            &[canvas::texture_entry(1), canvas::sampler_entry(2)],
        );
        let pipeline =
            canvas::quad_pipeline(device, "spectrogram", &shader, &layout, render_state.target_format);
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("spectrogram view"),
            size: std::mem::size_of::<ViewUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("spectrogram"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        let renderer = Self { pipeline, layout, uniform, sampler, texture: None };
        render_state.renderer.write().callback_resources.insert(renderer);
    }

    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, id: u64, grey: &image::RgbaImage) {
        let limit = device.limits().max_texture_dimension_2d.max(1);
        // a long clip keeps every n-th column (the view never shows more columns than pixels)
        let step = grey.width().div_ceil(limit).max(1);
        let (width, height) = (grey.width().div_ceil(step).max(1), grey.height().clamp(1, limit));
        let mut red = vec![0u8; (width * height) as usize];
        for y in 0..height.min(grey.height()) {
            for x in 0..width {
                let source = (x * step).min(grey.width().saturating_sub(1));
                if grey.width() > 0 {
                    red[(y * width + x) as usize] = grey.get_pixel(source, y)[0];
                }
            }
        }
        let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
        let texture = canvas::r8_texture(device, "spectrogram", size);
        canvas::write_whole(queue, &texture, &red, width, size);
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("spectrogram"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.uniform.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
                wgpu::BindGroupEntry { binding: 2, resource: wgpu::BindingResource::Sampler(&self.sampler) },
            ],
        });
        self.texture = Some((id, group));
    }
}

/// One frame's spectrogram: the image (by id), where it is drawn, which stretch, the selection.
pub struct SpectrogramCallback {
    pub id: u64,
    pub grey: std::sync::Arc<image::RgbaImage>,
    rect_ndc: [f32; 4],
    /// u at the left and right edges.
    pub uv: [f32; 2],
    /// u0, u1, v0, v1 of the selection, if one is shown.
    pub selection: Option<[f32; 4]>,
    width_px: f32,
}

impl SpectrogramCallback {
    pub fn new(
        id: u64,
        grey: std::sync::Arc<image::RgbaImage>,
        rect: Rect,
        uv: [f32; 2],
        selection: Option<[f32; 4]>,
        pixels_per_point: f32,
    ) -> Self {
        // the callback's viewport is `rect` itself
        Self {
            id,
            grey,
            rect_ndc: [-1.0, 1.0, 1.0, -1.0],
            uv,
            selection,
            width_px: rect.width() * pixels_per_point,
        }
    }
}

impl egui_wgpu::CallbackTrait for SpectrogramCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(renderer) = resources.get_mut::<SpectrogramRenderer>() else { return Vec::new() };
        if renderer.texture.as_ref().is_none_or(|(id, _)| *id != self.id) {
            renderer.upload(device, queue, self.id, &self.grey);
        }
        let uniform = ViewUniform {
            rect_ndc: self.rect_ndc,
            uv: [self.uv[0], self.uv[1], 0.0, 0.0],
            selection: self.selection.unwrap_or_default(),
            flags: [if self.selection.is_some() { 1.0 } else { 0.0 }, self.width_px, 0.0, 0.0],
        };
        queue.write_buffer(&renderer.uniform, 0, bytemuck::bytes_of(&uniform));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(renderer) = resources.get::<SpectrogramRenderer>() else { return };
        if let Some((_, group)) = renderer.texture.as_ref() {
            canvas::draw_quad(render_pass, &renderer.pipeline, group);
        }
    }
}

/// Where a point of the view lands: seconds and (for the spectrogram) the row's frequency.
pub fn frequency_at(y: f32, rect: Rect, row_hz: &[f64]) -> Option<f64> {
    if row_hz.is_empty() {
        return None;
    }
    let row = (((y - rect.min.y) / rect.height().max(1.0)) * row_hz.len() as f32).floor();
    Some(row_hz[(row.max(0.0) as usize).min(row_hz.len() - 1)])
}

/// The y of frequency `hz` in a view of `row_hz` rows (top row first) inside `rect`.
pub fn y_of_frequency(hz: f64, rect: Rect, row_hz: &[f64]) -> f32 {
    let rows = row_hz.len().max(1) as f32;
    let descending = row_hz.first() >= row_hz.last();
    let index =
        if descending { row_hz.iter().position(|r| *r <= hz) } else { row_hz.iter().position(|r| *r > hz) };
    let row = match index {
        Some(i) => i as f32,
        None => rows,
    };
    rect.min.y + row / rows * rect.height()
}

/// A point clamped into `rect`.
pub fn clamp_to(rect: Rect, at: Pos2) -> Pos2 {
    Pos2::new(at.x.clamp(rect.min.x, rect.max.x), at.y.clamp(rect.min.y, rect.max.y))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect() -> Rect {
        Rect::from_min_size(Pos2::new(100.0, 0.0), egui::vec2(800.0, 200.0))
    }

    #[test]
    fn zooming_keeps_the_time_under_the_pointer_and_stays_in_the_clip() {
        let mut view = TimeView::whole(8.0);
        let x = 300.0; // a quarter in: 2 s
        assert!((view.seconds_at(x, rect()) - 2.0).abs() < 1e-9);
        view.zoom_at(4.0, x, rect(), 8.0);
        assert!((view.span - 2.0).abs() < 1e-9);
        assert!((view.seconds_at(x, rect()) - 2.0).abs() < 1e-6);
        view.scroll(100.0, 8.0);
        assert_eq!(view.start, 6.0);
        view.zoom_at(0.001, x, rect(), 8.0);
        assert_eq!(view, TimeView::whole(8.0));
        view.zoom_at(1e9, x, rect(), 8.0);
        assert_eq!(view.span, MIN_SPAN);
        // following the playhead pages to it
        let mut view = TimeView { start: 0.0, span: 2.0 };
        view.follow(5.0, 8.0);
        assert!(view.start <= 5.0 && view.start + view.span >= 5.0);
    }

    #[test]
    fn the_colormap_runs_dark_to_light_and_matches_its_stops() {
        assert_eq!(colormap(0.0), [5, 3, 15]);
        assert_eq!(colormap(1.0), [255, 247, 189]);
        let luma = |t: f32| {
            let [r, g, b] = colormap(t);
            0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
        };
        for i in 0..20 {
            let t = i as f32 / 20.0;
            assert!(luma(t + 0.05) > luma(t), "not brighter at {t}");
        }
    }

    #[test]
    fn ticks_envelopes_and_frequencies() {
        assert_eq!(tick_step(4.0, 800.0, 60.0), 0.5);
        assert_eq!(tick_step(60.0, 800.0, 60.0), 5.0);
        let samples = [0.0, 1.0, -0.5, 0.2, 0.0, -1.0, 0.3, 0.1];
        let columns = envelope(&samples, 4, 0.0, 2.0, 2);
        assert_eq!(columns, vec![(-0.5, 1.0), (-1.0, 0.3)]);
        let rows = [4000.0, 2000.0, 1000.0, 500.0];
        assert_eq!(frequency_at(10.0, rect(), &rows), Some(4000.0));
        assert_eq!(frequency_at(199.0, rect(), &rows), Some(500.0));
        assert_eq!(y_of_frequency(1500.0, rect(), &rows), 100.0);
    }
}
