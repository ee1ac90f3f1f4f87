// Only here so that lb-userspace can name this crate as a build dependency (which makes cargo
// rebuild the embedded object when this crate changes). The programs are the `lb-ebpf` binary.
#![no_std]
