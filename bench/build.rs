//! Builds the XDP programs (lb-ebpf) with their `bench` feature, as lb-userspace/build.rs builds
//! them without it: the benches' object, with the bench programs next to the balancer.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const EBPF_PACKAGE: &str = "lb-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // With AYA_BUILD_SKIP=1 (e.g. for clippy) aya-build builds nothing: embed an empty object
    // instead, which fails clearly at load time rather than at compile time.
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join(EBPF_PACKAGE), [])?;
        return Ok(());
    }
    let root_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("..").join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().context("non UTF-8 path to lb-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: EBPF_PACKAGE, root_dir, features: &["bench"], ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP programs with their bench programs failed; `cargo xtask setup` installs what they need")
}
