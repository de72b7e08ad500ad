//! Announcers and browsers talking over the loopback broadcast address, each test on
//! its own discovery port so that they run side by side. Nothing leaves this host: the
//! only target is 127.255.255.255.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2p_core::discovery::{
    encode_datagram, find_with, Announcer, Beacon, BeaconTargets, Browser, DiscoveryConfig,
    DiscoveryError, DiscoveryMessage,
};
use p2p_core::net::DeviceId;

/// A loopback-only configuration on a port no other test uses.
fn config() -> DiscoveryConfig {
    let port = loop {
        let port: u16 = rand::random_range(20_000..60_000);
        if std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            break port;
        }
    };
    DiscoveryConfig {
        port,
        targets: BeaconTargets::Only(vec![Ipv4Addr::new(127, 255, 255, 255).into()]),
        ..DiscoveryConfig::default()
    }
}

fn receiver(name: &str, tcp_port: u16) -> Beacon {
    Beacon::new(DeviceId::random(), name, tcp_port)
}

const FIND: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_sender_finds_the_only_receiver_through_its_probe() {
    // A one-minute interval: after the first beacon, only the answer to the browser's
    // probe can make the receiver visible within the three seconds.
    let config = DiscoveryConfig {
        interval: Duration::from_secs(60),
        ..config()
    };
    let beacon = receiver("living-room", 4242);
    let _announcer = Announcer::start(beacon.clone(), &config).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let peer = find_with(&config, None, FIND).await.unwrap();
    assert_eq!(peer.device_id, beacon.device_id);
    assert_eq!(peer.name, "living-room");
    assert_eq!(
        peer.addr,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 4242)),
        "the source IP of the beacon, the announced port"
    );
}

#[tokio::test]
async fn several_receivers_make_an_unnamed_choice_ambiguous() {
    let config = config();
    let office = receiver("office", 1001);
    let attic = receiver("attic", 1002);
    let _a = Announcer::start(office.clone(), &config).unwrap();
    let _b = Announcer::start(attic.clone(), &config).unwrap();

    let err = find_with(&config, None, FIND).await.unwrap_err();
    let DiscoveryError::Ambiguous { candidates, .. } = &err else {
        panic!("expected Ambiguous, got {err}");
    };
    let names: Vec<&str> = candidates.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["attic", "office"]);
    let message = err.to_string();
    assert!(
        message.contains("office") && message.contains("attic"),
        "{message}"
    );

    // By name (case-insensitive) and by id prefix.
    let peer = find_with(&config, Some("OFFICE"), FIND).await.unwrap();
    assert_eq!(peer.device_id, office.device_id);
    let prefix = &attic.device_id.to_string()[..7];
    let peer = find_with(&config, Some(prefix), FIND).await.unwrap();
    assert_eq!(peer.device_id, attic.device_id);
}

#[tokio::test]
async fn two_receivers_with_one_name_are_ambiguous_too() {
    let config = config();
    let _a = Announcer::start(receiver("laptop", 1), &config).unwrap();
    let _b = Announcer::start(receiver("laptop", 2), &config).unwrap();
    let err = find_with(&config, Some("laptop"), FIND).await.unwrap_err();
    assert!(
        matches!(err, DiscoveryError::Ambiguous { ref candidates, .. } if candidates.len() == 2)
    );
}

#[tokio::test]
async fn a_browser_ignores_its_own_beacons() {
    let config = config();
    let me = receiver("me", 1);
    let other = receiver("other", 2);
    let _mine = Announcer::start(me.clone(), &config).unwrap();
    let _theirs = Announcer::start(other.clone(), &config).unwrap();
    let browser = Browser::start(&config, Some(me.device_id)).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ids: Vec<DeviceId> = browser.peers().iter().map(|p| p.device_id).collect();
    assert_eq!(ids, [other.device_id]);
}

#[tokio::test]
async fn a_silent_receiver_expires() {
    let config = DiscoveryConfig {
        interval: Duration::from_millis(100),
        peer_ttl: Duration::from_millis(500),
        ..config()
    };
    let announcer = Announcer::start(receiver("brief", 1), &config).unwrap();
    let browser = Browser::start(&config, None).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(browser.peers().len(), 1);
    drop(announcer);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(browser.peers().is_empty(), "{:?}", browser.peers());
}

#[tokio::test]
async fn garbage_on_the_discovery_port_is_shrugged_off() {
    let config = config();
    let beacon = receiver("sturdy", 7);
    let _announcer = Announcer::start(beacon.clone(), &config).unwrap();
    let browser = Browser::start(&config, None).unwrap();
    let noise = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    noise.set_broadcast(true).unwrap();
    let target = SocketAddr::from((Ipv4Addr::new(127, 255, 255, 255), config.port));
    let mut oversized = b"P2PD\x01".to_vec();
    oversized.resize(4000, 0xFF);
    for junk in [
        &b""[..],
        b"P2PD",
        b"P2PD\x01\x00",
        b"\x00\x01\x00\x00!\x12\xa4B",
        &oversized,
    ] {
        noise.send_to(junk, target).await.unwrap();
    }
    let peer = find_with(&config, Some("sturdy"), FIND).await.unwrap();
    assert_eq!(peer.device_id, beacon.device_id);
    assert_eq!(browser.peers().len(), 1);
}

#[tokio::test]
async fn nobody_there_is_not_found_and_says_who_else_is() {
    let config = config();
    let err = find_with(&config, None, Duration::from_millis(400))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DiscoveryError::NotFound { ref seen, .. } if seen.is_empty()),
        "{err}"
    );

    let _announcer = Announcer::start(receiver("kitchen", 1), &config).unwrap();
    let err = find_with(&config, Some("garage"), Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("kitchen"), "{err}");
}

#[tokio::test]
async fn a_receiver_of_another_protocol_version_is_reported_not_used() {
    let config = config();
    let mut beacon = receiver("future", 9);
    beacon.protocol_version = 999;
    let datagram = encode_datagram(&DiscoveryMessage::Beacon(beacon)).unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.set_broadcast(true).unwrap();
    let target = SocketAddr::from((Ipv4Addr::new(127, 255, 255, 255), config.port));
    let sender = tokio::spawn(async move {
        loop {
            let _ = socket.send_to(&datagram, target).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let err = find_with(&config, None, Duration::from_secs(2))
        .await
        .unwrap_err();
    sender.abort();
    assert!(matches!(err, DiscoveryError::Incompatible { .. }), "{err}");
}
