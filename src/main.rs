//! The `tunelake` binary: everything lives in the library; this only boots it.

fn main() -> std::process::ExitCode {
    tunelake::cli::main()
}
