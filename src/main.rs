//! The `fsdb` command-line tool; see `fsdb --help` and README.md.

fsdb::use_jemalloc!();

fn main() -> std::process::ExitCode {
    fsdb::cli::main()
}
