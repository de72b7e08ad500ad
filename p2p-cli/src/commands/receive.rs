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
    let mut session = super::establish(args.role, &args.session, &options, true).await?;
    let renderer = recorder.renderer();
    let receive = ReceiveOptions {
        output_dir: args.output.clone(),
        overwrite: args.overwrite,
    };
    let done = session.run_event_loop(&receive, recorder).await?;
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
