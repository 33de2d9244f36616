fn main() -> std::process::ExitCode {
    ckpt_cli::main()
}
