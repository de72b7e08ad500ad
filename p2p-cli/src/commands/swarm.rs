//! `p2p-transfer share` and `p2p-transfer get`: content-addressed shares fetched from
//! every peer that has them (`p2p_core::swarm`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use p2p_core::history::{History, Record, Status};
use p2p_core::net::DeviceId;
use p2p_core::swarm::{
    hash_share, Host, LocalShare, ShareFile, SwarmConfig, SwarmEvent, SwarmState, SwarmStatus,
    Ticket,
};
use p2p_core::text::Printable;
use p2p_core::Direction;

use crate::size::{parse_rate, Rate};

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// Files and folders to share.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The tracker: a rendezvous server (`p2p-transfer rendezvous`). Default:
    /// P2P_RENDEZVOUS, else the settings file's `rendezvous`.
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Where to write the share file (default: NAME.p2p in the current folder).
    #[arg(long, value_name = "PATH")]
    pub output_file: Option<PathBuf>,
    /// Only these devices may fetch or serve it (a closed swarm); repeat for several.
    #[arg(long = "trust", value_name = "DEVICE-ID")]
    pub trusted: Vec<DeviceId>,
    /// Serve from this process until Ctrl+C instead of the background daemon.
    #[arg(long)]
    pub foreground: bool,
    /// Upload limit (e.g. 10M = 10 MiB/s), for every peer together.
    #[arg(long, value_name = "RATE", default_value = "unlimited", value_parser = parse_rate)]
    pub max_upload: Rate,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// A NAME.p2p share file, or a ticket (p2p1…).
    #[arg(value_name = "FILE.p2p|TICKET")]
    pub source: String,
    /// Folder to download into (created if missing).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// The tracker, when the share names none (or to use another).
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Most peers to download from at once.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub peers: u16,
    /// Download limit (e.g. 10M).
    #[arg(long, value_name = "RATE", default_value = "unlimited", value_parser = parse_rate)]
    pub max_download: Rate,
    /// Upload limit while downloading (others fetch from you too).
    #[arg(long, value_name = "RATE", default_value = "unlimited", value_parser = parse_rate)]
    pub max_upload: Rate,
    /// Keep serving the share after the download until Ctrl+C.
    #[arg(long)]
    pub seed: bool,
    /// JSON lines on standard output instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

fn tracker_for(flag: Option<&str>, ticket: Option<&str>) -> anyhow::Result<String> {
    flag.map(str::to_owned)
        .or_else(|| ticket.map(str::to_owned))
        .and_then(|t| super::rendezvous_from(Some(&t)))
        .or_else(|| super::rendezvous_from(None))
        .ok_or_else(|| {
            crate::exit::Usage(
                "a share needs a tracker: give --rendezvous HOST:PORT (a server running \
                 `p2p-transfer rendezvous`), or set P2P_RENDEZVOUS"
                    .into(),
            )
            .into()
        })
}

fn hashing_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "hashing  [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Hashes `paths` with a progress bar.
pub fn hash_with_progress(paths: &[PathBuf]) -> anyhow::Result<LocalShare> {
    let bar = hashing_bar(0);
    let started = Instant::now();
    let share = hash_share(paths, &mut |done, total| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let bytes = share.manifest.total_bytes();
    eprintln!(
        "hashed {} ({}, {} pieces of {}) in {:.1} s",
        Printable(&share.manifest.name),
        human(bytes),
        share.manifest.pieces.len(),
        human(u64::from(share.manifest.chunk_size)),
        secs
    );
    Ok(share)
}

fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

pub async fn share(args: ShareArgs) -> anyhow::Result<()> {
    let tracker = tracker_for(args.rendezvous.as_deref(), None)?;
    let paths = args.paths.clone();
    let share = tokio::task::spawn_blocking(move || hash_with_progress(&paths)).await??;
    let file = ShareFile {
        ticket: Ticket {
            root: share.root,
            tracker: Some(tracker.clone()),
            trusted: args.trusted.clone(),
        },
        manifest: Some(share.manifest.clone()),
    };
    let out = args
        .output_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.p2p", share.manifest.name)));
    file.write_new(&out)?;
    let ticket = file.ticket.to_string();
    println!("share file: {}", out.display());
    println!("ticket: {ticket}");
    eprintln!(
        "On another device:\n  p2p-transfer get {}\n  p2p-transfer get {ticket}",
        out.display()
    );
    if args.foreground {
        let host = host(&tracker, args.max_upload.0, None, 8).await?;
        let swarm = host.share(&share, args.trusted.clone()).await?;
        eprintln!(
            "serving {} (root {}) through tracker {tracker}: Ctrl+C to stop",
            Printable(&share.manifest.name),
            share.root.short()
        );
        let mut events = swarm.events();
        loop {
            match events.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(event) => print_event(&event, None),
                    None => std::future::pending::<()>().await,
                },
                None => std::future::pending::<()>().await,
            }
        }
    }
    register_with_daemon(&share, &out, &args, &tracker).await
}

async fn register_with_daemon(
    share: &LocalShare,
    file: &Path,
    args: &ShareArgs,
    tracker: &str,
) -> anyhow::Result<()> {
    let absolute = |p: &Path| {
        std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    let record = p2p_core::daemon::ShareRecord {
        root: share.root.to_hex(),
        name: share.manifest.name.clone(),
        share_file: absolute(file)?,
        sources: args
            .paths
            .iter()
            .map(|p| absolute(p))
            .collect::<anyhow::Result<_>>()?,
        rendezvous: tracker.to_owned(),
        added_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        max_upload: args.max_upload.0,
    };
    let dir = super::data_dir()?;
    let exe = std::env::current_exe().context("cannot find this program to start the daemon")?;
    let mut daemon = p2p_core::daemon::ensure_running(&dir, &exe).await?;
    let replaced = daemon.add(&record).await?;
    eprintln!(
        "{} {} through the background daemon: `p2p-transfer shares` lists it, \
         `p2p-transfer unshare {}` stops it",
        if replaced {
            "now serving again"
        } else {
            "serving"
        },
        Printable(&share.manifest.name),
        share.root.short()
    );
    Ok(())
}

async fn host(
    tracker: &str,
    max_upload: Option<u64>,
    max_download: Option<u64>,
    peers: usize,
) -> anyhow::Result<Host> {
    let identity = super::identity()?;
    let config = SwarmConfig {
        max_peers: peers,
        max_upload,
        max_download,
        ..SwarmConfig::default()
    };
    Ok(Host::connect(tracker, identity, config).await?)
}

fn print_event(event: &SwarmEvent, bar: Option<&ProgressBar>) {
    let line = match event {
        SwarmEvent::Manifest {
            files,
            bytes,
            resumed,
        } => {
            if *resumed > 0 {
                format!(
                    "{files} files, {}; {resumed} pieces already here (resumed)",
                    human(*bytes)
                )
            } else {
                format!("{files} files, {}", human(*bytes))
            }
        }
        SwarmEvent::PeerConnected {
            device,
            path,
            incoming,
        } => format!(
            "peer {device} connected ({}, {path})",
            if *incoming { "to us" } else { "by us" }
        ),
        SwarmEvent::PeerGone { device, reason } => format!("peer {device} left: {reason}"),
        SwarmEvent::BadPeer { device, piece } => format!(
            "peer {device} sent piece {piece} that failed its hash: dropped, not asked again"
        ),
        SwarmEvent::Note(note) => Printable(note).to_string(),
        SwarmEvent::Finished => return,
    };
    match bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

fn json_event(event: &SwarmEvent) -> serde_json::Value {
    use serde_json::json;
    match event {
        SwarmEvent::Manifest {
            files,
            bytes,
            resumed,
        } => {
            json!({"event": "manifest", "files": files, "bytes": bytes, "resumed_pieces": resumed})
        }
        SwarmEvent::PeerConnected {
            device,
            path,
            incoming,
        } => json!({"event": "peer", "device_id": device, "path": path, "incoming": incoming}),
        SwarmEvent::PeerGone { device, reason } => {
            json!({"event": "peer_gone", "device_id": device, "reason": reason})
        }
        SwarmEvent::BadPeer { device, piece } => {
            json!({"event": "bad_peer", "device_id": device, "piece": piece})
        }
        SwarmEvent::Note(note) => json!({"event": "note", "message": note}),
        SwarmEvent::Finished => json!({"event": "finished"}),
    }
}

fn download_bar(json: bool) -> Option<ProgressBar> {
    if json {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "[{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(bar)
}

fn show_status(bar: &ProgressBar, status: &SwarmStatus) {
    if bar.length() != Some(status.total_bytes) {
        bar.set_length(status.total_bytes);
    }
    bar.set_position(status.have_bytes);
    let msg = match &status.state {
        SwarmState::Starting => "finding peers…".to_owned(),
        _ => format!("{} peers", status.peers.len()),
    };
    bar.set_message(msg);
}

pub async fn get(args: GetArgs, _recorder: &crate::record::Recorder) -> anyhow::Result<()> {
    let (ticket, manifest) = read_source(&args.source)?;
    let tracker = tracker_for(args.rendezvous.as_deref(), ticket.tracker.as_deref())?;
    let started = Instant::now();
    let host = host(
        &tracker,
        args.max_upload.0,
        args.max_download.0,
        usize::from(args.peers),
    )
    .await?;
    let swarm = host
        .get(ticket.root, manifest, ticket.trusted.clone(), &args.output)
        .await?;
    let bar = download_bar(args.json);
    let mut events = swarm.events();
    let mut status = swarm.status();
    let wait = swarm.wait();
    tokio::pin!(wait);
    let mut last_progress = Instant::now();
    let result = loop {
        tokio::select! {
            result = &mut wait => break result,
            Some(event) = async { match events.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                if args.json {
                    println!("{}", json_event(&event));
                } else {
                    print_event(&event, bar.as_ref());
                }
            }
            changed = status.changed() => {
                if changed.is_err() { continue; }
                if let Some(bar) = &bar {
                    show_status(bar, &status.borrow());
                } else if last_progress.elapsed() >= Duration::from_millis(500) {
                    last_progress = Instant::now();
                    let s = status.borrow().clone();
                    println!("{}", serde_json::json!({
                        "event": "progress", "have_bytes": s.have_bytes, "total_bytes": s.total_bytes,
                        "have_pieces": s.have_count, "pieces": s.pieces, "peers": s.peers.len(),
                        "downloaded": s.downloaded, "uploaded": s.uploaded,
                    }));
                }
            }
        }
    };
    if let Some(rx) = events.as_mut() {
        while let Ok(event) = rx.try_recv() {
            if args.json {
                println!("{}", json_event(&event));
            } else {
                print_event(&event, bar.as_ref());
            }
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let last = swarm.status().borrow().clone();
    let from = swarm.received_from();
    record(&last, &args.output, started.elapsed(), &result, from.len());
    if result.is_ok() {
        let secs = started.elapsed().as_secs_f64().max(0.001);
        if args.json {
            let from: serde_json::Map<String, serde_json::Value> = from
                .iter()
                .map(|(d, b)| (d.to_string(), serde_json::Value::from(*b)))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "event": "done", "root": last.root.to_hex(), "name": last.name,
                    "bytes": last.total_bytes, "downloaded": last.downloaded,
                    "seconds": secs, "from": from,
                })
            );
        } else {
            eprintln!(
                "received {} ({}) into {} in {:.1} s from {} peers ({}/s)",
                last.name,
                human(last.total_bytes),
                args.output.display(),
                secs,
                from.len(),
                human((last.downloaded as f64 / secs) as u64)
            );
            for (device, bytes) in &from {
                eprintln!("  from {device}: {}", human(*bytes));
            }
        }
    }
    if result.is_ok() && args.seed {
        eprintln!("seeding {}: Ctrl+C to stop", last.name);
        std::future::pending::<()>().await;
    }
    host.shut_down().await;
    result.context("the download did not finish")?;
    Ok(())
}

fn read_source(source: &str) -> anyhow::Result<(Ticket, Option<p2p_core::swarm::Manifest>)> {
    if source
        .trim()
        .starts_with(p2p_core::swarm::ticket::TICKET_PREFIX)
        && !Path::new(source).exists()
    {
        let ticket: Ticket = source
            .parse()
            .map_err(|e: p2p_core::swarm::SwarmError| crate::exit::Usage(e.to_string()))?;
        return Ok((ticket, None));
    }
    let path = Path::new(source);
    if !path.exists() {
        return Err(crate::exit::Usage(format!(
            "{source:?} is neither a .p2p file nor a ticket (tickets start with p2p1)"
        ))
        .into());
    }
    let file = ShareFile::read(path).map_err(|e| crate::exit::Usage(e.to_string()))?;
    Ok((file.ticket, file.manifest))
}

fn record(
    status: &SwarmStatus,
    output: &Path,
    elapsed: Duration,
    result: &Result<(), p2p_core::swarm::SwarmError>,
    peers: usize,
) {
    let Some(history) = History::default_location() else {
        return;
    };
    let (state, error) = match result {
        Ok(()) => (Status::Completed, None),
        Err(p2p_core::swarm::SwarmError::Stopped) => {
            (Status::Interrupted, Some("stopped".to_owned()))
        }
        Err(e) => (Status::Failed, Some(e.to_string())),
    };
    let files = status.name.clone();
    let mut record = Record::now(
        p2p_core::swarm::store::transfer_id(&status.root),
        Direction::Receive,
        format!("swarm of {peers} peers"),
        vec![files],
        0,
        status.have_bytes,
        elapsed,
        state,
        error,
    );
    record.total_bytes = Some(status.total_bytes);
    record.moved_bytes = Some(status.downloaded);
    record.skipped_bytes = Some(status.have_bytes.saturating_sub(status.downloaded));
    record.output_dir = std::fs::canonicalize(output)
        .ok()
        .map(|p| p.display().to_string());
    if let Err(e) = history.append(&record) {
        tracing::warn!("could not write the history: {e}");
    }
}
