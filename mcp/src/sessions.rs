//! A cap on live MCP sessions over HTTP. rmcp's [`LocalSessionManager`] keeps every session a
//! client opens until it is closed or idles out (longer than the longest run), so without a cap
//! a client that keeps sending `initialize` grows the server's memory without bound.

use futures::Stream;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::{
    ServerSseMessage, SessionId, SessionManager,
    local::{LocalSessionManager, LocalSessionManagerError},
};

/// Live sessions allowed when the server does not say otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 1_000;

/// [`LocalSessionManager`] that refuses a new session while `max` are live.
pub struct BoundedSessions {
    inner: LocalSessionManager,
    max: usize,
}

impl BoundedSessions {
    /// At most `max` live sessions of `inner`.
    pub fn new(inner: LocalSessionManager, max: usize) -> Self {
        BoundedSessions { inner, max }
    }
}

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    /// Every slot is taken; the client may retry once others close or idle out.
    #[error("too many MCP sessions are open ({0}); close one or retry later")]
    Full(usize),
    /// The session itself failed.
    #[error(transparent)]
    Session(#[from] LocalSessionManagerError),
}

impl SessionManager for BoundedSessions {
    type Error = SessionsError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        // A check, then a create: a burst can overshoot by the requests in flight at that
        // instant, which stays bounded by the listener's own connection handling.
        if self.inner.sessions.read().await.len() >= self.max {
            return Err(SessionsError::Full(self.max));
        }
        Ok(self.inner.create_session().await?)
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        Ok(self.inner.initialize_session(id, message).await?)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        Ok(self.inner.has_session(id).await?)
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        Ok(self.inner.close_session(id).await?)
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_stream(id, message).await?)
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        Ok(self.inner.accept_message(id, message).await?)
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.create_standalone_stream(id).await?)
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        Ok(self.inner.resume(id, last_event_id).await?)
    }
}
