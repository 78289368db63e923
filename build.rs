use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// Each BPF object becomes one skeleton module in OUT_DIR.
const PROGRAMS: &[&str] = &["lb", "shield", "trivial"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch_inc = format!("-I/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into()));

    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        if let Err(e) = SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(["-Iinclude", "-Ibpf", &arch_inc, "-mcpu=v3", "-Wall", "-Werror"])
            .build_and_generate(&skel)
        {
            panic!("building {src} with {clang} failed: {e:#}");
        }
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=include");
}
