//! Desktop front end of p2p-transfer.
//!
//! This crate is a placeholder until the GUI issue lands: it will render the same
//! [`p2p_core::event::TransferEvent`]s the CLI renders, in an Iced window with the
//! Connection, Send, Receive, Settings and History tabs. It holds no protocol or file
//! logic; everything it needs comes from `p2p-core`.

/// The tabs the GUI will show, in order.
pub const TABS: [&str; 5] = ["Connection", "Send", "Receive", "Settings", "History"];
