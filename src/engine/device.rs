//! Device choice (CPU or a CUDA device) and what the `info` command and the status bar say about
//! the machine: libtorch's version, CPU threads, CUDA devices with their memory.

use crate::protocol::{DeviceChoice, DeviceReport};

/// Turns a choice into a device, or says why it cannot be had and what to do.
pub fn select(choice: DeviceChoice) -> Result<tch::Device, String> {
    let cuda_count = cuda_device_count();
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto if cuda_count > 0 => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Auto => Ok(tch::Device::Cpu),
        DeviceChoice::Cuda(index) if index < cuda_count => Ok(tch::Device::Cuda(index)),
        DeviceChoice::Cuda(index) if cuda_count == 0 => Err(format!(
            "CUDA device {index} was asked for, but libtorch sees no CUDA device \
             (no NVIDIA driver or GPU on this machine); use --device cpu or auto"
        )),
        DeviceChoice::Cuda(index) => Err(format!(
            "CUDA device {index} was asked for, but there are only {cuda_count} \
             (0…{}); choose one of those",
            cuda_count - 1
        )),
    }
}

/// How many CUDA devices libtorch can use.
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() { usize::try_from(tch::Cuda::device_count()).unwrap_or(0) } else { 0 }
}

/// The status-bar description of `device`.
pub fn report(device: tch::Device) -> DeviceReport {
    match device {
        tch::Device::Cuda(index) => {
            let gpu = cuda_devices().into_iter().nth(index);
            let description = match gpu {
                Some(gpu) => format!("CUDA {index}: {}", gpu.description()),
                None => format!("CUDA {index}"),
            };
            DeviceReport { name: format!("cuda:{index}"), description, cuda_devices: cuda_device_count() }
        }
        _ => DeviceReport {
            name: "cpu".into(),
            description: format!("CPU, {} threads", tch::get_num_threads()),
            cuda_devices: cuda_device_count(),
        },
    }
}

/// One CUDA device as `info` lists it.
#[derive(Debug, Clone)]
pub struct CudaDeviceInfo {
    pub index: usize,
    /// From NVML; `None` when NVML cannot be loaded.
    pub name: Option<String>,
    pub total_memory_bytes: Option<u64>,
    pub free_memory_bytes: Option<u64>,
}

impl CudaDeviceInfo {
    pub fn description(&self) -> String {
        let name = self.name.as_deref().unwrap_or("unnamed device (NVML unavailable)");
        match (self.total_memory_bytes, self.free_memory_bytes) {
            (Some(total), Some(free)) => {
                format!("{name}, {:.1} GiB total, {:.1} GiB free", gib(total), gib(free))
            }
            _ => name.to_string(),
        }
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The CUDA devices libtorch sees, named and measured through NVML where the driver has it.
pub fn cuda_devices() -> Vec<CudaDeviceInfo> {
    let count = cuda_device_count();
    let nvml = nvml_wrapper::Nvml::init().ok();
    (0..count)
        .map(|index| {
            let device = nvml.as_ref().and_then(|nvml| nvml.device_by_index(index as u32).ok());
            let name = device.as_ref().and_then(|d| d.name().ok());
            let memory = device.as_ref().and_then(|d| d.memory_info().ok());
            CudaDeviceInfo {
                index,
                name,
                total_memory_bytes: memory.as_ref().map(|m| m.total),
                free_memory_bytes: memory.as_ref().map(|m| m.free),
            }
        })
        .collect()
}

/// What `diffusion-studio info` prints about libtorch and the devices.
#[derive(Debug, Clone)]
pub struct SystemReport {
    pub libtorch_version: &'static str,
    pub libtorch_lib_dir: &'static str,
    pub cpu_threads: i32,
    /// Whether the binary links libtorch_cuda (so CUDA is used where a GPU is).
    pub cuda_linked: &'static str,
    pub cudnn_version: Option<i64>,
    pub cuda_devices: Vec<CudaDeviceInfo>,
}

pub fn system_report() -> SystemReport {
    let cuda_devices = cuda_devices();
    SystemReport {
        libtorch_version: env!("LIBTORCH_VERSION"),
        libtorch_lib_dir: option_env!("LIBTORCH_LIB_DIR").unwrap_or("unknown"),
        cpu_threads: tch::get_num_threads(),
        cuda_linked: env!("LIBTORCH_CUDA_LINKED"),
        cudnn_version: (!cuda_devices.is_empty() && tch::Cuda::cudnn_is_available())
            .then(tch::utils::version_cudnn),
        cuda_devices,
    }
}
