//! Stopping on purpose: the person at this side pressed Ctrl+C or Cancel.
//!
//! An [`Interrupt`] travels in [`SessionOptions`](crate::SessionOptions). Once
//! triggered, every wait of a session ends with
//! [`TransferError::Cancelled`](crate::error::TransferError::Cancelled): connecting and
//! accepting, the handshake, the wait between transfers, and a running transfer — which
//! first tells the peer (`Error { code: Interrupted }`, see docs/protocol.md), so that the
//! peer knows the transfer can be resumed and waits for it instead of failing.

use tokio_util::sync::CancellationToken;

use crate::error::{Error, TransferError};

/// A shared "stop now" switch. Clones trigger and observe the same switch; the default
/// one is never triggered unless someone calls [`Interrupt::trigger`].
#[derive(Debug, Clone, Default)]
pub struct Interrupt(CancellationToken);

impl Interrupt {
    /// A new switch, not triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything that observes this switch to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether [`Interrupt::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once triggered (at once if it already was).
    pub async fn triggered(&self) {
        self.0.cancelled().await
    }

    /// Runs `work` unless the switch is triggered first, in which case `work` is dropped
    /// and the result is [`TransferError::Cancelled`]. For waits that hold nothing the
    /// peer must be told about (connecting, accepting, a handshake).
    pub async fn guard<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::select! {
            biased;
            () = self.triggered() => Err(TransferError::Cancelled.into()),
            result = work => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_triggered_switch_ends_a_guarded_wait_with_cancelled() {
        let interrupt = Interrupt::new();
        let clone = interrupt.clone();
        let waiting = tokio::spawn(async move {
            clone
                .guard(std::future::pending::<Result<(), Error>>())
                .await
        });
        assert!(!interrupt.is_triggered());
        interrupt.trigger();
        let result = waiting.await.expect("task");
        assert!(matches!(
            result,
            Err(Error::Transfer(TransferError::Cancelled))
        ));
        // Work that is already done still wins over nothing.
        let fresh = Interrupt::new();
        assert_eq!(fresh.guard(async { Ok::<_, Error>(7) }).await.ok(), Some(7));
    }
}
