//! Operator commands beside the agent: `geosync verify` (the regions'
//! data compared directly), `geosync status` (an agent's view, from its
//! admin endpoint) and `geosync check-config`. They stand over every other folder and no
//! stage imports them.

pub mod check_config;
pub mod status;
pub mod verify;
