//! AFL++ entry point for the `message` target (see `p2p_fuzz::targets::message`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh message SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::message::run(data);
    });
}
