//! Acknowledgements over Microsoft Graph (`[reader.reply] via = "graph"`):
//! the rendered MIME through `POST /users/{from}/sendMail`, with the
//! reader's own Graph token (its scope carries `Mail.Send`).
//!
//! Owns only what sending over Graph decides: which refusals are final for
//! the row, and that a send whose answer was lost ([`GraphError::SendUncertain`])
//! is not sent again: Graph may have sent it, and a second acknowledgement
//! is worse than a missing one; the row is given up with the reason.

use std::sync::Arc;

use crate::config::ReaderConfig;
use crate::reader::StoreToken;
use crate::source::graph::{self, GraphError};

/// Why sendMail did not go through; the text is the row's `last_error`.
#[derive(Debug, thiserror::Error)]
#[error("sending the acknowledgement over Microsoft Graph: {0}")]
pub struct GraphSendError(#[from] GraphError);

impl GraphSendError {
    /// Trying again cannot help, or could send the mail twice.
    pub fn is_permanent(&self) -> bool {
        matches!(self.0, GraphError::SendUncertain { .. })
    }
}

/// Sends `mime` as `from` (`[reader.reply] from`), through the reader's
/// Graph host with the reader's token.
pub(super) async fn send(
    tokens: &crate::auth::TokenStore,
    reader: &ReaderConfig,
    from: &str,
    mime: &[u8],
) -> Result<(), GraphSendError> {
    let client = graph::client_for(reader, Arc::new(StoreToken::new(tokens, reader)))?;
    client.send_mail(from, mime).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_uncertain_send_is_final() {
        let uncertain = GraphSendError(GraphError::SendUncertain {
            detail: "connection reset".into(),
        });
        assert!(uncertain.is_permanent());
        assert!(
            uncertain
                .to_string()
                .contains("may or may not have been sent")
        );
        let throttled = GraphSendError(GraphError::Throttled {
            step: "sendMail",
            retry_after: std::time::Duration::from_secs(30),
        });
        assert!(!throttled.is_permanent(), "retried from the outbox");
    }
}
