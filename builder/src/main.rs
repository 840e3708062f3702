//! The `abforge` command: a thin dispatch to the library's subcommands.

fn main() -> std::process::ExitCode {
    abforge::cli::main()
}
