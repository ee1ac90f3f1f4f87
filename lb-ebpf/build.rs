// Rebuild the programs when bpf-linker changes (e.g. after `cargo xtask` installed it).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
