//! Every scheduler against diffusers 0.42.1: trajectories on the dummy model
//! `sample * t / (t + 1)` from a seeded CPU generator, recorded by
//! `tests/fixtures/make_fixtures.py` into `tests/fixtures/schedulers.json`.

use diffusion_studio::engine::schedulers::{
    self, CpuGeneratorNoise, Scheduler, SchedulerConfig, SchedulerKind, ddim::DdimScheduler,
};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Tolerance: max |ours − diffusers| ≤ 1e-4 × max |diffusers| over each recorded tensor.
const RELATIVE_TOLERANCE: f64 = 1e-4;

fn fixtures() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers.json");
    let text = std::fs::read_to_string(path).expect("fixtures present (make fixtures)");
    let json: Value = serde_json::from_str(&text).expect("fixture JSON");
    json["cases"].as_array().expect("cases").clone()
}

fn kind_of(class: &str) -> Option<SchedulerKind> {
    [
        SchedulerKind::Ddim,
        SchedulerKind::DdimInverse,
        SchedulerKind::Ddpm,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Heun,
        SchedulerKind::Lcm,
    ]
    .into_iter()
    .find(|kind| kind.class_name() == class)
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number") as f32).collect()
}

fn max_relative_error(ours: &Tensor, expected: &[f32]) -> f64 {
    let ours = Vec::<f32>::try_from(&ours.flatten(0, -1)).expect("f32 values");
    assert_eq!(ours.len(), expected.len());
    let scale = expected.iter().fold(0f64, |m, v| m.max(f64::from(v.abs()))).max(1e-12);
    let diff = ours.iter().zip(expected).fold(0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
    diff / scale
}

/// The dummy model of diffusers' scheduler tests.
fn dummy_model(sample: &Tensor, t: f64) -> Tensor {
    sample.f_mul_scalar(t).and_then(|x| x.f_div_scalar(t + 1.0)).expect("dummy model")
}

fn run_case(case: &Value, kind: SchedulerKind) -> Result<(), String> {
    let name = case["name"].as_str().unwrap_or("?");
    let config_json = case["config"].to_string();
    let config = SchedulerConfig::from_json(kind, &config_json, name).map_err(|e| e.to_string())?;
    let mut scheduler: Box<dyn Scheduler> = if let Some(eta) = case["step_kwargs"]["eta"].as_f64() {
        let mut ddim = DdimScheduler::new(config).map_err(|e| e.to_string())?;
        ddim.eta = eta;
        Box::new(ddim)
    } else {
        schedulers::build(kind, config).map_err(|e| e.to_string())?
    };
    let steps = case["steps"].as_u64().expect("steps") as usize;
    scheduler.set_timesteps(steps).map_err(|e| e.to_string())?;
    // 1. the schedule itself
    let expected_timesteps: Vec<f64> =
        case["timesteps"].as_array().expect("timesteps").iter().map(|v| v.as_f64().expect("t")).collect();
    let ours = scheduler.timesteps().to_vec();
    if ours.len() != expected_timesteps.len()
        || ours.iter().zip(&expected_timesteps).any(|(a, b)| (a - b).abs() > 1e-3 * b.abs().max(1.0))
    {
        return Err(format!("{name}: timesteps {ours:?}, diffusers {expected_timesteps:?}"));
    }
    let expected_sigma = case["init_noise_sigma"].as_f64().expect("sigma");
    if (scheduler.init_noise_sigma() - expected_sigma).abs() > 1e-5 * expected_sigma {
        return Err(format!("{name}: init_noise_sigma {} vs {expected_sigma}", scheduler.init_noise_sigma()));
    }
    // 2. the same random draws, then every step
    tch::manual_seed(case["seed"].as_i64().expect("seed"));
    let shape: Vec<i64> =
        case["shape"].as_array().expect("shape").iter().map(|v| v.as_i64().expect("dim")).collect();
    let mut sample = Tensor::randn(&shape, (Kind::Float, Device::Cpu)) * scheduler.init_noise_sigma();
    let initial_error = max_relative_error(&sample, &floats(&case["initial"]));
    if initial_error > 1e-6 {
        return Err(format!("{name}: the seeded initial sample differs ({initial_error:e})"));
    }
    let trajectory = case["trajectory"].as_array().expect("trajectory");
    let mut noise = CpuGeneratorNoise;
    for (index, expected) in trajectory.iter().enumerate() {
        let t = scheduler.timesteps()[index];
        let model_input = scheduler.scale_model_input(&sample, index).map_err(|e| e.to_string())?;
        let output = dummy_model(&model_input, t);
        sample = scheduler.step(&output, index, &sample, &mut noise).map_err(|e| e.to_string())?;
        let error = max_relative_error(&sample, &floats(expected));
        if error > RELATIVE_TOLERANCE {
            return Err(format!(
                "{name}: step {index} (t = {t}) differs from diffusers by {error:e} relative"
            ));
        }
    }
    Ok(())
}

/// One test for all cases: the seeded CPU generator is process-global, so cases must not run in
/// parallel with each other.
#[test]
fn schedulers_match_diffusers_trajectories() {
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for case in fixtures() {
        let class = case["class"].as_str().expect("class");
        let Some(kind) = kind_of(class) else { continue };
        match run_case(&case, kind) {
            Ok(()) => checked.push(case["name"].as_str().unwrap_or("?").to_string()),
            Err(message) => failures.push(message),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked.len() >= 19, "only {} cases checked: {checked:?}", checked.len());
    eprintln!("matched diffusers on: {}", checked.join(", "));
}

#[test]
fn a_step_past_the_schedule_is_an_error_not_a_panic() {
    for kind in
        [SchedulerKind::Ddim, SchedulerKind::Ddpm, SchedulerKind::Euler, SchedulerKind::EulerAncestral]
    {
        let mut scheduler =
            schedulers::build(kind, SchedulerConfig::stable_diffusion(kind)).expect("scheduler");
        scheduler.set_timesteps(4).expect("steps");
        let sample = Tensor::zeros([1, 4, 2, 2], (Kind::Float, Device::Cpu));
        let error = scheduler.step(&sample, 4, &sample, &mut CpuGeneratorNoise).expect_err("past the end");
        assert!(error.to_string().contains("4 steps"), "{kind:?}: {error}");
    }
}
