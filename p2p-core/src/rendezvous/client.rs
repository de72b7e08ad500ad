//! The client side: one [`Mailbox`] per transfer attempt.
//!
//! [`Mailbox::recv`] is cancel-safe (it only awaits the next frame of a `FramedRead`),
//! so it can sit in a `tokio::select!` next to timers and other sockets.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::protocol::{self, ClientMessage, ServerMessage, TurnGrant, MAX_BODY, PROTOCOL_VERSION};

/// How long resolving and connecting may take, and each answer to `Hello`, `Allocate`
/// and `Claim`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server could not be reached, in words (no "os error N").
fn unreachable_words(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => {
            "nothing is listening there (is the address right, and the server running?)".into()
        }
        TimedOut => "no answer (a firewall, or the wrong address?)".into(),
        HostUnreachable | NetworkUnreachable => "it cannot be reached from this network".into(),
        NotFound => "the name does not resolve".into(),
        _ => crate::error::os_words(e),
    }
}

/// What went wrong talking to the rendezvous server.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The server could not be resolved or connected to.
    #[error(
        "cannot reach the rendezvous server {server}: {}",
        unreachable_words(why)
    )]
    Unreachable {
        /// The `host:port` as given.
        server: String,
        /// Why.
        why: io::Error,
    },
    /// The server refused: its `Error` reason, escaped for showing.
    #[error("the rendezvous server refused: {0}")]
    Refused(String),
    /// The other side's connection closed.
    #[error("the other side left the rendezvous")]
    PeerLeft,
    /// The server closed the connection without a reason.
    #[error("the rendezvous server closed the connection")]
    Closed,
    /// No answer in time.
    #[error("the rendezvous server did not answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
    /// The server said something this client does not expect.
    #[error("rendezvous protocol error: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("rendezvous connection failed: {0}")]
    Io(#[from] io::Error),
    /// A tracker's connection is down; it is being re-established in the background.
    #[error("the connection to the tracker {server} is down ({why}); reconnecting")]
    Reconnecting {
        /// The `host:port` as given.
        server: String,
        /// Why the last connection ended or the last attempt failed.
        why: String,
    },
}

/// A connection to the rendezvous server holding one mailbox.
#[derive(Debug)]
pub struct Mailbox {
    conn: Connection,
}

impl Mailbox {
    /// Connects to `server` (`host:port`) and opens a new mailbox; returns it and its
    /// nameplate.
    pub async fn allocate(server: &str) -> Result<(Mailbox, u32), RendezvousError> {
        let mut conn = Connection::open(server).await?;
        conn.write(&ClientMessage::Allocate).await?;
        match conn.answer().await? {
            ServerMessage::Allocated { nameplate } => Ok((Mailbox { conn }, nameplate)),
            other => Err(unexpected("Allocated", &other)),
        }
    }

    /// Connects to `server` and joins the mailbox waiting on `nameplate`.
    pub async fn claim(server: &str, nameplate: u32) -> Result<Mailbox, RendezvousError> {
        let mut conn = Connection::open(server).await?;
        conn.write(&ClientMessage::Claim { nameplate }).await?;
        match conn.answer().await? {
            ServerMessage::Claimed => Ok(Mailbox { conn }),
            other => Err(unexpected("Claimed", &other)),
        }
    }

    /// The TURN credentials the server handed out, if it has a TURN server.
    pub fn turn(&self) -> Option<&TurnGrant> {
        self.conn.turn.as_ref()
    }

    /// The server's address as connected; its UDP port answers STUN Binding requests.
    pub fn server_addr(&self) -> SocketAddr {
        self.conn.server
    }

    /// Sends `body` (at most [`MAX_BODY`] bytes) to the other side; queued by the server
    /// until it joins.
    pub async fn send(&mut self, body: &[u8]) -> Result<(), RendezvousError> {
        if body.len() > MAX_BODY {
            return Err(RendezvousError::Protocol(format!(
                "message of {} bytes is longer than the {MAX_BODY} a rendezvous message may be",
                body.len()
            )));
        }
        self.conn
            .write(&ClientMessage::Add {
                body: body.to_vec(),
            })
            .await
    }

    /// The next body from the other side. Skips `PeerJoined`; the other side's leaving is
    /// `Err(PeerLeft)`. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<u8>, RendezvousError> {
        loop {
            match self.conn.read().await? {
                ServerMessage::Message { body } => return Ok(body),
                ServerMessage::PeerJoined => {}
                other => return Err(unexpected("Message", &other)),
            }
        }
    }
}

/// One connection to the rendezvous server, past `Hello`/`Welcome`: what [`Mailbox`] and
/// the [tracker](super::tracker) client share.
#[derive(Debug)]
pub(super) struct Connection {
    reader: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    writer: OwnedWriteHalf,
    server: SocketAddr,
    turn: Option<TurnGrant>,
}

impl Connection {
    /// Connects to `server` (`host:port`) and says `Hello`, all within
    /// [`CONNECT_TIMEOUT`] per step.
    pub(super) async fn open(server: &str) -> Result<Connection, RendezvousError> {
        let unreachable = |why| RendezvousError::Unreachable {
            server: server.to_owned(),
            why,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect_any(server))
            .await
            .map_err(|_| unreachable(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
            .map_err(unreachable)?;
        let _ = stream.set_nodelay(true);
        let server_addr = stream.peer_addr()?;
        let (read, writer) = stream.into_split();
        let mut conn = Connection {
            reader: FramedRead::with_capacity(read, protocol::codec(), 256),
            writer,
            server: server_addr,
            turn: None,
        };
        conn.write(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
        })
        .await?;
        match conn.answer().await? {
            ServerMessage::Welcome { version, turn } if version == PROTOCOL_VERSION => {
                conn.turn = turn;
                Ok(conn)
            }
            ServerMessage::Welcome { version, .. } => Err(RendezvousError::Protocol(format!(
                "the server speaks version {version}, this client {PROTOCOL_VERSION}"
            ))),
            other => Err(unexpected("Welcome", &other)),
        }
    }

    /// The next frame, within [`CONNECT_TIMEOUT`].
    pub(super) async fn answer(&mut self) -> Result<ServerMessage, RendezvousError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.read())
            .await
            .map_err(|_| RendezvousError::Timeout)?
    }

    /// The next frame; `Error` and `PeerLeft` become errors. Cancel-safe.
    pub(super) async fn read(&mut self) -> Result<ServerMessage, RendezvousError> {
        match self.reader.next().await {
            None => Err(RendezvousError::Closed),
            Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err(
                RendezvousError::Protocol("the server sent an oversized frame".to_owned()),
            ),
            Some(Err(e)) => Err(match e.kind() {
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                    RendezvousError::Closed
                }
                _ => RendezvousError::Io(e),
            }),
            Some(Ok(payload)) => match protocol::decode::<ServerMessage>(&payload) {
                Ok(ServerMessage::Error { reason }) => Err(RendezvousError::Refused(
                    crate::text::printable(&reason).into_owned(),
                )),
                Ok(ServerMessage::PeerLeft) => Err(RendezvousError::PeerLeft),
                Ok(message) => Ok(message),
                Err(e) => Err(RendezvousError::Protocol(format!("the server sent a {e}"))),
            },
        }
    }

    /// Writes one message (not cancel-safe).
    pub(super) async fn write(&mut self, message: &ClientMessage) -> Result<(), RendezvousError> {
        let frame = protocol::encode_frame(message)
            .ok_or_else(|| RendezvousError::Protocol("message exceeds a frame".to_owned()))?;
        self.writer.write_all(&frame).await?;
        Ok(())
    }
}

async fn connect_any(server: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(server).await? {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
    }))
}

pub(super) fn unexpected(wanted: &str, got: &ServerMessage) -> RendezvousError {
    let name = match got {
        ServerMessage::Welcome { .. } => "Welcome",
        ServerMessage::Allocated { .. } => "Allocated",
        ServerMessage::Claimed => "Claimed",
        ServerMessage::PeerJoined => "PeerJoined",
        ServerMessage::Message { .. } => "Message",
        ServerMessage::PeerLeft => "PeerLeft",
        ServerMessage::Error { .. } => "Error",
        ServerMessage::Announced { .. } => "Announced",
        ServerMessage::Peers { .. } => "Peers",
        ServerMessage::Introduced { .. } => "Introduced",
        ServerMessage::Introduction { .. } => "Introduction",
    };
    RendezvousError::Protocol(format!("expected {wanted}, the server sent {name}"))
}
