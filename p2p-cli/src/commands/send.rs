//! `p2p-transfer send PATH...` and `p2p-transfer resume ID --path PATH...`

use std::path::PathBuf;

use clap::Args;
use uuid::Uuid;

use crate::record::Recorder;
use p2p_core::net::{Code, Endpoint};

use crate::{RoleArg, SendTuning, SessionArgs, TransferArgs};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files and folders to send; `-` alone sends standard input (as a file named stdin).
    #[arg(required_unless_present = "text", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Connect to the peer (client) or wait for it to connect (server). Default: client
    /// with --peer or --discover; otherwise wait, printing a one-time code for the
    /// receiver (`p2p-transfer receive CODE`).
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Find the receiver on the local network instead of giving --peer: the only one
    /// there, or the one with this name or id.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "peer")]
    pub discover: Option<String>,
    #[command(flatten)]
    pub stream: super::stream::SendStreamArgs,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub tuning: SendTuning,
}

/// Resumes an interrupted send: the same paths, under the interrupted transfer's id.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The id printed when the transfer was interrupted (also in `p2p-transfer history`).
    pub transfer_id: Uuid,
    /// The files and folders of the interrupted transfer (all of them, unchanged).
    /// Default: the ones this machine's history recorded for that transfer.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The same, the way older versions printed it.
    #[arg(long = "path", num_args = 1.., value_name = "PATH", hide = true)]
    pub path: Vec<PathBuf>,
    /// Connect to the peer (client, the default with --peer) or wait for it to connect
    /// (server).
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub tuning: SendTuning,
}

/// What this machine sent under `transfer_id`, from its history.
fn sent_paths(transfer_id: Uuid) -> anyhow::Result<Vec<PathBuf>> {
    let usage = |why: String| crate::exit::Usage(why).into();
    let Some(history) = p2p_core::history::History::default_location() else {
        return Err(usage(format!(
            "no history to find what {transfer_id} sent: give the paths (resume ID PATH...)"
        )));
    };
    let loaded = history.load()?;
    let found = loaded
        .records
        .iter()
        .rev()
        .find(|r| {
            r.transfer_id == transfer_id
                && r.direction == p2p_core::Direction::Send
                && !r.local_paths.is_empty()
        })
        .map(|r| r.local_paths.iter().map(PathBuf::from).collect());
    found.ok_or_else(|| {
        usage(format!(
            "this machine's history has no send {transfer_id} with its paths: give them \
             (resume ID PATH...), as they were given to send"
        ))
    })
}

pub async fn resume(args: ResumeArgs, recorder: &Recorder) -> anyhow::Result<()> {
    let mut paths = args.paths;
    paths.extend(args.path);
    if paths.is_empty() {
        paths = sent_paths(args.transfer_id)?;
    }
    let send = SendArgs {
        paths,
        role: args.role,
        discover: None,
        stream: Default::default(),
        session: args.session,
        transfer: args.transfer,
        tuning: args.tuning,
    };
    send_as(send, Some(args.transfer_id), recorder).await
}

/// The other side, in messages.
const PEER: &str = "receiver";

pub async fn run(args: SendArgs, recorder: &Recorder) -> anyhow::Result<()> {
    send_as(args, None, recorder).await
}

async fn send_as(
    mut args: SendArgs,
    transfer_id: Option<Uuid>,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let defaults = p2p_core::config::default_config();
    let role = args
        .role
        .unwrap_or(if args.session.peer.is_some() || args.discover.is_some() {
            RoleArg::Client
        } else {
            RoleArg::Server
        });
    super::check_role(role, &args.session)?;
    // With a rendezvous server (and no --peer or --discover), the code comes from the
    // mailbox opened there, once the checks that need no network have passed.
    let meets = args.discover.is_none()
        && super::rendezvous_server(&args.session).is_some()
        && args.session.peer.is_none();
    // Waiting for a receiver without --code: print a one-time code for it.
    let mut generated =
        (role == RoleArg::Server && args.session.code.is_none() && !meets).then(Code::generate);
    let code = args.session.code.clone().or(generated.clone());
    let nameplate = code.as_ref().map(Code::nameplate);
    let security = super::security(&args.session, code, false)?;
    let options = super::session_options(
        &args.session,
        &args.transfer,
        &args.tuning,
        &defaults,
        security,
    )?;
    // Scan first: a missing file is reported before any connection is made.
    let text = args.stream.text.as_deref();
    let payload =
        super::stream::Payload::prepare(&args.paths, text, transfer_id.is_some(), recorder).await?;
    let rendezvous = match meets {
        true => super::rendezvous(&args.session, args.session.code.as_ref()).await?,
        false => None,
    };
    if let Some((_, Some(code))) = &rendezvous {
        // The code made from the mailbox' number: the one admission expects too.
        let _ = options.security.admission.clone().with_code(code.clone());
        generated = Some(code.clone());
    }
    if let Some(query) = &args.discover {
        if role != RoleArg::Client {
            return Err(crate::exit::Usage(
                "--discover finds a receiver to connect to: it does not go with --role server"
                    .into(),
            )
            .into());
        }
        let found = super::peers::discover(Some(query)).await?;
        super::pin_discovered(&options, &found)?;
        args.session.peer = Some(found.addr.to_string());
    }
    let endpoint = match rendezvous {
        Some((rendezvous, _)) => Endpoint::Rendezvous(Box::new(rendezvous)),
        None => super::endpoint(role, &args.session, &options, Some(nameplate)).await?,
    };
    recorder.renderer().listening(endpoint.local_addr());
    if let Some(code) = &generated {
        recorder.renderer().code(&code.to_string());
        let via = match &args.session.rendezvous {
            Some(server) => format!(" --rendezvous {}", super::shell_quote(server)),
            None => String::new(),
        };
        eprintln!(
            "on the receiving machine, run:  {} receive {code}{via}",
            crate::program()
        );
    }
    if args.stream.qr {
        super::stream::print_qr(args.session.code.as_ref().or(generated.as_ref()));
    }
    let transfer_id = transfer_id.unwrap_or_else(Uuid::new_v4);
    let peer = match (&args.session.peer, endpoint.local_addr()) {
        (Some(peer), _) => format!("--peer {peer}"),
        (None, Some(local)) => format!("--role server --port {}", local.port()),
        (None, None) => String::new(),
    };
    let paths: Vec<String> = args
        .paths
        .iter()
        .map(|p| super::shell_quote(&p.display().to_string()))
        .collect();
    // The same chunk size resumes every chunk held (another one loses the chunks that
    // only partly cover one of the new size): say so when it is not the default.
    let chunk = match options.config.chunk_size {
        c if c == defaults.chunk_size => String::new(),
        c => format!(" --chunk-size {c}"),
    };
    // `--` keeps a path that starts with "-" from being taken for a flag.
    let dashes = if paths.iter().any(|p| p.starts_with('-')) {
        "-- "
    } else {
        ""
    };
    recorder.set_resume_hint(crate::record::ResumeHint {
        command: format!("{} resume {transfer_id} {peer}{chunk}", crate::program()),
        paths: format!("{dashes}{}", paths.join(" ")),
    });
    // Every attempt offers the same transfer id: after a reconnection the receiver
    // resumes it, and only what is missing is sent.
    let remember = args.session.remember;
    recorder.set_sent_paths(&args.paths);
    super::with_reconnect(&args.session, &endpoint, recorder, PEER, |progress| {
        let (endpoint, options, payload) = (&endpoint, &options, &payload);
        async move {
            let mut session = super::open_session(endpoint, options).await?;
            progress.connected();
            recorder.connected(&session);
            if let Some(code) = session.peer_identity().and_then(|p| p.resume_code.as_ref()) {
                recorder.set_resume_code(code);
            }
            if remember {
                super::remember(&session, recorder.renderer());
            }
            let path = session.path();
            recorder
                .following_path(path, payload.deliver(&mut session, transfer_id, recorder))
                .await?;
            session.close().await
        }
    })
    .await
}
