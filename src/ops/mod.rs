//! What an operator sees of the agent: metrics, readiness, and the admin
//! HTTP endpoint that serves them. Every stage counts into [`metrics`] and
//! reports to [`readiness`]; this folder imports no stage.

pub mod admin;
pub mod metrics;
pub mod readiness;
