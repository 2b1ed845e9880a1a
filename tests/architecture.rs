//! Architecture rules that the compiler does not check: `tch` is used only under `src/engine/`
//! (the UI, document, audio and protocol never touch a tensor).

use std::path::{Path, PathBuf};

/// Lines of `text` that use the tch crate.
fn tch_uses(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or("");
            names_tch_path(code)
                || code
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| w[0] == "use" && w[1].starts_with("tch"))
        })
        .map(|(index, line)| (index + 1, line.trim().to_string()))
        .collect()
}

/// Whether `code` holds a path starting at the crate `tch` (`tch::…`, not `stretch::…`).
fn names_tch_path(code: &str) -> bool {
    code.match_indices("tch::").any(|(index, _)| {
        code[..index].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

fn rust_files(folder: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).expect("readable source folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn the_detector_sees_tch_uses_and_ignores_comments_and_lookalikes() {
    assert_eq!(tch_uses("use tch::Tensor;").len(), 1);
    assert_eq!(tch_uses("use tch;").len(), 1);
    assert_eq!(tch_uses("let t = tch::Tensor::zeros([1], opts);").len(), 1);
    assert_eq!(tch_uses("    use tch::{Device, Kind};").len(), 1);
    assert!(tch_uses("// tch:: is only for the engine").is_empty());
    assert!(tch_uses("let stretch = 1; let sketch_ = 2;").is_empty());
    assert!(tch_uses("use stretch::Thing;").is_empty());
}

#[test]
fn tch_is_used_only_under_src_engine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 5, "found the sources");
    let engine = root.join("src/engine");
    let mut offences = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&engine)) {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line, code) in tch_uses(&text) {
            offences.push(format!("{}:{line}: {code}", file.strip_prefix(root).unwrap_or(file).display()));
        }
    }
    assert!(offences.is_empty(), "tch used outside src/engine/:\n{}", offences.join("\n"));
}
