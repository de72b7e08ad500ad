//! The swarm across NATs (issue 14): one seeder and three downloaders in the lab, meeting
//! through the tracker (`p2p-transfer rendezvous`) on the public side, with coturn as the
//! relay. The seeder is throttled so that the three downloaders, started together,
//! overlap and fetch pieces from each other. Each downloader's bytes are checked
//! (SHA-256 against the source), and the `done` event's `from` map (bytes per device)
//! counts what came from peers other than the seeder: the late ones got pieces from the
//! early ones.
//!
//! `pair cone symmetric` gives the four peers:
//!
//! | peer     | node  | network                                          |
//! |----------|-------|--------------------------------------------------|
//! | seeder   | `h1`  | behind rt1, a cone NAT                           |
//! | public   | `inet`| the public side itself (no NAT)                  |
//! | lan      | `h1`  | behind rt1 too: on the seeder's LAN              |
//! | sym      | `h2`  | behind rt2, a symmetric NAT (fully random ports) |

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{random_file, sha256_file};
use crate::lab::{run, start_rendezvous_with, wait_for_text, Lab, Spawned, RENDEZVOUS_IP};

/// The share's size and the seeder's upload limit: alone, the seeder needs
/// SHARE_BYTES / 4 MiB/s = 6 s per downloader, 18 s for the three one after the other.
const SHARE_BYTES: usize = 24 << 20;
const SEEDER_UPLOAD: &str = "4M";

/// `p2p-transfer rendezvous` (also the tracker) on the public side, with a per-address
/// limit high enough for two peers behind one NAT; returns once it listens.
fn start_tracker(lab: &Lab, dir: &Path) -> Spawned {
    start_rendezvous_with(lab, dir, &["--max-per-ip", "256"])
}

/// The device id of the key in `data_dir` (`p2p-transfer id`), run in `node`.
fn device_id(lab: &Lab, node: &str, data_dir: &Path) -> String {
    let out = run(
        lab.p2p(node)
            .env("P2P_TRANSFER_DATA_DIR", data_dir)
            .arg("id"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "p2p-transfer id failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "p2p-transfer id printed nothing");
    id
}

/// Copies the peers' logs (`*.log`, `*.jsonl`) to `$NATLAB_SWARM_LOGS` when that is set,
/// at the end of the test whether it passed or panicked (the lab's state dir goes with it).
struct KeepLogs(PathBuf);

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(to) = std::env::var_os("NATLAB_SWARM_LOGS").map(PathBuf::from) else {
            return;
        };
        let _ = std::fs::create_dir_all(&to);
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("log" | "jsonl")
            ) {
                let _ = std::fs::copy(&path, to.join(entry.file_name()));
            }
        }
        eprintln!("natlab swarm: logs copied to {}", to.display());
    }
}

struct Downloader {
    name: &'static str,
    node: &'static str,
    data: PathBuf,
    out: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What one downloader reported on stdout (`get --json`).
struct Report {
    paths: Vec<String>,
    gone: Vec<String>,
    from: BTreeMap<String, u64>,
    bytes: u64,
    seconds: f64,
}

fn report(downloader: &Downloader) -> Report {
    let text = std::fs::read_to_string(&downloader.stdout).unwrap_or_default();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let paths = events
        .iter()
        .filter(|e| e["event"] == "peer")
        .map(|e| {
            format!(
                "{}:{}{}",
                e["device_id"].as_str().unwrap_or("?"),
                e["path"].as_str().unwrap_or("?"),
                if e["incoming"] == true { " (in)" } else { "" }
            )
        })
        .collect();
    let gone = events
        .iter()
        .filter(|e| e["event"] == "peer_gone")
        .map(|e| {
            format!(
                "{}:{}",
                e["device_id"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let done = events
        .iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("{}: no done event in\n{text}", downloader.name));
    let from = done["from"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Report {
        paths,
        gone,
        from,
        bytes: done["bytes"].as_u64().unwrap_or(0),
        seconds: done["seconds"].as_f64().unwrap_or(0.0),
    }
}

#[test]
fn a_seeder_and_three_downloaders_across_nats_finish_identical_and_trade_pieces() {
    let Some(lab) = Lab::up(&["pair", "cone", "symmetric"]) else {
        return;
    };
    let dir = lab.state_dir().join("swarm");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let _keep = KeepLogs(dir.clone());
    let tracker_addr = format!("{RENDEZVOUS_IP}:4000");
    let _tracker = start_tracker(&lab, &dir);

    let file = dir.join("payload.bin");
    random_file(&file, SHARE_BYTES, 14);
    let source_sha = sha256_file(&file);

    let seeder_data = dir.join("seeder");
    let seeder_id = device_id(&lab, "h1", &seeder_data);
    let share_file = dir.join("payload.p2p");
    let seeder_log = dir.join("seeder.log");
    let mut seeder = lab
        .p2p("h1")
        .env("P2P_TRANSFER_DATA_DIR", &seeder_data)
        .env("P2P_NO_PORTMAP", "1")
        .arg("share")
        .arg(&file)
        .args(["--rendezvous", &tracker_addr, "--foreground"])
        .args(["--max-upload", SEEDER_UPLOAD])
        .arg("--output-file")
        .arg(&share_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&seeder_log).expect("seeder log"))
        .spawn()
        .expect("seeder");
    let stdout = seeder.stdout.take().expect("stdout");
    let _seeder = Spawned::new(seeder);
    let ticket = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("ticket: ").map(str::to_owned))
        .unwrap_or_else(|| {
            panic!(
                "the seeder printed no ticket:\n{}",
                std::fs::read_to_string(&seeder_log).unwrap_or_default()
            )
        });
    wait_for_text(&seeder_log, "serving", Duration::from_secs(60));

    let downloaders: Vec<Downloader> = [("public", "inet"), ("lan", "h1"), ("sym", "h2")]
        .into_iter()
        .map(|(name, node)| Downloader {
            name,
            node,
            data: dir.join(format!("{name}-data")),
            out: dir.join(format!("{name}-out")),
            stdout: dir.join(format!("{name}.jsonl")),
            stderr: dir.join(format!("{name}.log")),
        })
        .collect();
    let mut ids = BTreeMap::from([(seeder_id.clone(), "seeder")]);
    for d in &downloaders {
        ids.insert(device_id(&lab, d.node, &d.data), d.name);
    }

    let started = Instant::now();
    // The .p2p file for two of them, the ticket for the third: both sources work.
    let children: Vec<Spawned> = downloaders
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let source = if i == 2 {
                ticket.clone()
            } else {
                share_file.display().to_string()
            };
            Spawned::new(
                lab.p2p(d.node)
                    .env("P2P_TRANSFER_DATA_DIR", &d.data)
                    .env("P2P_NO_PORTMAP", "1")
                    .args(["get", &source, "--rendezvous", &tracker_addr, "--json"])
                    .arg("-o")
                    .arg(&d.out)
                    .stdout(std::fs::File::create(&d.stdout).expect("stdout file"))
                    .stderr(std::fs::File::create(&d.stderr).expect("stderr file"))
                    .spawn()
                    .expect("downloader"),
            )
        })
        .collect();
    let statuses: Vec<_> = children
        .into_iter()
        .map(|c| c.wait(Duration::from_secs(180)))
        .collect();
    let elapsed = started.elapsed();

    let name = |id: &str| ids.get(id).copied().unwrap_or("unknown").to_owned();
    let mut from_others = 0u64;
    for (d, status) in downloaders.iter().zip(&statuses) {
        assert!(
            status.success(),
            "downloader {} ({}) failed: {status}\nstderr:\n{}\nstdout:\n{}",
            d.name,
            d.node,
            std::fs::read_to_string(&d.stderr).unwrap_or_default(),
            std::fs::read_to_string(&d.stdout).unwrap_or_default()
        );
        assert_eq!(
            sha256_file(&d.out.join("payload.bin")),
            source_sha,
            "downloader {} got different bytes",
            d.name
        );
        let r = report(d);
        assert_eq!(r.bytes, SHARE_BYTES as u64, "{}: done bytes", d.name);
        let others: u64 = r
            .from
            .iter()
            .filter(|(id, _)| **id != seeder_id)
            .map(|(_, b)| *b)
            .sum();
        from_others += others;
        let from: Vec<String> = r
            .from
            .iter()
            .map(|(id, b)| format!("{}={b}", name(id)))
            .collect();
        let named = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|p| match p.split_once(':') {
                    Some((id, rest)) => format!("{}:{rest}", name(id)),
                    None => p.clone(),
                })
                .collect()
        };
        eprintln!(
            "natlab swarm {} ({}): {:.2} s, from {from:?}, {others} bytes from non-seeders, \
             peer paths {:?}, peers gone {:?}",
            d.name,
            d.node,
            r.seconds,
            named(&r.paths),
            named(&r.gone)
        );
    }
    eprintln!(
        "natlab swarm: 3 downloaders of {} MiB (seeder --max-upload {SEEDER_UPLOAD}) done \
         in {:.2} s; {from_others} bytes came from peers other than the seeder",
        SHARE_BYTES >> 20,
        elapsed.as_secs_f64()
    );
    assert!(
        from_others > 0,
        "no downloader got a byte from another downloader: the swarm did not trade"
    );
    // Without trading the three would need 18 s one after the other; with it about 8 s
    // (release) here. The stall docs/natlab.md describes (a re-dialling downloader
    // refused while the seed held its dead connection; a spray socket gone deaf) took
    // 78-99 s in 8 of 10 runs: 45 s leaves a debug build on a busy CI machine room.
    assert!(
        elapsed < Duration::from_secs(45),
        "{:.1} s for what trading does in about 8 s: a connection stalled (set \
         NATLAB_SWARM_LOGS=DIR to keep the peers' logs)",
        elapsed.as_secs_f64()
    );
}
