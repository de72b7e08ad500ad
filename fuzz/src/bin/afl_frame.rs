//! AFL++ entry point for the `frame` target (see `p2p_fuzz::targets::frame`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh frame SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::frame::run(data);
    });
}
