//! `load-tests`: see `load-tests --help`, and the crate docs for how it works.

fn main() {
    std::process::exit(load_tests::main_with_args());
}
