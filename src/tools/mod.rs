//! Operator commands beside the agent: `geosync verify` (the regions'
//! data compared directly) and `geosync check-config`. They stand over every other folder and no
//! stage imports them.

pub mod check_config;
pub mod verify;
