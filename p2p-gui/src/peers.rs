//! Finding peers on the local network for the Connection tab: a p2p-core discovery
//! [`Browser`] in a task, reporting the list of receivers whenever it changes.
//!
//! Browsing starts when the user asks for it (it broadcasts a probe), and stops when the
//! task is aborted.

use std::time::Duration;

use iced::futures::stream::{self, Stream, StreamExt};
use p2p_core::discovery::{Browser, DiscoveryConfig, PeerInfo};
use p2p_core::net::DeviceId;
use tokio::sync::mpsc;

/// What of a peer the list shows: a change in any of it is redrawn.
type Shown = (DeviceId, String, std::net::SocketAddr, Option<u16>);

/// How often the list is checked for peers that went silent.
const EXPIRY_CHECK: Duration = Duration::from_secs(2);

/// The receivers on the local network, each time the list changes; one error and the
/// end when discovery cannot start. Beacons carrying `own_id` are ignored.
pub fn browse(
    config: DiscoveryConfig,
    own_id: DeviceId,
) -> impl Stream<Item = Result<Vec<PeerInfo>, String>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = async move {
        let mut browser = match Browser::start(&config, Some(own_id)) {
            Ok(browser) => browser,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let mut shown: Option<Vec<Shown>> = None;
        loop {
            let peers = browser.peers();
            let key: Vec<Shown> = peers
                .iter()
                .map(|p| (p.device_id, p.name.clone(), p.addr, p.nameplate))
                .collect();
            // Refreshed beacons of the same peers change nothing on screen.
            if shown.as_ref() != Some(&key) {
                if tx.send(Ok(peers)).is_err() {
                    return;
                }
                shown = Some(key);
            }
            tokio::select! {
                () = browser.changed() => {}
                () = tokio::time::sleep(EXPIRY_CHECK) => {}
            }
        }
    };
    let reports = stream::poll_fn(move |cx| rx.poll_recv(cx));
    stream::select(reports, stream::once(work).filter_map(|()| async { None }))
}
