//! `ward`: see `ward --help` and README.md.

fn main() -> std::process::ExitCode {
    ward::cli::main()
}
