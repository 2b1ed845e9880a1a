// The audio room's spectrogram: the clip's grey spectrogram image (dark = loud, as the presets
// draw it) sampled over the visible stretch of time and coloured by a perceptual ramp from
// near-black through violet and red to pale yellow (`colormap` in src/ui/spectrogram_view.rs
// is the same ramp on the CPU). The selection is lightened and outlined.

struct View {
    // The view rectangle in the viewport's normalized device coordinates: min.xy, max.xy.
    rect_ndc: vec4<f32>,
    // x, y: the texture's u at the view's left and right edges.
    uv: vec4<f32>,
    // The selection in texture coordinates: u0, u1, v0, v1 (v: 0 at the top row).
    selection: vec4<f32>,
    // x: 1 when a selection is shown; y: the view's width in framebuffer pixels.
    flags: vec4<f32>,
};

@group(0) @binding(0) var<uniform> view: View;
@group(0) @binding(1) var spectrogram: texture_2d<f32>;
@group(0) @binding(2) var linear_sampler: sampler;

// Five stops, evenly spaced in t.
fn colormap(t: f32) -> vec3<f32> {
    let stops = array<vec3<f32>, 5>(
        vec3<f32>(0.02, 0.01, 0.06),
        vec3<f32>(0.30, 0.06, 0.46),
        vec3<f32>(0.76, 0.16, 0.36),
        vec3<f32>(0.98, 0.55, 0.16),
        vec3<f32>(1.00, 0.97, 0.74),
    );
    let x = clamp(t, 0.0, 1.0) * 4.0;
    let i = min(u32(floor(x)), 3u);
    return mix(stops[i], stops[i + 1u], x - f32(i));
}

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) local: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    let corner = vec2<f32>(f32(index & 1u), f32((index >> 1u) & 1u));
    var out: VertexOut;
    out.position = vec4<f32>(
        mix(view.rect_ndc.x, view.rect_ndc.z, corner.x),
        mix(view.rect_ndc.y, view.rect_ndc.w, corner.y),
        0.0,
        1.0,
    );
    out.local = corner;
    return out;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let u = mix(view.uv.x, view.uv.y, in.local.x);
    let v = in.local.y;
    let grey = textureSample(spectrogram, linear_sampler, vec2<f32>(u, v)).r;
    var rgb = colormap(1.0 - grey);
    if (u < 0.0 || u > 1.0) {
        rgb = vec3<f32>(0.08);
    }
    if (view.flags.x > 0.5) {
        let s = view.selection;
        let inside = u >= s.x && u <= s.y && v >= s.z && v <= s.w;
        if (inside) {
            rgb = mix(rgb, vec3<f32>(0.55, 0.8, 1.0), 0.25);
        }
    }
    return vec4<f32>(rgb, 1.0);
}
