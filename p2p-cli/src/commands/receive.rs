//! `p2p-transfer receive`

use std::path::PathBuf;

use clap::Args;
use p2p_core::ReceiveOptions;

use crate::record::Recorder;
use crate::{RoleArg, SessionArgs, TransferArgs};

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Folder to write into (created if missing).
    #[arg(long, short, default_value = ".")]
    pub output: PathBuf,
    /// Replace files that already exist instead of refusing the transfer.
    #[arg(long)]
    pub overwrite: bool,
    /// Wait for the peer (server, default) or connect to it (client).
    #[arg(long, value_enum, default_value = "server")]
    pub role: RoleArg,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

pub async fn run(args: ReceiveArgs, recorder: &Recorder) -> anyhow::Result<()> {
    let ceilings = p2p_core::config::ceilings(true);
    let options = super::session_options(&args.session, &args.transfer, &ceilings)?;
    let endpoint = super::Endpoint::new(args.role, &args.session, &options, true).await?;
    let renderer = recorder.renderer();
    let receive = ReceiveOptions {
        output_dir: args.output.clone(),
        overwrite: args.overwrite,
    };
    let done = std::sync::Mutex::new(Vec::new());
    super::with_reconnect(&args.session, recorder, |progress| {
        let (endpoint, options, receive, done) = (&endpoint, &options, &receive, &done);
        async move {
            let mut session = endpoint.session(options).await?;
            progress.connected();
            recorder.set_peer(&session.peer().device_name);
            while let Some(summary) = session.receive(receive, recorder).await? {
                done.lock().unwrap_or_else(|p| p.into_inner()).push(summary);
            }
            Ok(())
        }
    })
    .await?;
    let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    if done.is_empty() {
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
