fn main() -> std::process::ExitCode {
    ckpt_coordinatord::app::main()
}
