//! Every header of bpf/ compiles on its own (it includes what it uses), so
//! the order of includes in a program never matters. Needs clang (as the
//! build does), not root.
//!
//! cargo test --release --test bpf_headers

use std::path::{Path, PathBuf};
use std::process::Command;

/// libbpf's own headers (<bpf/bpf_helpers.h>), as libbpf-sys built them.
fn libbpf_include(root: &Path) -> PathBuf {
    for profile in ["release", "debug"] {
        let build = root.join("target").join(profile).join("build");
        if let Ok(dirs) = std::fs::read_dir(&build) {
            for d in dirs.flatten() {
                let inc = d.path().join("out/include");
                if d.file_name().to_string_lossy().starts_with("libbpf-sys-") && inc.join("bpf/bpf_helpers.h").exists() {
                    return inc;
                }
            }
        }
    }
    panic!("libbpf's headers not found under target/*/build/libbpf-sys-*/out/include: build first (cargo build --release)");
}

#[test]
fn every_bpf_header_compiles_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let inc = libbpf_include(root);
    let arch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let out = std::env::temp_dir().join(format!("weir-hdr-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut headers: Vec<PathBuf> =
        std::fs::read_dir(root.join("bpf")).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "h")).collect();
    headers.sort();
    assert!(headers.len() > 10, "bpf/ headers: {headers:?}");
    let mut failed = Vec::new();
    for h in &headers {
        let name = h.file_name().unwrap().to_string_lossy().to_string();
        let src = out.join(format!("{name}.c"));
        std::fs::write(&src, format!("#include \"{name}\"\n")).unwrap();
        let o = Command::new(&clang)
            .args(["-target", "bpf", "-mcpu=v3", "-O2", "-Wall", "-Werror", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(out.join(format!("{name}.o")))
            .arg(format!("-I{}", root.join("include").display()))
            .arg(format!("-I{}", root.join("bpf").display()))
            .arg(&arch)
            .arg(format!("-I{}", inc.display()))
            .output()
            .unwrap_or_else(|e| panic!("running {clang}: {e}"));
        if !o.status.success() {
            failed.push(format!("{name}:\n{}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    println!("{} headers compiled alone", headers.len());
    assert!(failed.is_empty(), "headers that do not include what they use:\n{}", failed.join("\n"));
}
