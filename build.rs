//! Links the binary so that it runs with no environment variables and uses CUDA wherever a GPU is:
//! an rpath to libtorch's folder, and `libtorch_cuda.so` kept as NEEDED despite `--as-needed`.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (`links = "tch"`) exports the folder it linked against to its direct dependents.
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report libtorch's folder; no rpath is set");
        println!("cargo:rustc-env=LIBTORCH_VERSION=unknown");
        println!("cargo:rustc-env=LIBTORCH_CUDA_LINKED=unknown");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        // Rust passes `--as-needed`; nothing calls into libtorch_cuda directly, so the linker would
        // drop it and CUDA would look unavailable at run time.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-env=LIBTORCH_CUDA_LINKED=yes");
    } else {
        println!("cargo:rustc-env=LIBTORCH_CUDA_LINKED=no (a CPU-only libtorch)");
    }
    println!("cargo:rustc-env=LIBTORCH_LIB_DIR={}", lib_dir.display());
    println!("cargo:rustc-env=LIBTORCH_VERSION={}", libtorch_version(&lib_dir));
}

/// The version of the libtorch we link: `torch/version.py` for a Python install,
/// `build-version` for a standalone libtorch.
fn libtorch_version(lib_dir: &Path) -> String {
    let Some(root) = lib_dir.parent() else {
        return "unknown".into();
    };
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let value = rest.trim_start_matches([' ', '=', ':', 's', 't', 'r']).trim();
                return value.trim_matches(['\'', '"']).to_string();
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
