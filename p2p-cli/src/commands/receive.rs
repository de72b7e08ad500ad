//! `p2p-transfer receive`

use std::path::PathBuf;

use clap::Args;
use p2p_core::net::{Admitted, PeerIdentity};
use p2p_core::{Decision, IncomingOffer, ReceiveOptions, Received};

use crate::record::{ReceiveHint, Recorder};
use crate::{RoleArg, SessionArgs, TransferArgs};

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// The one-time code the sender printed (e.g. 7-guitar-orbit): find that sender on
    /// the local network (or at --peer) and connect to it.
    #[arg(value_name = "CODE", conflicts_with = "code")]
    pub code_phrase: Option<p2p_core::net::Code>,
    /// Folder to write into (created if missing).
    #[arg(long, short, default_value = ".")]
    pub output: PathBuf,
    /// Replace files that already exist instead of refusing the transfer.
    #[arg(long)]
    pub overwrite: bool,
    /// Show each incoming transfer (sender, its verified device id, files, total size)
    /// and ask on the terminal before receiving it; anything but "y" or "yes" declines.
    /// Also lets in devices that are neither trusted nor using a code, for you to
    /// decide on (trust on first use; with --remember, accepted ones are trusted).
    #[arg(long)]
    pub ask: bool,
    /// Wait for the peer (server) or connect to it (client). Default: client with a
    /// CODE or --peer, server otherwise.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Keep listening for further senders after a session with a transfer ends (until
    /// Ctrl+C). Without it, `receive` ends after the first session that transferred
    /// something; connections that do not complete the handshake, and sessions closed
    /// without a transfer, never count.
    #[arg(long)]
    pub keep_listening: bool,
    #[command(flatten)]
    pub stream: super::stream::ReceiveStreamArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// The other side, in messages.
const PEER: &str = "sender";

pub async fn run(args: ReceiveArgs, recorder: &Recorder) -> anyhow::Result<()> {
    // First: with --stdout, nothing printed from here on reaches standard output.
    let out = super::stream::Output::new(&args.stream, recorder)?;
    let ceilings = p2p_core::config::ceilings(true);
    let role = args.role.unwrap_or(
        if args.session.peer.is_some() || args.code_phrase.is_some() {
            RoleArg::Client
        } else {
            RoleArg::Server
        },
    );
    super::check_role(role, &args.session)?;
    // What can be checked before anyone connects is: a folder this side cannot write
    // into is this side's problem, not a sender's.
    p2p_core::fs::output::check_writable(&args.output)?;
    // Waiting for a sender with neither a code nor --ask: make a code, so that a new
    // sender gets in (trusted devices need none).
    let given = args.code_phrase.clone().or(args.session.code.clone());
    // With a rendezvous server (and no --peer): join the code's mailbox, or open one
    // (its number starts the code) — not for --ask without a code, which waits for
    // devices that have none. The mailbox is opened once the local checks passed.
    let meets = (given.is_some() || !args.ask)
        && args.session.peer.is_none()
        && super::rendezvous_server(&args.session).is_some();
    let mut generated = (role == RoleArg::Server && given.is_none() && !args.ask && !meets)
        .then(p2p_core::net::Code::generate);
    let code = given.clone().or(generated.clone());
    let nameplate = code.as_ref().map(p2p_core::net::Code::nameplate);
    let security = super::security(&args.session, code.clone(), args.ask)?;
    let tuning = crate::SendTuning::default();
    let options =
        super::session_options(&args.session, &args.transfer, &tuning, &ceilings, security)?;
    let rendezvous = match meets {
        true => super::rendezvous(&args.session, given.as_ref()).await?,
        false => None,
    };
    if let Some((_, Some(made))) = &rendezvous {
        // The code made from the mailbox' number: the one admission expects too.
        let _ = options.security.admission.clone().with_code(made.clone());
        generated = Some(made.clone());
    }
    let mut args = args;
    if role == RoleArg::Client && args.session.peer.is_none() && rendezvous.is_none() {
        if let Some(nameplate) = nameplate {
            let found = super::peers::discover_code(nameplate).await?;
            super::pin_discovered(&options, &found)?;
            args.session.peer = Some(found.addr.to_string());
        }
    }
    let endpoint = match rendezvous {
        Some((rendezvous, _)) => {
            if let Some(code) = &generated {
                recorder.renderer().code(&code.to_string());
                let via = match &args.session.rendezvous {
                    Some(server) => format!(" --rendezvous {}", super::shell_quote(server)),
                    None => String::new(),
                };
                eprintln!(
                    "on the sending machine, run:  {} send <files or folders> --code {code}{via}",
                    crate::program()
                );
            }
            p2p_core::net::Endpoint::Rendezvous(Box::new(rendezvous))
        }
        None => super::endpoint(role, &args.session, &options, Some(nameplate)).await?,
    };
    recorder.renderer().listening(endpoint.local_addr());
    if let Some(local) = endpoint.local_addr() {
        how_to_reach(
            recorder,
            local,
            code.as_ref(),
            generated.is_some(),
            args.ask,
        );
    }
    recorder.set_receive_hint(receive_hint(&args, &endpoint));
    recorder.set_output_dir(&args.output);
    let renderer = recorder.renderer();
    let receive = ReceiveOptions {
        output_dir: out.output_dir(&args.output),
        overwrite: args.overwrite,
    };
    let done = std::sync::Mutex::new(Vec::new());
    let ask = args.ask;
    let listening = endpoint.is_listening();
    let keep_listening = args.keep_listening;
    let remember = args.session.remember;
    super::with_reconnect(&args.session, &endpoint, recorder, PEER, |progress| {
        let (endpoint, options, receive, done, out) = (&endpoint, &options, &receive, &done, &out);
        async move {
            loop {
                let mut session = super::open_session(endpoint, options).await?;
                progress.connected();
                if let Some(code) = session.peer_identity().and_then(|p| p.resume_code.as_ref()) {
                    recorder.set_resume_code(code);
                }
                recorder.set_peer(&session.peer().device_name);
                recorder.connected(&session);
                recorder.set_receive_chunk_size(session.config().chunk_size);
                let identity = session.peer_identity().cloned();
                // A code proves the peer now; an unknown device is remembered only once
                // a person has accepted its offer.
                let unknown = matches!(
                    identity.as_ref().map(|i| &i.admitted),
                    Some(Admitted::Unknown)
                );
                if remember && !unknown {
                    super::remember(&session, recorder.renderer());
                }
                let mut transfers = 0usize;
                loop {
                    let answer = |offer| decide(offer, ask, identity.as_ref(), recorder, out);
                    let text = |text| out.decide_text(text, ask, identity.as_ref(), recorder);
                    let path = session.path();
                    let received = session.receive_any_with(receive, recorder, answer, text);
                    match recorder.following_path(path, received).await? {
                        None => break,
                        Some(Received::Completed(summary)) => {
                            if remember && unknown && transfers == 0 {
                                super::remember(&session, recorder.renderer());
                            }
                            if let Some(summary) = out.deliver(summary).await? {
                                done.lock().unwrap_or_else(|p| p.into_inner()).push(summary)
                            }
                        }
                        Some(Received::Text(text)) => out.show_text(&text).await?,
                        Some(Received::Declined { .. }) => {
                            recorder.renderer().line("declined; nothing was written")
                        }
                    }
                    transfers += 1;
                }
                // A listener serves the next peer when this session moved nothing (a
                // stranger, a peer that changed its mind) or when asked to keep going.
                if !listening || (transfers > 0 && !keep_listening) {
                    return Ok(());
                }
                if transfers == 0 {
                    tracing::info!("the peer closed the session without sending anything");
                }
            }
        }
    })
    .await?;
    let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    if done.is_empty() && !out.delivered_any() {
        renderer.line("the peer closed the session without sending anything");
    }
    for summary in &done {
        renderer.line(&format!(
            "saved {} in {}",
            summary.roots.join(", "),
            args.output.display()
        ));
    }
    Ok(())
}

/// Tells the person at this listening receiver what the sender should type: this
/// machine's addresses and a ready-to-copy `send` command (with the code, if any).
fn how_to_reach(
    recorder: &Recorder,
    local: std::net::SocketAddr,
    code: Option<&p2p_core::net::Code>,
    generated: bool,
    ask: bool,
) {
    let ips = if local.ip().is_unspecified() {
        p2p_core::net::tcp::local_addresses()
            .into_iter()
            .filter(|ip| ip.is_ipv4() || local.ip().is_ipv6())
            .collect()
    } else {
        vec![local.ip()]
    };
    let port = local.port();
    let host = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let peer = match ips.first() {
        Some(ip) if port == p2p_core::net::tcp::DEFAULT_PORT => host(ip),
        Some(ip) => format!("{}:{port}", host(ip)),
        None => format!("<this machine's address>:{port}"),
    };
    if !ips.is_empty() {
        let shown: Vec<String> = ips.iter().map(host).collect();
        eprintln!("this machine: {} (port {port})", shown.join(", "));
    }
    if generated {
        if let Some(code) = code {
            recorder.renderer().code(&code.to_string());
        }
    }
    let with_code = code.map_or_else(String::new, |c| format!(" --code {c}"));
    eprintln!(
        "on the sending machine, run:  {} send <files or folders> --peer {peer}{with_code}",
        crate::program()
    );
    if ask {
        eprintln!("(unknown devices are shown with their verified id for you to accept)");
    }
}

/// How an interrupted receive continues: the same folder, the same port (the one
/// actually bound, so `--port 0` becomes a fixed one), and where the sender points.
fn receive_hint(args: &ReceiveArgs, endpoint: &p2p_core::net::Endpoint) -> ReceiveHint {
    let output = super::shell_quote(&args.output.display().to_string());
    match (endpoint.local_addr(), &args.session.peer) {
        (Some(local), _) => {
            let host = if local.ip().is_unspecified() {
                "<this machine's address>".to_owned()
            } else {
                local.ip().to_string()
            };
            let bind = if local.ip().is_unspecified() {
                String::new()
            } else {
                format!(" --bind {}", local.ip())
            };
            ReceiveHint {
                again: format!(
                    "{} receive --output {output} --port {}{bind}",
                    crate::program(),
                    local.port()
                ),
                sender_reaches_us: format!("--peer {host}:{}", local.port()),
                chunk_size: None,
            }
        }
        (None, peer) => {
            let peer = peer.clone().unwrap_or_default();
            let port = peer
                .rsplit_once(':')
                .map_or("<port>", |(_, p)| p)
                .to_owned();
            ReceiveHint {
                again: format!(
                    "{} receive --output {output} --role client --peer {}",
                    crate::program(),
                    super::shell_quote(&peer)
                ),
                sender_reaches_us: format!("--role server --port {port}"),
                chunk_size: None,
            }
        }
    }
}

/// Entries listed before "… and N more" when asking.
const LISTED: usize = 10;

/// Accepts at once, or (`--ask`) shows the offer on stderr and reads the answer from
/// stdin. No answer (end of input, an unreadable terminal) declines. The sender's name
/// and paths are the peer's words: shown escaped, each on its own line.
async fn decide(
    offer: IncomingOffer,
    ask: bool,
    identity: Option<&PeerIdentity>,
    recorder: &Recorder,
    out: &super::stream::Output,
) -> Decision {
    use p2p_core::text::printable;
    if let Some(refused) = out.refusal(&offer, recorder) {
        return refused;
    }
    if !ask {
        return Decision::Accept;
    }
    let who = match identity {
        None => String::new(),
        Some(id) => match &id.admitted {
            Admitted::Unknown => format!(" (device {}, NOT trusted, no code)", id.device_id),
            Admitted::Code => format!(" (device {}, proved the code)", id.device_id),
            Admitted::Trusted { name } => {
                format!(" (device {}, trusted as {})", id.device_id, printable(name))
            }
            Admitted::SameDevice => format!(" (device {}, this device)", id.device_id),
            Admitted::Pinned => format!(" (device {}, the pinned id)", id.device_id),
        },
    };
    let mut text = format!(
        "{}{who} wants to send {} file(s), {}:",
        printable(&offer.peer),
        offer.files(),
        indicatif::HumanBytes(offer.total_bytes())
    );
    for entry in offer.entries.iter().take(LISTED) {
        match entry.size {
            Some(size) => text.push_str(&format!(
                "\n  {} ({})",
                printable(&entry.path),
                indicatif::HumanBytes(size)
            )),
            None => text.push_str(&format!("\n  {}/", printable(&entry.path))),
        }
    }
    if offer.entries.len() > LISTED {
        text.push_str(&format!("\n  … and {} more", offer.entries.len() - LISTED));
    }
    recorder.renderer().line(&text);
    eprint!("accept? [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    match answer {
        Ok(Ok(line)) if matches!(line.trim().to_lowercase().as_str(), "y" | "yes") => {
            Decision::Accept
        }
        _ => {
            let reason = "the receiver declined the transfer";
            recorder.declined(&offer, reason);
            Decision::Decline(reason.to_owned())
        }
    }
}
