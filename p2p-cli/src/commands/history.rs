//! `p2p-transfer history`: past transfers as a table.

use clap::{ArgGroup, Args, ValueEnum};
use p2p_core::history::{History, Record, Status};
use p2p_core::Direction;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("status").args(["completed", "failed", "interrupted"])))]
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
    let wanted_status = match (args.completed, args.failed, args.interrupted) {
        (true, _, _) => Some(Status::Completed),
        (_, true, _) => Some(Status::Failed),
        (_, _, true) => Some(Status::Interrupted),
        _ => None,
    };
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
        };
        let mut what = r.files.join(", ");
        if let Some(e) = &r.error {
            what = format!("{what} ({e})");
        }
        println!(
            "{:<19}  {:<7}  {:<11}  {:>6}  {:>10}  {:>8.1}  {:<20}  {}",
            utc(r.finished_at),
            dir,
            status,
            r.file_count,
            r.bytes,
            r.duration_secs,
            r.peer,
            what
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC from Unix seconds (civil-from-days, no time zone crate).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
