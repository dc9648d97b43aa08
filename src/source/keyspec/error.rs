//! Errors of the key-spec module: the server failed, or its reply had an unexpected shape.

/// Why the key-spec table could not be built or the server could not be asked.
///
/// Exists so callers can tell a connection/server problem (retry, reconnect) from a reply this
/// module does not understand (a protocol or version mismatch worth reporting).
#[derive(Debug, thiserror::Error)]
pub enum KeySpecError {
    /// The connection failed or the server answered with an error reply.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// The reply did not have the expected shape; the text names what was unexpected.
    #[error("unexpected reply: {0}")]
    BadReply(String),
    /// An empty argv was given where a command name is required.
    #[error("empty argv: no command name")]
    EmptyArgv,
}

pub(super) fn bad(msg: String) -> KeySpecError {
    KeySpecError::BadReply(msg)
}
