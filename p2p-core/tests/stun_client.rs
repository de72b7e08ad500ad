//! The STUN client against a real coturn on loopback, and against scripted fake servers
//! for what coturn cannot show on loopback (NAT mappings, lost requests, forgeries).
//! The NAT lab (`tests/natlab/`) runs the same client behind real kernel NAT.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use p2p_core::nat::client::{binding, probe_nat, NatProbeConfig, RetransmitSchedule};
use p2p_core::nat::stun::BindingResponseError;
use p2p_core::nat::{NatBehaviour, NatError, StunError};
use support::{require, Coturn, FakeServer, Reply};
use tokio::net::UdpSocket;

/// Short timers so that silent servers cost milliseconds, not seconds.
fn quick(servers: &[SocketAddr]) -> NatProbeConfig {
    let mut config = NatProbeConfig::with_servers(servers.iter().map(ToString::to_string));
    config.schedule = RetransmitSchedule {
        initial_rto: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        ..RetransmitSchedule::default()
    };
    config
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn coturn_on_loopback_sees_our_own_address_so_there_is_no_nat() {
    let coturn = Coturn::start(&["127.0.0.1", "127.0.0.2"]).await;
    if !require(coturn.is_some(), "coturn (turnserver) is not installed") {
        return;
    }
    let coturn = coturn.unwrap();

    // One transaction: the mapping is exactly our socket's address.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let response = binding(&socket, coturn.addr(0), &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(response.mapped, socket.local_addr().unwrap());
    assert!(response.xor_mapped, "coturn speaks RFC 5389");
    // With two listening IPs coturn does RFC 5780 and names its other address.
    assert_eq!(
        response.other_address,
        Some(SocketAddr::new(coturn.ips[1], coturn.port + 1)),
        "{}",
        coturn.log_tail()
    );

    // The probe: public == local, so "no NAT".
    let report = probe_nat(&quick(&[coturn.addr(0)])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::NoNat, "{report:?}");
    assert_eq!(report.public, report.local);
    assert_eq!(report.public.unwrap().ip(), coturn.ips[0]);
    assert_eq!(report.server, Some(coturn.addr(0)));
}

#[tokio::test]
async fn coturn_on_ipv6_loopback_reports_the_ipv6_mapping() {
    let coturn = Coturn::start(&["::1"]).await;
    if !require(coturn.is_some(), "coturn (turnserver) is not installed") {
        return;
    }
    let coturn = coturn.unwrap();
    let socket = UdpSocket::bind("[::1]:0").await.unwrap();
    let response = binding(&socket, coturn.addr(0), &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(response.mapped, socket.local_addr().unwrap());

    let report = probe_nat(&quick(&[coturn.addr(0)])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::NoNat, "{report:?}");
    assert!(report.public.unwrap().is_ipv6());
}

#[tokio::test]
async fn a_silent_first_server_falls_back_to_coturn() {
    let coturn = Coturn::start(&["127.0.0.1"]).await;
    if !require(coturn.is_some(), "coturn (turnserver) is not installed") {
        return;
    }
    let coturn = coturn.unwrap();
    let silent = FakeServer::start("127.0.0.1", vec![Reply::Silence]).await;
    let report = probe_nat(&quick(&[silent.addr, coturn.addr(0)]))
        .await
        .unwrap();
    assert_eq!(report.server, Some(coturn.addr(0)));
    assert!(matches!(
        report.attempts[0].outcome,
        Err(StunError::Timeout { sends, .. }) if sends >= 2
    ));
    assert!(
        silent.requests() >= 2,
        "the silent server got retransmissions"
    );
    assert_eq!(report.behaviour, NatBehaviour::NoNat);
}

#[tokio::test]
async fn same_mapping_from_two_server_ips_is_endpoint_independent() {
    let public = addr("203.0.113.5:40000");
    let a = FakeServer::start("127.0.0.1", vec![Reply::Xor(public)]).await;
    let b = FakeServer::start("127.0.0.2", vec![Reply::Xor(public)]).await;
    let report = probe_nat(&quick(&[a.addr, b.addr])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::EndpointIndependent);
    assert_eq!(report.public, Some(public));
    assert_eq!(report.second, Some((b.addr, public)));
    assert!(report.behaviour.hole_punching_likely());
}

#[tokio::test]
async fn a_new_port_per_server_is_endpoint_dependent() {
    let a = FakeServer::start("127.0.0.1", vec![Reply::Xor(addr("203.0.113.5:40000"))]).await;
    let b = FakeServer::start("127.0.0.2", vec![Reply::Xor(addr("203.0.113.5:40001"))]).await;
    let report = probe_nat(&quick(&[a.addr, b.addr])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::EndpointDependent);
    assert!(!report.behaviour.hole_punching_likely());
}

#[tokio::test]
async fn a_second_server_on_the_same_ip_does_not_count() {
    // Comparing two ports of one IP says nothing about address-dependent mapping.
    let public = addr("203.0.113.5:40000");
    let a = FakeServer::start("127.0.0.1", vec![Reply::Xor(public)]).await;
    let b = FakeServer::start("127.0.0.1", vec![Reply::Xor(public)]).await;
    let report = probe_nat(&quick(&[a.addr, b.addr])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::Undetermined);
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn rfc5780_other_address_supplies_the_second_ip() {
    let public = addr("203.0.113.5:40000");
    let secondary = FakeServer::start("127.0.0.3", vec![Reply::Xor(public)]).await;
    let port = secondary.addr.port();
    // The primary names the secondary's IP (and another port) as its OTHER-ADDRESS.
    let other = SocketAddr::new(secondary.addr.ip(), port + 1);
    let primary = FakeServer::start_on(
        SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        vec![Reply::XorWithOther(public, other)],
    )
    .await;
    let report = probe_nat(&quick(&[primary.addr])).await.unwrap();
    // RFC 5780 test II: the other IP, the primary port.
    assert_eq!(report.second, Some((secondary.addr, public)));
    assert_eq!(report.behaviour, NatBehaviour::EndpointIndependent);
}

#[tokio::test]
async fn lost_requests_are_retransmitted() {
    let public = addr("203.0.113.5:40000");
    let server = FakeServer::start(
        "127.0.0.1",
        vec![Reply::Silence, Reply::Silence, Reply::Xor(public)],
    )
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let schedule = RetransmitSchedule {
        initial_rto: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..RetransmitSchedule::default()
    };
    let response = binding(&socket, server.addr, &schedule).await.unwrap();
    assert_eq!(response.mapped, public);
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn forged_and_garbage_answers_are_ignored() {
    let public = addr("203.0.113.5:40000");
    let server = FakeServer::start("127.0.0.1", vec![Reply::ForgedThen(public)]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let response = binding(&socket, server.addr, &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(response.mapped, public);
}

#[tokio::test]
async fn mapped_address_is_the_fallback_for_old_servers() {
    let public = addr("203.0.113.5:40000");
    let server = FakeServer::start("127.0.0.1", vec![Reply::Plain(public)]).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let response = binding(&socket, server.addr, &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!((response.mapped, response.xor_mapped), (public, false));
}

#[tokio::test]
async fn an_error_response_moves_on_to_the_next_server() {
    let public = addr("203.0.113.5:40000");
    let refusing = FakeServer::start("127.0.0.1", vec![Reply::Error(500)]).await;
    let good = FakeServer::start("127.0.0.2", vec![Reply::Xor(public)]).await;
    let report = probe_nat(&quick(&[refusing.addr, good.addr]))
        .await
        .unwrap();
    assert!(matches!(
        report.attempts[0].outcome,
        Err(StunError::Response(BindingResponseError::ErrorResponse {
            code: 500,
            ..
        }))
    ));
    assert_eq!(report.public, Some(public));
    assert_eq!(refusing.requests(), 1, "an error response is final");
}

#[tokio::test]
async fn silence_everywhere_is_reported_as_udp_blocked() {
    let a = FakeServer::start("127.0.0.1", vec![Reply::Silence]).await;
    let b = FakeServer::start("127.0.0.2", vec![Reply::Silence]).await;
    let report = probe_nat(&quick(&[a.addr, b.addr])).await.unwrap();
    assert_eq!(report.behaviour, NatBehaviour::UdpBlocked);
    assert_eq!(report.public, None);
    assert_eq!(report.attempts.len(), 2);
}

#[tokio::test]
async fn nothing_to_ask_is_an_error_not_a_verdict() {
    assert!(matches!(
        probe_nat(&NatProbeConfig::with_servers(Vec::<String>::new())).await,
        Err(NatError::NoServers)
    ));
    // Unparseable without any DNS traffic.
    let err = probe_nat(&NatProbeConfig::with_servers(["127.0.0.1:notaport"]))
        .await
        .unwrap_err();
    assert!(matches!(err, NatError::NoServerUsable { .. }), "{err}");
}
