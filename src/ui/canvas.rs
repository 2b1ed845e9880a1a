//! The central canvas: the view transform (pan and zoom, in plain math that tests can check) and
//! its wgpu renderer, a paint callback drawing the image with `shaders/canvas.wgsl`.

use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu};
use egui::{Pos2, Rect, Vec2};

/// Zoom range, in screen points per image pixel.
pub const MIN_ZOOM: f32 = 1.0 / 64.0;
pub const MAX_ZOOM: f32 = 64.0;

/// Where the image sits on the canvas: a zoom and an offset of the image's centre from the
/// canvas's centre. Pure math; no GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanvasView {
    /// Screen points per image pixel.
    pub zoom: f32,
    /// Image centre minus canvas centre, in points.
    pub offset: Vec2,
    /// Fit the image to the canvas on the next frame (set when an image opens).
    pub fit_pending: bool,
}

impl Default for CanvasView {
    fn default() -> Self {
        Self { zoom: 1.0, offset: Vec2::ZERO, fit_pending: true }
    }
}

impl CanvasView {
    /// Shows the whole image, centred, as large as the canvas allows.
    pub fn fit(&mut self, image_size: Vec2, canvas: Rect) {
        if image_size.x > 0.0 && image_size.y > 0.0 && canvas.width() > 0.0 && canvas.height() > 0.0 {
            let zoom = (canvas.width() / image_size.x).min(canvas.height() / image_size.y);
            self.zoom = zoom.clamp(MIN_ZOOM, MAX_ZOOM);
        }
        self.offset = Vec2::ZERO;
        self.fit_pending = false;
    }

    /// One image pixel per screen point, centred.
    pub fn actual_size(&mut self) {
        self.zoom = 1.0;
        self.offset = Vec2::ZERO;
        self.fit_pending = false;
    }

    pub fn pan(&mut self, delta: Vec2) {
        self.offset += delta;
    }

    /// Multiplies the zoom by `factor`, keeping the image point under `anchor` (a screen
    /// position) where it is.
    pub fn zoom_at(&mut self, factor: f32, anchor: Pos2, canvas: Rect) {
        let new_zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        let applied = new_zoom / self.zoom;
        let anchor_from_image_centre = anchor - (canvas.center() + self.offset);
        self.offset += anchor_from_image_centre - anchor_from_image_centre * applied;
        self.zoom = new_zoom;
    }

    /// Zooms about the canvas centre (menu and keyboard zoom).
    pub fn zoom_at_centre(&mut self, factor: f32) {
        let new_zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        self.offset *= new_zoom / self.zoom;
        self.zoom = new_zoom;
    }

    /// The image's rectangle on screen.
    pub fn image_rect(&self, image_size: Vec2, canvas: Rect) -> Rect {
        Rect::from_center_size(canvas.center() + self.offset, image_size * self.zoom)
    }

    /// The image pixel coordinate under a screen position (may lie outside the image).
    pub fn image_pos_from_screen(&self, screen: Pos2, image_size: Vec2, canvas: Rect) -> Pos2 {
        let rect = self.image_rect(image_size, canvas);
        Pos2::new((screen.x - rect.min.x) / self.zoom, (screen.y - rect.min.y) / self.zoom)
    }
}

/// The uniform block of `canvas.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ViewUniform {
    image_ndc: [f32; 4],
    params: [f32; 4],
}

/// An image to upload, shared with the document without copying.
#[derive(Clone)]
pub struct CanvasImage {
    /// Changes whenever the pixels change; the texture is re-uploaded then.
    pub revision: u64,
    pub image: Arc<image::RgbaImage>,
}

/// GPU state of the canvas, kept in egui_wgpu's callback resources.
pub struct CanvasRenderer {
    pipeline: wgpu::RenderPipeline,
    bind_group_layout: wgpu::BindGroupLayout,
    uniform_buffer: wgpu::Buffer,
    linear_sampler: wgpu::Sampler,
    nearest_sampler: wgpu::Sampler,
    texture_format: wgpu::TextureFormat,
    /// The uploaded image: its revision and the bind group that samples it.
    uploaded: Option<(u64, wgpu::BindGroup)>,
}

impl CanvasRenderer {
    /// Builds the pipeline and stores it in `render_state`'s callback resources.
    pub fn install(render_state: &egui_wgpu::RenderState) {
        let renderer = Self::new(&render_state.device, render_state.target_format);
        render_state.renderer.write().callback_resources.insert(renderer);
    }

    fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("canvas.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/canvas.wgsl").into()),
        });
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("canvas"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("canvas"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("canvas"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState {
                topology: wgpu::PrimitiveTopology::TriangleStrip,
                ..Default::default()
            },
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: target_format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });
        let uniform_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("canvas view"),
            size: std::mem::size_of::<ViewUniform>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let sampler = |filter: wgpu::FilterMode| {
            device.create_sampler(&wgpu::SamplerDescriptor {
                label: Some("canvas"),
                mag_filter: filter,
                min_filter: filter,
                ..Default::default()
            })
        };
        // Sample sRGB-encoded pixels so that an sRGB target re-encodes them unchanged; egui's
        // usual linear-format target takes the bytes as they are.
        let texture_format = if target_format.is_srgb() {
            wgpu::TextureFormat::Rgba8UnormSrgb
        } else {
            wgpu::TextureFormat::Rgba8Unorm
        };
        Self {
            pipeline,
            bind_group_layout,
            uniform_buffer,
            linear_sampler: sampler(wgpu::FilterMode::Linear),
            nearest_sampler: sampler(wgpu::FilterMode::Nearest),
            texture_format,
            uploaded: None,
        }
    }

    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, canvas_image: &CanvasImage) {
        let limit = device.limits().max_texture_dimension_2d;
        let source = canvas_image.image.as_ref();
        let scaled;
        let image = if source.width() > limit || source.height() > limit {
            // Larger than the GPU can hold in one texture: show a downscaled copy.
            let scale = limit as f32 / source.width().max(source.height()) as f32;
            let width = ((source.width() as f32 * scale) as u32).max(1);
            let height = ((source.height() as f32 * scale) as u32).max(1);
            scaled = image::imageops::resize(source, width, height, image::imageops::FilterType::Triangle);
            &scaled
        } else {
            source
        };
        let size = wgpu::Extent3d {
            width: image.width().max(1),
            height: image.height().max(1),
            depth_or_array_layers: 1,
        };
        let texture = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("canvas image"),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: self.texture_format,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        if image.width() > 0 && image.height() > 0 {
            queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                image.as_raw(),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(4 * image.width()),
                    rows_per_image: Some(image.height()),
                },
                size,
            );
        }
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("canvas"),
            layout: &self.bind_group_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.uniform_buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view) },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Sampler(&self.linear_sampler),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::Sampler(&self.nearest_sampler),
                },
            ],
        });
        self.uploaded = Some((canvas_image.revision, bind_group));
    }
}

/// One frame's drawing of the canvas image.
pub struct CanvasCallback {
    pub image: CanvasImage,
    /// The image rectangle in the callback viewport's normalized device coordinates.
    pub image_ndc: [f32; 4],
    pub nearest: bool,
    pub checker_px: f32,
}

impl CanvasCallback {
    /// The paint callback for `image` drawn at `image_rect` inside `canvas`.
    pub fn new(image: CanvasImage, image_rect: Rect, canvas: Rect, zoom: f32, pixels_per_point: f32) -> Self {
        let to_ndc_x = |x: f32| (x - canvas.min.x) / canvas.width() * 2.0 - 1.0;
        let to_ndc_y = |y: f32| 1.0 - (y - canvas.min.y) / canvas.height() * 2.0;
        Self {
            image,
            image_ndc: [
                to_ndc_x(image_rect.min.x),
                to_ndc_y(image_rect.min.y),
                to_ndc_x(image_rect.max.x),
                to_ndc_y(image_rect.max.y),
            ],
            nearest: zoom * pixels_per_point >= 2.0,
            checker_px: 8.0 * pixels_per_point,
        }
    }
}

impl egui_wgpu::CallbackTrait for CanvasCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen_descriptor: &egui_wgpu::ScreenDescriptor,
        _egui_encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(renderer) = resources.get_mut::<CanvasRenderer>() else {
            return Vec::new();
        };
        let stale = renderer.uploaded.as_ref().is_none_or(|(revision, _)| *revision != self.image.revision);
        if stale {
            renderer.upload(device, queue, &self.image);
        }
        let uniform = ViewUniform {
            image_ndc: self.image_ndc,
            params: [if self.nearest { 1.0 } else { 0.0 }, self.checker_px, 0.0, 0.0],
        };
        queue.write_buffer(&renderer.uniform_buffer, 0, bytemuck::bytes_of(&uniform));
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(renderer) = resources.get::<CanvasRenderer>() else { return };
        let Some((_, bind_group)) = renderer.uploaded.as_ref() else { return };
        render_pass.set_pipeline(&renderer.pipeline);
        render_pass.set_bind_group(0, bind_group, &[]);
        render_pass.draw(0..4, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canvas() -> Rect {
        Rect::from_min_size(Pos2::new(100.0, 50.0), Vec2::new(800.0, 600.0))
    }

    #[test]
    fn fit_shows_the_whole_image_centred() {
        let mut view = CanvasView::default();
        view.fit(Vec2::new(1600.0, 600.0), canvas());
        assert_eq!(view.zoom, 0.5);
        let rect = view.image_rect(Vec2::new(1600.0, 600.0), canvas());
        assert_eq!(rect.center(), canvas().center());
        assert!(canvas().contains_rect(rect));
        assert!(!view.fit_pending);
    }

    #[test]
    fn zoom_keeps_the_point_under_the_cursor() {
        let mut view = CanvasView { zoom: 1.0, offset: Vec2::new(30.0, -20.0), fit_pending: false };
        let size = Vec2::new(512.0, 512.0);
        let anchor = Pos2::new(333.0, 222.0);
        let before = view.image_pos_from_screen(anchor, size, canvas());
        view.zoom_at(2.5, anchor, canvas());
        let after = view.image_pos_from_screen(anchor, size, canvas());
        assert_eq!(view.zoom, 2.5);
        assert!((before - after).length() < 1e-3, "{before:?} vs {after:?}");
    }

    #[test]
    fn zoom_is_clamped() {
        let mut view = CanvasView::default();
        view.zoom_at(1e6, canvas().center(), canvas());
        assert_eq!(view.zoom, MAX_ZOOM);
        view.zoom_at(1e-9, canvas().center(), canvas());
        assert_eq!(view.zoom, MIN_ZOOM);
    }

    #[test]
    fn pan_moves_the_image_by_the_drag() {
        let mut view = CanvasView::default();
        let size = Vec2::new(100.0, 100.0);
        let before = view.image_rect(size, canvas());
        view.pan(Vec2::new(12.0, -7.0));
        assert_eq!(view.image_rect(size, canvas()).min, before.min + Vec2::new(12.0, -7.0));
    }

    #[test]
    fn ndc_of_a_centred_half_size_image() {
        let canvas = canvas();
        let rect = Rect::from_center_size(canvas.center(), canvas.size() * 0.5);
        let image = CanvasImage { revision: 0, image: Arc::new(image::RgbaImage::new(1, 1)) };
        let callback = CanvasCallback::new(image, rect, canvas, 1.0, 1.0);
        assert_eq!(callback.image_ndc, [-0.5, 0.5, 0.5, -0.5]);
    }
}
