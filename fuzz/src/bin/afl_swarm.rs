//! AFL++ entry point for the `swarm` target (see `p2p_fuzz::targets::swarm`).
//! Built by `cargo afl build --release --features afl`; run by `run.sh swarm SECONDS`.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        p2p_fuzz::targets::swarm::run(data);
    });
}
