//! The shapes model's trainer: a run interrupted in the middle of stages and resumed ends with
//! exactly the weights of an uninterrupted run; a run folder refuses other options; the
//! exported diffusers folder loads in the engine and generates.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use diffusion_studio::engine::EngineHandle;
use diffusion_studio::engine::loading::read_safetensors;
use diffusion_studio::engine::training::init::WeightInit;
use diffusion_studio::engine::training::noise::{NoiseDistribution, Target};
use diffusion_studio::engine::training::trainer::{
    Dataset, Interrupted, Quiet, Run, Stage, TrainOptions, TrainProgress,
};
use diffusion_studio::eval::card::model_card;
use diffusion_studio::eval::shapes_metrics::{EvalOptions, evaluate};
use diffusion_studio::protocol::{
    AudioParams, AudioTask, DeviceChoice, GenerateParams, Job, JobOutput, Precision,
};
use tch::{Device, Tensor};

/// A run small enough for a test, with every option off its default (4× latents of 8
/// channels: the engine must follow the folder's sizes, not SD's).
fn tiny() -> TrainOptions {
    TrainOptions {
        dataset: Dataset::Shapes,
        seed: 5,
        latent_channels: 8,
        vae_levels: 3,
        unet_channels: "32,48".into(),
        unet_attention: "0,1".into(),
        unet_norm_groups: 8,
        unet_text_time: true,
        unet_init: WeightInit::Kaiming,
        vae_steps: 4,
        vae_batch: 2,
        vae_crop: 32,
        vae_lr: 2e-3,
        vae_kl: 1e-4,
        vae_edge_weight: 4.0,
        taesd_steps: 3,
        unet_steps: 6,
        unet_batch: 4,
        lr: 1e-3,
        text_lr_scale: 2.0,
        ground_weight: 0.5,
        unet_edge_weight: 3.0,
        shape_contrast: 0.5,
        max_objects: 2,
        object_scale: 1.2,
        warmup: 2,
        vae_images: 6,
        images: 10,
        buckets: "128x128,96x160".into(),
        target: Target::V,
        min_snr: 5.0,
        offset_noise: 0.05,
        noise: NoiseDistribution::Edm,
        caption_dropout: 0.5,
        ema: 0.9,
        checkpoint_every: 2,
    }
}

/// Training draws from libtorch's one global generator: the runs of this file take turns, or a
/// run in parallel would take draws from another's seeded stream.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_run_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_RUN_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops once at each (stage, step) listed.
struct StopAt {
    stops: Vec<(Stage, usize)>,
    stage: Option<Stage>,
    step: usize,
}

impl TrainProgress for StopAt {
    fn stage(&mut self, stage: Stage, _: usize, start: usize) {
        self.stage = Some(stage);
        self.step = start;
    }
    fn step(&mut self, step: usize, loss: f64) {
        assert!(loss.is_finite());
        self.step = step;
    }
    fn message(&mut self, _: &str) {}
    fn should_stop(&mut self) -> bool {
        let here = (self.stage.expect("a stage began"), self.step);
        let hit = self.stops.iter().position(|stop| *stop == here);
        hit.map(|i| self.stops.remove(i)).is_some()
    }
}

fn exported_tensors(folder: &Path) -> BTreeMap<String, Tensor> {
    let mut all = BTreeMap::new();
    for (part, file) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("taesd", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        for (key, tensor) in read_safetensors(&folder.join(part).join(file)).expect("exported weights") {
            all.insert(format!("{part}/{key}"), tensor);
        }
    }
    all
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights_and_exports_a_loadable_model() {
    let _turn = one_run_at_a_time();
    let dir = std::env::temp_dir().join(format!("ds-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // 1. straight through
    let straight = Run::open(&dir.join("straight"), tiny(), Device::Cpu).expect("run");
    straight.train(Stage::Unet, &mut Quiet).expect("trains");
    straight.export(&dir.join("straight-model")).expect("exports");
    // 2. stopped in the VAE stage between checkpoints and in the UNet stage, then resumed
    let resumed = Run::open(&dir.join("resumed"), tiny(), Device::Cpu).expect("run");
    let mut stopper = StopAt { stops: vec![(Stage::Vae, 3), (Stage::Unet, 3)], stage: None, step: 0 };
    for expected in [(Stage::Vae, 3), (Stage::Unet, 3)] {
        let error = resumed.train(Stage::Unet, &mut stopper).expect_err("stops");
        let interrupted = error.downcast_ref::<Interrupted>().expect("an interruption");
        assert_eq!((interrupted.stage, interrupted.step), (expected.0.name(), expected.1));
    }
    assert!(resumed.report(Stage::Unet).expect("report").is_none(), "the UNet stage has not finished");
    resumed.train(Stage::Unet, &mut stopper).expect("finishes");
    resumed.export(&dir.join("resumed-model")).expect("exports");
    let (a, b) =
        (exported_tensors(&dir.join("straight-model")), exported_tensors(&dir.join("resumed-model")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (key, tensor) in &a {
        assert!(tensor.equal(&b[key]), "{key} differs between the straight and the resumed run");
    }
    // the weights moved from their initialisation and the report carries the VAE's numbers
    let vae = straight.report(Stage::Vae).expect("report").expect("finished");
    assert!(vae.metrics["scaling_factor"].is_finite() && vae.metrics["scaling_factor"] > 0.0);
    assert!(vae.metrics.contains_key("reconstruction_psnr_db"));
    let shapes_read = vae.metrics["reconstruction_shape_accuracy"];
    assert!((0.0..=1.0).contains(&shapes_read), "{shapes_read}");
    let unet = straight.report(Stage::Unet).expect("report").expect("finished");
    assert_eq!(unet.steps, 6);
    // the grounding loss is reported: a share of attention outside the masks, squared
    let ground = unet.metrics["ground_loss"];
    assert!(ground > 0.0 && ground < 1.0, "{ground}");
    // 3. a folder started with other options refuses to resume with these
    let mut other = tiny();
    other.seed = 6;
    let error = Run::open(&dir.join("straight"), other, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("seed") && error.contains("started with"), "{error}");
    // a folder from before --unet-init started from tch's draw, and says so
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("straight/options.json")).expect("options"))
            .expect("json");
    saved.as_object_mut().expect("an object").remove("unet_init").expect("the option is saved");
    std::fs::create_dir_all(dir.join("old")).expect("folder");
    std::fs::write(dir.join("old/options.json"), saved.to_string()).expect("writes");
    Run::open(&dir.join("old"), tiny(), Device::Cpu).expect("an old folder resumes with --unet-init kaiming");
    let torch = TrainOptions { unet_init: WeightInit::Torch, ..tiny() };
    let error = Run::open(&dir.join("old"), torch, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("unet_init (started with \"kaiming\", now \"torch\")"), "{error}");
    let mut bad = tiny();
    bad.unet_attention = "1".into();
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--unet-attention"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    let mut bad = tiny();
    bad.text_lr_scale = -1.0;
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--text-lr-scale"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    let mut bad = tiny();
    bad.ground_weight = f64::NAN;
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--ground-weight"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    let mut bad = tiny();
    bad.unet_edge_weight = -2.0;
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--unet-edge-weight"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    let mut bad = tiny();
    bad.shape_contrast = -1.0;
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--shape-contrast"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    let mut bad = tiny();
    bad.max_objects = 5;
    let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
    assert!(error.contains("--max-objects"), "{error}");
    assert!(!dir.join("bad").exists(), "nothing written for refused options");
    // 3b. a run differing only in UNet options starts from the finished autoencoder and cache
    let mut ablation = tiny();
    ablation.target = Target::Epsilon;
    ablation.unet_steps = 2;
    let reuse = Run::open(&dir.join("ablation"), ablation, Device::Cpu).expect("run");
    assert!(reuse.reuse_autoencoder(&dir.join("straight")).expect("reuses"));
    for stage in [Stage::Vae, Stage::Taesd] {
        let (a, b) = (
            straight.report(stage).expect("report").expect("finished"),
            reuse.report(stage).expect("report").expect("finished"),
        );
        assert_eq!((a.steps, a.final_loss), (b.steps, b.final_loss), "{}", stage.name());
    }
    assert!(dir.join("ablation/latents.safetensors").is_file());
    reuse.train(Stage::Unet, &mut Quiet).expect("trains the UNet only");
    assert_eq!(reuse.report(Stage::Unet).expect("report").expect("finished").steps, 2);
    assert!(!reuse.reuse_autoencoder(&dir.join("straight")).expect("no-op"), "its own VAE stage is kept");
    // 3c. --text-lr-scale 0 keeps the text encoder at its initialisation while the UNet learns
    let frozen = |name: &str, steps: usize| {
        let mut options = tiny();
        options.text_lr_scale = 0.0;
        options.unet_steps = steps;
        let run = Run::open(&dir.join(name), options, Device::Cpu).expect("run");
        assert!(run.reuse_autoencoder(&dir.join("straight")).expect("reuses"));
        run.train(Stage::Unet, &mut Quiet).expect("trains");
        let read = |part: &str| {
            read_safetensors(&dir.join(name).join("unet").join(part).join("final.safetensors"))
                .expect("weights")
        };
        (read("text_encoder"), read("unet"))
    };
    let (text_1, unet_1) = frozen("frozen-1", 1);
    let (text_3, unet_3) = frozen("frozen-3", 3);
    assert!(text_1.iter().all(|(key, tensor)| tensor.equal(&text_3[key])), "the text encoder moved");
    assert!(unet_1.iter().any(|(key, tensor)| !tensor.equal(&unet_3[key])), "the UNet did not learn");
    // 3d. --unet-from: a run on other data (one object) starts from frozen-3's latest weights
    let mut continued = tiny();
    continued.text_lr_scale = 0.0;
    continued.lr = 0.0; // no step moves a weight: what the stage ends with is where it started
    continued.unet_steps = 1;
    continued.max_objects = 1;
    let run = Run::open(&dir.join("continued"), continued, Device::Cpu).expect("run");
    assert!(run.start_unet_from(&dir.join("frozen-3")).expect("starts"));
    assert!(!run.start_unet_from(&dir.join("frozen-3")).expect("the same start again is a no-op"));
    let same_run = dir.join("frozen-1").join("..").join("frozen-3");
    assert!(!run.start_unet_from(&same_run).expect("the same run named another way is the same start"));
    let error = run.start_unet_from(&dir.join("frozen-1")).expect_err("another start").to_string();
    assert!(error.contains("already started its UNet from"), "{error}");
    assert!(dir.join("continued/vae/done.json").is_file(), "the autoencoder came with the UNet");
    run.train(Stage::Unet, &mut Quiet).expect("trains");
    let checkpoint = |name: &str| {
        read_safetensors(&dir.join(name).join("unet/checkpoint.safetensors")).expect("checkpoint")
    };
    let (source, started) = (checkpoint("frozen-3"), checkpoint("continued"));
    let weights: Vec<&String> = source.keys().filter(|k| k.contains(".weights.")).collect();
    assert!(
        weights.iter().any(|k| k.starts_with("unet."))
            && weights.iter().any(|k| k.starts_with("text_encoder."))
    );
    for key in weights {
        assert!(source[key].equal(&started[key]), "{key} did not start from frozen-3's");
    }
    let record = run.training_record().expect("record");
    assert!(record.contains("frozen-3") && record.contains("--unet-from"), "{record}");
    let mut other_shape = tiny();
    other_shape.unet_channels = "32,64".into();
    let refused = Run::open(&dir.join("other-shape"), other_shape, Device::Cpu).expect("run");
    let error = refused.start_unet_from(&dir.join("frozen-3")).expect_err("refused").to_string();
    assert!(error.contains("unet_channels"), "{error}");
    let error = refused.start_unet_from(&dir.join("nowhere")).expect_err("no run").to_string();
    assert!(error.contains("nowhere"), "{error}");
    let mut other_vae = tiny();
    other_vae.vae_kl = 1e-3;
    let refused = Run::open(&dir.join("other-vae"), other_vae, Device::Cpu).expect("run");
    let error = refused.reuse_autoencoder(&dir.join("straight")).expect_err("refused").to_string();
    assert!(error.contains("vae_kl"), "{error}");
    assert!(!dir.join("other-vae/vae").exists(), "nothing copied from a mismatched run");
    let mut other_buckets = tiny();
    other_buckets.buckets = "128x128".into();
    let rebucketed = Run::open(&dir.join("other-buckets"), other_buckets, Device::Cpu).expect("run");
    assert!(rebucketed.reuse_autoencoder(&dir.join("straight")).expect("reuses the autoencoder"));
    assert!(dir.join("other-buckets/vae/done.json").is_file());
    assert!(
        !dir.join("other-buckets/latents.safetensors").exists(),
        "latents of other buckets are not reused"
    );
    // a run stopped after the autoencoder (`--until taesd`) has no tokenizer yet: still reusable
    let stopped = dir.join("straight-stopped");
    for name in ["vae", "taesd"] {
        std::fs::create_dir_all(stopped.join(name)).expect("folder");
        for file in ["done.json", "final.safetensors"] {
            std::fs::copy(dir.join("straight").join(name).join(file), stopped.join(name).join(file))
                .expect("copies");
        }
    }
    std::fs::copy(dir.join("straight/options.json"), stopped.join("options.json")).expect("copies");
    let mut after_stop = tiny();
    after_stop.unet_steps = 1;
    let after = Run::open(&dir.join("after-stop"), after_stop, Device::Cpu).expect("run");
    assert!(after.reuse_autoencoder(&stopped).expect("reuses without a tokenizer"));
    after.train(Stage::Unet, &mut Quiet).expect("writes its own tokenizer and trains");
    // 4. the exported folder is a model for the engine, with its preview decoder
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let params = GenerateParams {
        model: dir.join("straight-model"),
        model_options: Default::default(),
        prompt: "a big red circle on a blue background".into(),
        negative_prompt: String::new(),
        steps: 3,
        scheduler: "ddim".into(),
        guidance_scale: 5.0,
        guidance_rescale: 0.0,
        clip_skip: 0,
        seed: 1,
        width: 128,
        height: 128,
        precision: Precision::F32,
    };
    let image = common::run_image(&engine, Job::Generate(params)).expect("generates");
    assert_eq!((image.width, image.height), (128, 128));
    assert!(dir.join("straight-model/taesd/config.json").is_file());
    let unet_config = std::fs::read_to_string(dir.join("straight-model/unet/config.json")).expect("config");
    assert!(
        unet_config.contains("\"sample_size\": 32")
            && unet_config.contains("\"in_channels\": 8")
            && unet_config.contains("\"norm_num_groups\": 8")
            && unet_config.contains("\"addition_embed_type\": \"text\""),
        "{unet_config}"
    );
    let tokenizer = std::fs::read_to_string(dir.join("straight-model/tokenizer/vocab.json")).expect("vocab");
    assert!(tokenizer.contains("\"circle</w>\""));
    // the record beside the weights reproduces the run
    let record = std::fs::read_to_string(dir.join("straight-model/TRAINING.md")).expect("training record");
    for needle in [
        "--seed 5",
        "--target v",
        "--noise edm",
        "--unet-text-time --",
        "--buckets 128x128,96x160",
        "| unet | 6 |",
        "| vae | 4 |",
    ] {
        assert!(record.contains(needle), "TRAINING.md lacks {needle}:\n{record}");
    }
    // 5. the evaluation runs every metric on it, and the card carries the record and the numbers
    let options = EvalOptions {
        model: dir.join("straight-model"),
        device: DeviceChoice::Cpu,
        captions: 2,
        edits: 1,
        inversions: 1,
        steps: 3,
        guidance: 5.0,
        seed: 0,
        mask_samples: 10,
        mask_edges: diffusion_studio::protocol::DIFFEDIT_MASK_EDGES,
        samples: None,
    };
    let report = evaluate(&options, &mut |_| {}).expect("evaluates");
    assert_eq!(
        (report.captions, report.p2p_cases, report.diffedit_cases, report.inpaint_cases),
        (2, 1, 1, 1)
    );
    assert_eq!(report.inversion_psnr.iter().map(|(steps, _)| *steps).collect::<Vec<_>>(), [10, 25, 50]);
    assert!(report.inversion_psnr.iter().all(|(_, psnr)| psnr.is_finite() && *psnr > 0.0), "{report:?}");
    let card = model_card(&options.model, &report, &options).expect("a card");
    for needle in [
        "| unet |",
        "| text_encoder |",
        "UNet2DConditionModel",
        "--target v",
        "| attribute accuracy (3 DDIM steps",
        "DDIM inversion PSNR, 50 steps",
        "--captions 2 --edits 1",
    ] {
        assert!(card.contains(needle), "MODEL_CARD.md lacks {needle}:\n{card}");
    }
    assert!(!card.contains("| unet | 0.00 M"), "parameters counted:\n{card}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The music dataset through the same trainer: studio spectrograms, the music vocabulary, and
/// an exported folder that says its preset and plays as audio.
#[test]
fn a_music_run_exports_an_audio_model() {
    let _turn = one_run_at_a_time();
    let dir = std::env::temp_dir().join(format!("ds-train-music-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = TrainOptions {
        dataset: Dataset::Music,
        unet_init: WeightInit::Torch,
        buckets: "64x128".into(),
        vae_edge_weight: 0.0,
        ground_weight: 0.0,
        unet_edge_weight: 0.0,
        shape_contrast: 0.0,
        ..tiny()
    };
    // the shapes-only options are refused by name, and so are buckets of another height
    for bad in [
        TrainOptions { ground_weight: 0.5, ..options.clone() },
        TrainOptions { shape_contrast: 0.5, ..options.clone() },
        TrainOptions { buckets: "64x64".into(), ..options.clone() },
    ] {
        let error = Run::open(&dir.join("bad"), bad, Device::Cpu).err().expect("refused").to_string();
        assert!(error.contains("music") || error.contains("mel rows"), "{error}");
    }
    let run = Run::open(&dir.join("run"), options, Device::Cpu).expect("run");
    run.train(Stage::Unet, &mut Quiet).expect("trains");
    let out = dir.join("model");
    run.export(&out).expect("exports");
    let vocab = std::fs::read_to_string(out.join("tokenizer/vocab.json")).expect("vocabulary");
    assert!(vocab.contains("arpeggio</w>") && !vocab.contains("circle</w>"), "{vocab}");
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("spectrogram.json")).expect("spectrogram.json"),
    )
    .expect("json");
    assert_eq!(info["preset"], "studio");
    assert_eq!((info["width"].as_u64(), info["height"].as_u64()), (Some(64), Some(128)));
    // the engine takes the preset and size from the folder
    let engine = EngineHandle::spawn(DeviceChoice::Cpu, Arc::new(|| {}));
    let params = AudioParams {
        base: GenerateParams {
            model: out.clone(),
            model_options: Default::default(),
            prompt: "a slow minor pad".into(),
            negative_prompt: String::new(),
            steps: 2,
            scheduler: "ddim".into(),
            guidance_scale: 2.0,
            guidance_rescale: 0.0,
            clip_skip: 0,
            seed: 1,
            width: 0,
            height: 0,
            precision: Precision::F32,
        },
        preset: String::new(),
        task: AudioTask::Generate,
        griffin_lim_iterations: 2,
    };
    match common::run_output(&engine, Job::Audio(params)).expect("generates") {
        JobOutput::Audio(clip) => {
            assert_eq!(clip.preset, "studio");
            assert_eq!(clip.sample_rate, 16_000);
            assert_eq!((clip.spectrogram.width, clip.spectrogram.height), (65, 128));
            assert_eq!(clip.samples.len(), 64 * 256);
        }
        other => panic!("expected audio, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
