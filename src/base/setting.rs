//! A setting that cannot be used: what the stages' settings (TLS to the
//! local Redis, peer security) report when they are read, and what the
//! agent's configuration stops the start with.

/// An invalid setting: its name as on the command line, and what is wrong
/// with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {message}")]
pub struct SettingError {
    /// The setting's name as on the command line.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// A [`SettingError`] for `setting`.
pub fn bad(setting: &'static str, message: impl Into<String>) -> SettingError {
    SettingError {
        setting,
        message: message.into(),
    }
}
