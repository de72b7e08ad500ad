//! `p2p-transfer history`: past transfers as a table.
//!
//! A record keeps what a peer sent as it arrived (its name, the paths it offered, its
//! error message; older builds stored them unescaped), so every such field is shown
//! through [`printable`] here.

use clap::{ArgGroup, Args, ValueEnum};
use p2p_core::history::{History, Record, Status};
use p2p_core::text::{printable, Printable};
use p2p_core::Direction;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("status").args(["completed", "failed", "interrupted", "declined"])))]
pub struct HistoryArgs {
    /// Show the last N transfers.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub limit: usize,
    /// Only one direction.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Only completed transfers.
    #[arg(long)]
    pub completed: bool,
    /// Only failed transfers.
    #[arg(long)]
    pub failed: bool,
    /// Only interrupted transfers.
    #[arg(long)]
    pub interrupted: bool,
    /// Only incoming transfers that were declined.
    #[arg(long)]
    pub declined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    Send,
    Receive,
}

pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let Some(history) = History::default_location() else {
        anyhow::bail!(
            "no data directory is known; set {}",
            p2p_core::history::DATA_DIR_ENV
        );
    };
    let loaded = history.load()?;
    for (line, reason) in &loaded.skipped {
        eprintln!(
            "warning: skipped unreadable line {line} of {}: {reason}",
            history.path().display()
        );
    }
    let wanted_status = [
        (args.completed, Status::Completed),
        (args.failed, Status::Failed),
        (args.interrupted, Status::Interrupted),
        (args.declined, Status::Declined),
    ]
    .into_iter()
    .find_map(|(wanted, status)| wanted.then_some(status));
    let wanted_direction = args.direction.map(|d| match d {
        DirectionArg::Send => Direction::Send,
        DirectionArg::Receive => Direction::Receive,
    });
    let selected: Vec<&Record> = loaded
        .records
        .iter()
        .filter(|r| wanted_status.is_none_or(|s| r.status == s))
        .filter(|r| wanted_direction.is_none_or(|d| r.direction == d))
        .collect();
    let shown = &selected[selected.len().saturating_sub(args.limit)..];
    if shown.is_empty() {
        println!(
            "no transfers recorded (history: {})",
            history.path().display()
        );
        return Ok(());
    }
    println!(
        "{:<19}  {:<7}  {:<11}  {:>6}  {:>10}  {:>8}  {:<20}  what",
        "when (UTC)", "dir", "status", "files", "bytes", "seconds", "peer"
    );
    for r in shown {
        let dir = match r.direction {
            Direction::Send => "send",
            Direction::Receive => "receive",
        };
        let status = match r.status {
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            Status::Declined => "declined",
        };
        let mut what = r
            .files
            .iter()
            .map(|f| printable(f))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(e) = &r.error {
            what = format!("{what} ({})", printable(e));
        }
        println!(
            "{:<19}  {:<7}  {:<11}  {:>6}  {:>10}  {:>8.1}  {:<20}  {}",
            r.finished_utc(),
            dir,
            status,
            r.file_count,
            r.bytes,
            r.duration_secs,
            Printable(&r.peer),
            what
        );
    }
    Ok(())
}
