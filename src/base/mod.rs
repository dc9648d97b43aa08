//! What every stage shares: the change that travels, the clock that stamps
//! it, what the source tells the stamper, stream positions, the retry
//! backoff, and the error of a setting that cannot be used. Imports nothing from the stages.

pub mod backoff;
pub mod change;
pub mod check;
pub mod durable;
pub mod event;
pub mod filter;
pub mod hlc;
pub mod position;
pub mod setting;
