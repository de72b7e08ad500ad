//! `p2p-transfer send PATH...`

use std::path::PathBuf;

use clap::Args;

use crate::record::Recorder;
use crate::{RoleArg, SessionArgs, TransferArgs};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files and folders to send.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Connect to the peer (client, default) or wait for it to connect (server).
    #[arg(long, value_enum, default_value = "client")]
    pub role: RoleArg,
    /// Find the receiver on the local network instead of giving --peer: the only one
    /// there, or the one with this name or id.
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "",
          conflicts_with = "peer")]
    pub discover: Option<String>,
    #[command(flatten)]
    pub session: SessionArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

pub async fn run(mut args: SendArgs, recorder: &Recorder) -> anyhow::Result<()> {
    let defaults = p2p_core::config::default_config();
    let options = super::session_options(&args.session, &args.transfer, &defaults)?;
    // Scan first: a missing file is reported before any connection is made.
    let manifest = p2p_core::fs::source::SourceManifest::scan(&args.paths)?;
    if let Some(query) = &args.discover {
        anyhow::ensure!(
            args.role == RoleArg::Client,
            "--discover needs --role client"
        );
        args.session.peer = Some(super::peers::discover(Some(query)).await?);
    }
    let mut session = super::establish(args.role, &args.session, &options, false).await?;
    session.send_manifest(&manifest, recorder).await?;
    session.close().await?;
    Ok(())
}
