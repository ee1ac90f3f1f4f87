//! lbctl: the operator's command line (see `lbctl --help`).
fn main() {
    std::process::exit(lb_userspace::cli::main());
}
