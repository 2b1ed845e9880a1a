//! The binary as a person runs it: `info` with an empty environment, the window with no display,
//! the `noise` job end to end, and bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_diffusion-studio"));
    command.env_clear();
    command
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/shapes.png")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir.join(name)
}

#[test]
fn info_runs_with_no_environment_variables() {
    let output = binary().arg("info").output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("diffusion-studio {}", env!("CARGO_PKG_VERSION"))), "{stdout}");
    assert!(stdout.contains("libtorch 2.11.0"), "{stdout}");
    assert!(stdout.contains("CPU threads: "), "{stdout}");
    assert!(stdout.contains("CUDA device"), "{stdout}");
    assert!(stdout.contains("audio output: "), "{stdout}");
    assert!(stdout.contains("models:"), "{stdout}");
    assert!(
        stdout.contains("assets/models/shapes (DiffusersFolder)"),
        "the bundled model is found: {stdout}"
    );
}

#[test]
fn the_binary_needs_libtorch_cuda_when_libtorch_has_it() {
    let lib_dir = Path::new(env!("LIBTORCH_LIB_DIR"));
    let output = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_diffusion-studio")])
        .output()
        .expect("readelf (binutils)");
    let dynamic = String::from_utf8_lossy(&output.stdout);
    assert!(dynamic.contains("[libtorch_cpu.so]"), "{dynamic}");
    assert!(dynamic.contains(&lib_dir.display().to_string()), "an rpath to libtorch:\n{dynamic}");
    if lib_dir.join("libtorch_cuda.so").exists() {
        assert!(dynamic.contains("[libtorch_cuda.so]"), "libtorch_cuda.so must be NEEDED:\n{dynamic}");
    }
}

#[test]
fn with_no_display_the_studio_says_so_and_fails() {
    let output = binary().output().expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no display: set DISPLAY, or use the CLI subcommands"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn noise_writes_a_noised_png_of_the_same_size() {
    let out = scratch("noised.png");
    let output = binary()
        .args(["noise", "--image"])
        .arg(sample())
        .args(["--strength", "0.3", "--steps", "3", "--seed", "7", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let noised = image::open(&out).expect("a PNG").into_rgba8();
    let original = image::open(sample()).expect("sample").into_rgba8();
    assert_eq!(noised.dimensions(), original.dimensions());
    let mean_abs_diff =
        noised.as_raw().iter().zip(original.as_raw()).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
            / noised.as_raw().len() as f64;
    // At strength 0.3 (t = 299) the noise term sqrt(1 - ᾱ) ≈ 0.62 of unit noise: clearly noisy,
    // yet the image still dominates on average.
    assert!(mean_abs_diff > 10.0 && mean_abs_diff < 100.0, "mean |Δ| = {mean_abs_diff}");
}

#[test]
fn noise_is_reproducible_from_its_seed() {
    let run = |seed: &str, name: &str| {
        let out = scratch(name);
        let status = binary()
            .args(["noise", "--steps", "1", "--seed", seed, "--image"])
            .arg(sample())
            .arg("--out")
            .arg(&out)
            .status()
            .expect("runs");
        assert!(status.success());
        std::fs::read(out).expect("written")
    };
    assert_eq!(run("5", "a.png"), run("5", "b.png"));
    assert_ne!(run("5", "c.png"), run("6", "d.png"));
}

#[test]
fn bad_input_gets_a_clear_error_naming_the_file_or_field() {
    let text = scratch("words.png");
    std::fs::write(&text, "words, not pixels").expect("write");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--image".into(), text.display().to_string()], "words.png is not an image"),
        (vec!["--image".into(), "/nonexistent/cat.png".into()], "could not read /nonexistent/cat.png"),
        (
            vec!["--image".into(), sample().display().to_string(), "--strength".into(), "0".into()],
            "strength must be in (0, 1]",
        ),
        (
            vec!["--image".into(), sample().display().to_string(), "--steps".into(), "0".into()],
            "steps must be at least 1",
        ),
        (
            vec!["--image".into(), sample().display().to_string(), "--device".into(), "tpu".into()],
            "'tpu' is not a device",
        ),
        (
            vec!["--image".into(), sample().display().to_string(), "--device".into(), "cuda:7".into()],
            "CUDA device 7 was asked for",
        ),
    ];
    for (args, expected) in cases {
        let output =
            binary().arg("noise").args(&args).arg("--out").arg(scratch("never.png")).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: expected «{expected}» in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!scratch("never.png").exists());
}

#[test]
fn generate_writes_a_png_with_its_parameters() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_sd_pipeline");
    let out = scratch("generated.png");
    let output = binary()
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--prompt", "a red circle on a blue background", "--negative-prompt", "a green square"])
        .args([
            "--steps",
            "3",
            "--scheduler",
            "euler-a",
            "--seed",
            "9",
            "--width",
            "20",
            "--height",
            "16",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("20×16 rounded down to 16×16"), "{stderr}");
    let image = image::open(&out).expect("a PNG").into_rgba8();
    assert_eq!(image.dimensions(), (16, 16));
    let parameters =
        diffusion_studio::document::read_png_text(&out, "parameters").expect("a parameters chunk");
    assert!(
        parameters.starts_with("a red circle on a blue background\nNegative prompt: a green square"),
        "{parameters}"
    );
    assert!(
        parameters.contains("Steps: 3, Sampler: euler-a, CFG scale: 7.5, Seed: 9, Size: 16x16"),
        "{parameters}"
    );
}

#[test]
fn generate_loads_a_single_file_checkpoint_and_says_what_it_is() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = scratch("single-file.png");
    let output = binary()
        .args(["generate", "--model"])
        .arg(fixtures.join("tiny_sd_single.safetensors"))
        .arg("--model-config")
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle", "--steps", "2", "--width", "16", "--height", "16", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "model: tiny_sd_single.safetensors: SD 1.x text-to-image checkpoint (CLIP ViT-L text encoder)"
        ),
        "{stderr}"
    );
    assert_eq!(image::open(&out).expect("a PNG").into_rgba8().dimensions(), (16, 16));
    // a bad override is refused before any work
    let output = binary()
        .args(["generate", "--model"])
        .arg(fixtures.join("tiny_sd_single.safetensors"))
        .args(["--model-type", "sdxl", "--prompt", "x", "--out"])
        .arg(scratch("never-single.png"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("'sdxl' is not a model type: use sd1 or sd2"),
        "{stderr}"
    );
}

#[test]
fn generate_names_a_bad_model_or_scheduler() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_sd_pipeline");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--model".into(), "/nonexistent/model".into()], "/nonexistent/model: no such file or folder"),
        (
            vec!["--model".into(), model.join("unet").display().to_string()],
            "not a diffusers folder (no model_index.json)",
        ),
        (
            vec!["--model".into(), model.display().to_string(), "--scheduler".into(), "plms".into()],
            "--scheduler: unknown scheduler \"plms\"",
        ),
    ];
    for (args, expected) in cases {
        let output = binary()
            .arg("generate")
            .args(&args)
            .args(["--prompt", "x", "--out"])
            .arg(scratch("never-generated.png"))
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    // a prompt that is not UTF-8 is named
    use std::os::unix::ffi::OsStrExt;
    let output = binary()
        .args(["generate", "--model"])
        .arg(&model)
        .arg("--prompt")
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe cat"))
        .arg("--out")
        .arg(scratch("never-generated.png"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--prompt is not valid UTF-8 text"), "{stderr}");
}

#[test]
fn img2img_and_inpaint_write_pngs_and_name_bad_input() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let common = |command: &str| {
        let mut c = binary();
        c.arg(command)
            .arg("--model")
            .arg(fixtures.join("tiny_sd_pipeline"))
            .args(["--prompt", "a blue square", "--steps", "4", "--seed", "2", "--image"])
            .arg(fixtures.join("edit_image.png"));
        c
    };
    // img2img: the image's size, the strength in the parameters
    let out = scratch("img2img.png");
    let output = common("img2img").args(["--strength", "0.5", "--out"]).arg(&out).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    let parameters = diffusion_studio::document::read_png_text(&out, "parameters").expect("parameters");
    assert!(parameters.contains("Denoising strength: 0.5"), "{parameters}");
    // inpaint with a mask of another size: resized, and said so; outside the mask kept exactly
    let big_mask = scratch("big-mask.png");
    let mut mask = image::RgbaImage::from_pixel(32, 32, image::Rgba([0, 0, 0, 255]));
    for y in 0..32 {
        for x in 0..16 {
            mask.put_pixel(x, y, image::Rgba([255, 255, 255, 255]));
        }
    }
    mask.save(&big_mask).expect("mask");
    let out = scratch("inpaint.png");
    let output = common("inpaint")
        .arg("--mask")
        .arg(&big_mask)
        .args(["--feather", "0", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("resized from 32×32 to 16×16"), "{stderr}");
    let result = image::open(&out).expect("png").into_rgba8();
    let source = image::open(fixtures.join("edit_image.png")).expect("png").into_rgba8();
    for y in 0..16 {
        for x in 9..16 {
            // (column 8 is grey after the resize, so partly repainted)
            assert_eq!(result.get_pixel(x, y), source.get_pixel(x, y), "({x}, {y})");
        }
    }
    // bad input
    let black = scratch("black-mask.png");
    image::RgbaImage::from_pixel(16, 16, image::Rgba([0, 0, 0, 255])).save(&black).expect("mask");
    let cases: Vec<(&str, Vec<std::ffi::OsString>, &str)> = vec![
        ("img2img", vec!["--strength".into(), "0".into()], "--strength must be in (0, 1]"),
        ("img2img", vec!["--strength".into(), "0.1".into()], "runs no step"),
        ("inpaint", vec!["--mask".into(), black.clone().into()], "the mask is all black"),
        ("inpaint", vec!["--mask".into(), "/nonexistent/mask.png".into()], "/nonexistent/mask.png"),
    ];
    for (command, args, expected) in cases {
        let output =
            common(command).args(&args).arg("--out").arg(scratch("never-edit.png")).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{command} {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!scratch("never-edit.png").exists());
}

#[test]
fn invert_writes_an_inversion_and_reports_its_psnr() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = scratch("inversion.safetensors");
    let reconstruction = scratch("reconstruction.png");
    let output = binary()
        .args(["invert", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle on a blue background", "--steps", "5", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--out")
        .arg(&out)
        .arg("--reconstruction")
        .arg(&reconstruction)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.contains("reconstruction PSNR: ") && stdout.contains("(5 DDIM steps, guidance 7.5)"),
        "{stdout}"
    );
    let inversion = diffusion_studio::document::inversion::load(&out).expect("an inversion file");
    assert_eq!((inversion.trajectory.len(), inversion.width), (6, 16));
    assert!(inversion.null_text.is_none());
    assert_eq!(image::open(&reconstruction).expect("png").into_rgba8().dimensions(), (16, 16));
    // null-text inversion keeps an unconditional embedding per step in the file
    let output = binary()
        .args(["invert", "--null-text", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle on a blue background", "--steps", "5", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("null-text"), "{stdout}");
    let inversion = diffusion_studio::document::inversion::load(&out).expect("an inversion file");
    let null_text = inversion.null_text.expect("null-text embeddings");
    assert_eq!((null_text.len(), null_text[0].len()), (5, 77 * 32));
}

#[test]
fn edit_p2p_writes_the_target_the_source_and_attention_maps() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (out, source, maps) = (scratch("p2p.png"), scratch("p2p-source.png"), scratch("maps"));
    let output = binary()
        .args(["edit", "--method", "p2p", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args([
            "--source-prompt",
            "a red circle",
            "--target-prompt",
            "a green circle",
            "--reweight",
            "green=2",
            "--word-window",
            "green=0:0.5",
        ])
        .args(["--steps", "4", "--width", "16", "--height", "16", "--out"])
        .arg(&out)
        .arg("--source-out")
        .arg(&source)
        .arg("--attention-maps")
        .arg(&maps)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    assert!(source.is_file());
    let mut written: Vec<String> = std::fs::read_dir(&maps)
        .expect("maps folder")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "01-a-steps.png",
            "01-a.png",
            "02-green-steps.png",
            "02-green.png",
            "03-circle-steps.png",
            "03-circle.png"
        ]
    );
    // a word's steps side by side, each frame at least 64 pixels tall
    let strip = image::open(maps.join("02-green-steps.png")).expect("png").into_rgba8();
    assert!(strip.height() >= 64 && strip.width() > strip.height(), "{:?}", strip.dimensions());
    let parameters = diffusion_studio::document::read_png_text(&out, "parameters").expect("parameters");
    assert!(parameters.contains("Target prompt: a green circle"), "{parameters}");
    // a word the target does not have, and a malformed re-weight
    for (args, expected) in [
        (["--reweight", "blue=2"], "\"blue\" is not in the target prompt"),
        (["--reweight", "green"], "'green' is not WORD=FACTOR"),
        (
            ["--word-window", "blue=0:0.5"],
            "\"blue\" given its own attention window is not in the target prompt",
        ),
        (["--word-window", "green=0.5:0.2"], "give a word and a window START:END within 0…1"),
    ] {
        let output = binary()
            .args(["edit", "--method", "p2p", "--model"])
            .arg(fixtures.join("tiny_sd_pipeline"))
            .args(["--source-prompt", "a red circle", "--target-prompt", "a green circle"])
            .args(args)
            .args(["--steps", "2", "--width", "16", "--height", "16", "--out"])
            .arg(scratch("never-p2p.png"))
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn edit_p2p_inverts_a_real_image_given_with_image() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let prompt = "a red circle on a blue background";
    let reconstruction = scratch("p2p-image-reconstruction.png");
    let output = binary()
        .args(["invert", "--null-text", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", prompt, "--steps", "5", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--out")
        .arg(scratch("p2p-image.safetensors"))
        .arg("--reconstruction")
        .arg(&reconstruction)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let edit = |extra: &[&str], out: &Path| {
        binary()
            .args(["edit", "--method", "p2p", "--model"])
            .arg(fixtures.join("tiny_sd_pipeline"))
            .args(["--source-prompt", prompt, "--target-prompt", prompt, "--steps", "5", "--image"])
            .arg(fixtures.join("edit_image.png"))
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .expect("runs")
    };
    // the same prompt edits nothing: the target is the null-text reconstruction
    let out = scratch("p2p-image.png");
    let output = edit(&["--null-text"], &out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (ours, expected) = (
        image::open(&out).expect("png").into_rgba8(),
        image::open(&reconstruction).expect("png").into_rgba8(),
    );
    let difference = ours.as_raw().iter().zip(expected.as_raw()).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(difference <= Some(1), "target ≠ reconstruction: {difference:?}");
    // --image and --inversion are two sources
    let output = edit(&["--inversion", "x.safetensors"], &scratch("never-p2p-image.png"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--inversion or --image, not both"), "{stderr}");
}

#[test]
fn edit_ip2p_follows_an_instruction_and_needs_an_image() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = scratch("ip2p.png");
    let run = |extra: &[&str], out: &Path| {
        binary()
            .args(["edit", "--method", "ip2p", "--model"])
            .arg(fixtures.join("tiny_sd_ip2p_pipeline"))
            .args(["--prompt", "make the circle blue", "--steps", "3"])
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .expect("runs")
    };
    let image = fixtures.join("edit_image.png");
    let output = run(&["--image", image.to_str().expect("utf-8 path"), "--image-guidance", "1.2"], &out);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    let parameters = diffusion_studio::document::read_png_text(&out, "parameters").expect("parameters");
    assert!(parameters.contains("Image CFG scale: 1.2"), "{parameters}");
    let output = run(&[], &scratch("never-ip2p.png"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("--method ip2p needs --image"), "{stderr}");
}

#[test]
fn edit_p2p_edits_an_inversion_made_with_the_same_model_and_prompt() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let inversion = scratch("to-edit.safetensors");
    let output = binary()
        .args(["invert", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle", "--steps", "4", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--out")
        .arg(&inversion)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let edit = |model: &str, source: &str, out: &Path| {
        binary()
            .args(["edit", "--method", "p2p", "--model"])
            .arg(fixtures.join(model))
            .args(["--source-prompt", source, "--target-prompt", "a green circle", "--inversion"])
            .arg(&inversion)
            .arg("--out")
            .arg(out)
            .output()
            .expect("runs")
    };
    let out = scratch("edited-inversion.png");
    let output = edit("tiny_sd_pipeline", "a red circle", &out);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("editing an inversion runs DDIM over its 4 steps"), "{stderr}");
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    for (model, source, expected) in [
        ("tiny_sd_pipeline", "a blue square", "was made with the prompt \"a red circle\""),
        ("tiny_sd2_pipeline", "a red circle", "was made with the model"),
    ] {
        let output = edit(model, source, &scratch("never-edited.png"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn edit_magicmix_takes_the_layout_from_an_image() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = scratch("magicmix.png");
    let output = binary()
        .args(["edit", "--method", "magicmix", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a blue star", "--steps", "5", "--kmin", "0.2", "--kmax", "0.8", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let parameters = diffusion_studio::document::read_png_text(&out, "parameters").expect("parameters");
    assert!(parameters.contains("MagicMix: kmin 0.2, kmax 0.8, mix 0.5"), "{parameters}");
}

#[test]
fn edit_pww_binds_painted_regions_to_words() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mask = scratch("circle-region.png");
    let mut region = image::RgbaImage::from_pixel(32, 32, image::Rgba([0, 0, 0, 255]));
    for y in 0..32 {
        for x in 0..16 {
            region.put_pixel(x, y, image::Rgba([255, 255, 255, 255]));
        }
    }
    region.save(&mask).expect("mask");
    let (out, maps) = (scratch("pww.png"), scratch("pww-maps"));
    let output = binary()
        .args(["edit", "--method", "pww", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle", "--steps", "3", "--width", "16", "--height", "16", "--region"])
        .arg(format!("circle={}", mask.display()))
        .arg("--attention-maps")
        .arg(&maps)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("resized from 32×32 to 16×16"), "{stderr}");
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    assert!(maps.join("03-circle.png").is_file());
    let output = binary()
        .args(["edit", "--method", "pww", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--prompt", "a red circle", "--steps", "2", "--width", "16", "--height", "16"])
        .args(["--region", "circle", "--out"])
        .arg(scratch("never-pww.png"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("'circle' is not WORD=MASK.png"), "{stderr}");
}

#[test]
fn edit_diffedit_writes_the_edit_and_its_mask() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (out, mask) = (scratch("diffedit.png"), scratch("diffedit-mask.png"));
    let output = binary()
        .args(["edit", "--method", "diffedit", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--source-prompt", "a red circle", "--target-prompt", "a green square", "--steps", "4"])
        .args(["--mask-samples", "2", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--mask-out")
        .arg(&mask)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(image::open(&out).expect("png").into_rgba8().dimensions(), (16, 16));
    assert_eq!(image::open(&mask).expect("png").into_rgba8().dimensions(), (16, 16));
    // the mask fed back in is used as given
    let again = scratch("diffedit-again.png");
    let output = binary()
        .args(["edit", "--method", "diffedit", "--model"])
        .arg(fixtures.join("tiny_sd_pipeline"))
        .args(["--source-prompt", "a red circle", "--target-prompt", "a green square", "--steps", "4"])
        .args(["--mask-samples", "2", "--image"])
        .arg(fixtures.join("edit_image.png"))
        .arg("--mask")
        .arg(&mask)
        .arg("--out")
        .arg(&again)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (first, second) =
        (image::open(&out).expect("png").into_rgba8(), image::open(&again).expect("png").into_rgba8());
    assert_eq!(first.as_raw(), second.as_raw(), "the written mask reproduces the edit");
}

#[test]
fn audio_to_spec_and_back_keeps_the_pitch_and_names_bad_input() {
    use diffusion_studio::audio::wav::{Clip, read_wav, write_wav};
    let dir = scratch("audio");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    // a 440 Hz stereo tone at 22.05 kHz: mixed to mono and resampled to the studio preset's 16 kHz
    let tone: Vec<f32> = (0..44_100)
        .map(|i| (0.4 * (std::f64::consts::TAU * 440.0 * i as f64 / 22_050.0).sin()) as f32)
        .collect();
    let input = dir.join("tone.wav");
    write_wav(&input, &Clip { sample_rate: 22_050, channels: vec![tone.clone(), tone] }).expect("writes");
    let spec = dir.join("tone.png");
    let output =
        binary().args(["audio", "to-spec"]).arg(&input).arg("--out").arg(&spec).output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 channels mixed to mono") && stderr.contains("resampled from 22050 Hz"),
        "{stderr}"
    );
    let image = image::open(&spec).expect("png").into_luma8();
    assert_eq!(image.height(), 128, "the studio preset's mel bins");
    assert_eq!(image.width(), 2 * 16_000 / 256 + 1, "one column per hop of 2 s at 16 kHz");
    // the darkest row (the loudest band) is the one holding 440 Hz: HTK mel of 440 Hz over 0-8 kHz
    let loudest = (0..image.height())
        .min_by_key(|&y| (0..image.width()).map(|x| u32::from(image.get_pixel(x, y)[0])).sum::<u32>())
        .expect("rows");
    let mel = |hz: f64| 2595.0 * (1.0 + hz / 700.0).log10();
    let expected_row = 127 - ((mel(440.0) / mel(8000.0)) * 129.0 - 1.0).round() as u32;
    assert!(loudest.abs_diff(expected_row) <= 1, "loudest row {loudest}, 440 Hz at {expected_row}");
    let back = dir.join("back.wav");
    let output =
        binary().args(["audio", "from-spec"]).arg(&spec).arg("--out").arg(&back).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let clip = read_wav(&back).expect("a wav");
    assert_eq!((clip.sample_rate, clip.channels.len(), clip.frames()), (16_000, 1, 32_000));
    // still 440 Hz: 880 zero crossings a second in the steady middle
    let middle = &clip.channels[0][4_000..28_000];
    let crossings = middle.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count() as f64 / 1.5;
    assert!((crossings - 880.0).abs() < 20.0, "{crossings} crossings a second");
    // bad input: not a WAV, an unknown preset, an image of the wrong height
    let junk = dir.join("junk.wav");
    std::fs::write(&junk, b"RIFF but not really").expect("write");
    for (args, expected) in [
        (vec!["audio".into(), "to-spec".into(), junk.display().to_string()], "junk.wav: not a readable WAV"),
        (
            vec![
                "audio".into(),
                "to-spec".into(),
                input.display().to_string(),
                "--preset".into(),
                "mp3".into(),
            ],
            "no spectrogram preset \"mp3\"; the presets are riffusion, audio-diffusion, studio",
        ),
        (
            vec![
                "audio".into(),
                "from-spec".into(),
                spec.display().to_string(),
                "--preset".into(),
                "riffusion".into(),
            ],
            "128 pixels tall; the riffusion preset's spectrograms have 512 mel rows",
        ),
    ] {
        let output = binary().args(&args).arg("--out").arg(dir.join("never.out")).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.join("never.out").exists());
}

#[test]
fn audio_play_uses_the_output_device_or_says_there_is_none() {
    use diffusion_studio::audio::wav::{Clip, write_wav};
    let dir = scratch("play");
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let input = dir.join("beep.wav");
    let beep: Vec<f32> = (0..8_000).map(|i| 0.3 * (i as f32 * 0.2).sin()).collect();
    write_wav(&input, &Clip { sample_rate: 16_000, channels: vec![beep] }).expect("writes");
    // ALSA pointed at its null device (HEADLESS.md): the real cpal path, played to the end
    let config = dir.join("alsa-null.conf");
    std::fs::write(&config, "</usr/share/alsa/alsa.conf>\npcm.!default { type null }\n").expect("write");
    let output =
        binary().env("ALSA_CONFIG_PATH", &config).args(["audio", "play"]).arg(&input).output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if std::path::Path::new("/usr/share/alsa/alsa.conf").is_file() {
        assert!(
            output.status.success() && stderr.contains("played") && stderr.contains("0.50 s"),
            "{stderr}"
        );
    }
    // with no sound card and no ALSA override (this machine): said, not a crash
    let no_card = std::fs::read_to_string("/proc/asound/cards").map_or(true, |c| c.contains("no soundcards"));
    if no_card {
        let output = binary().args(["audio", "play"]).arg(&input).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains("no audio output"), "{stderr}");
    }
}
