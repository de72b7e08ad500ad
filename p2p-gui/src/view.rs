//! Drawing the state: the tab bar, one function per tab, the transfer panel and the
//! status bar (always visible, whatever the tab).
//!
//! Whatever a peer chose — its name, a beacon's name, the paths it offers, its error
//! messages, the names of trusted devices, and the notices that quote them — is drawn
//! through [`printable`](p2p_core::text::printable): control, bidi and invisible
//! characters show as escapes, as on the command line. What a peer *proved* — its
//! device id and how it was let in — is drawn next to its name wherever it offers
//! something.

use std::time::Instant;

use iced::widget::{
    button, checkbox, column, container, mouse_area, pick_list, progress_bar, radio, row, rule,
    scrollable, slider, text, text_input, Column,
};
use iced::{Element, Fill, Theme};
use p2p_core::config::COMPRESS_LEVELS;
use p2p_core::net::{Admitted, Code};
use p2p_core::text::printable;
use p2p_core::{Direction, IncomingOffer};

use crate::app::{App, Message, Notice, Tab};
use crate::format;
use crate::history::{DirectionFilter, OutcomeFilter};
use crate::progress::TransferState;
use crate::settings_form::{SettingsForm, SettingsMessage};
use crate::trust::TrustMessage;
use crate::worker::Plan;
use p2p_core::history::Status;

pub(crate) const SPACING: f32 = 12.0;
pub(crate) const NOTE_SIZE: f32 = 13.0;
/// A code waiting to be read out: large enough to read across a desk.
const CODE_SIZE: f32 = 34.0;

/// Which flow a code panel belongs to: it names the other side.
#[derive(Debug, Clone, Copy)]
enum Side {
    Send,
    Receive,
}

impl App {
    pub fn view(&self) -> Element<'_, Message> {
        let tabs = row(Tab::ALL.iter().map(|&tab| {
            button(text(tab.title()))
                .on_press(Message::TabSelected(tab))
                .style(if tab == self.tab {
                    button::primary
                } else {
                    button::secondary
                })
                .into()
        }))
        .spacing(4);
        let body = match self.tab {
            Tab::Connection => self.connection_tab(),
            Tab::Send => self.send_tab(),
            Tab::Receive => self.receive_tab(),
            Tab::Get => self.get_tab(),
            Tab::Settings => self.settings_tab(),
            Tab::History => self.history_tab(),
        };
        let mut page = column![tabs, rule::horizontal(1)].spacing(SPACING);
        if self.confirm_close {
            page = page.push(self.close_question());
        }
        // As wide as the window, the scrollbar in a gutter of its own beside the tab,
        // never over the ends of its lines.
        page = page.push(
            scrollable(container(body).padding(iced::Padding {
                right: 8.0,
                ..iced::Padding::ZERO
            }))
            .spacing(6)
            .width(Fill)
            .height(Fill),
        );
        if let Some(panel) = self.transfer_panel() {
            page = page.push(rule::horizontal(1)).push(panel);
        }
        page = page.push(rule::horizontal(1)).push(self.status_bar());
        container(page).padding(16).into()
    }

    /// The close button was pressed during a transfer: stop it, or keep the window.
    fn close_question(&self) -> Element<'_, Message> {
        let what = if self.offer.is_some() {
            "An incoming transfer waits for your answer: closing declines it."
        } else if self.get.is_busy() && !self.is_busy() {
            "A download of shared files is running: closing stops it (what arrived is kept; \
             get the same share into the same folder to resume)."
        } else {
            "A transfer is running: closing stops it (it is recorded as interrupted and \
             can be resumed later)."
        };
        container(
            column![
                text(what),
                row![
                    button("Close and stop")
                        .style(button::danger)
                        .on_press(Message::Quit),
                    button("Keep the window open")
                        .style(button::secondary)
                        .on_press(Message::KeepOpen),
                ]
                .spacing(SPACING),
            ]
            .spacing(6),
        )
        .padding(10)
        .style(container::bordered_box)
        .width(Fill)
        .into()
    }

    fn connection_tab(&self) -> Element<'_, Message> {
        let running = self.worker.is_some();
        let listening = matches!(
            self.worker.as_ref().map(|w| &w.plan),
            Some(Plan::Listen { .. })
        );
        let mut listen = column![
            heading("Wait for a peer"),
            note(
                "A trusted device connects to this computer's address and the port below \
                 without a code. Any other device may connect and offer transfers, shown as \
                 NOT trusted, which you accept or decline. To pair with a new device, use a \
                 one-time code on the Send or Receive tab."
            ),
            row![
                text("Port"),
                text_input("14567", &self.listen_port)
                    .id("listen-port")
                    .on_input_maybe((!running).then_some(Message::ListenPortChanged))
                    .on_submit_maybe((!running).then_some(Message::Listen))
                    .width(120),
                if listening {
                    button("Stop listening").on_press(Message::Stop)
                } else {
                    button("Listen").on_press_maybe((!running).then_some(Message::Listen))
                },
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
        ]
        .spacing(6);
        if let Some(code) = &self.waiting_code {
            listen = listen.push(self.code_display(code, "your peer"));
        }
        let connect = column![
            heading("Connect by address"),
            note(
                "The address your peer's window shows, like 192.168.1.20:14567. Without a \
                 code, only a trusted device (or this one) is let in."
            ),
            row![
                text_input("host:port", &self.peer_address)
                    .id("peer-address")
                    .on_input_maybe((!running).then_some(Message::PeerAddressChanged))
                    .on_submit_maybe((!running).then_some(Message::Connect))
                    .width(280),
                if running && !listening {
                    button("Disconnect").on_press(Message::Stop)
                } else {
                    button("Connect").on_press_maybe((!running).then_some(Message::Connect))
                },
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
        ]
        .spacing(6);
        column![self.device_section(), listen, connect, self.peers_section()]
            .spacing(24)
            .into()
    }

    /// This device's id, selectable and copyable, and where its key lives.
    fn device_section(&self) -> Element<'_, Message> {
        let id = text_input("", &self.device_id_text)
            .id("device-id")
            .width(330)
            // Read-only, but selectable (Ctrl+C copies): drawn as an active field.
            .style(|theme: &Theme, status| {
                let status = match status {
                    text_input::Status::Disabled => text_input::Status::Active,
                    other => other,
                };
                text_input::default(theme, status)
            });
        let mut section = column![
            heading("This device"),
            text(format!(
                "{} · {}",
                printable(&self.device_name),
                self.addresses_text(None)
            )),
            row![
                id,
                button("Copy id")
                    .style(button::secondary)
                    .on_press(Message::Copy(self.device_id_text.clone())),
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
            note(
                "Peers see this id when you connect: compare it with the one they show \
                 (`p2p-transfer id` on the command line)."
            ),
        ]
        .spacing(6);
        match (&self.identity_error, &self.key_file) {
            (Some(error), _) => section = section.push(text(printable(error)).style(text::danger)),
            (None, Some(file)) => {
                section = section.push(note(format!("Key: {}", file.display())));
            }
            (None, None) => {}
        }
        section.into()
    }

    /// Pairing with a new device by a one-time code, while no peer is connected: the
    /// field, Wait and Connect, the address (optional), and "Remember this device". While
    /// waiting, the code itself, large.
    fn code_panel(&self, side: Side) -> Option<Element<'_, Message>> {
        if self.peer().is_some() {
            return None;
        }
        let (title, other) = match side {
            Side::Send => ("Send to a new device with a one-time code", "receiver"),
            Side::Receive => ("Receive from a new device with a one-time code", "sender"),
        };
        if let Some(code) = &self.waiting_code {
            return Some(
                column![
                    heading(title),
                    self.code_display(code, &format!("the {other}"))
                ]
                .spacing(6)
                .into(),
            );
        }
        let wait = button(text(format!("Wait for the {other}"))).on_press(Message::WaitWithCode);
        let connect =
            button(text(format!("Connect to the {other}"))).on_press(Message::ConnectWithCode);
        let (explain, buttons) = match side {
            Side::Send => (
                "Leave the code empty and click Wait: a new code appears here for the \
                 receiver to type. Or type the code the receiver shows and click Connect: it \
                 is found on this network, or at the address you type.",
                row![wait, connect.style(button::secondary)],
            ),
            Side::Receive => (
                "Type the code the sender shows and click Connect: the sender is found on \
                 this network, or at the address you type. Or leave the code empty and click \
                 Wait: a new code appears here for the sender.",
                row![connect, wait.style(button::secondary)],
            ),
        };
        let mut panel = column![
            heading(title),
            note(explain),
            note(match self.rendezvous_server() {
                Some(server) => format!(
                    "Codes go through the rendezvous {}: the other side may be on any \
                     network (with the same server set).",
                    printable(&server)
                ),
                None => "Codes work on this network; set a rendezvous server in Settings \
                         to reach other networks."
                    .to_owned(),
            }),
            row![
                text_input("code, e.g. 7-guitar-orbit", &self.code_input)
                    .id("code")
                    .on_input(Message::CodeChanged)
                    .on_submit(match side {
                        Side::Send => Message::WaitWithCode,
                        Side::Receive => Message::ConnectWithCode,
                    })
                    .width(240),
                text_input("address (optional)", &self.peer_address)
                    .id("code-address")
                    .on_input(Message::PeerAddressChanged)
                    .width(200),
            ]
            .spacing(SPACING),
        ]
        .spacing(6);
        if let Some(error) = &self.code_error {
            panel = panel.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        panel = panel
            .push(buttons.spacing(SPACING))
            .push(self.remember_checkbox("Remember this device: no code next time"));
        Some(panel.into())
    }

    fn remember_checkbox<'a>(&self, label: &'a str) -> Element<'a, Message> {
        checkbox(self.remember)
            .label(label)
            .on_toggle(Message::RememberToggled)
            .into()
    }

    /// The code this window waits with, large, for the person to read out or copy.
    fn code_display<'a>(&self, code: &Code, for_whom: &str) -> Element<'a, Message> {
        let shown = code.to_string();
        column![
            text(format!("One-time code for {for_whom}:")),
            row![
                text(shown.clone()).size(CODE_SIZE),
                button("Copy code")
                    .style(button::secondary)
                    .on_press(Message::Copy(shown.clone())),
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
            note(format!(
                "On the other device: type it on the Receive or Send tab and click Connect \
                 (or run `p2p-transfer receive {shown}`). It works once; a wrong attempt \
                 burns it."
            )),
            button("Stop waiting")
                .style(button::secondary)
                .on_press(Message::Stop),
        ]
        .spacing(6)
        .into()
    }

    /// This machine's addresses, each interface's, with the listening port when there
    /// is one (a listener on one address: just that address).
    pub(crate) fn addresses_text(&self, listening: Option<std::net::SocketAddr>) -> String {
        if let Some(addr) = listening.filter(|a| !a.ip().is_unspecified()) {
            return addr.to_string();
        }
        if self.addresses.is_empty() {
            return "no network address found".to_owned();
        }
        let shown: Vec<String> = self
            .addresses
            .iter()
            .map(|ip| match listening {
                Some(l) => std::net::SocketAddr::new(*ip, l.port()).to_string(),
                None => ip.to_string(),
            })
            .collect();
        shown.join(", ")
    }

    /// One click sends: the devices found on this network, each with Send here.
    fn send_here_section(&self) -> Option<Element<'_, Message>> {
        if self.peer().is_some() || self.worker.is_some() || !self.is_browsing() {
            return None;
        }
        let ready = !self.selection.is_empty()
            && self
                .selection
                .iter()
                .all(|s| matches!(s.measure, Some(Ok(_))));
        let mut section = column![heading("Send to a device on this network")].spacing(6);
        if self.found_peers.is_empty() {
            section = section.push(note(
                "Looking… a receiver waiting on this network (a window that listens, or \
                 `p2p-transfer receive`) shows up here within a few seconds.",
            ));
        }
        for peer in &self.found_peers {
            let mut label = format!("{} at {}", printable(&peer.name), peer.addr);
            if let Some(trusted) = self.trusted.get(&peer.device_id) {
                label.push_str(&format!(" · trusted as {}", printable(&trusted.name)));
            }
            if let Some(nameplate) = peer.nameplate {
                label.push_str(&format!(" · waits for code {nameplate}-…"));
            }
            let go = (ready && peer.is_compatible()).then_some(Message::SendTo(peer.addr));
            section = section.push(
                row![
                    text(label).width(Fill),
                    button("Send here").on_press_maybe(go),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
        }
        Some(section.into())
    }

    fn peers_section(&self) -> Element<'_, Message> {
        let mut section = column![heading("Peers on this network")].spacing(6);
        if self.discovery.is_none() {
            return section
                .push(note(
                    "Finding peers is switched off (see the warning printed at start-up).",
                ))
                .into();
        }
        if !self.is_browsing() {
            section = section.push(
                row![
                    button("Find peers").on_press(Message::FindPeers),
                    note("Lists the windows and `p2p-transfer receive` waiting on this network."),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
            if let Some(error) = &self.discovery_error {
                section = section.push(text(printable(error)).style(text::danger));
            }
            return section.into();
        }
        section = section.push(
            row![
                button("Stop looking")
                    .style(button::secondary)
                    .on_press(Message::StopFindingPeers),
                note("Looking… a waiting peer shows up within a few seconds."),
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
        );
        let running = self.worker.is_some();
        for peer in &self.found_peers {
            let name = printable(&peer.name);
            let mut label = format!("{name} at {} · {}", peer.addr, peer.short_id());
            if let Some(trusted) = self.trusted.get(&peer.device_id) {
                label.push_str(&format!(" · trusted as {}", printable(&trusted.name)));
            }
            if let Some(nameplate) = peer.nameplate {
                label.push_str(&format!(" · waits for code {nameplate}-…"));
            }
            if !peer.is_compatible() {
                label.push_str(" (another protocol version)");
            }
            let connect =
                (!running && peer.is_compatible()).then_some(Message::ConnectTo(peer.addr));
            section = section.push(
                row![
                    text(label).width(Fill),
                    button("Connect to this peer").on_press_maybe(connect),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
        }
        section.into()
    }

    fn send_tab(&self) -> Element<'_, Message> {
        let busy = self.is_busy();
        let pickers = row![
            button("Add files…").on_press_maybe((!busy).then_some(Message::PickFiles)),
            button("Add folder…").on_press_maybe((!busy).then_some(Message::PickFolder)),
            button("Clear").style(button::secondary).on_press_maybe(
                (!busy && !self.selection.is_empty()).then_some(Message::ClearSelection)
            ),
        ]
        .spacing(SPACING);
        let mut path_row = column![row![
            text_input("or type or paste a path, then Enter", &self.path_input)
                .id("path")
                .on_input(Message::PathInputChanged)
                .on_paste(Message::PathInputChanged)
                .on_submit(Message::AddTypedPaths)
                .width(Fill),
            button("Add path")
                .style(button::secondary)
                .on_press(Message::AddTypedPaths),
        ]
        .spacing(SPACING)
        .align_y(iced::Center)]
        .spacing(4);
        if let Some(error) = &self.path_error {
            path_row = path_row.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        if let Some(error) = &self.dialog_error {
            path_row = path_row.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        let mut list = Column::new().spacing(6);
        if self.selection.is_empty() {
            list = list.push(note(
                "Nothing selected yet: drop files or folders onto this window, or add them \
                 above.",
            ));
        }
        for (index, item) in self.selection.iter().enumerate() {
            let detail = match &item.measure {
                None => "measuring…".to_owned(),
                Some(Err(e)) => format!("cannot be sent: {e}"),
                Some(Ok(m)) if m.is_dir => {
                    let mut d = format!(
                        "folder · {} · {}",
                        format::files(m.files),
                        format::bytes(m.bytes)
                    );
                    if m.skipped > 0 {
                        d.push_str(&format!(
                            " · {} link(s) or special file(s) will be skipped",
                            m.skipped
                        ));
                    }
                    d
                }
                Some(Ok(m)) => format::bytes(m.bytes),
            };
            let detail = if matches!(item.measure, Some(Err(_))) {
                text(detail).size(NOTE_SIZE).style(text::danger)
            } else {
                text(detail).size(NOTE_SIZE)
            };
            list = list.push(
                row![
                    column![text(item.name()), detail].width(Fill),
                    button("Remove")
                        .style(button::text)
                        .on_press_maybe((!busy).then_some(Message::Remove(index))),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
        }
        let (files, bytes) = self.selection_total();
        let total = text(format!(
            "Total: {} · {}",
            format::files(files),
            format::bytes(bytes)
        ));
        let blocker = self.send_blocker();
        let actions = row![
            button("Start sending").on_press_maybe(blocker.is_none().then_some(Message::StartSend)),
            button("Cancel")
                .style(button::danger)
                .on_press_maybe(self.can_cancel().then_some(Message::Cancel)),
        ]
        .spacing(SPACING);
        let mut tab = Column::new().spacing(SPACING);
        if let Some(panel) = self.code_panel(Side::Send) {
            tab = tab.push(panel).push(rule::horizontal(1));
        }
        tab = tab
            .push(heading("What to send"))
            .push(pickers)
            .push(path_row)
            .push(list)
            .push(total)
            .push(actions);
        if let Some(blocker) =
            blocker.filter(|_| self.peer().is_some() || self.send_here_section().is_none())
        {
            tab = tab.push(note(blocker));
        }
        if let Some(section) = self.send_here_section() {
            tab = tab.push(rule::horizontal(1)).push(section);
        }
        if let Some((paths, _)) = self.resumable.as_ref().filter(|_| self.shows_resume()) {
            let names: Vec<String> = paths
                .iter()
                .map(|p| {
                    p.file_name()
                        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
                })
                .collect();
            tab = tab.push(
                row![
                    text(format!(
                        "The send of {} stopped before the end. The receiver keeps what \
                         arrived; resuming sends only the rest.",
                        names.join(", ")
                    ))
                    .size(NOTE_SIZE)
                    .width(Fill),
                    button("Resume")
                        .on_press_maybe(self.can_resume().then_some(Message::ResumeSend)),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
        }
        if !self.skipped.is_empty() {
            tab = tab.push(note(format!(
                "Skipped {} item(s), e.g. {}: {}",
                self.skipped.len(),
                self.skipped[0].0,
                self.skipped[0].1
            )));
        }
        tab.into()
    }

    fn receive_tab(&self) -> Element<'_, Message> {
        let mut folder = column![heading("Save received files in"), self.folder_row(),].spacing(6);
        if let Some(error) = &self.dialog_error {
            folder = folder.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        let accept = column![
            checkbox(self.auto_accept)
                .label("Accept incoming transfers without asking")
                .on_toggle(Message::AutoAcceptToggled),
            note(if self.auto_accept {
                "Every transfer a connected peer sends is saved at once — except from a \
                 device that is NOT trusted: you always decide on those."
            } else {
                "Each incoming transfer waits here, with its files and size, until you \
                 accept or decline it."
            }),
        ]
        .spacing(4);
        let overwrite = checkbox(self.settings.overwrite)
            .label("Replace files that already exist without asking (otherwise each offer asks)")
            .on_toggle(Message::OverwriteToggled);
        let state = match (self.worker.as_ref(), self.peer()) {
            (_, Some(peer)) => format!("Ready to receive from {}.", printable(&peer.name)),
            (Some(w), None)
                if w.listening_on.is_some() || matches!(w.plan, Plan::Allocate { .. }) =>
            {
                "Waiting for a peer to connect.".to_owned()
            }
            _ => "Connect with a one-time code above, or on the Connection tab, to receive."
                .to_owned(),
        };
        let mut tab = Column::new().spacing(SPACING);
        // An offer first: its Accept and Decline must be on screen without scrolling.
        if let Some(offer) = &self.offer {
            tab = tab.push(self.offer_panel(offer)).push(rule::horizontal(1));
        }
        if let Some(panel) = self.code_panel(Side::Receive) {
            tab = tab.push(panel).push(rule::horizontal(1));
        }
        tab = tab
            .push(folder)
            .push(accept)
            .push(overwrite)
            .push(note(state));
        tab.into()
    }

    /// The output folder: a field (type or paste a path, Enter) and the dialog.
    fn folder_row(&self) -> Element<'_, Message> {
        row![
            text_input("full path of a folder", &self.output_input)
                .id("output-dir")
                .on_input(Message::OutputInputChanged)
                .on_paste(Message::OutputInputChanged)
                .on_submit(Message::UseTypedOutput)
                .width(Fill),
            button("Choose folder…").on_press(Message::PickOutputDir),
        ]
        .spacing(SPACING)
        .align_y(iced::Center)
        .into()
    }

    /// An incoming transfer waiting for an answer: who, what, how big.
    fn offer_panel<'a>(&'a self, offer: &'a IncomingOffer) -> Element<'a, Message> {
        /// Entries listed before "and N more".
        const LISTED: usize = 12;
        let mut list = Column::new().spacing(2);
        for entry in offer.entries.iter().take(LISTED) {
            let size = match entry.size {
                Some(size) => format::bytes(size),
                None => "folder".to_owned(),
            };
            list = list.push(
                row![
                    text(printable(&entry.path)).width(Fill),
                    text(size).size(NOTE_SIZE)
                ]
                .spacing(SPACING),
            );
        }
        if offer.entries.len() > LISTED {
            list = list.push(note(format!("… and {} more", offer.entries.len() - LISTED)));
        }
        let mut who = column![text(format!(
            "{} wants to send {} · {}",
            printable(&offer.peer),
            format::files(offer.files()),
            format::bytes(offer.total_bytes())
        ))]
        .spacing(4);
        if let Some(identity) = self.peer().and_then(|p| p.identity.as_ref()) {
            let line = text(format!(
                "Device {} · {}",
                identity.device_id,
                crate::admitted(&identity.admitted)
            ));
            if identity.admitted == Admitted::Unknown {
                who = who
                    .push(line.style(text::danger))
                    .push(note(
                        "Nobody vouched for this device. Accept only if you expect these \
                         files from it: compare its id with the one it shows.",
                    ))
                    .push(self.remember_checkbox(
                        "Remember this device when I accept: no code next time",
                    ));
            } else {
                who = who.push(line.size(NOTE_SIZE));
            }
        }
        let decline = button("Decline")
            .style(button::danger)
            .on_press(Message::DeclineOffer);
        let (clash, answers) = match self.clashes.as_ref().filter(|_| self.offer_needs_choice()) {
            Some(clashes) => {
                let names: Vec<String> = clashes
                    .names
                    .iter()
                    .take(3)
                    .map(|n| printable(n).into_owned())
                    .collect();
                let more = clashes.names.len().saturating_sub(names.len());
                let mut said = format!(
                    "{} already in {}: {}",
                    if clashes.names.len() == 1 {
                        "1 of these files is".to_owned()
                    } else {
                        format!("{} of these files are", clashes.names.len())
                    },
                    clashes.dir.display(),
                    names.join(", ")
                );
                if more > 0 {
                    said.push_str(&format!(" and {more} more"));
                }
                said.push_str(". Replace them, save into another folder, or decline.");
                (
                    Some(column![text(said).style(text::danger), self.folder_row(),].spacing(6)),
                    row![
                        button(text(if clashes.names.len() == 1 {
                            "Replace it and accept".to_owned()
                        } else {
                            format!("Replace {} files and accept", clashes.names.len())
                        }))
                        .on_press(Message::AcceptReplacing),
                        button("Choose another folder…")
                            .style(button::secondary)
                            .on_press(Message::PickOutputDir),
                        decline,
                    ],
                )
            }
            None => (
                None,
                row![
                    button("Accept").on_press(Message::AcceptOffer),
                    decline,
                    note("Enter accepts, Esc declines."),
                ]
                .align_y(iced::Center),
            ),
        };
        let mut panel =
            column![heading("Incoming transfer"), who, answers.spacing(SPACING)].spacing(6);
        if let Some(clash) = clash {
            panel = panel.push(clash);
        }
        panel.push(list).into()
    }

    fn settings_tab(&self) -> Element<'_, Message> {
        let s = &self.settings;
        let form = &self.form;
        let on = |m: fn(String) -> SettingsMessage| move |v: String| Message::Settings(m(v));
        let chunk = field(
            "Chunk size",
            pick_list(
                SettingsForm::chunk_sizes(s),
                Some(crate::settings_form::ChunkSize(s.chunk_size)),
                |c| Message::Settings(SettingsMessage::ChunkSize(c)),
            )
            .into(),
            None,
        );
        let window = field(
            "Chunks in flight (window)",
            text_input("16", &form.window)
                .id("window")
                .on_input(on(SettingsMessage::Window))
                .width(120)
                .into(),
            form.window_error.as_deref(),
        );
        let compress = checkbox(s.compress)
            .label("Compress with zstd")
            .on_toggle(|v| Message::Settings(SettingsMessage::Compress(v)));
        let level = field(
            "Compression level",
            row![
                slider(
                    i16::from(*COMPRESS_LEVELS.start())..=i16::from(*COMPRESS_LEVELS.end()),
                    i16::from(s.compress_level),
                    |v| Message::Settings(SettingsMessage::Level(v)),
                )
                .on_release(Message::Settings(SettingsMessage::LevelReleased))
                .width(240),
                text(s.compress_level.to_string()),
            ]
            .spacing(SPACING)
            .into(),
            None,
        );
        let adaptive = checkbox(s.adaptive)
            .label("Adaptive: stop compressing data that does not shrink")
            .on_toggle(|v| Message::Settings(SettingsMessage::Adaptive(v)));
        let bandwidth = field(
            "Bandwidth limit for sending (MiB/s, 0 = unlimited)",
            text_input("0", &form.bandwidth)
                .id("bandwidth")
                .on_input(on(SettingsMessage::BandwidthLimit))
                .width(120)
                .into(),
            form.bandwidth_error.as_deref(),
        );
        let reconnect = checkbox(s.auto_reconnect)
            .label("Reconnect and resume automatically after a dropped connection")
            .on_toggle(|v| Message::Settings(SettingsMessage::AutoReconnect(v)));
        let retries = field(
            "Reconnect attempts in a row (0 = no limit)",
            text_input("5", &form.retries)
                .id("retries")
                .on_input(on(SettingsMessage::Retries))
                .width(120)
                .into(),
            form.retries_error.as_deref(),
        );
        let mut transport = Column::new().spacing(2);
        for (choice, label, help) in crate::settings_form::TRANSPORTS {
            transport = transport.push(radio_choice(label, choice, Some(s.transport), |c| {
                Message::Settings(SettingsMessage::Transport(c))
            }));
            // Under its label, past the circle.
            transport = transport.push(container(note(help)).padding(iced::Padding {
                left: 24.0,
                bottom: 4.0,
                ..iced::Padding::ZERO
            }));
        }
        let transport = field("Transport", transport.into(), None);
        let mut rendezvous = column![text_input("host:port", &form.rendezvous)
            .id("rendezvous")
            .on_input(on(SettingsMessage::Rendezvous))
            .width(320)]
        .spacing(4);
        if let Some(error) = &form.rendezvous_error {
            rendezvous = rendezvous.push(text(error).size(NOTE_SIZE).style(text::danger));
        }
        rendezvous = rendezvous.push(note(crate::settings_form::RENDEZVOUS_HELP));
        if let Some(server) = self.rendezvous_override() {
            rendezvous = rendezvous.push(note(format!(
                "For this run: {} (P2P_RENDEZVOUS).",
                if server.trim().is_empty() {
                    "off"
                } else {
                    server.trim()
                }
            )));
        }
        let rendezvous = field("Rendezvous server", rendezvous.into(), None);
        let mut tab = column![
            heading("Transfer"),
            chunk,
            window,
            compress,
            level,
            adaptive,
            heading("Network"),
            transport,
            bandwidth,
            reconnect,
            retries,
            rendezvous,
            note("Changes apply to the next connection."),
        ]
        .spacing(SPACING);
        tab = tab.push(self.trusted_section());
        match (&self.settings_status, &self.config_dir) {
            (Some(status), _) => tab = tab.push(notice_text(status)),
            (None, None) => {
                tab = tab.push(note("Settings are not saved: no configuration folder."))
            }
            (None, Some(_)) => {}
        }
        tab.into()
    }

    /// The trusted devices, each with Rename and Remove.
    fn trusted_section(&self) -> Element<'_, Message> {
        let trusted = &self.trusted;
        let mut section = column![
            heading("Trusted devices"),
            note(
                "They connect without a code — the list `p2p-transfer trust list` shows. \
                 \"Remember this device\" adds the peer of a session with a code."
            ),
        ]
        .spacing(6);
        let devices = match &trusted.devices {
            Ok(devices) => devices,
            Err(error) => {
                return section
                    .push(text(printable(error)).style(text::danger))
                    .into()
            }
        };
        if devices.is_empty() {
            section = section.push(note("No trusted devices yet."));
        }
        for device in devices {
            let details = text(format!(
                "{} · {}",
                device.id,
                crate::trust::added(device.added)
            ))
            .size(NOTE_SIZE);
            let row = match &trusted.renaming {
                Some((id, name)) if *id == device.id => row![
                    column![
                        text_input("name", name)
                            .id("trust-rename")
                            .on_input(|n| Message::Trust(TrustMessage::NameChanged(n)))
                            .on_submit(Message::Trust(TrustMessage::SaveName)),
                        details,
                    ]
                    .spacing(2)
                    .width(Fill),
                    button("Save name").on_press(Message::Trust(TrustMessage::SaveName)),
                    button("Cancel")
                        .style(button::secondary)
                        .on_press(Message::Trust(TrustMessage::CancelRename)),
                ],
                _ => row![
                    column![text(printable(&device.name)), details]
                        .spacing(2)
                        .width(Fill),
                    button("Rename")
                        .style(button::secondary)
                        .on_press(Message::Trust(TrustMessage::Rename(device.id))),
                    button("Remove")
                        .style(button::danger)
                        .on_press(Message::Trust(TrustMessage::Remove(device.id))),
                ],
            };
            section = section.push(row.spacing(SPACING).align_y(iced::Center));
        }
        match &trusted.status {
            Some(Ok(said)) => section = section.push(note(printable(said))),
            Some(Err(error)) => {
                section = section.push(text(printable(error)).style(text::danger));
            }
            None => {}
        }
        section.into()
    }

    fn history_tab(&self) -> Element<'_, Message> {
        let filters = row![
            pick_list(
                DirectionFilter::ALL,
                Some(self.history.direction),
                Message::HistoryDirection,
            ),
            pick_list(
                OutcomeFilter::ALL,
                Some(self.history.outcome),
                Message::HistoryOutcome,
            ),
        ]
        .spacing(SPACING);
        let mut explain = Column::new().spacing(4);
        explain = explain.push(note(
            "The same history as `p2p-transfer history`: every transfer of the window and \
             of the command line.",
        ));
        if let Some(status) = &self.history_status {
            explain = explain.push(notice_text(status));
        }
        if self.history.is_empty() {
            return column![heading("No transfers yet"), explain]
                .spacing(SPACING)
                .into();
        }
        let mut list = Column::new().spacing(8);
        let mut shown = 0;
        for record in self.history.visible() {
            shown += 1;
            let over = format!(
                "{}{}",
                crate::history::over(&record.transports),
                crate::history::paths(&record.paths)
            );
            let peer = match record.direction {
                Direction::Send => format!("To {}{over}", printable(&record.peer)),
                Direction::Receive => format!("From {}{over}", printable(&record.peer)),
            };
            let what = if !record.files.is_empty() {
                let files: Vec<_> = record.files.iter().map(|f| printable(f)).collect();
                files.join(", ")
            } else if record.file_count > 0 {
                format::files(record.file_count)
            } else {
                "nothing moved".to_owned()
            };
            let error = printable(record.error.as_deref().unwrap_or("no reason given"));
            let outcome = match record.status {
                Status::Completed => text("completed").style(text::success),
                Status::Interrupted => text(format!("interrupted: {error}")),
                Status::Failed => text(format!("failed: {error}")).style(text::danger),
                Status::Declined => text("declined"),
            };
            list = list.push(column![
                text(format!("{peer}: {what}")),
                row![
                    text(format!(
                        "{} UTC · {} · {} · {}",
                        record.finished_utc(),
                        format::files(record.file_count),
                        format::bytes(record.bytes),
                        // The file is the user's: a bad number shows as zero.
                        format::duration(
                            std::time::Duration::try_from_secs_f64(record.duration_secs)
                                .unwrap_or_default()
                        )
                    ))
                    .size(NOTE_SIZE),
                    outcome.size(NOTE_SIZE),
                ]
                .spacing(SPACING),
            ]);
        }
        if shown == 0 {
            list = list.push(note("No transfer matches these filters."));
        }
        column![filters, list, explain].spacing(SPACING).into()
    }

    /// The running (or last) transfer: bar, bytes of total, speed, time left, file.
    fn transfer_panel(&self) -> Option<Element<'_, Message>> {
        let t = self.transfer.as_ref()?;
        let now = Instant::now();
        let (verb, preposition) = match t.direction {
            Direction::Send => ("Sending", "to"),
            Direction::Receive => ("Receiving", "from"),
        };
        let peer = printable(&t.peer);
        let over = crate::history::over_path(t.transport.as_slice(), t.path);
        let peer = format!("{peer}{over}");
        let headline = match &t.state {
            TransferState::Running => {
                format!("{verb} {} {preposition} {peer}", format::files(t.files))
            }
            TransferState::Finished { elapsed } => format!(
                "Done: {} {preposition} {peer} in {}",
                format::files(t.files),
                format::duration(*elapsed)
            ),
            TransferState::Failed { .. } => format!("Transfer {preposition} {peer} failed"),
            TransferState::Cancelled => format!("Transfer {preposition} {peer} cancelled"),
        };
        let mut figures = format!(
            "{} of {}",
            format::bytes(t.done_bytes),
            format::bytes(t.total_bytes)
        );
        if let Some(speed) = t.speed(now) {
            figures.push_str(&format!(" · {}", format::speed(speed)));
        }
        if let Some(eta) = t.eta(now) {
            figures.push_str(&format!(" · {} left", format::duration(eta)));
        }
        if t.resumed_bytes > 0 {
            figures.push_str(&format!(
                " · resumed, {} were already there",
                format::bytes(t.resumed_bytes)
            ));
        }
        if t.retries > 0 {
            figures.push_str(&format!(" · {} chunk(s) resent", t.retries));
        }
        let bar = progress_bar(0.0..=1.0, t.fraction())
            .girth(14)
            .style(match t.state {
                TransferState::Failed { .. } => progress_bar::danger,
                TransferState::Finished { .. } => progress_bar::success,
                _ => progress_bar::primary,
            });
        let mut panel = column![
            row![
                text(headline).width(Fill),
                text(format!("{:.0}%", t.fraction() * 100.0)),
            ]
            .spacing(SPACING),
            bar,
            row![
                text(figures).size(NOTE_SIZE).width(Fill),
                button("Cancel")
                    .style(button::danger)
                    .on_press_maybe(self.can_cancel().then_some(Message::Cancel)),
            ]
            .spacing(SPACING)
            .align_y(iced::Center),
        ]
        .spacing(6);
        if let Some(file) = &t.current_file {
            if t.is_running() {
                let mut line = format!(
                    "File {} of {}: {}",
                    (t.files_done + 1).min(t.files),
                    t.files,
                    printable(file)
                );
                if let Some((done, size)) = t.current_file_bytes {
                    line.push_str(&format!(
                        " · {} of {}",
                        format::bytes(done),
                        format::bytes(size)
                    ));
                }
                let fraction = match t.current_file_bytes {
                    Some((done, size)) if size > 0 => (done as f32 / size as f32).clamp(0.0, 1.0),
                    _ => 0.0,
                };
                panel = panel
                    .push(note(line))
                    .push(progress_bar(0.0..=1.0, fraction).girth(6));
            }
        }
        if let TransferState::Failed { error } = &t.state {
            // Said once: the status bar does not repeat it.
            panel = panel.push(text(printable(error)).style(text::danger));
        }
        if let (Direction::Receive, TransferState::Finished { .. }, Some(dir)) =
            (t.direction, &t.state, &self.received_into)
        {
            panel = panel.push(
                row![
                    note(format!("Saved in {}", dir.display())),
                    button("Open folder")
                        .style(button::secondary)
                        .on_press(Message::OpenFolder),
                ]
                .spacing(SPACING)
                .align_y(iced::Center),
            );
        }
        if let Some(error) = &self.open_error {
            panel = panel.push(text(printable(error)).size(NOTE_SIZE).style(text::danger));
        }
        Some(panel.into())
    }

    fn can_cancel(&self) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.is_running())
    }

    fn status_bar(&self) -> Element<'_, Message> {
        let status = match &self.worker {
            None => "Not connected".to_owned(),
            Some(w) => match (&w.peer, &w.plan, w.listening_on) {
                (Some(peer), _, _) => {
                    let mut status = format!("Connected to {}", printable(&peer.name));
                    if let Some(addr) = peer.addr {
                        status.push_str(&format!(" ({addr})"));
                    }
                    status.push_str(&crate::history::over_path(
                        peer.transport.as_slice(),
                        peer.path.map(|p| p.kind),
                    ));
                    if let Some(identity) = &peer.identity {
                        let how = if peer.accepted {
                            "accepted by you"
                        } else {
                            crate::admitted_short(&identity.admitted)
                        };
                        status.push_str(&format!(
                            " · device {}… · {how}",
                            identity.device_id.short()
                        ));
                    }
                    status
                }
                (None, Plan::Listen { nameplate, .. }, Some(addr)) => match nameplate {
                    Some(n) if self.waiting_code.is_some() => format!(
                        "Waiting for the peer with code {n}-… · this computer is {} at {}",
                        printable(&self.device_name),
                        self.addresses_text(Some(addr))
                    ),
                    _ => format!(
                        "Waiting for a peer · this computer is {} at {}",
                        printable(&self.device_name),
                        self.addresses_text(Some(addr))
                    ),
                },
                (None, Plan::Listen { bind, .. }, None) => {
                    format!("Starting to listen on {bind}…")
                }
                (None, Plan::Connect { addr }, _) => format!("Connecting to {addr}…"),
                (None, Plan::FindCode { nameplate }, _) => {
                    format!("Looking for the peer of code {nameplate}-… on this network…")
                }
                (None, Plan::Allocate { server }, _) => match &self.waiting_code {
                    Some(code) => format!(
                        "Waiting for the peer with code {}-… through the rendezvous {}",
                        code.nameplate(),
                        printable(server)
                    ),
                    None => format!("Opening a mailbox on the rendezvous {}…", printable(server)),
                },
                (None, Plan::Claim { server, code }, _) => format!(
                    "Meeting the peer of code {}-… through the rendezvous {}…",
                    code.nameplate(),
                    printable(server)
                ),
            },
        };
        let connected = self.peer().is_some();
        let dot = text("●").style(move |theme: &Theme| {
            let palette = theme.extended_palette();
            text::Style {
                color: Some(if connected {
                    palette.success.base.color
                } else {
                    palette.background.strong.color
                }),
            }
        });
        let mut bar = column![row![dot, text(status)].spacing(8)].spacing(4);
        if let Some(notice) = &self.notice {
            bar = bar.push(notice_text(notice));
        }
        bar.into()
    }
}

pub(crate) fn heading(label: &str) -> Element<'_, Message> {
    text(label).size(18).into()
}

pub(crate) fn note<'a>(label: impl text::IntoFragment<'a>) -> Element<'a, Message> {
    text(label).size(NOTE_SIZE).style(hint).into()
}

/// Hint text: quieter than the body text, yet at least 4.5:1 against the background
/// (WCAG AA for small text) in the light and the dark theme.
pub fn hint(theme: &Theme) -> text::Style {
    text::Style {
        color: Some(hint_color(theme)),
    }
}

/// The hint colour: the text colour moved a third of the way towards the background.
pub fn hint_color(theme: &Theme) -> iced::Color {
    let palette = theme.palette();
    let (t, b) = (palette.text, palette.background);
    let mix = |t: f32, b: f32| t + (b - t) * 0.35;
    iced::Color::from_rgb(mix(t.r, b.r), mix(t.g, b.g), mix(t.b, b.b))
}

/// A notice may quote a peer (its name, its error message): drawn escaped.
fn notice_text(notice: &Notice) -> Element<'_, Message> {
    match notice {
        Notice::Info(message) => text(printable(message)).into(),
        Notice::Error(message) => text(printable(message)).style(text::danger).into(),
    }
}

/// A radio button whose label is text of its own, clickable too: iced's radio draws
/// its label itself, where nothing that looks for text (tests, tools) can find it.
fn radio_choice<'a, V: Copy + Eq + 'a>(
    label: &'a str,
    value: V,
    selected: Option<V>,
    on_click: impl Fn(V) -> Message + 'a,
) -> Element<'a, Message> {
    let message = on_click(value);
    row![
        radio("", value, selected, on_click).size(16).spacing(0),
        mouse_area(text(label))
            .on_press(message)
            .interaction(iced::mouse::Interaction::Pointer),
    ]
    .spacing(8)
    .align_y(iced::Center)
    .into()
}

/// A labelled control with an optional error under it.
fn field<'a>(
    label: &'a str,
    control: Element<'a, Message>,
    error: Option<&'a str>,
) -> Element<'a, Message> {
    let mut col = column![text(label), control].spacing(4);
    if let Some(error) = error {
        col = col.push(text(error).size(NOTE_SIZE).style(text::danger));
    }
    col.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WCAG 2 contrast ratio of two opaque colours.
    fn contrast(a: iced::Color, b: iced::Color) -> f32 {
        let luminance = |c: iced::Color| {
            let channel = |v: f32| {
                if v <= 0.03928 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)
        };
        let (la, lb) = (luminance(a), luminance(b));
        (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
    }

    #[test]
    fn hint_text_has_at_least_4_5_to_1_contrast_in_light_and_dark() {
        for theme in [Theme::Light, Theme::Dark] {
            let ratio = contrast(hint_color(&theme), theme.palette().background);
            assert!(ratio >= 4.5, "{theme:?}: {ratio:.2}:1");
            // Still quieter than the body text.
            assert!(ratio < contrast(theme.palette().text, theme.palette().background));
        }
        // iced's own secondary text, which the hints used before, fails it.
        let light = Theme::Light;
        let old = text::secondary(&light)
            .color
            .unwrap_or(light.palette().text);
        assert!(contrast(old, light.palette().background) < 4.5);
    }
}
