//! Models against transformers/diffusers outputs on tiny random configurations recorded by
//! `tests/fixtures/make_fixtures.py`; loading errors on damaged files.

use std::path::{Path, PathBuf};

use diffusion_studio::engine::loading::{self, LoadError};
use diffusion_studio::engine::models::clip::ClipTextModel;
use serde_json::Value;
use tch::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn max_relative_error(ours: &Tensor, expected: &[f64]) -> f64 {
    let ours = Vec::<f32>::try_from(&ours.flatten(0, -1)).expect("f32");
    assert_eq!(ours.len(), expected.len());
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    ours.iter().zip(expected).fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs())) / scale
}

/// A recorded fixture JSON file.
fn record(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).expect("fixture")).expect("json")
}

/// A recorded array as an f32 tensor of `shape`.
fn tensor(value: &Value, shape: &[i64]) -> Tensor {
    let values: Vec<f32> = numbers(value).iter().map(|v| *v as f32).collect();
    Tensor::from_slice(&values).reshape(shape)
}

fn numbers(value: &Value) -> Vec<f64> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

#[test]
fn clip_text_encoders_match_transformers() {
    let record = record("clip.json");
    let ids: Vec<Vec<i64>> = record["input_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|row| row.as_array().expect("row").iter().map(|v| v.as_i64().expect("id")).collect())
        .collect();
    let input = Tensor::stack(&ids.iter().map(|row| Tensor::from_slice(row)).collect::<Vec<_>>(), 0);
    for name in ["tiny_clip_sd1", "tiny_clip_sd2"] {
        let model = ClipTextModel::from_folder(&fixture(name), Device::Cpu).expect("loads");
        let expected = &record["models"][name];
        let last = model.forward(&input, 0).expect("forward");
        let error = max_relative_error(&last, &numbers(&expected["last_hidden_state"]));
        assert!(error < 1e-4, "{name}: last_hidden_state differs by {error:e}");
        let skipped = model.forward(&input, 1).expect("forward");
        let error = max_relative_error(&skipped, &numbers(&expected["clip_skip_1"]));
        assert!(error < 1e-4, "{name}: clip skip 1 differs by {error:e}");
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    dir.join(name)
}

#[test]
fn damaged_safetensors_files_are_clear_errors() {
    let good = std::fs::read(fixture("tiny_clip_sd1/model.safetensors")).expect("fixture");
    // truncated
    let truncated = scratch("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() / 2]).expect("write");
    let error = loading::read_safetensors(&truncated).expect_err("truncated");
    assert!(
        matches!(error, LoadError::Format { .. }) && error.to_string().contains("truncated.safetensors"),
        "{error}"
    );
    // a header that lies about offsets: grow one end offset past the data
    let header_len = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).expect("utf8 header");
    let mut json: Value = serde_json::from_str(&header).expect("json header");
    let first_key =
        json.as_object().expect("object").keys().find(|k| *k != "__metadata__").cloned().expect("a key");
    json[&first_key]["data_offsets"][1] = Value::from(10_000_000u64);
    let lying_header = json.to_string().into_bytes();
    let mut lying = (lying_header.len() as u64).to_le_bytes().to_vec();
    lying.extend(&lying_header);
    lying.extend(&good[8 + header_len..]);
    let lying_path = scratch("lying.safetensors");
    std::fs::write(&lying_path, lying).expect("write");
    let error = loading::read_safetensors(&lying_path).expect_err("lying header");
    assert!(matches!(error, LoadError::Format { .. }), "{error}");
    // empty
    let empty = scratch("empty.safetensors");
    std::fs::write(&empty, b"").expect("write");
    let error = loading::read_safetensors(&empty).expect_err("empty");
    assert!(
        matches!(error, LoadError::Format { .. }) && error.to_string().contains("empty.safetensors"),
        "{error}"
    );
    // a dtype the studio does not load (unsigned bytes) is named with its key
    let header = br#"{"encoder.weight":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([7u8, 9]);
    let bytes_path = scratch("bytes.safetensors");
    std::fs::write(&bytes_path, bytes).expect("write");
    let error = loading::read_safetensors(&bytes_path).expect_err("u8 weights");
    assert!(
        matches!(error, LoadError::Dtype { .. })
            && error.to_string().contains("encoder.weight")
            && error.to_string().contains("f32, f16 or bf16"),
        "{error}"
    );
    // pickle formats are refused by name, before reading
    let error = loading::read_safetensors(Path::new("/models/v1-5.ckpt")).expect_err("pickle");
    assert!(error.to_string().contains("can run arbitrary code"), "{error}");
}

#[test]
fn a_config_that_does_not_fit_the_weights_names_the_key_and_both_shapes() {
    let folder = scratch("mismatch");
    std::fs::create_dir_all(&folder).expect("dir");
    std::fs::copy(fixture("tiny_clip_sd1/model.safetensors"), folder.join("model.safetensors"))
        .expect("copy");
    let config = std::fs::read_to_string(fixture("tiny_clip_sd1/config.json")).expect("config");
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"intermediate_size\": 37", "\"intermediate_size\": 40"),
    )
    .expect("write");
    let error = ClipTextModel::from_folder(&folder, Device::Cpu).err().expect("mismatch");
    let message = error.to_string();
    assert!(message.contains("mlp.fc1") && message.contains("[37") && message.contains("[40"), "{message}");
    assert!(message.contains("model.safetensors"), "{message}");
    // fewer layers in the config: the file has weights the model does not
    std::fs::write(
        folder.join("config.json"),
        std::fs::read_to_string(fixture("tiny_clip_sd1/config.json"))
            .expect("config")
            .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"),
    )
    .expect("write");
    let error = ClipTextModel::from_folder(&folder, Device::Cpu).err().expect("extra keys");
    assert!(error.to_string().contains("encoder.layers.2"), "{error}");
    // more layers: weights missing
    std::fs::write(
        folder.join("config.json"),
        std::fs::read_to_string(fixture("tiny_clip_sd1/config.json"))
            .expect("config")
            .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4"),
    )
    .expect("write");
    let error = ClipTextModel::from_folder(&folder, Device::Cpu).err().expect("missing keys");
    assert!(
        matches!(error, LoadError::Missing { .. }) && error.to_string().contains("encoder.layers.3"),
        "{error}"
    );
}

#[test]
fn the_vae_encodes_and_decodes_like_diffusers() {
    use diffusion_studio::engine::models::vae::AutoencoderKl;
    let record = record("vae.json");
    let vae = AutoencoderKl::from_folder(&fixture("tiny_vae"), Device::Cpu).expect("loads");
    assert_eq!(vae.config.scaling_factor, record["scaling_factor"].as_f64().expect("factor"));
    let as_tensor = |key: &str, shape: &[i64]| tensor(&record[key], shape);
    let image = as_tensor("image", &[1, 3, 32, 32]);
    let posterior = vae.encode(&image).expect("encode");
    let error = max_relative_error(&posterior.mean, &numbers(&record["mean"]));
    assert!(error < 1e-4, "mean differs by {error:e}");
    let error = max_relative_error(&posterior.std, &numbers(&record["std"]));
    assert!(error < 1e-4, "std differs by {error:e}");
    let decoded = vae.decode(&as_tensor("latents", &[1, 4, 16, 16])).expect("decode");
    let error = max_relative_error(&decoded, &numbers(&record["decoded"]));
    assert!(error < 1e-4, "decode differs by {error:e}");
}

#[test]
fn unets_match_diffusers_for_sd1_sd2_inpainting_and_text_time_shapes() {
    use diffusion_studio::engine::models::unet_2d_condition::UNet2DConditionModel;
    let record = record("unet.json");
    for name in ["tiny_unet_sd1", "tiny_unet_sd2", "tiny_unet_inpaint", "tiny_unet_text_time"] {
        let case = &record[name];
        let unet = UNet2DConditionModel::from_folder(&fixture(name), Device::Cpu).expect("loads");
        let shape: Vec<i64> = case["sample_shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_i64().expect("dim"))
            .collect();
        let sample = tensor(&case["sample"], &shape);
        let context = tensor(&case["context"], &[shape[0], 77, 32]);
        let timestep = case["timestep"].as_f64().expect("t");
        let output = unet.forward(&sample, timestep, &context).expect("forward");
        let error = max_relative_error(&output, &numbers(&case["output"]));
        assert!(error < 1e-4, "{name}: output differs by {error:e}");
    }
}

#[test]
fn a_batch_split_over_two_threads_matches_diffusers_and_survives_a_failed_pass() {
    use diffusion_studio::engine::models::unet_2d_condition::UNet2DConditionModel;
    let record = record("unet.json");
    let case = &record["tiny_unet_sd1"];
    let mut unet = UNet2DConditionModel::from_folder(&fixture("tiny_unet_sd1"), Device::Cpu).expect("loads");
    let shape: Vec<i64> =
        case["sample_shape"].as_array().expect("shape").iter().map(|v| v.as_i64().expect("dim")).collect();
    assert!(shape[0] >= 2, "the fixture is a batch of {}", shape[0]);
    let sample = tensor(&case["sample"], &shape);
    let context = tensor(&case["context"], &[shape[0], 77, 32]);
    let timestep = case["timestep"].as_f64().expect("t");
    let threads = tch::get_num_threads();
    let split = unet.enable_branch_parallel();
    // a small float UNet on a CPU with two or more threads splits; with one thread it does not
    assert_eq!(split, threads >= 2, "{threads} threads");
    for _ in 0..3 {
        let output = unet.forward(&sample, timestep, &context).expect("forward");
        let error = max_relative_error(&output, &numbers(&case["output"]));
        assert!(error < 1e-4, "split output differs by {error:e}");
    }
    // a context of the wrong width fails on both threads (the attention's projection panics, as
    // it does without the split; the engine catches a job's panic); the next pass is right, not
    // the failed pass's leftover
    let wrong = Tensor::zeros([shape[0], 77, 7], (tch::Kind::Float, Device::Cpu));
    for _ in 0..2 {
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            unet.forward(&sample, timestep, &wrong).map(drop)
        }));
        assert!(!matches!(failed, Ok(Ok(()))), "a wrong context is refused");
    }
    assert_eq!(tch::get_num_threads(), threads, "the thread count is restored");
    let output = unet.forward(&sample, timestep, &context).expect("forward after a failure");
    assert!(max_relative_error(&output, &numbers(&case["output"])) < 1e-4);
    // the weights are shared, not copied: a change to them is seen by both halves
    let before = unet.forward(&sample, timestep, &context).expect("forward");
    tch::no_grad(|| {
        for (_, mut weight) in unet.var_store().variables() {
            let _ = weight.f_mul_scalar_(1.01);
        }
    });
    let after = unet.forward(&sample, timestep, &context).expect("forward");
    let half = shape[0] / 2;
    for rows in [(0, half), (half, shape[0] - half)] {
        let (a, b) = (before.narrow(0, rows.0, rows.1), after.narrow(0, rows.0, rows.1));
        assert!(a.ne_tensor(&b).any().int64_value(&[]) == 1, "rows {rows:?} did not see the new weights");
    }
    unet.disable_branch_parallel();
    let alone = unet.forward(&sample, timestep, &context).expect("forward");
    assert!(alone.allclose(&after, 1e-4, 1e-5, false), "one thread and two agree");
    // a model dropped right after failed passes (their results unread) lets its worker end
    if unet.enable_branch_parallel() {
        for _ in 0..2 {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                unet.forward(&sample, timestep, &wrong).map(drop)
            }));
        }
        unet.disable_branch_parallel();
    }
}

#[test]
fn a_sharded_checkpoint_loads_like_a_single_file() {
    use diffusion_studio::engine::models::unet_2d_condition::UNet2DConditionModel;
    let source = fixture("tiny_unet_sd1");
    let tensors =
        loading::read_safetensors(&source.join("diffusion_pytorch_model.safetensors")).expect("reads");
    let folder = scratch("sharded_unet");
    std::fs::create_dir_all(&folder).expect("dir");
    std::fs::copy(source.join("config.json"), folder.join("config.json")).expect("config");
    let (first, second): (Vec<_>, Vec<_>) = tensors.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut weight_map = serde_json::Map::new();
    for (name, shard) in [("part-1.safetensors", first), ("part-2.safetensors", second)] {
        let named: Vec<(String, Tensor)> = shard.into_iter().map(|(_, kv)| kv).collect();
        for (key, _) in &named {
            weight_map.insert(key.clone(), Value::from(name));
        }
        Tensor::write_safetensors(&named, folder.join(name)).expect("writes a shard");
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(folder.join("diffusion_pytorch_model.safetensors.index.json"), index.to_string())
        .expect("index");
    let sharded = UNet2DConditionModel::from_folder(&folder, Device::Cpu).expect("sharded loads");
    let record = record("unet.json");
    let case = &record["tiny_unet_sd1"];
    let sample = tensor(&case["sample"], &[2, 4, 8, 8]);
    let context = tensor(&case["context"], &[2, 77, 32]);
    let output = sharded.forward(&sample, case["timestep"].as_f64().expect("t"), &context).expect("forward");
    assert!(max_relative_error(&output, &numbers(&case["output"])) < 1e-4);
}

#[test]
fn an_unknown_block_type_is_refused_by_name() {
    use diffusion_studio::engine::models::unet_2d_condition::UNet2DConditionModel;
    let folder = scratch("unknown_block");
    std::fs::create_dir_all(&folder).expect("dir");
    let config = std::fs::read_to_string(fixture("tiny_unet_sd1/config.json")).expect("config");
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"DownBlock2D\"", "\"SimpleCrossAttnDownBlock2D\""),
    )
    .expect("write");
    let error = UNet2DConditionModel::from_folder(&folder, Device::Cpu).err().expect("refused");
    assert!(error.to_string().contains("SimpleCrossAttnDownBlock2D"), "{error}");
}

#[test]
fn taesd_encodes_and_decodes_like_diffusers() {
    use diffusion_studio::engine::models::taesd::AutoencoderTiny;
    let record = record("taesd.json");
    let taesd = AutoencoderTiny::from_folder(&fixture("tiny_taesd"), Device::Cpu).expect("loads");
    let as_tensor = |key: &str, shape: &[i64]| tensor(&record[key], shape);
    let encoded = taesd.encode(&as_tensor("image", &[1, 3, 32, 32])).expect("encode");
    let error = max_relative_error(&encoded, &numbers(&record["encoded"]));
    assert!(error < 1e-4, "encode differs by {error:e}");
    let decoded = taesd.decode(&as_tensor("latents", &[1, 4, 4, 4])).expect("decode");
    let error = max_relative_error(&decoded, &numbers(&record["decoded"]));
    assert!(error < 1e-4, "decode differs by {error:e}");
}

#[test]
fn unet_2d_models_match_diffusers_unconditional_and_class_conditional() {
    use diffusion_studio::engine::models::unet_2d::UNet2DModel;
    let record = record("unet_2d.json");
    for name in ["tiny_unet_2d_mel", "tiny_unet_2d_class"] {
        let case = &record[name];
        let unet = UNet2DModel::from_folder(&fixture(name), Device::Cpu).expect("loads");
        let shape: Vec<i64> = case["sample_shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_i64().expect("dim"))
            .collect();
        let sample = tensor(&case["sample"], &shape);
        let labels = case["class_labels"].as_array().map(|labels| {
            Tensor::from_slice(&labels.iter().map(|v| v.as_i64().expect("label")).collect::<Vec<_>>())
        });
        let output =
            unet.forward(&sample, case["timestep"].as_f64().expect("t"), labels.as_ref()).expect("forward");
        let error = max_relative_error(&output, &numbers(&case["output"]));
        assert!(error < 1e-4, "{name}: output differs by {error:e}");
        if labels.is_some() {
            let error = unet.forward(&sample, 250.0, None).expect_err("labels are required");
            assert!(error.to_string().contains("class labels"), "{error}");
        }
    }
}
