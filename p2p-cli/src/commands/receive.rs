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
    let mut options = super::session_options(&args.session, &args.transfer)?;
    // Negotiation takes the smaller value of both sides: a receiver offers the protocol
    // maxima, so the sender's settings apply, unless the user asked for less here.
    let defaults = p2p_core::config::default_config();
    let ceilings = p2p_core::config::ceilings(options.config.compress);
    if options.config.chunk_size == defaults.chunk_size {
        options.config.chunk_size = ceilings.chunk_size;
    }
    if options.config.window_size == defaults.window_size {
        options.config.window_size = ceilings.window_size;
    }
    let mut session = super::establish(args.role, &args.session, &options).await?;
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
