//! The central canvas: the view transform (pan and zoom, in plain math that tests can check) and
//! its wgpu renderer, a paint callback drawing the image, the mask overlay with its marching
//! edge, and the brush cursor with `shaders/canvas.wgsl`. The mask is uploaded by the rectangles
//! that changed, not whole.

use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu};
use egui::{Pos2, Rect, Vec2};

use crate::document::mask::PixelRect;

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
    /// The canvas size the view was last fitted to, while nobody zoomed or panned since: a
    /// fitted view fits again when the canvas changes size (a panel opening).
    pub fitted_to: Option<Vec2>,
}

impl Default for CanvasView {
    fn default() -> Self {
        Self { zoom: 1.0, offset: Vec2::ZERO, fit_pending: true, fitted_to: None }
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
        self.fitted_to = Some(canvas.size());
    }

    /// Whether the view should fit the image again this frame: asked to, or fitted to a canvas
    /// of another size.
    pub fn needs_fit(&self, canvas: Rect) -> bool {
        self.fit_pending || self.fitted_to.is_some_and(|size| (size - canvas.size()).length() > 0.5)
    }

    /// One image pixel per screen point, centred.
    pub fn actual_size(&mut self) {
        self.zoom = 1.0;
        self.offset = Vec2::ZERO;
        self.fit_pending = false;
        self.fitted_to = None;
    }

    pub fn pan(&mut self, delta: Vec2) {
        self.offset += delta;
        if delta != Vec2::ZERO {
            self.fitted_to = None;
        }
    }

    /// Multiplies the zoom by `factor`, keeping the image point under `anchor` (a screen
    /// position) where it is.
    pub fn zoom_at(&mut self, factor: f32, anchor: Pos2, canvas: Rect) {
        let new_zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        let applied = new_zoom / self.zoom;
        let anchor_from_image_centre = anchor - (canvas.center() + self.offset);
        self.offset += anchor_from_image_centre - anchor_from_image_centre * applied;
        self.zoom = new_zoom;
        self.fitted_to = None;
    }

    /// Zooms about the canvas centre (menu and keyboard zoom).
    pub fn zoom_at_centre(&mut self, factor: f32) {
        let new_zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        self.offset *= new_zoom / self.zoom;
        self.zoom = new_zoom;
        self.fitted_to = None;
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

    /// Pans so that this image pixel coordinate is at the canvas's centre (the minimap's click).
    pub fn centre_on(&mut self, point: Pos2, image_size: Vec2) {
        self.offset = (image_size * 0.5 - point.to_vec2()) * self.zoom;
        self.fit_pending = false;
        self.fitted_to = None;
    }
}

/// The minimap of an image too large for the canvas at its zoom: a thumbnail in the canvas's
/// bottom-right corner with the visible part outlined; a click or drag in it moves the view there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minimap {
    /// Where the thumbnail is drawn.
    pub rect: Rect,
    /// The part of the image the canvas shows, in the thumbnail's coordinates.
    pub visible: Rect,
}

impl Minimap {
    /// The longest side of the thumbnail, in points.
    pub const SIDE: f32 = 160.0;
    const MARGIN: f32 = 10.0;

    /// The minimap for this view, or None when the whole image is on the canvas (or the canvas
    /// is too small to hold one).
    pub fn of(view: &CanvasView, image_size: Vec2, canvas: Rect) -> Option<Self> {
        let image_rect = view.image_rect(image_size, canvas);
        if canvas.expand(0.5).contains_rect(image_rect) || image_size.min_elem() <= 0.0 {
            return None;
        }
        let scale = Self::SIDE / image_size.max_elem();
        let size = image_size * scale;
        if canvas.width() < size.x + 2.0 * Self::MARGIN || canvas.height() < size.y + 2.0 * Self::MARGIN {
            return None;
        }
        let rect = Rect::from_min_size(canvas.max - size - Vec2::splat(Self::MARGIN), size);
        let shown = canvas.intersect(image_rect);
        let to_thumb = |p: Pos2| {
            let pixel = view.image_pos_from_screen(p, image_size, canvas);
            rect.min + pixel.to_vec2() * scale
        };
        let visible = if shown.is_positive() {
            Rect::from_min_max(to_thumb(shown.min), to_thumb(shown.max))
        } else {
            Rect::NOTHING
        };
        Some(Self { rect, visible })
    }

    /// The image pixel coordinate under a point of the thumbnail.
    pub fn image_pos(&self, at: Pos2, image_size: Vec2) -> Pos2 {
        let scale = image_size.max_elem() / Self::SIDE;
        let local = (at - self.rect.min).clamp(Vec2::ZERO, self.rect.size());
        (local * scale).to_pos2()
    }
}

/// The uniform block of `canvas.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ViewUniform {
    image_ndc: [f32; 4],
    params: [f32; 4],
    /// The mask overlay's colour (rgb) and opacity (a; 0 hides the mask).
    overlay: [f32; 4],
    /// The brush cursor: centre (framebuffer pixels), radius (framebuffer pixels), shown (1).
    cursor: [f32; 4],
    /// x: seconds (the marching edge's phase); y: the heat map's opacity (0: none).
    time: [f32; 4],
}

/// Mask pixels to upload: `rect` of a `size` mask, row by row.
#[derive(Clone)]
pub struct MaskUpload {
    pub size: (u32, u32),
    pub rect: PixelRect,
    pub pixels: Vec<u8>,
}

/// How the mask and brush are drawn this frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    /// rgb and opacity of the masked region's tint; opacity 0 hides the mask.
    pub colour: [f32; 4],
    /// The brush cursor's centre and radius in screen points, when it is over the canvas.
    pub cursor: Option<(Pos2, f32)>,
    /// Seconds, for the marching edge.
    pub time: f32,
    /// A word's attention map drawn over the image as a heat map (its id changes with it).
    pub heat: Option<(u64, Arc<image::RgbaImage>)>,
}

impl Default for Overlay {
    fn default() -> Self {
        Self { colour: [1.0, 0.2, 0.3, 0.45], cursor: None, time: 0.0, heat: None }
    }
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
    /// The uploaded image's revision and texture view.
    image: Option<(u64, wgpu::TextureView)>,
    /// The mask texture: the mask size it shows, its downscale factor, texture and view.
    mask: Option<MaskTexture>,
    /// The heat-map texture and the id of the map it holds (a 1 × 1 blank one at first).
    heat: Option<(u64, wgpu::TextureView)>,
    /// The bind group over the current image and mask views (rebuilt when either changes).
    bind_group: Option<wgpu::BindGroup>,
}

struct MaskTexture {
    size: (u32, u32),
    /// Every `step`-th mask pixel is a texel (masks larger than the GPU's texture limit).
    step: u32,
    texture: wgpu::Texture,
    view: wgpu::TextureView,
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
        let bind_group_layout = uniform_and_textures_layout(
            device,
            "canvas",
            &[texture_entry(1), sampler_entry(2), sampler_entry(3), texture_entry(4), texture_entry(5)],
        );
        let pipeline = quad_pipeline(device, "canvas", &shader, &bind_group_layout, target_format);
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
            image: None,
            mask: None,
            heat: None,
            bind_group: None,
        }
    }

    /// Uploads `upload` into the mask texture, first (re)creating it when the mask's size
    /// changed; masks larger than the GPU's limit keep every `step`-th pixel.
    fn upload_mask(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, upload: &MaskUpload) {
        let (width, height) = upload.size;
        if self.mask.as_ref().is_none_or(|m| m.size != upload.size) {
            let limit = device.limits().max_texture_dimension_2d.max(1);
            let step = width.max(height).div_ceil(limit).max(1);
            let size = wgpu::Extent3d {
                width: width.div_ceil(step).max(1),
                height: height.div_ceil(step).max(1),
                depth_or_array_layers: 1,
            };
            let texture = r8_texture(device, "canvas mask", size);
            let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
            self.mask = Some(MaskTexture { size: upload.size, step, texture, view });
            self.bind_group = None;
        }
        let Some(mask) = self.mask.as_ref() else { return };
        let step = mask.step;
        let rect = upload.rect;
        if rect.is_empty() || upload.pixels.len() != rect.width() as usize * rect.height() as usize {
            return;
        }
        // the texels whose source pixel (texel × step) lies in the rectangle
        let (tx0, ty0) = (rect.x0.div_ceil(step), rect.y0.div_ceil(step));
        let (tx1, ty1) = (rect.x1.div_ceil(step), rect.y1.div_ceil(step));
        if tx0 >= tx1 || ty0 >= ty1 {
            return;
        }
        let texels: std::borrow::Cow<'_, [u8]> = if step == 1 {
            std::borrow::Cow::Borrowed(&upload.pixels)
        } else {
            let row = rect.width() as usize;
            let picked = (ty0..ty1)
                .flat_map(|ty| {
                    (tx0..tx1).map(move |tx| {
                        let (x, y) = ((tx * step - rect.x0) as usize, (ty * step - rect.y0) as usize);
                        upload.pixels[y * row + x]
                    })
                })
                .collect();
            std::borrow::Cow::Owned(picked)
        };
        let extent = wgpu::Extent3d { width: tx1 - tx0, height: ty1 - ty0, depth_or_array_layers: 1 };
        queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: &mask.texture,
                mip_level: 0,
                origin: wgpu::Origin3d { x: tx0, y: ty0, z: 0 },
                aspect: wgpu::TextureAspect::All,
            },
            &texels,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(tx1 - tx0),
                rows_per_image: Some(ty1 - ty0),
            },
            extent,
        );
    }

    /// Uploads a heat map (its red channel) unless the texture already holds map `id`.
    fn upload_heat(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, id: u64, map: &image::RgbaImage) {
        if self.heat.as_ref().is_some_and(|(held, _)| *held == id) {
            return;
        }
        let limit = device.limits().max_texture_dimension_2d.max(1);
        let scaled;
        let map = if map.width() > limit || map.height() > limit {
            let scale = limit as f32 / map.width().max(map.height()) as f32;
            let (w, h) =
                (((map.width() as f32 * scale) as u32).max(1), ((map.height() as f32 * scale) as u32).max(1));
            scaled = image::imageops::resize(map, w, h, image::imageops::FilterType::Triangle);
            &scaled
        } else {
            map
        };
        let (width, height) = (map.width().max(1), map.height().max(1));
        let red: Vec<u8> = if map.width() == 0 || map.height() == 0 {
            vec![0]
        } else {
            map.pixels().map(|p| p[0]).collect()
        };
        let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
        let texture = r8_texture(device, "canvas heat map", size);
        write_whole(queue, &texture, &red, width, size);
        self.heat = Some((id, texture.create_view(&wgpu::TextureViewDescriptor::default())));
        self.bind_group = None;
    }

    fn ensure_bind_group(&mut self, device: &wgpu::Device, queue: &wgpu::Queue) {
        if self.heat.is_none() {
            self.upload_heat(device, queue, u64::MAX, &image::RgbaImage::new(1, 1));
        }
        if self.bind_group.is_some() {
            return;
        }
        if self.mask.is_none() {
            // no mask yet: a 1 × 1 empty one
            let upload =
                MaskUpload { size: (1, 1), rect: PixelRect { x0: 0, y0: 0, x1: 1, y1: 1 }, pixels: vec![0] };
            self.upload_mask(device, queue, &upload);
        }
        let (Some((_, image)), Some(mask), Some((_, heat))) =
            (self.image.as_ref(), self.mask.as_ref(), self.heat.as_ref())
        else {
            return;
        };
        self.bind_group = Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("canvas"),
            layout: &self.bind_group_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.uniform_buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(image) },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::Sampler(&self.linear_sampler),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::Sampler(&self.nearest_sampler),
                },
                wgpu::BindGroupEntry { binding: 4, resource: wgpu::BindingResource::TextureView(&mask.view) },
                wgpu::BindGroupEntry { binding: 5, resource: wgpu::BindingResource::TextureView(heat) },
            ],
        }));
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
            write_whole(queue, &texture, image.as_raw(), 4 * image.width(), size);
        }
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        self.image = Some((canvas_image.revision, view));
        self.bind_group = None;
    }
}

/// A bind group layout: a uniform buffer at binding 0 (vertex and fragment), then `rest`.
pub fn uniform_and_textures_layout(
    device: &wgpu::Device,
    label: &str,
    rest: &[wgpu::BindGroupLayoutEntry],
) -> wgpu::BindGroupLayout {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    entries.extend_from_slice(rest);
    device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries })
}

/// The pipeline of a shader that draws one quad as a four-vertex triangle strip (`vs_main`,
/// `fs_main`, no vertex buffers, no blending) into `target_format`.
pub fn quad_pipeline(
    device: &wgpu::Device,
    label: &str,
    shader: &wgpu::ShaderModule,
    bind_group_layout: &wgpu::BindGroupLayout,
    target_format: wgpu::TextureFormat,
) -> wgpu::RenderPipeline {
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(bind_group_layout)],
        immediate_size: 0,
    });
    device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
        label: Some(label),
        layout: Some(&layout),
        vertex: wgpu::VertexState {
            module: shader,
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
            module: shader,
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
    })
}

/// Draws the quad of a [`quad_pipeline`] with its bind group.
pub fn draw_quad(
    render_pass: &mut wgpu::RenderPass<'static>,
    pipeline: &wgpu::RenderPipeline,
    group: &wgpu::BindGroup,
) {
    render_pass.set_pipeline(pipeline);
    render_pass.set_bind_group(0, group, &[]);
    render_pass.draw(0..4, 0..1);
}

/// Writes `bytes` (rows of `bytes_per_row`) over the whole of `texture`.
pub fn write_whole(
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    bytes: &[u8],
    bytes_per_row: u32,
    size: wgpu::Extent3d,
) {
    queue.write_texture(
        wgpu::TexelCopyTextureInfo {
            texture,
            mip_level: 0,
            origin: wgpu::Origin3d::ZERO,
            aspect: wgpu::TextureAspect::All,
        },
        bytes,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(bytes_per_row),
            rows_per_image: Some(size.height),
        },
        size,
    );
}

/// A one-channel 8-bit texture the shader samples and the queue writes (mask, heat map).
pub fn r8_texture(device: &wgpu::Device, label: &str, size: wgpu::Extent3d) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::R8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    })
}

/// A filterable 2D float texture read by the fragment shader.
pub fn texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: true },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

/// A filtering sampler read by the fragment shader.
pub fn sampler_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
        count: None,
    }
}

/// One frame's drawing of the canvas image.
pub struct CanvasCallback {
    pub image: CanvasImage,
    /// Mask pixels changed since the last frame.
    pub mask: Option<MaskUpload>,
    pub overlay: Overlay,
    /// The cursor in the window's framebuffer pixels, and its radius in them.
    cursor_px: Option<([f32; 2], f32)>,
    /// The image rectangle in the callback viewport's normalized device coordinates.
    pub image_ndc: [f32; 4],
    pub nearest: bool,
    pub checker_px: f32,
}

impl CanvasCallback {
    /// The paint callback for `image` drawn at `image_rect` inside `canvas`.
    pub fn new(image: CanvasImage, image_rect: Rect, canvas: Rect, zoom: f32, pixels_per_point: f32) -> Self {
        Self::with_overlay(image, None, Overlay::default(), image_rect, canvas, zoom, pixels_per_point)
    }

    /// [`CanvasCallback::new`] with mask pixels to upload and the overlay's settings.
    pub fn with_overlay(
        image: CanvasImage,
        mask: Option<MaskUpload>,
        overlay: Overlay,
        image_rect: Rect,
        canvas: Rect,
        zoom: f32,
        pixels_per_point: f32,
    ) -> Self {
        // the fragment shader's position is in framebuffer pixels of the whole window
        let cursor_px = overlay.cursor.map(|(centre, radius)| {
            ([centre.x * pixels_per_point, centre.y * pixels_per_point], radius * pixels_per_point)
        });
        let to_ndc_x = |x: f32| (x - canvas.min.x) / canvas.width() * 2.0 - 1.0;
        let to_ndc_y = |y: f32| 1.0 - (y - canvas.min.y) / canvas.height() * 2.0;
        Self {
            image,
            mask,
            overlay,
            cursor_px,
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
        let stale = renderer.image.as_ref().is_none_or(|(revision, _)| *revision != self.image.revision);
        if stale {
            renderer.upload(device, queue, &self.image);
        }
        if let Some(upload) = &self.mask {
            renderer.upload_mask(device, queue, upload);
        }
        if let Some((id, map)) = &self.overlay.heat {
            renderer.upload_heat(device, queue, *id, map);
        }
        renderer.ensure_bind_group(device, queue);
        let (cursor, radius, shown) = match self.cursor_px {
            Some((centre, radius)) => (centre, radius, 1.0),
            None => ([0.0, 0.0], 0.0, 0.0),
        };
        let uniform = ViewUniform {
            image_ndc: self.image_ndc,
            params: [if self.nearest { 1.0 } else { 0.0 }, self.checker_px, 0.0, 0.0],
            overlay: self.overlay.colour,
            cursor: [cursor[0], cursor[1], radius, shown],
            time: [self.overlay.time, if self.overlay.heat.is_some() { 1.0 } else { 0.0 }, 0.0, 0.0],
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
        if let Some(bind_group) = renderer.bind_group.as_ref() {
            draw_quad(render_pass, &renderer.pipeline, bind_group);
        }
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
        // fitted, it fits again when the canvas changes size, until someone zooms or pans
        let smaller = Rect::from_min_size(canvas().min, Vec2::new(800.0, 500.0));
        assert!(!view.needs_fit(canvas()) && view.needs_fit(smaller));
        view.pan(Vec2::new(3.0, 0.0));
        assert!(!view.needs_fit(smaller));
    }

    #[test]
    fn zoom_keeps_the_point_under_the_cursor() {
        let mut view =
            CanvasView { zoom: 1.0, offset: Vec2::new(30.0, -20.0), fit_pending: false, fitted_to: None };
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
    fn the_minimap_appears_when_zoomed_in_and_outlines_what_the_canvas_shows() {
        let size = Vec2::new(4096.0, 2048.0);
        let mut view = CanvasView::default();
        view.fit(size, canvas());
        assert_eq!(Minimap::of(&view, size, canvas()), None, "the fitted image needs no minimap");
        // at 100% only a corner of the image is on the canvas: centred, 800 × 600 of 4096 × 2048
        view.actual_size();
        let map = Minimap::of(&view, size, canvas()).expect("a minimap");
        assert_eq!(map.rect.size(), Vec2::new(160.0, 80.0));
        assert_eq!(map.rect.max, canvas().max - Vec2::splat(10.0));
        let scale = 160.0 / 4096.0;
        let expected = Rect::from_center_size(map.rect.center(), Vec2::new(800.0, 600.0) * scale);
        assert!((map.visible.min - expected.min).length() < 1e-3, "{:?} vs {expected:?}", map.visible);
        assert!((map.visible.max - expected.max).length() < 1e-3);
        // a click on the thumbnail's top-left quarter point centres the view there
        let target = map.rect.min + map.rect.size() * 0.25;
        let pixel = map.image_pos(target, size);
        assert!((pixel - Pos2::new(1024.0, 512.0)).length() < 1e-3);
        view.centre_on(pixel, size);
        let centre = view.image_pos_from_screen(canvas().center(), size, canvas());
        assert!((centre - pixel).length() < 1e-2, "{centre:?}");
        let moved = Minimap::of(&view, size, canvas()).expect("a minimap");
        assert!((moved.visible.center() - target).length() < 1e-3);
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
