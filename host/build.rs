//! Hands the device crate `gpu/`'s PTX to the host crate (the role `cuda_builder` plays in
//! Rust-CUDA).
//!
//! By default it copies the PTX shipped in `host/ptx/`, so that building this crate (e.g. as a
//! dependency) needs neither the pinned nightly nor the nvptx target: any stable Rust will do.
//! With `SPARSE_TC_PTX_FROM_SOURCE=1` (set for this repository by `.cargo/config.toml` and
//! `.ci/env.sh`, so editing a kernel here rebuilds its PTX) it builds `gpu/` instead, and warns
//! when the result differs from `host/ptx/` (`.ci/check-shipped-ptx --update` refreshes it;
//! CI checks that the two are equal).
//!
//! The build from source runs a nested `cargo build --target nvptx64-nvidia-cuda
//! -Zbuild-std=core` twice: with
//! `-C target-cpu=sm_80` (Tensor Core `mma.sync`, `cp.async`, `ldmatrix`; runs on A100 and
//! H100) and PTX ISA 7.4 (`+ptx74`: L2 cache policies and `discard`), and with sm_90, PTX 8.3
//! and `--cfg sm90` (instructions only Hopper has; `Gpu` loads this one on compute
//! capability 9.0 and later). The two run at once, each in its own target directory (shared
//! by every build of this crate) and with the outer build's cargo/rustc variables removed (else the nested cargo
//! waits on the outer one's lock or inherits host flags). A kernel that does not compile fails this build with the compiler's message.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Tile shapes and launch bounds, shared with the device crate.
#[path = "../gpu/src/layout.rs"]
#[allow(dead_code)]
mod layout;

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let gpu = root.join("gpu");
    let shipped = root.join("host").join("ptx");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-env-changed={FROM_SOURCE}");
    if !from_source() {
        for build in BUILDS {
            let ptx = shipped.join(build.file);
            println!("cargo:rerun-if-changed={}", ptx.display());
            std::fs::copy(&ptx, out.join(build.file)).unwrap_or_else(|e| {
                panic!("cannot copy the shipped PTX {}: {e} (or set {FROM_SOURCE}=1 to build gpu/)", ptx.display())
            });
        }
        return;
    }
    println!("cargo:rerun-if-changed={}", gpu.join("src").display());
    println!("cargo:rerun-if-changed={}", gpu.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", root.join("rust-toolchain.toml").display());

    let toolchain = pinned_toolchain(&root.join("rust-toolchain.toml"));
    let nested = nested_target_root(&out);
    // The two builds at once: each is mostly one single-threaded rustc (core, then the
    // device crate with LTO and one codegen unit).
    let ptxs: Vec<String> = std::thread::scope(|s| {
        let builds: Vec<_> = BUILDS
            .iter()
            .map(|build| {
                let (gpu, dir, toolchain) = (&gpu, nested.join(build.dir), &toolchain);
                s.spawn(move || build_ptx(gpu, &dir, toolchain, build.rustflags))
            })
            .collect();
        builds.into_iter().map(|b| b.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    for (build, ptx) in BUILDS.iter().zip(ptxs) {
        let ptx = add_launch_bounds(&ptx);
        println!("cargo:rerun-if-changed={}", shipped.join(build.file).display());
        if std::fs::read_to_string(shipped.join(build.file)).ok().as_deref() != Some(ptx.as_str()) {
            println!(
                "cargo:warning=host/ptx/{} differs from this build of gpu/: run .ci/check-shipped-ptx --update before committing",
                build.file
            );
        }
        std::fs::write(out.join(build.file), ptx).expect("writing the PTX");
    }
}

/// The environment variable that selects the build from source.
const FROM_SOURCE: &str = "SPARSE_TC_PTX_FROM_SOURCE";

/// `SPARSE_TC_PTX_FROM_SOURCE=1`: build `gpu/` (pinned nightly, nvptx) instead of copying
/// `host/ptx/`.
fn from_source() -> bool {
    match env::var(FROM_SOURCE).as_deref() {
        Ok("1") => true,
        Ok("0") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{FROM_SOURCE}={other:?}: expected 1 (build gpu/) or 0 (use host/ptx/)"),
    }
}

/// One PTX build of the device crate.
struct PtxBuild {
    /// `CARGO_ENCODED_RUSTFLAGS` of the nested build.
    rustflags: &'static str,
    /// Its own target directory (under [`nested_target_root`]), so the two builds do not
    /// rebuild each other.
    dir: &'static str,
    /// The PTX file written to `OUT_DIR` (embedded by `host/src/lib.rs`), and its name in
    /// `host/ptx/`.
    file: &'static str,
}

/// The portable build (sm_80, PTX 7.4: A100, H100 and later) and the sm_90 build (PTX 8.3,
/// `--cfg sm90`: the SpMM's fragment loads clear the tile as they read it, `atom.shared.exch.b64`).
const BUILDS: [PtxBuild; 2] = [
    PtxBuild { rustflags: "-Ctarget-cpu=sm_80\x1f-Ctarget-feature=+ptx74", dir: "gpu-target", file: "sparse_tc_gpu.ptx" },
    PtxBuild {
        rustflags: "-Ctarget-cpu=sm_90\x1f-Ctarget-feature=+ptx83\x1f--cfg\x1fsm90",
        dir: "gpu-target-sm90",
        file: "sparse_tc_gpu_sm90.ptx",
    },
];

/// Where the nested builds keep their target directories: `<target dir>/sparse_tc-gpu`, found
/// from `OUT_DIR` (`<target dir>/<profile>/build/…/out`), so that every build of this crate
/// (another profile, other features, clippy) shares them and finds the device crate built
/// already; `OUT_DIR` itself if its layout is not that.
fn nested_target_root(out: &Path) -> PathBuf {
    let build = out.ancestors().find(|a| a.file_name().is_some_and(|n| n == "build"));
    match build.and_then(|b| b.parent()).and_then(|profile| profile.parent()) {
        Some(target) => target.join("sparse_tc-gpu"),
        None => out.to_path_buf(),
    }
}

/// Runs the nested cargo build of `gpu/` into `target_dir` and returns the PTX text.
fn build_ptx(gpu: &Path, target_dir: &Path, toolchain: &str, rustflags: &str) -> String {
    let mut cmd = Command::new("cargo");
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO_") || key.starts_with("RUST") || key == "RUSTC" {
            cmd.env_remove(&key);
        }
    }
    if let Ok(home) = env::var("CARGO_HOME") {
        cmd.env("CARGO_HOME", home);
    }
    if let Ok(home) = env::var("RUSTUP_HOME") {
        cmd.env("RUSTUP_HOME", home);
    }
    cmd.env("RUSTUP_TOOLCHAIN", toolchain)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .current_dir(gpu)
        .args(["build", "--release", "--target", "nvptx64-nvidia-cuda", "-Zbuild-std=core"])
        .arg("--target-dir")
        .arg(target_dir);
    let output = cmd.output().unwrap_or_else(|e| {
        panic!("could not run `cargo` to build the device crate (toolchain {toolchain}): {e}")
    });
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            println!("cargo:warning={line}");
        }
        panic!("the device crate gpu/ failed to compile to PTX ({rustflags:?}):\n{stderr}");
    }
    let ptx = target_dir.join("nvptx64-nvidia-cuda/release/sparse_tc_gpu.ptx");
    std::fs::read_to_string(&ptx).unwrap_or_else(|e| panic!("device build produced no PTX at {}: {e}", ptx.display()))
}

/// Writes `layout::LAUNCH_BOUNDS` into the PTX: `.maxntid T, 1, 1` and `.minnctapersm B`
/// between an entry's parameter list and its body (PTX ISA 11.4, performance-tuning
/// directives; what CUDA C++'s `__launch_bounds__(T, B)` emits).
fn add_launch_bounds(ptx: &str) -> String {
    let mut out = ptx.to_string();
    for (name, threads, blocks) in layout::LAUNCH_BOUNDS {
        let start = out
            .find(&format!(".entry {name}("))
            .unwrap_or_else(|| panic!("launch bounds for `{name}`: no such entry in the PTX"));
        let body = start + out[start..].find("\n{\n").expect("a PTX entry has a body");
        out.insert_str(body, &format!("\n.maxntid {threads}, 1, 1\n.minnctapersm {blocks}"));
    }
    out
}

/// The `channel` of rust-toolchain.toml: the device crate is built with the same nightly.
fn pinned_toolchain(file: &Path) -> String {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            let v = l.strip_prefix("channel")?.trim().strip_prefix('=')?.trim();
            Some(v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("no `channel = ...` in {}", file.display()))
}
