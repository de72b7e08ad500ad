//! Drawing the "Get shared files" tab: the field, the share with its bar, the chunk map
//! (a canvas: one cell per piece, or per run of pieces, shaded by what is here), the
//! peers' table and the event lines. Everything a peer or a share file chose is drawn
//! through [`printable`].

use iced::widget::canvas::{self, Canvas};
use iced::widget::{button, column, container, progress_bar, row, text, text_input, Column};
use iced::{mouse, Color, Element, Fill, Point, Rectangle, Renderer, Size, Theme};
use p2p_core::swarm::{PeerStatus, SwarmStatus};
use p2p_core::text::printable;

use crate::app::{App, Message};
use crate::format;
use crate::get::{self, ChunkMap, Download, Phase};
use crate::view::{heading, note, NOTE_SIZE, SPACING};

/// Cells per row of the chunk map (fewer when the share has fewer pieces).
pub const MAP_COLUMNS: usize = 128;
/// Height of one row of cells, the gap included.
const ROW_HEIGHT: f32 = 11.0;
/// Widest a cell is drawn (a share of a few pieces does not get huge blocks).
const MAX_CELL_WIDTH: f32 = 28.0;
/// Event lines shown (the newest).
const SHOWN_LINES: usize = 12;

impl App {
    pub(crate) fn get_tab(&self) -> Element<'_, Message> {
        let busy = self.get.is_busy();
        let mut form = column![
            heading("Get shared files"),
            note(
                "Paste the ticket the sharer gave you (it starts with p2p1), or open the \
                 .p2p file they sent. The files come from every peer that has them at \
                 once, each piece checked against the share's hash."
            ),
            row![
                text_input("ticket (p2p1…) or the path of a .p2p file", &self.get.input)
                    .id("get-input")
                    .on_input_maybe((!busy).then_some(Message::GetInputChanged))
                    .on_submit_maybe((!busy).then_some(Message::StartGet)),
                button("Open .p2p…")
                    .style(button::secondary)
                    .on_press_maybe((!busy).then_some(Message::OpenShareFile)),
                button("Get").on_press_maybe((!busy).then_some(Message::StartGet)),
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
        ]
        .spacing(6);
        if let Some(error) = &self.get.error {
            form = form.push(text(printable(error)).style(text::danger));
        }
        if let Some(error) = &self.dialog_error {
            form = form.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        form = form.push(note(format!(
            "Saved in {} (the folder set on the Receive tab). A download that stopped \
             resumes when you get the same share into the same folder.",
            self.output_dir.display()
        )));
        let mut page = column![form].spacing(24);
        if let Some(download) = &self.get.download {
            page = page.push(self.download_panel(download));
        }
        page.into()
    }

    fn download_panel<'a>(&'a self, d: &'a Download) -> Element<'a, Message> {
        let size = d
            .status
            .as_ref()
            .filter(|s| s.pieces > 0)
            .map(|s| format::bytes(s.total_bytes));
        let mut title = printable(&d.name).into_owned();
        if let Some(size) = size {
            title.push_str(&format!(" · {size}"));
        }
        if let Some(files) = d.files {
            title.push_str(&format!(" · {}", format::files(files as u64)));
        }
        let bar = progress_bar(0.0..=1.0, d.fraction())
            .girth(14)
            .style(match d.phase {
                Phase::Failed(_) => progress_bar::danger,
                Phase::Done => progress_bar::success,
                _ => progress_bar::primary,
            });
        let state = text(d.state_line());
        let state = match d.phase {
            Phase::Failed(_) => state.style(text::danger),
            Phase::Done => state.style(text::success),
            _ => state,
        };
        let action: Element<'a, Message> = if d.is_running() {
            button("Cancel")
                .style(button::danger)
                .on_press(Message::CancelGet)
                .into()
        } else if d.phase == Phase::Done {
            button("Open folder")
                .style(button::secondary)
                .on_press(Message::OpenGetFolder)
                .into()
        } else {
            column![].into()
        };
        let mut panel = column![
            row![
                text(title).size(18).width(Fill),
                text(format!("{:.0}%", d.fraction() * 100.0)),
            ]
            .spacing(SPACING),
            bar,
            row![text(d.figures()).size(NOTE_SIZE).width(Fill), action]
                .spacing(SPACING)
                .align_y(iced::Center),
            state,
            note(format!(
                "Tracker {} · share {}",
                printable(&d.tracker),
                d.root.short()
            )),
        ]
        .spacing(6);
        if let Some(error) = &self.open_error {
            panel = panel.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        if let Some(status) = &d.status {
            if !d.map.cells.is_empty() {
                panel = panel.push(chunk_map_section(d));
            }
            panel = panel.push(peer_table(status));
        }
        if !d.log.is_empty() {
            let mut lines = column![heading("Events")].spacing(4);
            let skip = d.log.len().saturating_sub(SHOWN_LINES);
            for line in d.log.iter().skip(skip) {
                lines = lines.push(text(line.as_str()).size(NOTE_SIZE));
            }
            panel = panel.push(lines);
        }
        container(panel.spacing(12))
            .padding(10)
            .style(container::bordered_box)
            .width(Fill)
            .into()
    }
}

fn chunk_map_section(d: &Download) -> Element<'_, Message> {
    let map = &d.map;
    let per_cell = map.pieces.div_ceil(map.cells.len().max(1) as u32);
    let legend = if per_cell <= 1 {
        format!(
            "Pieces: each cell is one of the {} pieces; filled when it is here and checked.",
            map.pieces
        )
    } else {
        format!(
            "Pieces: each cell stands for about {per_cell} of the {} pieces, filled by the \
             share of them here.",
            map.pieces
        )
    };
    column![
        heading("Pieces"),
        Canvas::new(ChunkCanvas {
            map,
            cache: &d.cache,
        })
        .width(Fill)
        .height(map_height(map.cells.len())),
        note(legend),
    ]
    .spacing(6)
    .into()
}

/// Columns of the chunk map for `cells` cells.
pub fn map_columns(cells: usize) -> usize {
    cells.clamp(1, MAP_COLUMNS)
}

/// Height of the chunk map for `cells` cells.
pub fn map_height(cells: usize) -> f32 {
    cells.div_ceil(map_columns(cells)) as f32 * ROW_HEIGHT
}

/// The chunk map, drawn once per change (its cache is cleared when the map changes).
struct ChunkCanvas<'a> {
    map: &'a ChunkMap,
    cache: &'a canvas::Cache,
}

impl canvas::Program<Message> for ChunkCanvas<'_> {
    type State = ();

    fn draw(
        &self,
        _state: &(),
        renderer: &Renderer,
        theme: &Theme,
        bounds: Rectangle,
        _cursor: mouse::Cursor,
    ) -> Vec<canvas::Geometry> {
        let palette = theme.extended_palette();
        let (have, missing) = (palette.success.base.color, palette.background.strong.color);
        let cells = &self.map.cells;
        let geometry = self.cache.draw(renderer, bounds.size(), |frame| {
            let columns = map_columns(cells.len());
            let width = (bounds.width / columns as f32).min(MAX_CELL_WIDTH);
            let gap = if width >= 4.0 { 1.0 } else { 0.0 };
            for (i, &fraction) in cells.iter().enumerate() {
                let (r, c) = (i / columns, i % columns);
                frame.fill_rectangle(
                    Point::new(c as f32 * width, r as f32 * ROW_HEIGHT),
                    Size::new((width - gap).max(1.0), ROW_HEIGHT - 1.0),
                    mix(missing, have, fraction),
                );
            }
        });
        vec![geometry]
    }
}

/// `a` moved `t` of the way to `b` (a cell with some of its pieces: in between).
fn mix(a: Color, b: Color, t: f32) -> Color {
    let t = t.clamp(0.0, 1.0);
    // A started cell is visibly started, however little of it is here.
    let t = if t > 0.0 && t < 1.0 {
        0.25 + 0.6 * t
    } else {
        t
    };
    let m = |x: f32, y: f32| x + (y - x) * t;
    Color::from_rgb(m(a.r, b.r), m(a.g, b.g), m(a.b, b.b))
}

/// Column widths of the peers' table.
const COLUMNS: [(&str, f32); 7] = [
    ("Device", 110.0),
    ("Path", 70.0),
    ("Who called", 90.0),
    ("Has", 60.0),
    ("Received", 100.0),
    ("Sent", 100.0),
    ("Rate", 100.0),
];

fn peer_table(status: &SwarmStatus) -> Element<'_, Message> {
    let mut table = Column::new().spacing(3);
    table = table.push(heading(if status.peers.is_empty() {
        "Peers: none connected yet"
    } else {
        "Peers"
    }));
    if status.peers.is_empty() {
        return table.into();
    }
    table = table.push(row(COLUMNS.iter().map(|(label, width)| {
        text(*label)
            .size(NOTE_SIZE)
            .style(crate::view::hint)
            .width(*width)
            .into()
    })));
    for peer in &status.peers {
        table = table.push(peer_row(peer, status.pieces));
    }
    table.into()
}

fn peer_row(peer: &PeerStatus, pieces: u32) -> Element<'_, Message> {
    let cells = [
        get::short_device(&peer.device),
        printable(&peer.path).into_owned(),
        if peer.incoming { "it (in)" } else { "we (out)" }.to_owned(),
        format!("{}%", get::percent_of(peer.has, pieces)),
        format::bytes(peer.downloaded),
        format::bytes(peer.uploaded),
        format::speed(if peer.rate.is_finite() {
            peer.rate
        } else {
            0.0
        }),
    ];
    row(cells
        .into_iter()
        .zip(COLUMNS)
        .map(|(cell, (_, width))| text(cell).size(NOTE_SIZE).width(width).into()))
    .into()
}
