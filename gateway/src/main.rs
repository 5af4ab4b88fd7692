fn main() -> std::process::ExitCode {
    ghgate::cli::main()
}
