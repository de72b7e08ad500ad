//! The "Get shared files" tab: what a person gives (a ticket or a `.p2p` file), where
//! the peers are found (the tracker), and what one swarm download shows — the share,
//! its progress, the chunk map, the peers and the events worth a line.
//!
//! Everything here is plain data folded from the swarm's [`SwarmStatus`] snapshots and
//! [`SwarmEvent`]s ([`crate::get_worker`] runs the download), so it is tested without a
//! network. Whatever a peer or a share file chose — the share's name, a peer's reason
//! for leaving, a note — is escaped when it is drawn (`view.rs`) or put in a line here.

use std::collections::VecDeque;
use std::path::PathBuf;

use p2p_core::swarm::{Hash, Manifest, ShareFile, SwarmEvent, SwarmState, SwarmStatus, Ticket};
use p2p_core::text::printable;

use crate::format;

/// Most cells the chunk map draws: above this many pieces, one cell stands for a range
/// of pieces and is shaded by the fraction of them present. Bounds the drawing cost
/// (a share may have a million pieces).
pub const MAX_CELLS: usize = 4096;

/// Most event lines kept (the oldest go first).
pub const MAX_LOG: usize = 200;

/// What to download: a ticket (the manifest comes from the first peer), or a `.p2p`
/// file (with the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A pasted ticket (`p2p1…`).
    Ticket(Ticket),
    /// A `.p2p` file read from `path`.
    File {
        /// Where it was read.
        path: PathBuf,
        /// What it holds.
        share: Box<ShareFile>,
    },
}

impl Source {
    /// Root hash, tracker and trusted devices.
    pub fn ticket(&self) -> &Ticket {
        match self {
            Source::Ticket(ticket) => ticket,
            Source::File { share, .. } => &share.ticket,
        }
    }

    /// The manifest, when the source carries it.
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Source::Ticket(_) => None,
            Source::File { share, .. } => share.manifest.as_ref(),
        }
    }
}

/// Reads what was typed, pasted or chosen: a ticket (`p2p1…`) or the path of a `.p2p`
/// file (`file://` URIs, quotes and `~/` understood, as in the Send tab's path field).
/// Reads the file, so call it off the UI thread. The error is a sentence for the tab.
pub fn parse_source(input: &str) -> Result<Source, String> {
    let typed = input.trim();
    if typed.is_empty() {
        return Err("Paste a ticket (it starts with p2p1) or open a .p2p file.".to_owned());
    }
    if typed.starts_with(p2p_core::swarm::ticket::TICKET_PREFIX) {
        return typed
            .parse::<Ticket>()
            .map(Source::Ticket)
            .map_err(|e| format!("{}.", sentence(&e.to_string())));
    }
    let Some(path) = crate::dialog::typed_paths(typed).into_iter().next() else {
        return Err("Paste a ticket (it starts with p2p1) or open a .p2p file.".to_owned());
    };
    let exists = std::fs::symlink_metadata(&path).is_ok();
    let looks_like_file = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("p2p"))
        || typed.contains('/')
        || typed.contains(std::path::MAIN_SEPARATOR);
    if !exists && !looks_like_file {
        return Err(format!(
            "{:?} is neither a ticket (it starts with p2p1) nor a .p2p file.",
            printable(typed).as_ref()
        ));
    }
    if !exists {
        return Err(format!("No such file: {}.", path.display()));
    }
    if path.is_dir() {
        return Err(format!(
            "{} is a folder: choose the .p2p file the sharer sent you.",
            path.display()
        ));
    }
    let share = ShareFile::read(&path).map_err(|e| format!("{}.", sentence(&e.to_string())))?;
    Ok(Source::File {
        path,
        share: Box::new(share),
    })
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `error` as a sentence: a capital first letter, no trailing period (added by the
/// caller).
fn sentence(error: &str) -> String {
    capitalised(error.trim_end_matches('.'))
}

/// The tracker a download finds its peers on: the ticket's, else the rendezvous server
/// set in Settings (or for this run); an error for the tab when there is neither.
pub fn tracker_for(ticket: &Ticket, rendezvous: Option<String>) -> Result<String, String> {
    match (&ticket.tracker, rendezvous) {
        (Some(tracker), _) => Ok(tracker.clone()),
        (None, Some(server)) => Ok(server),
        (None, None) => Err(
            "This ticket names no tracker; set a rendezvous server in Settings (the \
             sharer's) and try again."
                .to_owned(),
        ),
    }
}

/// The chunk map: each cell one piece, or — above [`MAX_CELLS`] pieces — a run of
/// pieces, with the fraction of them present (0.0 to 1.0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkMap {
    /// Pieces in the share.
    pub pieces: u32,
    /// One fraction per cell, in piece order.
    pub cells: Vec<f32>,
}

impl ChunkMap {
    /// The map of `status` in at most `max_cells` cells (at least one when there are
    /// pieces). Cell `c` of `n` covers pieces `c·pieces/n .. (c+1)·pieces/n`: every
    /// piece in exactly one cell, cell sizes differing by at most one.
    pub fn of(status: &SwarmStatus, max_cells: usize) -> ChunkMap {
        let pieces = status.pieces;
        let cells = (pieces as usize).min(max_cells.max(1));
        if cells == 0 {
            return ChunkMap::default();
        }
        let mut counts = vec![0u32; cells];
        for piece in 0..pieces {
            if status.has(piece) {
                counts[Self::cell_of(piece, pieces, cells)] += 1;
            }
        }
        let cells = counts
            .iter()
            .enumerate()
            .map(|(c, &have)| {
                let range = Self::range(c, pieces, cells);
                let len = range.end - range.start;
                if len == 0 {
                    0.0
                } else {
                    have as f32 / len as f32
                }
            })
            .collect();
        ChunkMap { pieces, cells }
    }

    /// The pieces cell `cell` of `cells` covers.
    pub fn range(cell: usize, pieces: u32, cells: usize) -> std::ops::Range<u32> {
        let at = |c: usize| (c as u64 * u64::from(pieces) / cells.max(1) as u64) as u32;
        at(cell)..at(cell + 1)
    }

    /// The cell piece `piece` falls in (the inverse of [`ChunkMap::range`]).
    fn cell_of(piece: u32, pieces: u32, cells: usize) -> usize {
        // The last cell c with c·pieces/cells <= piece.
        let c = ((u64::from(piece) + 1) * cells as u64).div_ceil(u64::from(pieces)) as usize;
        c.saturating_sub(1).min(cells - 1)
    }

    /// Whether every cell is complete.
    pub fn is_full(&self) -> bool {
        !self.cells.is_empty() && self.cells.iter().all(|&f| f >= 1.0)
    }
}

/// How a download stands, as the tab shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the tracker.
    Connecting,
    /// The swarm runs (its own state says more).
    Running,
    /// Every file verified and in place.
    Done,
    /// Stopped on an error (the sentence).
    Failed(String),
    /// Stopped by the person; what arrived is kept for a resume.
    Cancelled,
}

/// One download: the current one, or the last.
pub struct Download {
    /// The share's root hash.
    pub root: Hash,
    /// The tracker it finds peers on.
    pub tracker: String,
    /// Where the files go.
    pub out_dir: PathBuf,
    /// The share's name until the swarm says it (from the `.p2p` file, or the root).
    pub name: String,
    /// Files in the share, once the manifest is known.
    pub files: Option<usize>,
    /// Where it is.
    pub phase: Phase,
    /// The latest snapshot.
    pub status: Option<SwarmStatus>,
    /// The chunk map of that snapshot.
    pub map: ChunkMap,
    /// Lines worth reading (peers dropped, resume notes), oldest first.
    pub log: VecDeque<String>,
    /// The chunk map's drawing, redrawn when the map changes.
    pub cache: iced::widget::canvas::Cache,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("root", &self.root)
            .field("tracker", &self.tracker)
            .field("phase", &self.phase)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The tab's state: the field, what is wrong with it, and the current (or last)
/// download.
#[derive(Debug, Default)]
pub struct GetTab {
    /// The ticket or `.p2p` path typed, pasted or chosen.
    pub input: String,
    /// What is wrong with it, or why the download could not start.
    pub error: Option<String>,
    /// The input is being read (a `.p2p` file from the disk).
    pub reading: bool,
    /// The current download, or the last one.
    pub download: Option<Download>,
}

impl GetTab {
    /// A download runs (or the input is being read for one).
    pub fn is_busy(&self) -> bool {
        self.reading || self.download.as_ref().is_some_and(Download::is_running)
    }
}

impl Download {
    /// A download of `source` about to connect to `tracker`.
    pub fn new(source: &Source, tracker: String, out_dir: PathBuf) -> Download {
        let ticket = source.ticket();
        let manifest = source.manifest();
        Download {
            root: ticket.root,
            tracker,
            out_dir,
            name: manifest
                .map(|m| m.name.clone())
                .unwrap_or_else(|| ticket.root.short()),
            files: manifest.map(|m| {
                m.entries
                    .iter()
                    .filter(|e| matches!(e.kind, p2p_core::wire::EntryKind::File { .. }))
                    .count()
            }),
            phase: Phase::Connecting,
            status: None,
            map: ChunkMap::default(),
            log: VecDeque::new(),
            cache: iced::widget::canvas::Cache::new(),
        }
    }

    /// Takes a new snapshot (redraws the chunk map only when it changed).
    pub fn apply_status(&mut self, status: SwarmStatus) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Running;
        }
        let map = ChunkMap::of(&status, MAX_CELLS);
        if map != self.map {
            self.map = map;
            self.cache.clear();
        }
        self.name = status.name.clone();
        self.status = Some(status);
    }

    /// Takes an event: a line in the log (and the file count from the manifest).
    pub fn apply_event(&mut self, event: &SwarmEvent) {
        if let SwarmEvent::Manifest { files, .. } = event {
            self.files = Some(*files);
        }
        self.push_line(event_line(event));
    }

    /// Adds a line, dropping the oldest beyond [`MAX_LOG`].
    pub fn push_line(&mut self, line: String) {
        if self.log.len() >= MAX_LOG {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Running)
    }

    /// Fraction of the bytes here (0.0 to 1.0).
    pub fn fraction(&self) -> f32 {
        match &self.status {
            Some(s) if s.total_bytes > 0 => {
                (s.have_bytes as f64 / s.total_bytes as f64).clamp(0.0, 1.0) as f32
            }
            Some(s) if s.pieces > 0 && s.have_count >= s.pieces => 1.0,
            _ if self.phase == Phase::Done => 1.0,
            _ => 0.0,
        }
    }

    /// Bytes per second from every peer now.
    pub fn rate(&self) -> f64 {
        self.status
            .as_ref()
            .map(|s| {
                s.peers
                    .iter()
                    .map(|p| p.rate)
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    /// The state line under the bar.
    pub fn state_line(&self) -> String {
        match &self.phase {
            Phase::Connecting => format!("Connecting to the tracker {}…", printable(&self.tracker)),
            Phase::Done => format!(
                "Done — {} in {}",
                self.files
                    .map(|n| format::files(n as u64))
                    .unwrap_or_else(|| "every file".to_owned()),
                self.out_dir.display()
            ),
            Phase::Failed(error) => format!("Failed: {}", printable(error)),
            Phase::Cancelled => "Cancelled. What arrived is kept: Get the same share again \
                                 (same folder) to resume."
                .to_owned(),
            Phase::Running => match &self.status {
                None => "Starting…".to_owned(),
                Some(s) => match &s.state {
                    SwarmState::Starting if s.peers.is_empty() => {
                        "Looking for peers on the tracker…".to_owned()
                    }
                    SwarmState::Starting => "Fetching the list of files from a peer…".to_owned(),
                    SwarmState::Downloading if s.peers.is_empty() => {
                        "Looking for peers on the tracker…".to_owned()
                    }
                    SwarmState::Downloading => format!(
                        "Downloading from {} peer{}",
                        s.peers.len(),
                        if s.peers.len() == 1 { "" } else { "s" }
                    ),
                    SwarmState::Seeding | SwarmState::Done => {
                        "Every piece is here; putting the files in place…".to_owned()
                    }
                    SwarmState::Failed(error) => format!("Failed: {}", printable(error)),
                },
            },
        }
    }

    /// "12.0 MiB of 40.0 MiB · 3.1 MiB/s" (and what failed its hash, if any).
    pub fn figures(&self) -> String {
        let Some(s) = &self.status else {
            return String::new();
        };
        let mut line = format!(
            "{} of {} · {} of {} pieces",
            format::bytes(s.have_bytes),
            format::bytes(s.total_bytes),
            s.have_count,
            s.pieces
        );
        if self.is_running() {
            line.push_str(&format!(" · {}", format::speed(self.rate())));
        }
        if s.uploaded > 0 {
            line.push_str(&format!(" · {} sent to others", format::bytes(s.uploaded)));
        }
        if s.discarded > 0 {
            line.push_str(&format!(
                " · {} discarded (failed the hash)",
                format::bytes(s.discarded)
            ));
        }
        line
    }
}

/// The first group of a device id (`ABCDE-…`), escaped: enough to tell peers apart.
pub fn short_device(device: &str) -> String {
    let first: String = device.chars().take_while(|c| *c != '-').take(11).collect();
    format!("{}…", printable(&first))
}

/// A peer's share of the pieces, as a percentage (0 when the share is not known yet).
pub fn percent_of(has: u32, pieces: u32) -> u32 {
    if pieces == 0 {
        return 0;
    }
    (u64::from(has.min(pieces)) * 100 / u64::from(pieces)) as u32
}

/// One event as a line (escaped).
pub fn event_line(event: &SwarmEvent) -> String {
    match event {
        SwarmEvent::Manifest {
            files,
            bytes,
            resumed,
        } => {
            let mut line = format!(
                "The share holds {}, {}.",
                format::files(*files as u64),
                format::bytes(*bytes)
            );
            if *resumed > 0 {
                line.push_str(&format!(
                    " Resuming: {resumed} piece(s) were already here (checked again)."
                ));
            }
            line
        }
        SwarmEvent::PeerConnected {
            device,
            path,
            incoming,
        } => format!(
            "Peer {} connected ({}, {}).",
            short_device(device),
            printable(path),
            if *incoming {
                "it called us"
            } else {
                "we called it"
            }
        ),
        SwarmEvent::PeerGone { device, reason } => format!(
            "Peer {} left: {}.",
            short_device(device),
            printable(reason.trim_end_matches('.'))
        ),
        SwarmEvent::BadPeer { device, piece } => format!(
            "Peer {} sent a damaged piece ({piece}): it was dropped and is not connected again.",
            short_device(device)
        ),
        SwarmEvent::Note(note) => printable(note).into_owned(),
        SwarmEvent::Finished => "Every file is verified and in place.".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pieces: u32, have: impl Fn(u32) -> bool) -> SwarmStatus {
        let mut s = SwarmStatus::new(Hash([7; 32]));
        s.pieces = pieces;
        s.have = vec![0; (pieces as usize).div_ceil(8)];
        for i in 0..pieces {
            if have(i) {
                s.have[(i / 8) as usize] |= 0x80 >> (i % 8);
                s.have_count += 1;
            }
        }
        s
    }

    #[test]
    fn a_small_share_has_one_cell_per_piece() {
        let map = ChunkMap::of(&status(10, |i| i == 0 || i == 9), MAX_CELLS);
        assert_eq!(map.cells.len(), 10);
        assert_eq!(map.cells[0], 1.0);
        assert_eq!(map.cells[9], 1.0);
        assert!(map.cells[1..9].iter().all(|&f| f == 0.0));
        assert!(!map.is_full());
        assert!(ChunkMap::of(&status(0, |_| true), MAX_CELLS)
            .cells
            .is_empty());
        assert!(ChunkMap::of(&status(5, |_| true), MAX_CELLS).is_full());
    }

    #[test]
    fn cells_cover_every_piece_once_at_the_edges() {
        for pieces in [1, 2, 4095, 4096, 4097, 8191, 8192, 10_000, 1 << 20] {
            let cells = (pieces as usize).min(MAX_CELLS);
            let mut next = 0;
            for c in 0..cells {
                let r = ChunkMap::range(c, pieces, cells);
                assert_eq!(r.start, next, "{pieces} pieces, cell {c}");
                assert!(r.end > r.start, "{pieces} pieces, cell {c} is empty");
                for p in [r.start, r.end - 1] {
                    assert_eq!(
                        ChunkMap::cell_of(p, pieces, cells),
                        c,
                        "piece {p} of {pieces}"
                    );
                }
                next = r.end;
            }
            assert_eq!(next, pieces);
        }
    }

    #[test]
    fn many_pieces_are_shaded_by_the_fraction_present() {
        // One more piece than cells: the last cell covers two pieces, the others one.
        let map = ChunkMap::of(&status(4097, |i| i == 0 || i == 4096), MAX_CELLS);
        assert_eq!(map.cells.len(), MAX_CELLS);
        assert_eq!(map.cells[0], 1.0);
        assert_eq!(map.cells[MAX_CELLS - 1], 0.5);
        assert!(map.cells[1..MAX_CELLS - 1].iter().all(|&f| f == 0.0));

        // The most pieces a share may have: 256 per cell; only the very last piece here.
        let pieces = p2p_core::swarm::content::MAX_PIECES;
        let map = ChunkMap::of(&status(pieces, |i| i == pieces - 1), MAX_CELLS);
        assert_eq!(map.cells.len(), MAX_CELLS);
        assert_eq!(map.cells[MAX_CELLS - 1], 1.0 / 256.0);
        assert!(map.cells[..MAX_CELLS - 1].iter().all(|&f| f == 0.0));

        // Every other piece: every cell half full.
        let map = ChunkMap::of(&status(8192, |i| i % 2 == 1), MAX_CELLS);
        assert!(map.cells.iter().all(|&f| f == 0.5), "{:?}", &map.cells[..4]);

        // A bitfield shorter than the piece count (a peer's, say) counts as missing.
        let mut short = status(100, |_| true);
        short.have.truncate(2);
        let map = ChunkMap::of(&short, MAX_CELLS);
        assert_eq!(map.cells.iter().filter(|&&f| f == 1.0).count(), 16);
    }

    #[test]
    fn bad_input_is_said_in_words() {
        let err = parse_source("").unwrap_err();
        assert!(err.contains("Paste a ticket"), "{err}");
        let err = parse_source("p2p1!!!").unwrap_err();
        assert!(err.starts_with("Not a share ticket"), "{err}");
        assert!(err.ends_with('.'), "{err}");
        let err = parse_source("hello").unwrap_err();
        assert!(err.contains("neither a ticket"), "{err}");
        let err = parse_source("/nonexistent/share.p2p").unwrap_err();
        assert_eq!(err, "No such file: /nonexistent/share.p2p.");

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.p2p");
        std::fs::write(&junk, b"not a share").unwrap();
        let err = parse_source(&junk.display().to_string()).unwrap_err();
        assert!(err.starts_with("Not a .p2p share file"), "{err}");
        let err = parse_source(&dir.path().display().to_string()).unwrap_err();
        assert!(err.contains("is a folder"), "{err}");

        let ticket = Ticket {
            root: Hash([1; 32]),
            tracker: None,
            trusted: vec![],
        };
        let parsed = parse_source(&format!("  {ticket}\n")).unwrap();
        assert_eq!(parsed, Source::Ticket(ticket.clone()));
        let err = tracker_for(&ticket, None).unwrap_err();
        assert!(err.contains("names no tracker; set a rendezvous server in Settings"));
        assert_eq!(tracker_for(&ticket, Some("r:1".into())).unwrap(), "r:1");
        let with = Ticket {
            tracker: Some("t:2".into()),
            ..ticket
        };
        assert_eq!(tracker_for(&with, Some("r:1".into())).unwrap(), "t:2");
    }

    #[test]
    fn event_lines_escape_what_peers_chose() {
        let line = event_line(&SwarmEvent::PeerGone {
            device: "AAAAA-BBBBB".into(),
            reason: "bye\u{202e}\n\u{1b}[2J".into(),
        });
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{line:?}"
        );
        assert!(line.starts_with("Peer AAAAA… left: bye"), "{line}");
        assert_eq!(percent_of(5, 10), 50);
        assert_eq!(percent_of(20, 10), 100);
        assert_eq!(percent_of(3, 0), 0);
    }
}
