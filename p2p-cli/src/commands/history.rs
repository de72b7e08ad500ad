//! `p2p-transfer history`: past transfers as a table, or one JSON object per record.
//!
//! A record keeps what a peer sent as it arrived (its name, the paths it offered, its
//! error message; older builds stored them unescaped), so every such field is shown
//! through [`printable`] in the table. `--json` writes them as they are, JSON-escaped.

use clap::{Args, ValueEnum};
use p2p_core::history::{History, Record, Status};
use p2p_core::text::{printable, Printable};
use p2p_core::Direction;

use crate::json;

#[derive(Debug, Args)]
#[command(after_help = "\
Status filters combine: `--failed --interrupted` shows transfers that failed or were \
interrupted. The transfer id is what `p2p-transfer resume ID` takes.

Examples:
  p2p-transfer history
  p2p-transfer history --failed --interrupted --direction send
  p2p-transfer history --json -n 100 | jq -r 'select(.status == \"completed\") | .transfer_id'")]
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
    /// One JSON object per record, oldest first (fields in docs/json-events.md).
    #[arg(long)]
    pub json: bool,
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
    let shown = select(&loaded.records, &args);
    if shown.is_empty() {
        let message = if loaded.records.is_empty() {
            format!(
                "no transfers recorded yet (history: {})",
                history.path().display()
            )
        } else {
            format!(
                "no transfer matches ({} recorded; history: {})",
                loaded.records.len(),
                history.path().display()
            )
        };
        // JSON output stays parseable: nothing on stdout, the reason on stderr.
        if args.json {
            eprintln!("{message}");
        } else {
            println!("{message}");
        }
        return Ok(());
    }
    if args.json {
        for record in shown {
            json::print(&json::HistoryRecord::from(record));
        }
        return Ok(());
    }
    println!(
        "{:<19}  {:<7}  {:<11}  {:>6}  {:>10}  {:>10}  {:>8}  {:<36}  {:<20}  what",
        "when (UTC)", "dir", "status", "files", "bytes", "moved", "seconds", "transfer id", "peer"
    );
    for r in shown {
        println!("{}", row(r));
    }
    Ok(())
}

/// The last `--limit` records that pass every filter: any of the status flags given
/// (none = all), and the direction.
fn select<'a>(records: &'a [Record], args: &HistoryArgs) -> Vec<&'a Record> {
    let statuses: Vec<Status> = [
        (args.completed, Status::Completed),
        (args.failed, Status::Failed),
        (args.interrupted, Status::Interrupted),
        (args.declined, Status::Declined),
    ]
    .into_iter()
    .filter_map(|(wanted, status)| wanted.then_some(status))
    .collect();
    let direction = args.direction.map(|d| match d {
        DirectionArg::Send => Direction::Send,
        DirectionArg::Receive => Direction::Receive,
    });
    let selected: Vec<&Record> = records
        .iter()
        .filter(|r| statuses.is_empty() || statuses.contains(&r.status))
        .filter(|r| direction.is_none_or(|d| r.direction == d))
        .collect();
    let from = selected.len().saturating_sub(args.limit);
    selected[from..].to_vec()
}

fn row(r: &Record) -> String {
    let dir = match r.direction {
        Direction::Send => "send",
        Direction::Receive => "receive",
    };
    let moved = r
        .moved_bytes
        .map_or_else(|| "-".to_owned(), |m| m.to_string());
    let mut peer = match &r.peer_address {
        Some(address) => format!("{} ({address})", Printable(&r.peer)),
        None => Printable(&r.peer).to_string(),
    };
    if !r.transports.is_empty() {
        let over: Vec<String> = r.transports.iter().map(|t| t.to_string()).collect();
        peer = format!("{peer} over {}", over.join(", then "));
    }
    if !r.paths.is_empty() {
        let paths: Vec<&str> = r.paths.iter().map(|p| p.label()).collect();
        peer = format!("{peer} ({})", paths.join(" → "));
    }
    // Where it is on this machine when known (newer records), else the names moved.
    let names = if r.local_paths.is_empty() {
        &r.files
    } else {
        &r.local_paths
    };
    let mut what = names
        .iter()
        .map(|f| printable(f))
        .collect::<Vec<_>>()
        .join(", ");
    if what.is_empty() {
        if let Some(dir) = &r.output_dir {
            what = format!("into {}", printable(dir));
        }
    }
    if let Some(e) = &r.error {
        what = format!("{what} ({})", printable(e));
    }
    format!(
        "{:<19}  {:<7}  {:<11}  {:>6}  {:>10}  {:>10}  {:>8.1}  {:<36}  {:<20}  {}",
        r.finished_utc(),
        dir,
        json::status_name(r.status),
        r.file_count,
        r.bytes,
        moved,
        r.duration_secs,
        r.transfer_id,
        peer,
        what.trim_start()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, direction: Direction) -> Record {
        Record::now(
            uuid::Uuid::new_v4(),
            direction,
            "box".into(),
            vec!["a".into()],
            1,
            1,
            std::time::Duration::ZERO,
            status,
            None,
        )
    }

    fn args(flags: &[&str]) -> HistoryArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            history: HistoryArgs,
        }
        Cli::parse_from(std::iter::once("history").chain(flags.iter().copied())).history
    }

    #[test]
    fn status_filters_combine_as_either_and_with_the_direction_as_both() {
        let records = vec![
            record(Status::Completed, Direction::Send),
            record(Status::Failed, Direction::Send),
            record(Status::Interrupted, Direction::Receive),
            record(Status::Interrupted, Direction::Send),
            record(Status::Declined, Direction::Receive),
        ];
        let ids = |flags: &[&str]| -> Vec<uuid::Uuid> {
            select(&records, &args(flags))
                .into_iter()
                .map(|r| r.transfer_id)
                .collect()
        };
        let id = |i: usize| records[i].transfer_id;
        assert_eq!(ids(&[]).len(), 5);
        assert_eq!(
            ids(&["--failed", "--interrupted"]),
            vec![id(1), id(2), id(3)]
        );
        assert_eq!(
            ids(&["--failed", "--interrupted", "--direction", "send"]),
            vec![id(1), id(3)]
        );
        assert_eq!(ids(&["--failed", "--interrupted", "-n", "1"]), vec![id(3)]);
        assert!(ids(&["--declined", "--direction", "send"]).is_empty());
    }
}
