//! AFL++ entry point for the `beacon` target (see `p2p_fuzz::targets::beacon`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh beacon SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::beacon::run(data);
    });
}
