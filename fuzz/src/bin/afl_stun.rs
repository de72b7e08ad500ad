//! AFL++ entry point for the `stun` target (see `p2p_fuzz::targets::stun`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh stun SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::stun::run(data);
    });
}
