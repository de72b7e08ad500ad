//! The `p2p-transfer` binary: everything lives in `p2p-cli`.
fn main() -> std::process::ExitCode {
    p2p_cli::main()
}
