//! Stage 2: stamping. The spool queues what the source reported; the
//! stamper turns dirty keys into stamped changes inside the local Redis and
//! pushes them into the outbox (changes first seen in a full resync's
//! snapshot just above what the key or region had, [`seen`]); collections
//! too large for one script are stamped and shipped in pieces; keys of
//! module types are skipped and counted.

pub mod large;
pub mod module_keys;
pub mod seen;
pub mod spool;
pub mod stamper;
