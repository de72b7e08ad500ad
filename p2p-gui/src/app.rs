//! The application state and its `update`: what each message does.
//!
//! The state is plain data; everything slow (connecting, sending, receiving, measuring
//! a folder, file dialogs) runs in an iced [`Task`] and comes back as a [`Message`].
//! `view.rs` draws the state.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use iced::task;
use iced::Task;
use p2p_core::discovery::{DiscoveryConfig, PeerInfo};
use p2p_core::fs::source::SourceManifest;
use p2p_core::net::ice::Path as NetPath;
use p2p_core::net::{
    Admission, Admitted, Code, DeviceId, Identity, PeerIdentity, Security, Transport,
};
use p2p_core::settings::Settings;
use p2p_core::{Direction, IncomingOffer, ReceiveOptions, SessionOptions, TransferEvent};
use uuid::Uuid;

use crate::dialog::{self, Pick};
use crate::get::{self, Download, GetTab, Phase, Source};
use crate::get_worker::{self, GetEnd, GetEvent, GetHandle, GetPlan};
use crate::history::{DirectionFilter, History, OutcomeFilter};
use crate::peers;
use crate::progress::{TransferProgress, TransferState};
use crate::settings_form::{SettingsForm, SettingsMessage};
use crate::trust::{self, Edit, TrustMessage, Trusted};
use crate::worker::{self, Plan, Policy, SessionHandle, WorkerEvent};
use p2p_core::history::{History as HistoryFile, Record, Status, Tracker};

/// How long closing the window waits for a session to close cleanly and records to be
/// written.
pub const QUIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How often the history file is checked for records written elsewhere (the CLI).
pub const HISTORY_POLL: Duration = Duration::from_secs(2);

/// What the command line preselects when the window opens.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Folder holding `settings.json`; `None` keeps settings in memory only.
    pub config_dir: Option<PathBuf>,
    /// Start listening on this address (`host:port`).
    pub listen: Option<String>,
    /// Connect to this address (`host:port`).
    pub connect: Option<String>,
    /// Receive into this folder (for this run; the saved setting is left alone).
    pub output: Option<PathBuf>,
    /// Select these paths for sending, and send them as soon as a peer is connected.
    pub send: Vec<PathBuf>,
    /// Open on this tab (default: Connection, or Send when `send` is given).
    pub tab: Option<Tab>,
    /// Folder holding the transfer history (`history.jsonl`, shared with the CLI);
    /// `None` keeps the history of this window in memory only.
    pub data_dir: Option<PathBuf>,
    /// How to find peers and announce this window on the local network; `None` turns
    /// discovery off.
    pub discovery: Option<DiscoveryConfig>,
    /// Start looking for peers on the local network at once.
    pub find_peers: bool,
    /// Accept incoming transfers without asking (this run only; the saved setting is
    /// kept).
    pub auto_accept: bool,
    /// This device's key. `None` loads the one in `data_dir` (creating it on first
    /// use), as the CLI does; embedders and tests may hand one in
    /// (`Security::default().identity` is the key of the whole process).
    pub identity: Option<Arc<Identity>>,
    /// A one-time code, as if typed: with `listen`, wait for the peer that knows it;
    /// with `connect`, connect to that address with it; alone, find the peer waiting
    /// for it on the local network and connect.
    pub code: Option<String>,
    /// Light or dark; `None` follows the desktop's setting.
    pub theme: Option<iced::Theme>,
    /// The rendezvous server for this run (`P2P_RENDEZVOUS`), over the saved setting;
    /// empty turns it off.
    pub rendezvous: Option<String>,
    /// A share ticket (`p2p1…`) or the path of a `.p2p` file: opens the "Get shared
    /// files" tab with it and starts the download.
    pub get: Option<String>,
}

/// The tabs, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Connection,
    Send,
    Receive,
    /// Swarm downloads: a share ticket or a `.p2p` file.
    Get,
    Settings,
    History,
}

impl Tab {
    pub const ALL: [Tab; 6] = [
        Tab::Connection,
        Tab::Send,
        Tab::Receive,
        Tab::Get,
        Tab::Settings,
        Tab::History,
    ];

    /// The tab whose title (or short name: `get`) is `name` (any case).
    pub fn from_name(name: &str) -> Option<Tab> {
        Tab::ALL.into_iter().find(|tab| {
            tab.title().eq_ignore_ascii_case(name) || tab.name().eq_ignore_ascii_case(name)
        })
    }

    /// The tab's name on the command line (`--tab get`).
    pub fn name(self) -> &'static str {
        match self {
            Tab::Get => "get",
            other => other.title(),
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Connection => "Connection",
            Tab::Send => "Send",
            Tab::Receive => "Receive",
            Tab::Get => "Get shared files",
            Tab::Settings => "Settings",
            Tab::History => "History",
        }
    }
}

/// Everything the window reacts to.
#[derive(Debug, Clone)]
pub enum Message {
    TabSelected(Tab),
    // Connection
    ListenPortChanged(String),
    PeerAddressChanged(String),
    Listen,
    Connect,
    /// Stop listening, or disconnect.
    Stop,
    /// Start or stop looking for peers on the local network.
    FindPeers,
    StopFindingPeers,
    /// The receivers found on the local network (or why discovery cannot run).
    PeersFound(Result<Vec<PeerInfo>, String>),
    /// Connect to a peer found on the local network.
    ConnectTo(SocketAddr),
    /// Connect to a peer found on the local network and send the selection to it: one
    /// click from the Send tab.
    SendTo(SocketAddr),
    /// The one-time code field (Send and Receive tabs).
    CodeChanged(String),
    /// Listen for the peer that knows the typed code, or a new one when none is typed.
    WaitWithCode,
    /// Connect with the typed code: to the typed address, else to the peer found on the
    /// local network waiting for it.
    ConnectWithCode,
    /// Add the peer to the trusted devices after a session with a code (or an unknown
    /// device whose offer was accepted).
    RememberToggled(bool),
    /// Put this text on the clipboard.
    Copy(String),
    /// Close the window: an idle session is closed cleanly first (its peer sees the
    /// session end, not a broken connection), and pending records are written.
    Quit,
    /// Close the window now, whatever is still pending.
    QuitNow,
    /// The window's close button: asks first while a transfer runs or an offer waits.
    CloseRequested,
    /// The answer "keep the window open" to that question.
    KeepOpen,
    /// A key no widget took: Tab moves the focus, Enter accepts and Esc declines an
    /// offer.
    Key(KeyPress),
    /// A file or folder dropped onto the window: added to what is sent.
    Dropped(PathBuf),
    /// The path field (Send tab): typed or pasted paths, one per line.
    PathInputChanged(String),
    /// Add the paths in the path field.
    AddTypedPaths,
    /// A file dialog could not open (no portal, no zenity): said in the window.
    PickFailed(String),
    /// The output folder field (Receive tab).
    OutputInputChanged(String),
    /// Receive into the folder typed in the output folder field.
    UseTypedOutput,
    /// Which of the offer's files already exist in the folder it would go to.
    OfferClashes(Uuid, PathBuf, Vec<String>),
    /// Accept the waiting offer, replacing the files that exist (this transfer only).
    AcceptReplacing,
    /// Open the folder the last transfer was received into (file manager).
    OpenFolder,
    /// Opening it failed (no file manager, …), or worked.
    FolderOpened(Result<(), String>),
    /// Time to look whether the history file changed.
    HistoryTick,
    /// The history file's modification time and size (`None`: no file yet).
    HistoryStat(Option<(SystemTime, u64)>),
    /// The history file, read again after it changed.
    HistoryReloaded(Result<(Vec<Record>, usize), String>),
    /// This machine's network addresses (each interface).
    Addresses(Vec<IpAddr>),
    /// The trusted devices on the Settings tab.
    Trust(TrustMessage),
    /// A report from the session worker with this id.
    Worker(u64, WorkerEvent),
    // Send
    PickFiles,
    PickFolder,
    /// Paths chosen for sending (from a dialog, or the command line).
    Picked(Vec<PathBuf>),
    Measured(PathBuf, Result<Measure, String>),
    Remove(usize),
    ClearSelection,
    StartSend,
    /// Cancel the running transfer.
    Cancel,
    // Receive
    PickOutputDir,
    OutputDirPicked(Option<PathBuf>),
    OverwriteToggled(bool),
    AutoAcceptToggled(bool),
    /// Answer the incoming offer that waits.
    AcceptOffer,
    DeclineOffer,
    /// Send the interrupted selection again; only what the receiver lacks moves.
    ResumeSend,
    // Settings
    Settings(SettingsMessage),
    // History
    HistoryDirection(DirectionFilter),
    HistoryOutcome(OutcomeFilter),
    /// The history file was read: its records, and how many lines were unreadable.
    HistoryLoaded(Result<(Vec<Record>, usize), String>),
    /// A record was appended to the history file (or could not be).
    HistoryWritten(Result<(), String>),
    // Get shared files
    /// The ticket or `.p2p` path field.
    GetInputChanged(String),
    /// Choose a `.p2p` file with the system's dialog.
    OpenShareFile,
    /// The `.p2p` file chosen (`None`: the dialog was cancelled).
    ShareFilePicked(Option<PathBuf>),
    /// Start downloading what the field names.
    StartGet,
    /// The field read (a `.p2p` file from the disk): what to download, or what is wrong.
    GetSource(Result<Source, String>),
    /// A report from the download worker with this id.
    GetWorker(u64, GetEvent),
    /// Stop the download (what arrived is kept for a resume).
    CancelGet,
    /// Open the folder the download went to (file manager).
    OpenGetFolder,
}

/// Keys the window handles itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPress {
    /// Tab: the next field.
    Next,
    /// Shift+Tab: the previous field.
    Previous,
    Enter,
    Escape,
}

/// Size of one selected path, as the core's manifest scan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    pub is_dir: bool,
    pub files: u64,
    pub bytes: u64,
    /// Links and special files inside a folder that will not be sent.
    pub skipped: usize,
}

/// One path chosen for sending.
#[derive(Debug, Clone)]
pub struct Selected {
    pub path: PathBuf,
    /// `None` while it is being measured.
    pub measure: Option<Result<Measure, String>>,
}

impl Selected {
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// A running session worker.
#[derive(Debug)]
pub struct Worker {
    pub id: u64,
    pub plan: Plan,
    pub listening_on: Option<SocketAddr>,
    pub peer: Option<Peer>,
    /// Aborts the worker's task when dropped.
    abort: task::Handle,
}

/// The connected peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub addr: Option<SocketAddr>,
    /// The device the connection proved, and how it was let in.
    pub identity: Option<PeerIdentity>,
    /// What the session runs on (TCP or QUIC).
    pub transport: Option<Transport>,
    /// The path it takes now (lan, direct, relay): a connection made through a
    /// rendezvous; it changes mid-session (relay → direct).
    pub path: Option<NetPath>,
    /// An unknown device whose offer the person accepted in this session: sending to
    /// it is allowed from then on.
    pub accepted: bool,
    pub handle: SessionHandle,
}

impl Peer {
    /// Let in as an unknown device (no code, not trusted) and not accepted by the person.
    pub fn is_unvouched(&self) -> bool {
        !self.accepted
            && self
                .identity
                .as_ref()
                .is_some_and(|i| i.admitted == Admitted::Unknown)
    }
}

/// A line for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Error(String),
}

/// The whole application state.
pub struct App {
    pub tab: Tab,
    pub config_dir: Option<PathBuf>,
    pub settings: Settings,
    pub form: SettingsForm,
    /// Result of the last settings save, or why loading failed.
    pub settings_status: Option<Notice>,
    pub listen_port: String,
    pub peer_address: String,
    pub worker: Option<Worker>,
    next_worker: u64,
    pub selection: Vec<Selected>,
    /// Send the selection as soon as a peer is connected (`--send`).
    send_on_connect: bool,
    /// A send was asked for and has not started or failed yet.
    pub send_pending: bool,
    pub output_dir: PathBuf,
    /// The running transfer, or the last one.
    pub transfer: Option<TransferProgress>,
    /// What the sender skipped in the last send (path, reason).
    pub skipped: Vec<(String, String)>,
    /// Accept incoming transfers without asking.
    pub auto_accept: bool,
    /// An incoming transfer waiting for Accept or Decline.
    pub offer: Option<IncomingOffer>,
    /// The paths of the send that was asked for last.
    sending: Vec<PathBuf>,
    /// A send that stopped before it finished, with its transfer id: offered for resume.
    pub resumable: Option<(Vec<PathBuf>, Uuid)>,
    /// Makes the history record of each transfer from its events.
    tracker: Tracker,
    /// The last transfer that started, and every transport it ran on, in order (a
    /// resume after a reconnection may run on another): its records list them.
    transports: Option<(Uuid, Vec<Transport>)>,
    /// The session now (or last) connected has a path (it was made through a
    /// rendezvous): records name the paths the tracker saw only then.
    session_has_path: bool,
    /// The rendezvous server given for this run ([`Launch::rendezvous`]).
    rendezvous_override: Option<String>,
    pub notice: Option<Notice>,
    pub history: History,
    history_file: Option<HistoryFile>,
    /// Records being appended to the history file right now.
    pub history_writes: usize,
    /// Trouble reading or writing the history file.
    pub history_status: Option<Notice>,
    /// This device's key, with no admission rules: each worker gets its own rules
    /// ([`App::security`]).
    security: Security,
    /// This device's id as shown (and copied).
    pub device_id_text: String,
    /// Where this device's key lives, when it was loaded from a file.
    pub key_file: Option<PathBuf>,
    /// Why this device's key could not be loaded (a key for this run is used).
    pub identity_error: Option<String>,
    /// The trusted devices (Settings tab; let in without a code).
    pub trusted: Trusted,
    /// The one-time code field, and what is wrong with what was typed.
    pub code_input: String,
    pub code_error: Option<String>,
    /// The code this window waits with, shown large until a peer has used it.
    pub waiting_code: Option<Code>,
    /// Remember the peer of a code session (or an accepted unknown device).
    pub remember: bool,
    pub discovery: Option<DiscoveryConfig>,
    /// Workers closing their session cleanly after Stop/Disconnect, by id: each is
    /// aborted if it has not ended when the window goes.
    closing: Vec<(u64, task::Handle)>,
    /// The window closes once nothing is pending ([`Message::Quit`]).
    quitting: bool,
    /// Aborts the browsing task when dropped; `Some` while looking for peers.
    browsing: Option<task::Handle>,
    pub found_peers: Vec<PeerInfo>,
    pub discovery_error: Option<String>,
    /// The path field of the Send tab, and what is wrong with what was typed.
    pub path_input: String,
    pub path_error: Option<String>,
    /// Why the last file dialog could not open.
    pub dialog_error: Option<String>,
    /// The output folder field of the Receive tab.
    pub output_input: String,
    /// The files of the waiting offer that already exist in the folder it would go to.
    pub clashes: Option<Clashes>,
    /// The folder the running (or last) incoming transfer is written into.
    pub received_into: Option<PathBuf>,
    /// Why the folder could not be opened.
    pub open_error: Option<String>,
    /// The folder the person accepted the waiting offer into.
    accepted_into: Option<PathBuf>,
    /// The close button was pressed while a transfer runs: the window asks.
    pub confirm_close: bool,
    /// The device the resumable send went to: Resume is offered only to it.
    resumable_peer: Option<Option<DeviceId>>,
    /// The history file's modification time and size when it was last read.
    history_stamp: Option<(SystemTime, u64)>,
    /// The history file was read once (later reads replace what it showed).
    history_read: bool,
    /// Light or dark; `None` follows the desktop.
    pub theme: Option<iced::Theme>,
    /// This machine's name, as peers see it.
    pub device_name: String,
    /// This machine's addresses, one per interface (loopback last).
    pub addresses: Vec<IpAddr>,
    /// The program that opens a folder ([`OPENER`]).
    pub opener: String,
    /// The "Get shared files" tab.
    pub get: GetTab,
    /// The running download's worker: its id, its stop switch, and the handle that
    /// aborts its task when dropped.
    get_job: Option<(u64, GetHandle, task::Handle)>,
    next_get: u64,
}

/// Files of an offer that exist already where it would be saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clashes {
    pub transfer_id: Uuid,
    pub dir: PathBuf,
    pub names: Vec<String>,
}

impl App {
    /// Builds the state from the saved settings and the command line, and starts
    /// whatever the command line asked for.
    pub fn new(launch: Launch) -> (Self, Task<Message>) {
        let (settings, settings_status) = match &launch.config_dir {
            Some(dir) => match Settings::load(dir) {
                Ok(settings) => (settings, None),
                Err(e) => (
                    Settings::default(),
                    Some(Notice::Error(format!("{e}. Using the defaults."))),
                ),
            },
            None => (Settings::default(), None),
        };
        let settings_auto_accept = settings.auto_accept;
        let output_dir = launch
            .output
            .clone()
            .unwrap_or_else(|| settings.output_dir_or_default());
        let (security, key_file, identity_error) =
            load_identity(launch.identity.clone(), launch.data_dir.as_deref());
        let mut app = Self {
            tab: Tab::Connection,
            config_dir: launch.config_dir,
            form: SettingsForm::new(&settings),
            listen_port: settings.listen_port.to_string(),
            settings,
            settings_status,
            peer_address: String::new(),
            worker: None,
            next_worker: 0,
            selection: Vec::new(),
            send_on_connect: !launch.send.is_empty(),
            send_pending: false,
            output_dir,
            transfer: None,
            skipped: Vec::new(),
            auto_accept: launch.auto_accept || settings_auto_accept,
            offer: None,
            sending: Vec::new(),
            resumable: None,
            tracker: Tracker::default(),
            transports: None,
            session_has_path: false,
            rendezvous_override: launch.rendezvous,
            notice: None,
            history: History::default(),
            history_file: launch.data_dir.as_deref().map(HistoryFile::in_dir),
            history_writes: 0,
            history_status: None,
            device_id_text: security.device_id().to_string(),
            security,
            key_file,
            identity_error: identity_error.clone(),
            trusted: Trusted::load(launch.data_dir.clone()),
            code_input: String::new(),
            code_error: None,
            waiting_code: None,
            remember: false,
            discovery: launch.discovery,
            closing: Vec::new(),
            quitting: false,
            browsing: None,
            found_peers: Vec::new(),
            discovery_error: None,
            path_input: String::new(),
            path_error: None,
            dialog_error: None,
            output_input: String::new(),
            clashes: None,
            received_into: None,
            open_error: None,
            accepted_into: None,
            confirm_close: false,
            resumable_peer: None,
            history_stamp: None,
            history_read: false,
            theme: launch.theme,
            device_name: p2p_core::session::default_device_name(),
            addresses: Vec::new(),
            opener: OPENER.to_owned(),
            get: GetTab::default(),
            get_job: None,
            next_get: 0,
        };
        app.output_input = app.output_dir.display().to_string();
        let mut tasks = vec![Task::perform(local_addresses(), Message::Addresses)];
        if let Some(file) = app.history_file.clone() {
            tasks.push(Task::perform(load_history(file), Message::HistoryLoaded));
        }
        if let Some(code) = launch.code {
            app.code_input = code;
            if let Some(bind) = launch.listen {
                tasks.push(app.wait_with_code(bind));
            } else {
                app.peer_address = launch.connect.unwrap_or_default();
                tasks.push(app.connect_with_code());
            }
        } else if let Some(bind) = launch.listen {
            tasks.push(app.start_worker(Plan::Listen {
                bind,
                nameplate: None,
            }));
        } else if let Some(addr) = launch.connect {
            app.peer_address = addr.clone();
            tasks.push(app.start_worker(Plan::Connect { addr }));
        }
        if !launch.send.is_empty() {
            app.tab = Tab::Send;
            tasks.push(app.select(launch.send));
        }
        if let Some(get) = launch.get {
            app.tab = Tab::Get;
            app.get.input = get;
            tasks.push(app.update(Message::StartGet));
        }
        if let Some(tab) = launch.tab {
            app.tab = tab;
        }
        if launch.find_peers {
            tasks.push(app.update(Message::FindPeers));
        }
        // Last: starting a worker clears the status bar.
        if let Some(error) = identity_error {
            app.notice = Some(Notice::Error(error));
        }
        (app, Task::batch(tasks))
    }

    /// The window title: progress first while a transfer runs.
    pub fn title(&self) -> String {
        match (&self.transfer, &self.get.download) {
            (Some(t), _) if t.is_running() => {
                format!("{:.0}% · p2p-transfer", t.fraction() * 100.0)
            }
            (_, Some(d)) if d.is_running() => {
                format!("{:.0}% · p2p-transfer", d.fraction() * 100.0)
            }
            _ => "p2p-transfer".to_owned(),
        }
    }

    /// Light or dark: the choice given at start, else the desktop's (`None`).
    pub fn theme(&self) -> Option<iced::Theme> {
        self.theme.clone()
    }

    /// What the window listens to besides its widgets: the close button, dropped files,
    /// keys, and (with a history file) a timer that keeps the History tab live.
    pub fn subscription(&self) -> iced::Subscription<Message> {
        let mut subscriptions = vec![
            iced::window::close_requests().map(|_| Message::CloseRequested),
            iced::event::listen_with(window_event),
        ];
        if self.history_file.is_some() {
            subscriptions.push(iced::time::every(HISTORY_POLL).map(|_| Message::HistoryTick));
        }
        iced::Subscription::batch(subscriptions)
    }

    pub fn update(&mut self, message: Message) -> Task<Message> {
        match message {
            Message::TabSelected(tab) => self.tab = tab,
            Message::ListenPortChanged(port) => self.listen_port = port,
            Message::PeerAddressChanged(addr) => self.peer_address = addr,
            Message::Listen => return self.listen(),
            Message::Connect => return self.connect(),
            Message::Stop => return self.stop(),
            Message::FindPeers => {
                let Some(config) = self.discovery.clone() else {
                    return Task::none();
                };
                let (task, handle) = Task::run(
                    peers::browse(config, self.security.device_id()),
                    Message::PeersFound,
                )
                .abortable();
                self.browsing = Some(handle.abort_on_drop());
                self.found_peers.clear();
                self.discovery_error = None;
                return task;
            }
            Message::StopFindingPeers => self.browsing = None,
            Message::PeersFound(Ok(peers)) => {
                if self.browsing.is_some() {
                    self.found_peers = peers;
                }
            }
            Message::PeersFound(Err(e)) => {
                self.browsing = None;
                self.discovery_error = Some(e);
            }
            Message::SendTo(addr) => {
                if self.selection.is_empty() || self.worker.is_some() {
                    return Task::none();
                }
                self.send_on_connect = true;
                return self.update(Message::ConnectTo(addr));
            }
            Message::ConnectTo(addr) => {
                // The connection must prove the id the beacon announced (a beacon is
                // only a hint; trust or a code still decide).
                let announced = self
                    .found_peers
                    .iter()
                    .find(|p| p.addr == addr)
                    .map(|p| p.device_id);
                // Looking goes on: the list stays for the next transfer.
                self.peer_address = addr.to_string();
                return self.start_worker_with(
                    Plan::Connect {
                        addr: addr.to_string(),
                    },
                    None,
                    announced,
                );
            }
            Message::CodeChanged(code) => {
                self.code_input = code;
                self.code_error = None;
            }
            Message::WaitWithCode => match self.listen_port() {
                Some(port) => return self.wait_with_code(format!("0.0.0.0:{port}")),
                None => return Task::none(),
            },
            Message::ConnectWithCode => return self.connect_with_code(),
            Message::RememberToggled(on) => self.remember = on,
            Message::Copy(text) => return iced::clipboard::write(text),
            Message::Quit => {
                self.quitting = true;
                if let Some((_, handle, _)) = &self.get_job {
                    // Saves the resume state, so the next Get of it resumes.
                    handle.cancel();
                }
                self.confirm_close = false;
                let stopped = self.stop_with(Ending::WindowClosed);
                // A peer that does not take the close must not keep the window open.
                let deadline =
                    Task::perform(tokio::time::sleep(QUIT_TIMEOUT), |()| Message::QuitNow);
                return Task::batch([stopped, deadline, self.exit_when_done()]);
            }
            Message::QuitNow => return iced::exit(),
            Message::CloseRequested => {
                if self.is_busy() || self.offer.is_some() || self.get.is_busy() {
                    self.confirm_close = true;
                } else {
                    return self.update(Message::Quit);
                }
            }
            Message::KeepOpen => self.confirm_close = false,
            Message::Key(key) => return self.on_key(key),
            Message::Dropped(path) => {
                if self.offer.is_none() && !self.confirm_close {
                    self.tab = Tab::Send;
                }
                return self.add_paths(vec![path]);
            }
            Message::PathInputChanged(text) => {
                self.path_input = text;
                self.path_error = None;
            }
            Message::AddTypedPaths => {
                let paths = dialog::typed_paths(&self.path_input);
                if paths.is_empty() {
                    self.path_error =
                        Some("Type or paste the path of a file or folder.".to_owned());
                    return Task::none();
                }
                let missing: Vec<String> = paths
                    .iter()
                    .filter(|p| std::fs::symlink_metadata(p).is_err())
                    .map(|p| p.display().to_string())
                    .collect();
                if !missing.is_empty() {
                    self.path_error =
                        Some(format!("No such file or folder: {}", missing.join(", ")));
                    return Task::none();
                }
                self.path_input.clear();
                return self.add_paths(paths);
            }
            Message::PickFailed(error) => self.dialog_error = Some(error),
            Message::OutputInputChanged(text) => self.output_input = text,
            Message::UseTypedOutput => {
                match dialog::typed_paths(&self.output_input).into_iter().next() {
                    Some(dir) if dir.is_absolute() => return self.set_output_dir(dir),
                    Some(dir) => {
                        self.dialog_error = Some(format!(
                            "{} is not a full path: type it from / (or ~/).",
                            dir.display()
                        ))
                    }
                    None => {}
                }
            }
            Message::OfferClashes(id, dir, names) => {
                let current = self.offer.as_ref().is_some_and(|o| o.transfer_id == id)
                    && dir == self.output_dir;
                if current {
                    self.clashes = Some(Clashes {
                        transfer_id: id,
                        dir,
                        names,
                    });
                }
            }
            Message::AcceptReplacing => return self.answer_offer(Answer::Replace),
            Message::OpenFolder => {
                if let Some(dir) = self.received_into.clone() {
                    self.open_error = None;
                    return Task::perform(
                        open_folder(self.opener.clone(), dir),
                        Message::FolderOpened,
                    );
                }
            }
            Message::FolderOpened(result) => self.open_error = result.err(),
            Message::HistoryTick => {
                if let (Some(file), 0, true) =
                    (&self.history_file, self.history_writes, self.history_read)
                {
                    let path = file.path().to_path_buf();
                    return Task::perform(
                        async move {
                            tokio::task::spawn_blocking(move || stamp(&path))
                                .await
                                .ok()
                                .flatten()
                        },
                        Message::HistoryStat,
                    );
                }
            }
            Message::HistoryStat(seen) => {
                if self.history_read && seen != self.history_stamp && self.history_writes == 0 {
                    self.history_stamp = seen;
                    if let Some(file) = self.history_file.clone() {
                        return Task::perform(load_history(file), Message::HistoryReloaded);
                    }
                }
            }
            Message::HistoryReloaded(Ok((records, _))) => {
                if self.history_writes == 0 {
                    self.history.replace(records);
                }
            }
            Message::HistoryReloaded(Err(e)) => {
                self.history_status = Some(Notice::Error(format!("Cannot read the history: {e}")));
            }
            Message::Addresses(addresses) => self.addresses = addresses,
            Message::Trust(message) => return self.on_trust(message),
            Message::Worker(id, event) => {
                if self.worker.as_ref().is_some_and(|w| w.id == id) {
                    return self.on_worker(event);
                }
                if matches!(event, WorkerEvent::Stopped { .. }) {
                    self.closing.retain(|(closing, _)| *closing != id);
                    return self.exit_when_done();
                }
            }
            Message::PickFiles | Message::PickFolder => {
                self.dialog_error = None;
                let kind = if matches!(message, Message::PickFiles) {
                    Pick::Files
                } else {
                    Pick::Folder
                };
                return Task::perform(dialog::pick(kind), |picked| match picked {
                    Ok(paths) => Message::Picked(paths),
                    Err(error) => Message::PickFailed(error),
                });
            }
            Message::Picked(paths) => return self.add_paths(paths),
            Message::Measured(path, result) => {
                if let Some(item) = self.selection.iter_mut().find(|s| s.path == path) {
                    item.measure = Some(result);
                }
                return self.send_if_ready();
            }
            Message::Remove(index) => {
                if index < self.selection.len() {
                    self.selection.remove(index);
                }
            }
            Message::ClearSelection => {
                self.selection.clear();
                // What was interrupted is not what will be sent next.
                self.resumable = None;
            }
            Message::StartSend => self.start_send(),
            Message::Cancel => {
                if let Some(peer) = self.peer() {
                    peer.handle.cancel();
                }
            }
            Message::PickOutputDir => {
                self.dialog_error = None;
                return Task::perform(dialog::pick(Pick::OutputFolder), |picked| match picked {
                    Ok(dirs) => Message::OutputDirPicked(dirs.into_iter().next()),
                    Err(error) => Message::PickFailed(error),
                });
            }
            Message::OutputDirPicked(Some(dir)) => return self.set_output_dir(dir),
            Message::OutputDirPicked(None) => {}
            Message::OverwriteToggled(on) => {
                self.settings.overwrite = on;
                self.save_settings();
                self.push_receive_options();
                return self.check_clashes();
            }
            Message::AutoAcceptToggled(on) => {
                self.auto_accept = on;
                self.settings.auto_accept = on;
                self.save_settings();
                self.push_receive_options();
            }
            Message::AcceptOffer => return self.answer_offer(Answer::Accept),
            Message::DeclineOffer => return self.answer_offer(Answer::Decline),
            Message::ResumeSend => self.resume_send(),
            Message::Settings(message) => {
                if self.form.apply(message, &mut self.settings) {
                    self.save_settings();
                }
            }
            Message::HistoryDirection(filter) => self.history.direction = filter,
            Message::HistoryOutcome(filter) => self.history.outcome = filter,
            Message::HistoryLoaded(Ok((records, unreadable))) => {
                self.history.prepend(records);
                // The file as read: later changes (the CLI's records) are read again.
                self.history_read = true;
                if let Some(file) = &self.history_file {
                    self.history_stamp = stamp(file.path());
                }
                if unreadable > 0 {
                    self.history_status = Some(Notice::Error(format!(
                        "{unreadable} line(s) of the history file could not be read and are \
                         not shown."
                    )));
                }
            }
            Message::HistoryLoaded(Err(e)) => {
                self.history_status = Some(Notice::Error(format!("Cannot read the history: {e}")));
            }
            Message::HistoryWritten(result) => {
                self.history_writes = self.history_writes.saturating_sub(1);
                if let Err(e) = result {
                    self.history_status =
                        Some(Notice::Error(format!("Cannot record the transfer: {e}")));
                }
                return self.exit_when_done();
            }
            Message::GetInputChanged(text) => {
                self.get.input = text;
                self.get.error = None;
            }
            Message::OpenShareFile => {
                self.dialog_error = None;
                return Task::perform(dialog::pick(Pick::ShareFile), |picked| match picked {
                    Ok(files) => Message::ShareFilePicked(files.into_iter().next()),
                    Err(error) => Message::PickFailed(error),
                });
            }
            Message::ShareFilePicked(Some(path)) => {
                self.get.input = path.display().to_string();
                self.get.error = None;
            }
            Message::ShareFilePicked(None) => {}
            Message::StartGet => {
                if self.get.is_busy() {
                    return Task::none();
                }
                self.get.error = None;
                self.get.reading = true;
                let input = self.get.input.clone();
                return Task::perform(
                    async move {
                        tokio::task::spawn_blocking(move || get::parse_source(&input))
                            .await
                            .unwrap_or_else(|e| Err(format!("Reading failed: {e}.")))
                    },
                    Message::GetSource,
                );
            }
            Message::GetSource(source) => {
                self.get.reading = false;
                match source {
                    Ok(source) => return self.start_get(source),
                    Err(error) => self.get.error = Some(error),
                }
            }
            Message::GetWorker(id, event) => {
                if self.get_job.as_ref().is_some_and(|(job, ..)| *job == id) {
                    self.on_get(event);
                    // Closing waits for a cancelled download to save its resume state.
                    return self.exit_when_done();
                }
            }
            Message::CancelGet => {
                if let Some((_, handle, _)) = &self.get_job {
                    handle.cancel();
                }
            }
            Message::OpenGetFolder => {
                if let Some(d) = &self.get.download {
                    self.open_error = None;
                    return Task::perform(
                        open_folder(self.opener.clone(), d.out_dir.clone()),
                        Message::FolderOpened,
                    );
                }
            }
        }
        Task::none()
    }

    /// Starts downloading `source` into the output folder, from the peers its tracker
    /// (else the rendezvous server in Settings) knows.
    fn start_get(&mut self, source: Source) -> Task<Message> {
        let tracker = match get::tracker_for(source.ticket(), self.rendezvous_server()) {
            Ok(tracker) => tracker,
            Err(error) => {
                self.get.error = Some(error);
                return Task::none();
            }
        };
        let id = self.next_get;
        self.next_get += 1;
        let handle = GetHandle::default();
        let plan = GetPlan {
            tracker: tracker.clone(),
            ticket: source.ticket().clone(),
            manifest: source.manifest().cloned(),
            out_dir: self.output_dir.clone(),
            identity: self.security.identity.clone(),
            config: p2p_core::swarm::SwarmConfig {
                max_upload: self.settings.max_speed(),
                ..Default::default()
            },
        };
        self.get.download = Some(Download::new(&source, tracker, self.output_dir.clone()));
        let (task, abort) = Task::run(get_worker::run(plan, handle.clone()), move |event| {
            Message::GetWorker(id, event)
        })
        .abortable();
        self.get_job = Some((id, handle, abort.abort_on_drop()));
        task
    }

    /// A report from the running download.
    fn on_get(&mut self, event: GetEvent) {
        let Some(download) = &mut self.get.download else {
            return;
        };
        match event {
            GetEvent::Connected => {}
            GetEvent::Status(status) => download.apply_status(*status),
            GetEvent::Swarm(event) => download.apply_event(&event),
            GetEvent::Ended(end) => {
                download.phase = match end {
                    GetEnd::Done => Phase::Done,
                    GetEnd::Failed(error) => Phase::Failed(error),
                    GetEnd::Cancelled => Phase::Cancelled,
                };
                self.get_job = None;
            }
        }
    }

    fn on_key(&mut self, key: KeyPress) -> Task<Message> {
        match key {
            KeyPress::Next => iced::widget::operation::focus_next(),
            KeyPress::Previous => iced::widget::operation::focus_previous(),
            KeyPress::Escape if self.confirm_close => self.update(Message::KeepOpen),
            KeyPress::Escape if self.offer.is_some() => self.answer_offer(Answer::Decline),
            // Enter takes an offer only when nothing in it needs a choice first.
            KeyPress::Enter if self.offer.is_some() && !self.confirm_close => {
                if self.offer_needs_choice() {
                    Task::none()
                } else {
                    self.answer_offer(Answer::Accept)
                }
            }
            _ => Task::none(),
        }
    }

    /// Files of the waiting offer exist where it would be saved, and replacing them is
    /// not allowed: the person chooses (replace, another folder, decline) before Accept.
    pub fn offer_needs_choice(&self) -> bool {
        !self.settings.overwrite && self.clashes.as_ref().is_some_and(|c| !c.names.is_empty())
    }

    /// Adds paths (dropped, typed, picked) to what is sent; while a transfer runs they
    /// wait for the next send.
    fn add_paths(&mut self, paths: Vec<PathBuf>) -> Task<Message> {
        self.dialog_error = None;
        self.select(paths)
    }

    /// Receives into `dir` from now on (saved), the waiting offer included.
    fn set_output_dir(&mut self, dir: PathBuf) -> Task<Message> {
        self.dialog_error = None;
        self.output_input = dir.display().to_string();
        self.output_dir = dir.clone();
        self.settings.output_dir = Some(dir);
        self.save_settings();
        self.push_receive_options();
        self.check_clashes()
    }

    /// Looks (off the UI thread) which files of the waiting offer exist in the output
    /// folder.
    fn check_clashes(&mut self) -> Task<Message> {
        self.clashes = None;
        let Some(offer) = &self.offer else {
            return Task::none();
        };
        let (id, dir) = (offer.transfer_id, self.output_dir.clone());
        let files: Vec<String> = offer
            .entries
            .iter()
            .filter(|e| e.size.is_some())
            .map(|e| e.path.clone())
            .collect();
        Task::perform(
            async move {
                let look = dir.clone();
                let names = tokio::task::spawn_blocking(move || existing(&look, &files))
                    .await
                    .unwrap_or_default();
                (dir, names)
            },
            move |(dir, names)| Message::OfferClashes(id, dir, names),
        )
    }

    /// Answers the waiting offer. Accepting uses the folder shown now (it may have been
    /// changed while the offer waited).
    fn answer_offer(&mut self, answer: Answer) -> Task<Message> {
        let accept = !matches!(answer, Answer::Decline);
        let mut remember = Task::none();
        if accept && self.offer.is_some() {
            if let Some(peer) = self.worker.as_mut().and_then(|w| w.peer.as_mut()) {
                // The person vouches for an unknown device by accepting.
                if peer.is_unvouched() {
                    peer.accepted = true;
                    if self.remember {
                        remember = self.remember_peer();
                    }
                }
            }
        }
        let mut options = self.receive_options();
        if matches!(answer, Answer::Replace) {
            options.overwrite = true;
        }
        let Some(offer) = self.offer.take() else {
            return remember;
        };
        self.clashes = None;
        self.confirm_close = false;
        let Some(peer) = self.peer().cloned() else {
            return remember;
        };
        if accept {
            self.accepted_into = Some(options.output_dir.clone());
            peer.handle.accept_with(offer.transfer_id, options);
            remember
        } else {
            peer.handle.decide(offer.transfer_id, false);
            self.notice = Some(Notice::Info(format!(
                "Declined {} from {}.",
                offer.roots().join(", "),
                offer.peer
            )));
            self.keep(Record::declined(&offer, "declined in this window"))
        }
    }

    /// After [`Message::Quit`]: exits once no session is being closed, no download is
    /// saving its resume state and no record is being written.
    fn exit_when_done(&self) -> Task<Message> {
        if self.quitting
            && self.closing.is_empty()
            && self.get_job.is_none()
            && self.history_writes == 0
            && self.trusted.writes == 0
        {
            iced::exit()
        } else {
            Task::none()
        }
    }

    /// The connected peer's device id (`None` for a peer that proved none).
    fn peer_device(&self) -> Option<DeviceId> {
        self.peer()
            .and_then(|p| p.identity.as_ref())
            .map(|i| i.device_id)
    }

    /// The interrupted send can be resumed now: connected to the device it went to,
    /// nothing running.
    pub fn can_resume(&self) -> bool {
        self.resumable.is_some()
            && !self.is_busy()
            && self.peer().is_some()
            && self.resumable_peer == Some(self.peer_device())
    }

    /// The interrupted send is shown (Resume greyed out while not connected): not while
    /// something runs, nor to another device.
    pub fn shows_resume(&self) -> bool {
        self.resumable.is_some()
            && !self.is_busy()
            && (self.peer().is_none() || self.resumable_peer == Some(self.peer_device()))
    }

    /// Looking for peers on the local network.
    pub fn is_browsing(&self) -> bool {
        self.browsing.is_some()
    }

    /// The connected peer, if any.
    pub fn peer(&self) -> Option<&Peer> {
        self.worker.as_ref().and_then(|w| w.peer.as_ref())
    }

    /// A transfer is running or about to start.
    pub fn is_busy(&self) -> bool {
        self.send_pending
            || self
                .transfer
                .as_ref()
                .is_some_and(TransferProgress::is_running)
    }

    /// Total files and bytes of the measured selection.
    pub fn selection_total(&self) -> (u64, u64) {
        self.selection
            .iter()
            .filter_map(|s| s.measure.as_ref()?.as_ref().ok())
            .fold((0, 0), |(f, b), m| (f + m.files, b + m.bytes))
    }

    /// Why Send is not possible right now, if it is not.
    pub fn send_blocker(&self) -> Option<&'static str> {
        if self.peer().is_none() {
            Some("Connect to a peer first: with a one-time code above, or on the Connection tab.")
        } else if self.peer().is_some_and(Peer::is_unvouched) {
            Some(
                "This device is NOT trusted: it connected without a code and is not one of \
                 your trusted devices. Pair with a one-time code to send to it.",
            )
        } else if self.selection.is_empty() {
            Some("Add files or a folder to send.")
        } else if self.is_busy() {
            Some("A transfer is running.")
        } else if self.selection.iter().any(|s| s.measure.is_none()) {
            Some("Still measuring the selection…")
        } else if self
            .selection
            .iter()
            .any(|s| matches!(s.measure, Some(Err(_))))
        {
            Some("Remove the items that cannot be read.")
        } else {
            None
        }
    }

    /// The typed listening port (saved when it changed), or `None` after saying what
    /// is wrong with it.
    fn listen_port(&mut self) -> Option<u16> {
        let Ok(port) = self.listen_port.trim().parse::<u16>() else {
            self.notice = Some(Notice::Error(format!(
                "{:?} is not a port number (1–65535, or 0 for any free port).",
                self.listen_port.trim()
            )));
            return None;
        };
        if port != self.settings.listen_port {
            self.settings.listen_port = port;
            self.save_settings();
        }
        Some(port)
    }

    fn listen(&mut self) -> Task<Message> {
        let Some(port) = self.listen_port() else {
            return Task::none();
        };
        self.start_worker(Plan::Listen {
            bind: format!("0.0.0.0:{port}"),
            nameplate: None,
        })
    }

    /// The typed code; `None` after saying (next to the field) what is wrong with it.
    /// An empty field is `Some(None)`.
    fn typed_code(&mut self) -> Option<Option<Code>> {
        let typed = self.code_input.trim();
        if typed.is_empty() {
            return Some(None);
        }
        match typed.parse::<Code>() {
            Ok(code) => Some(Some(code)),
            Err(e) => {
                self.code_error = Some(format!("{e}."));
                None
            }
        }
    }

    /// Listens on `bind` for the peer that knows the typed code, or a new code (shown
    /// large) when none is typed; the beacon carries the code's nameplate.
    ///
    /// With a rendezvous server, the peer may be on any network: without a typed code
    /// a mailbox is opened there and the code made from its number (shown once it
    /// comes); a typed code joins its mailbox.
    fn wait_with_code(&mut self, bind: String) -> Task<Message> {
        let Some(typed) = self.typed_code() else {
            return Task::none();
        };
        if let Some(server) = self.rendezvous_server() {
            self.code_error = None;
            return match typed {
                None => self.start_worker(Plan::Allocate { server }),
                Some(code) => self.start_worker_with(
                    Plan::Claim {
                        server,
                        code: code.clone(),
                    },
                    Some(code),
                    None,
                ),
            };
        }
        let code = typed.unwrap_or_else(Code::generate);
        let task = self.start_worker_with(
            Plan::Listen {
                bind,
                nameplate: Some(code.nameplate()),
            },
            Some(code.clone()),
            None,
        );
        self.code_error = None;
        self.waiting_code = Some(code);
        task
    }

    /// Connects with the typed code: to the typed address, else to the peer that waits
    /// for it on the local network (found by the code's nameplate).
    fn connect_with_code(&mut self) -> Task<Message> {
        let code = match self.typed_code() {
            None => return Task::none(),
            Some(None) => {
                self.code_error = Some(
                    "Type the code the other side shows, for example 7-guitar-orbit.".to_owned(),
                );
                return Task::none();
            }
            Some(Some(code)) => code,
        };
        let rendezvous = self.rendezvous_server();
        let plan = match (self.peer_address.trim(), rendezvous) {
            ("", Some(server)) => Plan::Claim {
                server,
                code: code.clone(),
            },
            ("", None) if self.discovery.is_none() => {
                self.code_error = Some(
                    "Finding peers on this network is off: type the other side's address \
                     too."
                        .to_owned(),
                );
                return Task::none();
            }
            ("", None) => Plan::FindCode {
                nameplate: code.nameplate(),
            },
            (addr, _) => Plan::Connect {
                addr: with_default_port(addr),
            },
        };
        self.code_error = None;
        self.start_worker_with(plan, Some(code), None)
    }

    /// The rendezvous server codes go through (`host:port`): this run's
    /// (`P2P_RENDEZVOUS`), else the saved setting; `None` when neither is set (or it
    /// is empty): codes then work on this network only.
    pub fn rendezvous_server(&self) -> Option<String> {
        let given = match &self.rendezvous_override {
            Some(server) => Some(server.as_str()),
            None => self.settings.rendezvous.as_deref(),
        };
        crate::settings_form::rendezvous_server(given.unwrap_or_default())
            .ok()
            .flatten()
    }

    /// The rendezvous server given for this run (`P2P_RENDEZVOUS`), over the setting.
    pub fn rendezvous_override(&self) -> Option<&str> {
        self.rendezvous_override.as_deref()
    }

    fn connect(&mut self) -> Task<Message> {
        let addr = self.peer_address.trim();
        if addr.is_empty() {
            self.notice = Some(Notice::Error(
                "Type the peer's address, for example 192.168.1.20:14567.".to_owned(),
            ));
            return Task::none();
        }
        let addr = with_default_port(addr);
        self.start_worker(Plan::Connect { addr })
    }

    fn start_worker(&mut self, plan: Plan) -> Task<Message> {
        self.start_worker_with(plan, None, None)
    }

    /// Starts a worker for `plan`, letting in the peer that knows `code` besides the
    /// trusted devices (and, for a listener without a code, unknown devices for a person
    /// to judge at their offers). With `expect`, the peer must prove that device id.
    fn start_worker_with(
        &mut self,
        plan: Plan,
        code: Option<Code>,
        expect: Option<DeviceId>,
    ) -> Task<Message> {
        let stopped = self.stop();
        let id = self.next_worker;
        self.next_worker += 1;
        let config = match plan {
            // The side that accepts the connection offers ceilings.
            Plan::Listen { .. } | Plan::Allocate { .. } => self.settings.responder_config(),
            Plan::Connect { .. } | Plan::FindCode { .. } | Plan::Claim { .. } => {
                self.settings.session_config()
            }
        };
        // A listener lets unknown devices in for the person to decide on their offers
        // (`receive --ask`); a dialer insists on a code or trust, as `send` does.
        let accept_unknown = matches!(plan, Plan::Listen { .. }) && code.is_none();
        let security = self.security(code, accept_unknown);
        security.admission.expect(expect);
        let options = SessionOptions {
            security,
            config,
            max_speed: self.settings.max_speed(),
            ..SessionOptions::default()
        };
        let policy = Policy {
            receive: self.receive_options(),
            auto_accept: self.auto_accept,
            auto_reconnect: self.settings.auto_reconnect,
            max_retries: self.settings.max_retries,
            transport: self.settings.transport,
        };
        let (task, handle) = Task::run(
            worker::run(plan.clone(), options, policy, self.discovery.clone()),
            move |event| Message::Worker(id, event),
        )
        .abortable();
        self.worker = Some(Worker {
            id,
            plan,
            listening_on: None,
            peer: None,
            abort: handle.abort_on_drop(),
        });
        self.notice = None;
        Task::batch([stopped, task])
    }

    /// This device's key with the rules a new worker lets peers in by: the trusted
    /// devices as the trust file has them now, and `code` if any.
    fn security(&mut self, code: Option<Code>, accept_unknown: bool) -> Security {
        // A damaged file trusts nobody (and is left alone); the Settings tab says why.
        let trusted = self.trusted.reload();
        let mut admission = Admission::default()
            .with_trusted(&trusted)
            .accepting_unknown(accept_unknown);
        if let Some(code) = code {
            admission = admission.with_code(code);
        }
        self.security.with_admission(admission)
    }

    /// This device's id, as peers see it.
    pub fn device_id(&self) -> DeviceId {
        self.security.device_id()
    }

    /// Adds the connected peer to the trusted devices (in the background).
    fn remember_peer(&mut self) -> Task<Message> {
        let Some(peer) = self.peer() else {
            return Task::none();
        };
        let Some(identity) = &peer.identity else {
            return Task::none();
        };
        let edit = Edit::Add {
            id: identity.device_id,
            name: peer.name.clone(),
            fingerprint: Some(identity.fingerprint),
        };
        self.edit_trust(edit)
    }

    fn edit_trust(&mut self, edit: Edit) -> Task<Message> {
        let Some(dir) = self.trusted.dir().map(Path::to_path_buf) else {
            let error = "Cannot remember devices: there is no data folder.".to_owned();
            self.trusted.status = Some(Err(error.clone()));
            self.notice = Some(Notice::Error(error));
            return Task::none();
        };
        self.trusted.writes += 1;
        Task::perform(trust::apply(dir, edit), |result| {
            Message::Trust(TrustMessage::Saved(result))
        })
    }

    fn on_trust(&mut self, message: TrustMessage) -> Task<Message> {
        match message {
            TrustMessage::Rename(id) => {
                let name = self
                    .trusted
                    .get(&id)
                    .map(|d| d.name.clone())
                    .unwrap_or_default();
                self.trusted.renaming = Some((id, name));
            }
            TrustMessage::NameChanged(name) => {
                if let Some((_, typed)) = &mut self.trusted.renaming {
                    *typed = name;
                }
            }
            TrustMessage::CancelRename => self.trusted.renaming = None,
            TrustMessage::SaveName => {
                if let Some((id, name)) = self.trusted.renaming.take() {
                    return self.edit_trust(Edit::Rename { id, name });
                }
            }
            TrustMessage::Remove(id) => {
                if self
                    .trusted
                    .renaming
                    .as_ref()
                    .is_some_and(|(r, _)| *r == id)
                {
                    self.trusted.renaming = None;
                }
                return self.edit_trust(Edit::Remove { id });
            }
            TrustMessage::Saved(result) => {
                self.trusted.writes = self.trusted.writes.saturating_sub(1);
                let exit = self.exit_when_done();
                match result {
                    Ok((devices, said)) => {
                        self.trusted.devices = Ok(devices);
                        self.trusted.status = Some(Ok(said.clone()));
                        if self.notice.is_none() {
                            self.notice = Some(Notice::Info(said));
                        }
                    }
                    Err(error) => {
                        // A damaged file stays as it is; reading it again shows why.
                        self.trusted.reload();
                        self.trusted.status = Some(Err(error.clone()));
                        self.notice = Some(Notice::Error(format!(
                            "Could not change the trusted devices: {error}"
                        )));
                    }
                }
                return exit;
            }
        }
        Task::none()
    }

    /// Drops the worker. Between transfers its session is closed cleanly first (the
    /// peer sees the session end, not a broken connection); otherwise, or when that
    /// cannot be asked, aborting its task closes the listener and the connection.
    fn stop(&mut self) -> Task<Message> {
        self.stop_with(Ending::Stopped)
    }

    /// [`App::stop`], recording a running transfer as ended by `ending`.
    fn stop_with(&mut self, ending: Ending) -> Task<Message> {
        self.waiting_code = None;
        let Some(worker) = self.worker.take() else {
            return Task::none();
        };
        let idle = !self.is_busy() && self.offer.is_none();
        if let Some(peer) = worker.peer.as_ref().filter(|_| idle) {
            if peer.handle.close() {
                self.closing.push((worker.id, worker.abort));
            }
        }
        self.send_pending = false;
        self.offer = None;
        self.clashes = None;
        self.end_transfer(ending)
    }

    fn receive_options(&self) -> ReceiveOptions {
        ReceiveOptions {
            output_dir: self.output_dir.clone(),
            overwrite: self.settings.overwrite,
        }
    }

    fn push_receive_options(&mut self) {
        self.tracker.set_output_dir(&self.output_dir);
        if let Some(peer) = self.peer() {
            peer.handle
                .set_receive(self.receive_options(), self.auto_accept);
        }
    }

    fn save_settings(&mut self) {
        let Some(dir) = &self.config_dir else {
            return;
        };
        self.settings_status = Some(match self.settings.save(dir) {
            Ok(()) => Notice::Info(format!(
                "Saved to {}",
                dir.join(p2p_core::settings::SETTINGS_FILE).display()
            )),
            Err(e) => Notice::Error(format!("Could not save the settings: {e}")),
        });
    }

    /// Adds paths to the selection and measures each in the background.
    fn select(&mut self, paths: Vec<PathBuf>) -> Task<Message> {
        let mut tasks = Vec::new();
        for path in paths {
            if self.selection.iter().any(|s| s.path == path) {
                continue;
            }
            self.selection.push(Selected {
                path: path.clone(),
                measure: None,
            });
            tasks.push(Task::perform(measure(path.clone()), move |result| {
                Message::Measured(path.clone(), result)
            }));
        }
        Task::batch(tasks)
    }

    fn start_send(&mut self) {
        if self.send_blocker().is_some() {
            return;
        }
        let Some(peer) = self.peer() else {
            return;
        };
        let paths: Vec<PathBuf> = self.selection.iter().map(|s| s.path.clone()).collect();
        if peer.handle.send(paths.clone()) {
            self.tracker.set_sent_paths(&paths);
            self.sending = paths;
            self.send_pending = true;
            self.resumable = None;
            self.skipped.clear();
            self.notice = None;
        } else {
            self.notice = Some(Notice::Error("The connection is gone.".to_owned()));
        }
    }

    /// Sends the interrupted selection again under its transfer id.
    fn resume_send(&mut self) {
        if !self.can_resume() {
            return;
        }
        let (Some((paths, id)), Some(peer)) = (self.resumable.clone(), self.peer()) else {
            return;
        };
        if peer.handle.resume(paths.clone(), id) {
            self.tracker.set_sent_paths(&paths);
            self.sending = paths;
            self.send_pending = true;
            self.skipped.clear();
            self.notice = None;
        } else {
            self.notice = Some(Notice::Error("The connection is gone.".to_owned()));
        }
    }

    /// `--send`: start once connected and measured.
    fn send_if_ready(&mut self) -> Task<Message> {
        if self.send_on_connect && self.send_blocker().is_none() {
            self.send_on_connect = false;
            self.start_send();
        }
        Task::none()
    }

    fn on_worker(&mut self, event: WorkerEvent) -> Task<Message> {
        let Some(worker) = self.worker.as_mut() else {
            return Task::none();
        };
        match event {
            WorkerEvent::Listening(addr) => {
                worker.listening_on = Some(addr);
                // Show the port actually bound (port 0 or `--listen` pick their own).
                self.listen_port = addr.port().to_string();
            }
            WorkerEvent::Found(found) => {
                self.peer_address = found.addr.to_string();
                worker.plan = Plan::Connect {
                    addr: found.addr.to_string(),
                };
            }
            WorkerEvent::Code(code) => {
                // Shown large until the peer has used it.
                self.waiting_code = Some(code);
            }
            WorkerEvent::Path(path) => {
                if let Some(peer) = worker.peer.as_mut() {
                    peer.path = Some(path);
                    peer.addr = Some(path.addr);
                    self.tracker.set_path(path.kind);
                    if let Some(t) = self.transfer.as_mut().filter(|t| t.is_running()) {
                        t.path = Some(path.kind);
                    }
                }
            }
            WorkerEvent::Connected {
                peer,
                addr,
                identity,
                transport,
                path,
                handle,
            } => {
                self.session_has_path = path.is_some();
                if let Some(path) = path {
                    self.tracker.set_path(path.kind);
                }
                self.tracker.set_peer(peer.clone());
                // History names the peer by address and proven id, the transport, and
                // where files went.
                self.tracker.set_peer_details(
                    addr.map(|a| a.to_string()),
                    identity.as_ref().map(|i| i.device_id.to_string()),
                );
                if let Some(transport) = transport {
                    self.tracker.set_transport(transport);
                }
                self.tracker.set_output_dir(&self.output_dir);
                let by_code = identity
                    .as_ref()
                    .is_some_and(|i| i.admitted == Admitted::Code);
                worker.peer = Some(Peer {
                    name: peer,
                    addr,
                    identity,
                    transport,
                    path,
                    accepted: false,
                    handle,
                });
                self.notice = None;
                let mut tasks = vec![self.send_if_ready()];
                if by_code {
                    // Used: it lets nobody else in.
                    self.waiting_code = None;
                    self.code_input.clear();
                    if self.remember {
                        tasks.push(self.remember_peer());
                    }
                }
                return Task::batch(tasks);
            }
            WorkerEvent::Offer(offer) => {
                let unvouched = worker.peer.as_ref().is_some_and(Peer::is_unvouched);
                self.notice = Some(Notice::Info(format!(
                    "{}{} wants to send you {} — accept or decline on the Receive tab.",
                    offer.peer,
                    if unvouched { " (NOT trusted)" } else { "" },
                    crate::format::files(offer.files())
                )));
                self.offer = Some(offer);
                self.accepted_into = None;
                self.tab = Tab::Receive;
                return self.check_clashes();
            }
            WorkerEvent::Reconnecting {
                error,
                delay,
                attempt,
            } => {
                self.notice = Some(Notice::Info(format!(
                    "Connection lost ({error}). Reconnecting in {} (attempt {attempt})…",
                    crate::format::duration(delay)
                )));
            }
            WorkerEvent::Transfer(event) => return self.on_transfer(event),
            WorkerEvent::Note(note) => self.notice = Some(Notice::Info(note)),
            WorkerEvent::SendFailed { error, resumable } => {
                self.send_pending = false;
                if !resumable {
                    // Refused (the files exist, declined, no space…): sending the same
                    // again under the same id would be refused the same way.
                    self.resumable = None;
                }
                // After a started transfer the `Failed` event has said it already.
                if !matches!(&self.transfer, Some(t) if matches!(&t.state, TransferState::Failed { error: e } if *e == error))
                {
                    self.notice = Some(Notice::Error(format!("Could not send: {error}")));
                }
            }
            WorkerEvent::Cancelled => {
                self.notice = Some(Notice::Info(
                    "Transfer cancelled; the connection was closed.".to_owned(),
                ));
                return self.end_transfer(Ending::Cancelled);
            }
            WorkerEvent::Disconnected { reason } => {
                worker.peer = None;
                self.send_pending = false;
                self.offer = None;
                match reason {
                    Some(reason) => {
                        let was_running = self
                            .transfer
                            .as_ref()
                            .is_some_and(TransferProgress::is_running);
                        // A failed transfer has already said why; keep its words.
                        if was_running || !matches!(self.notice, Some(Notice::Error(_))) {
                            self.notice =
                                Some(Notice::Error(format!("Connection closed: {reason}")));
                        }
                        return self.end_transfer(Ending::Failed(reason));
                    }
                    None => {
                        if self.notice.is_none() {
                            self.notice =
                                Some(Notice::Info("The peer closed the connection.".to_owned()));
                        }
                    }
                }
            }
            WorkerEvent::Stopped { error } => {
                self.worker = None;
                self.waiting_code = None;
                self.send_pending = false;
                if let Some(error) = error {
                    self.notice = Some(Notice::Error(error));
                }
            }
        }
        Task::none()
    }

    fn on_transfer(&mut self, event: TransferEvent) -> Task<Message> {
        let now = Instant::now();
        let record = self.tracker.observe(&event);
        match &event {
            TransferEvent::Started {
                transfer_id,
                direction,
                files,
                total_bytes,
                peer,
                roots,
            } => {
                self.send_pending = false;
                self.notice = None;
                self.open_error = None;
                let transport = self.peer().and_then(|p| p.transport);
                self.transports = match self.transports.take() {
                    // The same transfer again (resumed): on this transport too.
                    Some((id, mut all)) if id == *transfer_id => {
                        if let Some(t) = transport.filter(|t| all.last() != Some(t)) {
                            all.push(t);
                        }
                        Some((id, all))
                    }
                    _ => Some((*transfer_id, transport.into_iter().collect())),
                };
                if *direction == Direction::Send {
                    // Offered for resume, to this device, should it stop before the end.
                    self.resumable = Some((self.sending.clone(), *transfer_id));
                    self.resumable_peer = Some(self.peer_device());
                } else {
                    self.received_into =
                        Some(self.accepted_into.take().unwrap_or(self.output_dir.clone()));
                }
                let mut progress = TransferProgress::started(
                    *transfer_id,
                    *direction,
                    *files,
                    *total_bytes,
                    peer.clone(),
                    roots.clone(),
                    now,
                );
                progress.transport = transport;
                progress.path = self.peer().and_then(|p| p.path).map(|p| p.kind);
                self.transfer = Some(progress);
            }
            TransferEvent::Skipped { path, reason } => {
                self.skipped.push((path.clone(), reason.clone()))
            }
            TransferEvent::Warning { message } => self.notice = Some(Notice::Info(message.clone())),
            TransferEvent::Failed { transfer_id, error } => {
                match &mut self.transfer {
                    // The panel says why, in red: the status bar does not repeat it.
                    Some(t) if t.transfer_id == *transfer_id => {
                        t.apply(&event, now);
                        self.notice = None;
                    }
                    // Refused before it started (the file exists, no space…): there is
                    // no progress to show, and the last transfer's Done or Failed panel
                    // would be stale; the status bar says why.
                    _ => {
                        self.transfer = None;
                        self.notice = Some(Notice::Error(format!("Transfer failed: {error}")));
                    }
                }
            }
            other => {
                if matches!(other, TransferEvent::Finished { .. })
                    && self.transfer.as_ref().map(|t| t.direction) == Some(Direction::Send)
                {
                    self.resumable = None;
                }
                if let Some(t) = &mut self.transfer {
                    t.apply(other, now);
                }
            }
        }
        record.map_or_else(Task::none, |record| self.keep(record))
    }

    /// Marks the running transfer as ended, if it still runs, and records it.
    fn end_transfer(&mut self, ending: Ending) -> Task<Message> {
        let Some(t) = &mut self.transfer else {
            return Task::none();
        };
        if !t.is_running() {
            return Task::none();
        }
        let (status, error) = match ending {
            Ending::Cancelled => {
                t.cancel();
                (Status::Interrupted, "cancelled by the user".to_owned())
            }
            Ending::Stopped => {
                t.cancel();
                (
                    Status::Interrupted,
                    "the connection was stopped by the user".to_owned(),
                )
            }
            Ending::WindowClosed => {
                t.cancel();
                (
                    Status::Interrupted,
                    "the window was closed during the transfer".to_owned(),
                )
            }
            Ending::Failed(error) => {
                t.fail(error.clone());
                (Status::Failed, error)
            }
        };
        match self.tracker.end(status, error) {
            Some(record) => self.keep(record),
            None => Task::none(),
        }
    }

    /// Shows a record and appends it to the history file in the background.
    fn keep(&mut self, mut record: Record) -> Task<Message> {
        // The tracker lists every transport since the window opened; a record names the
        // ones its own transfer ran on (an offer refused before it started: the
        // session's).
        record.transports = match &self.transports {
            Some((id, all)) if *id == record.transfer_id => all.clone(),
            _ => self.peer().and_then(|p| p.transport).into_iter().collect(),
        };
        // The tracker keeps the last path for the next session; a session without one
        // (not through a rendezvous) has none.
        if !self.session_has_path {
            record.paths.clear();
        }
        self.history.push(record.clone());
        let Some(file) = self.history_file.clone() else {
            return Task::none();
        };
        self.history_writes += 1;
        Task::perform(
            async move {
                tokio::task::spawn_blocking(move || file.append(&record).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            },
            Message::HistoryWritten,
        )
    }
}

/// `addr` with the default port when it has none (a bare host or IPv4 address).
fn with_default_port(addr: &str) -> String {
    p2p_core::net::tcp::with_default_port(addr)
}

/// This device's key: the one handed in, else the one in the data folder (created on
/// first use). A key that cannot be read or created — a damaged file is left alone —
/// is reported, and a key that lives in memory for this run is used instead.
/// Returns the key, its file, and the error to show.
fn load_identity(
    given: Option<Arc<Identity>>,
    data_dir: Option<&Path>,
) -> (Security, Option<PathBuf>, Option<String>) {
    let fallback = |error: String| (Security::ephemeral(), None, Some(error));
    let (identity, file) = match (given, data_dir) {
        (Some(identity), _) => (identity, None),
        (None, None) => {
            return fallback(format!(
                "No data folder for this device's key (set {}): this window uses a key of \
                 its own for this run, so peers that trust this device will not recognise it.",
                p2p_core::history::DATA_DIR_ENV
            ))
        }
        (None, Some(dir)) => match Identity::load_or_create(dir) {
            Ok(identity) => (
                Arc::new(identity),
                Some(dir.join(p2p_core::net::identity::KEY_FILE)),
            ),
            Err(e) => {
                return fallback(format!(
                    "{e}. This window uses a key of its own for this run, so peers that \
                     trust this device will not recognise it."
                ))
            }
        },
    };
    match Security::new(identity, Admission::default()) {
        Ok(security) => (security, file, None),
        Err(e) => fallback(format!(
            "Cannot use this device's key ({e}); this window uses a key of its own for this run."
        )),
    }
}

/// How a running transfer ended, when the core did not say it.
enum Ending {
    Cancelled,
    Stopped,
    WindowClosed,
    Failed(String),
}

/// How the person answered an offer.
enum Answer {
    Accept,
    /// Accept, replacing the files that exist.
    Replace,
    Decline,
}

/// The window events the app reacts to (its subscription), whatever the widgets did
/// with them: dropped files and keys.
pub fn window_event(
    event: iced::Event,
    status: iced::event::Status,
    _window: iced::window::Id,
) -> Option<Message> {
    use iced::keyboard::{key::Named, Event as KeyEvent, Key};
    match event {
        iced::Event::Window(iced::window::Event::FileDropped(path)) => Some(Message::Dropped(path)),
        iced::Event::Keyboard(KeyEvent::KeyPressed { key, modifiers, .. }) => {
            let key = match key {
                Key::Named(Named::Tab) if modifiers.shift() => KeyPress::Previous,
                Key::Named(Named::Tab) => KeyPress::Next,
                // A field that took Enter (its submit) or Esc keeps it.
                Key::Named(Named::Enter) if status == iced::event::Status::Ignored => {
                    KeyPress::Enter
                }
                Key::Named(Named::Escape) if status == iced::event::Status::Ignored => {
                    KeyPress::Escape
                }
                _ => return None,
            };
            Some(Message::Key(key))
        }
        _ => None,
    }
}

/// The relative paths (of `files`) that exist under `dir`.
fn existing(dir: &Path, files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
        .cloned()
        .collect()
}

/// A file's modification time and size, `None` when it cannot be read.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// This machine's addresses, one per interface: the ones a peer can reach first,
/// loopback last.
async fn local_addresses() -> Vec<IpAddr> {
    tokio::task::spawn_blocking(p2p_core::net::tcp::local_addresses)
        .await
        .unwrap_or_default()
}

/// The program that opens a folder in the file manager.
pub const OPENER: &str = if cfg!(target_os = "macos") {
    "open"
} else if cfg!(windows) {
    "explorer"
} else {
    "xdg-open"
};

/// Opens `dir` in the file manager; the error in words when that fails.
async fn open_folder(opener: String, dir: PathBuf) -> Result<(), String> {
    let shown = dir.display().to_string();
    let program = opener.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    })
    .await
    .map_err(|e| format!("Could not open {shown}: {e}."))?;
    match run {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "Could not open {shown}: {opener} found no program for folders ({status}). \
             The files are there; open the folder in your file manager."
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "Could not open {shown}: {opener} is not installed. The files are there; open \
             the folder in your file manager."
        )),
        Err(e) => Err(format!("Could not open {shown}: {e}.")),
    }
}

/// Reads the history file off the UI thread.
async fn load_history(file: HistoryFile) -> Result<(Vec<Record>, usize), String> {
    let loaded = tokio::task::spawn_blocking(move || file.load())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((loaded.records, loaded.skipped.len()))
}

/// Measures one path with the core's manifest scan, off the UI thread.
async fn measure(path: PathBuf) -> Result<Measure, String> {
    let scan = tokio::task::spawn_blocking(move || scan(&path)).await;
    scan.unwrap_or_else(|e| Err(format!("measuring failed: {e}")))
}

fn scan(path: &Path) -> Result<Measure, String> {
    let manifest = SourceManifest::scan(&[path]).map_err(|e| e.to_string())?;
    let is_dir = manifest
        .entries
        .first()
        .is_some_and(|e| matches!(e.kind, p2p_core::wire::EntryKind::Dir));
    let files = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.kind, p2p_core::wire::EntryKind::File { .. }))
        .count() as u64;
    Ok(Measure {
        is_dir,
        files,
        bytes: manifest.total_bytes(),
        skipped: manifest.skipped.len(),
    })
}
