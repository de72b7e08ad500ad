//! AFL++ entry point for the `resume_state` target (see `p2p_fuzz::targets::resume_state`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh resume_state SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::resume_state::run(data);
    });
}
