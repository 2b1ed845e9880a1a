// The canvas: draws the document image into its on-screen rectangle (pan and zoom), over a
// checkerboard where the image is transparent; over it a word's attention map as a heat map
// (when one is shown), the inpainting mask as a tint with a
// marching black-and-white edge where it crosses one half, and the brush cursor as a ring.
// The viewport is the canvas widget's rectangle; @builtin(position) is in framebuffer pixels.

struct View {
    // Image rectangle in the viewport's normalized device coordinates: min.xy, max.xy.
    image_ndc: vec4<f32>,
    // x: 1.0 to sample nearest (zoomed in past 100%), 0.0 to filter; y: checker size in pixels.
    params: vec4<f32>,
    // The mask tint: rgb, and its opacity in a (0 hides the mask and its edge).
    overlay: vec4<f32>,
    // The brush cursor: centre xy and radius z in framebuffer pixels; w = 1 when shown.
    cursor: vec4<f32>,
    // x: seconds, the marching edge's phase; y: the attention heat map's opacity (0: none).
    time: vec4<f32>,
};

@group(0) @binding(0) var<uniform> view: View;
@group(0) @binding(1) var image_texture: texture_2d<f32>;
@group(0) @binding(2) var linear_sampler: sampler;
@group(0) @binding(3) var nearest_sampler: sampler;
@group(0) @binding(4) var mask_texture: texture_2d<f32>;
@group(0) @binding(5) var heat_texture: texture_2d<f32>;

// An attention value in [0, 1] over the image: dark where the word does not attend, the image
// warmed towards orange where it does (readable over any picture, unlike a rainbow).
fn heat_over(rgb: vec3<f32>, t: f32) -> vec3<f32> {
    let attended = mix(rgb, vec3<f32>(1.0, 0.55, 0.1), 0.35 * t);
    return mix(rgb * 0.15, attended, smoothstep(0.0, 1.0, t));
}

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    // A triangle strip of four corners: (0,0) (1,0) (0,1) (1,1) in image UV.
    let uv = vec2<f32>(f32(index & 1u), f32((index >> 1u) & 1u));
    let x = mix(view.image_ndc.x, view.image_ndc.z, uv.x);
    let y = mix(view.image_ndc.y, view.image_ndc.w, uv.y);
    var out: VertexOut;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    out.uv = uv;
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let filtered = textureSample(image_texture, linear_sampler, in.uv);
    let nearest = textureSample(image_texture, nearest_sampler, in.uv);
    let color = select(filtered, nearest, view.params.x > 0.5);
    let cell = floor(in.position.xy / max(view.params.y, 1.0));
    let checker = select(0.55, 0.75, (i32(cell.x + cell.y) & 1) == 0);
    var rgb = mix(vec3<f32>(checker), color.rgb, color.a);

    // A word's attention map, as a heat map over the image.
    let heat = textureSample(heat_texture, linear_sampler, in.uv).r;
    rgb = mix(rgb, heat_over(rgb, heat), view.time.y);

    // The mask: a tint in proportion to its value, and the 0.5 contour as marching ants (the
    // contour found in screen space from the value's rate of change, so it stays one to two
    // pixels wide at any zoom).
    let m = textureSample(mask_texture, linear_sampler, in.uv).r;
    let shown = view.overlay.a;
    rgb = mix(rgb, view.overlay.rgb, m * shown);
    let width = max(fwidth(m), 1e-4);
    let on_edge = abs(m - 0.5) < width * 0.75 && shown > 0.0;
    if on_edge {
        let dash = fract((in.position.x + in.position.y) / 12.0 - view.time.x * 1.5) < 0.5;
        rgb = select(vec3<f32>(1.0), vec3<f32>(0.0), dash);
    }

    // The brush cursor: a black ring inside a white one, readable on any image.
    if view.cursor.w > 0.5 {
        let d = distance(in.position.xy, view.cursor.xy) - view.cursor.z;
        if abs(d) < 0.75 {
            rgb = vec3<f32>(0.0);
        } else if abs(d - 1.5) < 0.75 {
            rgb = vec3<f32>(1.0);
        }
    }
    return vec4<f32>(rgb, 1.0);
}
