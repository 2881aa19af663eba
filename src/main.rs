//! The `fsdb` command-line tool; see `fsdb --help` and README.md.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fsdb::cli::main()
}
