//! `p2p-transfer id` and `p2p-transfer trust list | add | remove | rename`.

use clap::{Args, Subcommand};
use p2p_core::net::DeviceId;
use p2p_core::text::Printable;

#[derive(Debug, Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    pub action: TrustAction,
}

#[derive(Debug, Subcommand)]
pub enum TrustAction {
    /// List the trusted devices.
    List,
    /// Trust a device by its id (as `p2p-transfer id` shows it on that device).
    Add {
        device_id: DeviceId,
        /// A name to show for it.
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop trusting a device: it needs a code again.
    Remove { device_id: DeviceId },
    /// Change the name shown for a trusted device.
    Rename { device_id: DeviceId, name: String },
}

/// Prints this device's id (stdout) and where its key lives (stderr).
pub fn show_id() -> anyhow::Result<()> {
    let identity = super::identity()?;
    println!("{}", identity.device_id());
    eprintln!(
        "(key: {})",
        super::data_dir()?
            .join(p2p_core::net::identity::KEY_FILE)
            .display()
    );
    Ok(())
}

pub fn run(args: TrustArgs) -> anyhow::Result<()> {
    let mut store = super::trust_store()?;
    match args.action {
        TrustAction::List => {
            if store.devices().is_empty() {
                eprintln!(
                    "no trusted devices; a session with a code and --remember adds one, \
                     or `p2p-transfer trust add DEVICE-ID`"
                );
                return Ok(());
            }
            println!("{:<29}  {:<24}  ADDED", "DEVICE ID", "NAME");
            for device in store.devices() {
                println!(
                    "{:<29}  {:<24}  {}",
                    device.id.to_string(),
                    Printable(&device.name),
                    added(device.added)
                );
            }
            return Ok(());
        }
        TrustAction::Add { device_id, name } => {
            let name = name.unwrap_or_else(|| format!("device {}", device_id.short()));
            store.add(device_id, &name, None);
            eprintln!("trusting {device_id} ({})", Printable(&name));
        }
        TrustAction::Remove { device_id } => {
            anyhow::ensure!(
                store.remove(&device_id),
                "{device_id} is not a trusted device (see `p2p-transfer trust list`)"
            );
            eprintln!("no longer trusting {device_id}: it needs a code again");
        }
        TrustAction::Rename { device_id, name } => {
            anyhow::ensure!(
                store.rename(&device_id, &name),
                "{device_id} is not a trusted device (see `p2p-transfer trust list`)"
            );
        }
    }
    store
        .save()
        .map_err(|e| p2p_core::Error::Security(e.into()))?;
    Ok(())
}

fn added(secs: u64) -> String {
    p2p_core::history::utc(secs)
}
