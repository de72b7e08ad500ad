//! The swarm engine over in-memory connections: seeds and downloads exchange real
//! pieces through `Swarm::run_peer`, and hostile peers speak the wire protocol by hand.
//! (Connections through the tracker and the NAT-traversal layer: tests/swarm.rs at the
//! workspace root, and the NAT lab.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2p_core::net::DeviceId;
use p2p_core::swarm::node::PeerInfo;
use p2p_core::swarm::wire::{codec, Bitfield, PeerMessage, MAX_PEER_REQUESTS};
use p2p_core::swarm::{hash_share, LocalShare, Swarm, SwarmConfig, SwarmEvent};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_util::codec::Framed;

const LIMIT: Duration = Duration::from_secs(60);

fn write_tree(root: &Path) -> PathBuf {
    let share = root.join("album");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    let mut rng = rand::rng();
    for (name, size) in [
        ("a.bin", 3 * 1024 * 1024 + 17),
        ("sub/b.bin", 700_000),
        ("c.txt", 5),
    ] {
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        std::fs::write(share.join(name), data).unwrap();
    }
    std::fs::write(share.join("empty"), b"").unwrap();
    share
}

fn digest_tree(root: &Path) -> Vec<(String, [u8; 32])> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, Sha256::digest(std::fs::read(&path).unwrap()).into()));
            }
        }
    }
    out.sort();
    out
}

fn share_of(dir: &Path) -> (LocalShare, PathBuf) {
    let path = write_tree(dir);
    (hash_share(&[&path], &mut |_, _| {}).unwrap(), path)
}

fn info(device: DeviceId, incoming: bool) -> PeerInfo {
    PeerInfo {
        device,
        addr: None,
        path: "lan".into(),
        incoming,
    }
}

/// Connects two swarms with an in-memory stream; returns the tasks.
fn connect(a: &Swarm, a_id: DeviceId, b: &Swarm, b_id: DeviceId) {
    let (x, y) = tokio::io::duplex(1 << 20);
    let (a, b) = (a.clone(), b.clone());
    tokio::spawn(async move { a.run_peer(x, info(b_id, false)).await });
    tokio::spawn(async move { b.run_peer(y, info(a_id, true)).await });
}

fn config() -> SwarmConfig {
    SwarmConfig {
        request_timeout: Duration::from_secs(2),
        ..SwarmConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_downloaders_one_with_only_a_ticket_fetch_from_a_seed_while_linked_to_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (share, source) = share_of(dir.path());
    let (s_id, a_id, b_id) = (DeviceId::random(), DeviceId::random(), DeviceId::random());
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    // One with the manifest (a .p2p file), one with only the root hash (a ticket).
    let a = Swarm::download(
        share.root,
        Some(share.manifest.clone()),
        &out_a,
        a_id,
        config(),
        None,
    )
    .await
    .unwrap();
    let b = Swarm::download(share.root, None, &out_b, b_id, config(), None)
        .await
        .unwrap();
    connect(&a, a_id, &seed, s_id);
    connect(&b, b_id, &seed, s_id);
    connect(&a, a_id, &b, b_id);
    tokio::time::timeout(LIMIT, a.wait())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(LIMIT, b.wait())
        .await
        .unwrap()
        .unwrap();
    let expected = digest_tree(&source);
    assert_eq!(digest_tree(&out_a.join("album")), expected);
    assert_eq!(digest_tree(&out_b.join("album")), expected);
    // Nothing but the share is left in the output folders (no .part, no resume state).
    for out in [&out_a, &out_b] {
        let names: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("album")], "{out:?}");
    }
    let (sa, sb) = (a.status().borrow().clone(), b.status().borrow().clone());
    assert_eq!(sa.have_bytes, share.manifest.total_bytes());
    assert_eq!(sb.have_count, sb.pieces);
    seed.stop().await;
}

/// A hostile peer: says Hello (with a manifest), sends `bitfield`, then runs `script`.
async fn hostile<F, Fut>(swarm: &Swarm, script: F) -> (Result<(), String>, Vec<PeerMessage>)
where
    F: FnOnce(Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>) -> Fut,
    Fut: std::future::Future<
            Output = Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>,
        > + Send
        + 'static,
{
    let (x, y) = tokio::io::duplex(1 << 22);
    let s = swarm.clone();
    let run = tokio::spawn(async move { s.run_peer(x, info(DeviceId::random(), true)).await });
    let framed = Framed::new(y, codec(64 << 20));
    let mut framed = script(framed).await;
    let result = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    // Everything the swarm said, up to its Goodbye.
    let mut said = Vec::new();
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(5), framed.next()).await
    {
        let m = PeerMessage::decode(&frame).unwrap();
        let bye = matches!(m, PeerMessage::Goodbye { .. });
        said.push(m);
        if bye {
            break;
        }
    }
    (result.map_err(|e| e.to_string()), said)
}

async fn send(
    f: &mut Framed<tokio::io::DuplexStream, tokio_util::codec::LengthDelimitedCodec>,
    m: PeerMessage,
) {
    f.send(m.encode()).await.unwrap();
}

fn goodbye(said: &[PeerMessage]) -> String {
    match said.last() {
        Some(PeerMessage::Goodbye { reason }) => reason.clone(),
        other => panic!("no Goodbye: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_get_a_clear_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let (share, _) = share_of(dir.path());
    let seed = Swarm::seed(&share, DeviceId::random(), config(), None).unwrap();
    let pieces = share.manifest.pieces.len() as u32;
    let hello = PeerMessage::Hello {
        version: 1,
        manifest: true,
    };

    // A bitfield of the wrong length.
    let h = hello.clone();
    let (result, said) = hostile(&seed, |mut f| async move {
        send(&mut f, h).await;
        send(
            &mut f,
            PeerMessage::Bitfield {
                bits: Bytes::from_static(&[0; 100]),
            },
        )
        .await;
        f
    })
    .await;
    let err = result.unwrap_err();
    assert!(err.contains("bitfield of 100 bytes"), "{err}");
    assert!(goodbye(&said).contains("bitfield of 100 bytes"));

    // A request past the end.
    let h = hello.clone();
    let (result, said) = hostile(&seed, |mut f| async move {
        send(&mut f, h).await;
        send(
            &mut f,
            PeerMessage::Bitfield {
                bits: Bitfield::new(pieces).to_bytes(),
            },
        )
        .await;
        send(&mut f, PeerMessage::Request { piece: pieces }).await;
        f
    })
    .await;
    assert!(result.unwrap_err().contains("past the end"));
    assert!(goodbye(&said).contains("past the end"));

    // A flood of requests, never reading the answers.
    let h = hello.clone();
    let (result, _) = hostile(&seed, |mut f| async move {
        send(&mut f, h).await;
        send(
            &mut f,
            PeerMessage::Bitfield {
                bits: Bitfield::new(pieces).to_bytes(),
            },
        )
        .await;
        for _ in 0..10_000 {
            if f.send(PeerMessage::Request { piece: 0 }.encode())
                .await
                .is_err()
            {
                break;
            }
        }
        f
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        err.contains(&format!("more than {MAX_PEER_REQUESTS} requests")),
        "{err}"
    );

    // A request before Hello; a frame larger than any message may be.
    let (result, _) = hostile(&seed, |mut f| async move {
        send(&mut f, PeerMessage::Request { piece: 0 }).await;
        f
    })
    .await;
    assert!(result.unwrap_err().contains("Request before Hello"));
    let h = hello.clone();
    let (result, _) = hostile(&seed, |mut f| async move {
        send(&mut f, h).await;
        let _ = f.send(Bytes::from(vec![4u8; 20 << 20])).await;
        f
    })
    .await;
    assert!(result.unwrap_err().contains("longer than allowed"));
    // The seed serves on: a good peer still downloads.
    let out = dir.path().join("after");
    let id = DeviceId::random();
    let d = Swarm::download(share.root, None, &out, id, config(), None)
        .await
        .unwrap();
    connect(&d, id, &seed, DeviceId::random());
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_bad_pieces_is_dropped_and_the_good_one_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (share, source) = share_of(dir.path());
    let pieces = share.manifest.pieces.len() as u32;
    let chunk = share.manifest.chunk_size as usize;
    let out = dir.path().join("out");
    let me = DeviceId::random();
    let d = Swarm::download(
        share.root,
        Some(share.manifest.clone()),
        &out,
        me,
        config(),
        None,
    )
    .await
    .unwrap();
    let mut events = d.events().unwrap();
    // The liar connects first and answers every request with garbage.
    let liar_id = DeviceId::random();
    let (x, y) = tokio::io::duplex(1 << 22);
    let dd = d.clone();
    let liar_run = tokio::spawn(async move { dd.run_peer(x, info(liar_id, true)).await });
    let mut f = Framed::new(y, codec(64 << 20));
    send(
        &mut f,
        PeerMessage::Hello {
            version: 1,
            manifest: true,
        },
    )
    .await;
    send(
        &mut f,
        PeerMessage::Bitfield {
            bits: Bitfield::full(pieces).to_bytes(),
        },
    )
    .await;
    let mut lied = 0;
    while let Some(Ok(frame)) = f.next().await {
        if let PeerMessage::Request { piece } = PeerMessage::decode(&frame).unwrap() {
            let _ = f
                .send(
                    PeerMessage::Piece {
                        piece,
                        data: Bytes::from(vec![0xee; chunk.min(1000)]),
                    }
                    .encode(),
                )
                .await;
            lied += 1;
        }
    }
    let err = liar_run.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("failed its hash"), "{err}");
    assert!(lied >= 1);
    // Nothing of the liar's reached a final path.
    assert!(!out.join("album").join("a.bin").exists());
    // Barred: it cannot connect again.
    let (x, _y) = tokio::io::duplex(1024);
    let again = d
        .run_peer(x, info(liar_id, true))
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("barred"), "{again}");
    // A good seed finishes the job.
    let s_id = DeviceId::random();
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    connect(&d, me, &seed, s_id);
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(digest_tree(&out.join("album")), digest_tree(&source));
    let mut saw_bad = false;
    while let Ok(e) = events.try_recv() {
        if let SwarmEvent::BadPeer { device, .. } = e {
            assert_eq!(device, liar_id.to_string());
            saw_bad = true;
        }
    }
    assert!(saw_bad);
    assert!(d.status().borrow().discarded > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_only_the_missing_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (share, source) = share_of(dir.path());
    let out = dir.path().join("out");
    let me = DeviceId::random();
    let s_id = DeviceId::random();
    // A seed limited to 1 MiB/s: stop the download part way.
    let slow = SwarmConfig {
        max_upload: Some(1024 * 1024),
        ..config()
    };
    let seed = Swarm::seed(&share, s_id, slow, None).unwrap();
    let d = Swarm::download(
        share.root,
        Some(share.manifest.clone()),
        &out,
        me,
        config(),
        None,
    )
    .await
    .unwrap();
    connect(&d, me, &seed, s_id);
    let mut status = d.status();
    let before = tokio::time::timeout(LIMIT, async {
        loop {
            status.changed().await.unwrap();
            let s = status.borrow().clone();
            if s.have_count >= 3 {
                return s.have_count;
            }
        }
    })
    .await
    .unwrap();
    d.stop().await;
    seed.stop().await;
    assert!(before < share.manifest.pieces.len() as u32);
    // A new attempt finds them (hashed again) and fetches only the rest.
    let d = Swarm::download(
        share.root,
        Some(share.manifest.clone()),
        &out,
        me,
        config(),
        None,
    )
    .await
    .unwrap();
    let mut events = d.events().unwrap();
    let resumed = match events.recv().await.unwrap() {
        SwarmEvent::Manifest { resumed, .. } => resumed,
        other => panic!("{other:?}"),
    };
    assert!(resumed >= 3, "resumed {resumed}");
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    connect(&d, me, &seed, s_id);
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(digest_tree(&out.join("album")), digest_tree(&source));
    let fetched = d.status().borrow().downloaded;
    let total = share.manifest.total_bytes();
    assert!(fetched < total, "fetched {fetched} of {total} again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_peer_asked_for_the_manifest_leaves_another_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (share, source) = share_of(dir.path());
    let out = dir.path().join("out");
    let me = DeviceId::random();
    // A ticket: no manifest yet.
    let d = Swarm::download(share.root, None, &out, me, config(), None)
        .await
        .unwrap();
    // A peer that claims the manifest, is asked for it, and leaves without answering.
    let (x, y) = tokio::io::duplex(1 << 20);
    let dd = d.clone();
    let silent = tokio::spawn(async move { dd.run_peer(x, info(DeviceId::random(), true)).await });
    let mut f = Framed::new(y, codec(64 << 20));
    send(
        &mut f,
        PeerMessage::Hello {
            version: 1,
            manifest: true,
        },
    )
    .await;
    loop {
        let frame = f.next().await.unwrap().unwrap();
        if PeerMessage::decode(&frame).unwrap() == PeerMessage::GetManifest {
            break;
        }
    }
    // A good seed arrives while the question is out; then the silent one goes.
    let s_id = DeviceId::random();
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    connect(&d, me, &seed, s_id);
    drop(f);
    let _ = silent.await;
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(digest_tree(&out.join("album")), digest_tree(&source));
}

/// A peer that connected but has not said `Hello` yet must not be told `Have` before our
/// `Bitfield` (found by the benchmark: seeders dropped connections as "Have before
/// Bitfield" while pieces arrived from others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_have_goes_out_before_the_bitfield() {
    let dir = tempfile::tempdir().unwrap();
    let (share, _) = share_of(dir.path());
    let me = DeviceId::random();
    let d = Swarm::download(
        share.root,
        Some(share.manifest.clone()),
        &dir.path().join("out"),
        me,
        config(),
        None,
    )
    .await
    .unwrap();
    // A slow peer connects and says nothing yet.
    let (x, y) = tokio::io::duplex(1 << 22);
    let dd = d.clone();
    tokio::spawn(async move { dd.run_peer(x, info(DeviceId::random(), true)).await });
    let mut f = Framed::new(y, codec(64 << 20));
    // Meanwhile pieces arrive from a seed.
    let s_id = DeviceId::random();
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    connect(&d, me, &seed, s_id);
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
    // Only now the slow peer speaks; what it was sent: Hello, then the Bitfield, and
    // no Have before it.
    send(
        &mut f,
        PeerMessage::Hello {
            version: 1,
            manifest: true,
        },
    )
    .await;
    let mut said = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), f.next()).await {
        let m = PeerMessage::decode(&frame).unwrap();
        let bitfield = matches!(m, PeerMessage::Bitfield { .. });
        said.push(m);
        if bitfield {
            break;
        }
    }
    assert!(
        matches!(said.first(), Some(PeerMessage::Hello { .. })),
        "{said:?}"
    );
    match said.last() {
        Some(PeerMessage::Bitfield { bits }) => {
            assert!(
                Bitfield::from_peer(bits, share.manifest.pieces.len() as u32)
                    .unwrap()
                    .is_full()
            )
        }
        other => panic!("no Bitfield: {other:?} after {said:?}"),
    }
    assert!(
        !said.iter().any(|m| matches!(m, PeerMessage::Have { .. })),
        "Have before Bitfield: {said:?}"
    );
}

/// A device that dials again replaces its old connection, which the other side may
/// still think alive (found in the NAT lab: a seed refused a downloader's new
/// connection as "already connected" for 85 s, until the dead one timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_dials_again_replaces_its_dead_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (share, source) = share_of(dir.path());
    let s_id = DeviceId::random();
    let seed = Swarm::seed(&share, s_id, config(), None).unwrap();
    let me = DeviceId::random();
    // The first connection goes quiet (the path died one way): it says Hello and its
    // bitfield, then nothing, and never closes.
    let (x, y) = tokio::io::duplex(1 << 22);
    let s = seed.clone();
    tokio::spawn(async move { s.run_peer(x, info(me, true)).await });
    let mut dead = Framed::new(y, codec(64 << 20));
    send(
        &mut dead,
        PeerMessage::Hello {
            version: 1,
            manifest: true,
        },
    )
    .await;
    send(
        &mut dead,
        PeerMessage::Bitfield {
            bits: Bitfield::new(share.manifest.pieces.len() as u32).to_bytes(),
        },
    )
    .await;
    let mut status = seed.status();
    tokio::time::timeout(LIMIT, status.wait_for(|s| s.peers.len() == 1))
        .await
        .unwrap()
        .unwrap();
    // The same device dials again: served.
    let out = dir.path().join("out");
    let d = Swarm::download(share.root, None, &out, me, config(), None)
        .await
        .unwrap();
    connect(&d, me, &seed, s_id);
    tokio::time::timeout(LIMIT, d.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(digest_tree(&out.join("album")), digest_tree(&source));
    drop(dead);
}
