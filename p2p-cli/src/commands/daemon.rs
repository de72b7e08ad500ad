//! `p2p-transfer daemon`, `shares` and `unshare`: the background daemon that keeps
//! shares served, and what it serves (over its control socket, see docs/daemon.md).

use clap::Args;
use p2p_core::daemon::{self, Client, DaemonError, Listed, Shares};
use p2p_core::text::Printable;

#[derive(Debug, Args)]
pub struct DaemonArgs {}

#[derive(Debug, Args)]
pub struct SharesArgs {
    /// One JSON object per share on stdout: {"record":{…},"stats":{…}} (see
    /// docs/daemon.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnshareArgs {
    /// The share: a prefix of its root hash (as `p2p-transfer shares` shows it) or its
    /// exact name.
    #[arg(value_name = "ROOT|NAME")]
    pub which: String,
}

/// What serves the daemon's shares: swarms, as this device.
fn service() -> anyhow::Result<impl Shares> {
    Ok(p2p_core::swarm::service::SwarmService::new(
        super::identity()?,
        p2p_core::swarm::SwarmConfig::default(),
    ))
}

/// Runs the daemon in this process until SIGTERM, SIGINT or a `stop` request.
pub async fn run(_args: DaemonArgs) -> anyhow::Result<()> {
    let dir = super::data_dir()?;
    // Before the socket exists: a SIGTERM right after "listening" is not lost.
    let stop = daemon::termination()?;
    let running = daemon::Daemon::start(&dir, service()?).await?;
    eprintln!("daemon listening on {}", running.socket().display());
    running.serve(stop).await?;
    eprintln!("daemon stopped");
    Ok(())
}

/// The daemon of this user's data folder, or `None` when none runs.
async fn connect() -> anyhow::Result<Option<Client>> {
    let dir = super::data_dir()?;
    match Client::connect(&dir).await {
        Ok(client) => Ok(Some(client)),
        Err(DaemonError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Lists what the daemon serves (never starts one just to say it serves nothing).
pub async fn shares(args: SharesArgs) -> anyhow::Result<()> {
    let Some(mut client) = connect().await? else {
        eprintln!("no daemon runs: nothing is shared");
        return Ok(());
    };
    let listed = client.list().await?;
    if args.json {
        for share in &listed {
            println!("{}", serde_json::to_string(share)?);
        }
        return Ok(());
    }
    if listed.is_empty() {
        eprintln!("no shares: the daemon serves nothing");
        return Ok(());
    }
    print!("{}", table(&listed));
    Ok(())
}

/// The shares as a table: name, root prefix, peers, uploaded, state.
fn table(listed: &[Listed]) -> String {
    let mut out = format!(
        "{:<24}  {:<12}  {:>5}  {:>10}  STATE\n",
        "NAME", "ROOT", "PEERS", "UPLOADED"
    );
    for Listed { record, stats } in listed {
        out.push_str(&format!(
            "{:<24}  {:<12}  {:>5}  {:>10}  {}\n",
            Printable(&record.name).to_string(),
            record.short_root(),
            stats.peers,
            indicatif::HumanBytes(stats.uploaded).to_string(),
            Printable(&stats.state)
        ));
    }
    out
}

/// Stops serving one share and forgets it.
pub async fn unshare(args: UnshareArgs) -> anyhow::Result<()> {
    let Some(mut client) = connect().await? else {
        anyhow::bail!("no daemon runs: nothing is shared, so there is nothing to unshare");
    };
    let removed = client.remove(&args.which).await?;
    eprintln!(
        "stopped sharing {} ({})",
        Printable(&removed.name),
        removed.short_root()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_core::daemon::{ShareRecord, ShareStats};

    #[test]
    fn the_table_escapes_names_and_states_and_shortens_roots() {
        let listed = [Listed {
            record: ShareRecord {
                root: "ab".repeat(32),
                name: "evil\u{1b}[2J".into(),
                share_file: "/x.p2p".into(),
                sources: vec!["/x".into()],
                rendezvous: "t:1".into(),
                added_unix: 0,
                max_upload: None,
            },
            stats: ShareStats {
                peers: 3,
                uploaded: 2048,
                state: "bad\rstate".into(),
            },
        }];
        let table = table(&listed);
        assert!(table.contains("evil\\u{1b}[2J"), "{table}");
        assert!(table.contains("  abababababab  "), "{table}");
        assert!(table.contains("bad\\rstate"), "{table}");
        assert!(table.contains("2.00 KiB"), "{table}");
        assert!(!table.contains('\u{1b}'));
    }
}
