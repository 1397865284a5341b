fn main() -> std::process::ExitCode {
    adstore_server::cli::main()
}
