//! `ward`: see `ward --help` and README.md.

/// mimalloc instead of glibc's malloc: a token request allocates and frees a few hundred small
/// objects (JSON, SQL binds, HTTP buffers), and glibc's allocator took about a tenth of the
/// token endpoint's time in the profile (BENCHMARKS.md, the performance issue's notes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ward::cli::main()
}
