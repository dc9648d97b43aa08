//! [`RdbReader`]: the header check, the opcode loop shared by the decoding
//! ([`RdbReader::next_entry`]) and key-only ([`RdbReader::next_key`]) modes,
//! and the reader's finished/failed state.

use std::fmt;
use std::io::Read;

use super::error::RdbError;
use super::format::{
    DEFAULT_MAX_STRING_LEN, FIRST_OPCODE, MAX_REDIS_RDB_VERSION, MODULE_OP_UINT, OP_AUX, OP_EOF,
    OP_EXPIRETIME, OP_EXPIRETIME_MS, OP_FREQ, OP_FUNCTION_PRE_GA, OP_FUNCTION2, OP_IDLE,
    OP_MODULE_AUX, OP_RESIZEDB, OP_SELECTDB, OP_SLOT_IMPORT, OP_SLOT_INFO, PREALLOC_CAP, T_22,
    T_HASH_LISTPACK_EX, T_HASH_LISTPACK_EX_PRE_GA, T_HASH_METADATA, VALKEY_RDB_VERSION,
};
use super::source::Source;
use super::types::{
    RdbEntry, RdbFlavor, RdbKey, RdbKeyInfo, RdbValue, RdbValueType, module_type_name,
};

/// A key whose type byte and name have been read; its value comes next.
struct KeyHead {
    type_byte: u8,
    key: Vec<u8>,
    expire_at_ms: Option<i64>,
}

/// One step of the opcode loop: a non-key item, or a key whose value is
/// still in the stream (to be decoded or skipped by the caller).
enum Item {
    Entry(RdbEntry),
    Key(KeyHead),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Failed,
}

fn show_key(key: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = &key[..key.len().min(MAX)];
    let mut s = format!("{:?}", String::from_utf8_lossy(shown));
    if key.len() > MAX {
        s.push_str("...");
    }
    s
}

fn is_empty_collection(v: &RdbValue) -> bool {
    match v {
        RdbValue::List(x) | RdbValue::Set(x) => x.is_empty(),
        RdbValue::SortedSet(x) => x.is_empty(),
        RdbValue::Hash(x) => x.is_empty(),
        RdbValue::String(_) | RdbValue::Stream(_) | RdbValue::Module { .. } => false,
    }
}

/// Incremental RDB decoder over any byte source, so a replica can consume the
/// master's snapshot key by key without holding it in memory.
pub struct RdbReader<R: Read> {
    pub(super) src: Source<R>,
    pub(super) version: u32,
    pub(super) flavor: RdbFlavor,
    db: u64,
    pending_expire: Option<i64>,
    state: State,
    pub(super) max_string_len: u64,
}

impl<R: Read> fmt::Debug for RdbReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdbReader")
            .field("version", &self.version)
            .field("flavor", &self.flavor)
            .field("db", &self.db)
            .field("offset", &self.src.offset)
            .field("state", &self.state)
            .finish()
    }
}

impl<R: Read> RdbReader<R> {
    /// Reads and checks the magic "REDIS" + 4-digit version (or "VALKEY" +
    /// 3-digit version).
    pub fn new(reader: R) -> Result<Self, RdbError> {
        let mut src = Source {
            inner: reader,
            crc: 0,
            offset: 0,
        };
        let magic: [u8; 9] = src.array()?;
        let (flavor, digits) = if magic.starts_with(b"REDIS") {
            (RdbFlavor::Redis, &magic[5..])
        } else if magic.starts_with(b"VALKEY") {
            (RdbFlavor::Valkey, &magic[6..])
        } else {
            return Err(RdbError::BadMagic);
        };
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(RdbError::BadMagic);
        }
        let version = digits
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let supported = match flavor {
            RdbFlavor::Redis => (1..=MAX_REDIS_RDB_VERSION).contains(&version),
            // Versions 12..=79 are "foreign" (other forks) for Valkey.
            RdbFlavor::Valkey => (1..=11).contains(&version) || version == VALKEY_RDB_VERSION,
        };
        if !supported {
            return Err(RdbError::UnsupportedVersion(version));
        }
        Ok(RdbReader {
            src,
            version,
            flavor,
            db: 0,
            pending_expire: None,
            state: State::Running,
            max_string_len: DEFAULT_MAX_STRING_LEN,
        })
    }

    /// The RDB format version from the header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Which server family's magic the stream carries.
    pub fn flavor(&self) -> RdbFlavor {
        self.flavor
    }

    /// Bytes consumed from the source so far (for progress and diagnostics).
    pub fn bytes_read(&self) -> u64 {
        self.src.offset
    }

    /// Overrides the sanity limit on a single string's length (default
    /// [`DEFAULT_MAX_STRING_LEN`]); longer strings are reported as corrupt.
    pub fn set_max_string_len(&mut self, max: u64) {
        self.max_string_len = max;
    }

    /// Borrows the underlying source.
    pub fn get_ref(&self) -> &R {
        &self.src.inner
    }

    /// Returns the underlying source; after `Ok(None)` it is positioned right
    /// after the RDB trailer (e.g. at the start of the replication stream).
    pub fn into_inner(self) -> R {
        self.src.inner
    }

    /// Next item; Ok(None) after the EOF opcode (and checksum, verified when
    /// non-zero) was read.
    pub fn next_entry(&mut self) -> Result<Option<RdbEntry>, RdbError> {
        self.guarded(|r| {
            loop {
                match r.read_item(false)? {
                    None => return Ok(None),
                    Some(Item::Entry(entry)) => return Ok(Some(entry)),
                    Some(Item::Key(head)) => {
                        let value = r.value_of(&head, Self::read_value)?;
                        // An empty collection: Redis drops those on load too.
                        if !is_empty_collection(&value) {
                            return Ok(Some(RdbEntry::Key(RdbKey {
                                db: r.db,
                                key: head.key,
                                expire_at_ms: head.expire_at_ms,
                                value,
                            })));
                        }
                    }
                }
            }
        })
    }

    /// Key-only mode: the next key (database, name, expiry, value type), with
    /// every item in between and the key's value skipped rather than decoded.
    /// Ok(None) after the EOF opcode and checksum, like [`Self::next_entry`].
    ///
    /// It yields exactly the keys `next_entry` yields (empty collections are
    /// dropped in both), and checks the same framing: opcodes, lengths and
    /// encodings of every value type down to each element's length, the
    /// string length limit, and the CRC-64 trailer over every byte, skipped
    /// ones included. What it does not check is the content of the skipped
    /// payloads (listpack/ziplist/intset internals, LZF data, stream entries
    /// and pending-list consistency); damage there is still caught by the
    /// checksum, at the end of the stream.
    ///
    /// Memory does not depend on the values: payloads are skipped through a
    /// fixed-size buffer and collections element by element, and aux fields
    /// and function libraries are skipped too. Only the key name is
    /// allocated (at most [`Self::set_max_string_len`] bytes).
    pub fn next_key(&mut self) -> Result<Option<RdbKeyInfo>, RdbError> {
        self.guarded(|r| {
            loop {
                let head = match r.read_item(true)? {
                    None => return Ok(None),
                    Some(Item::Key(head)) => head,
                    // Not produced in key-only mode.
                    Some(Item::Entry(_)) => continue,
                };
                if r.value_of(&head, Self::skip_value)? {
                    let value_type = RdbValueType::from_type_byte(head.type_byte).ok_or(
                        RdbError::UnknownType {
                            type_byte: head.type_byte,
                            version: r.version,
                        },
                    )?;
                    return Ok(Some(RdbKeyInfo {
                        db: r.db,
                        key: head.key,
                        expire_at_ms: head.expire_at_ms,
                        value_type,
                        type_byte: head.type_byte,
                    }));
                }
            }
        })
    }

    /// Runs one step unless the reader already finished or failed, and
    /// records whether it did.
    fn guarded<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<Option<T>, RdbError>,
    ) -> Result<Option<T>, RdbError> {
        match self.state {
            State::Finished => return Ok(None),
            State::Failed => {
                return Err(RdbError::Corrupt(
                    "the RDB reader already failed; the stream position is unknown".to_string(),
                ));
            }
            State::Running => {}
        }
        match step(self) {
            Ok(Some(item)) => Ok(Some(item)),
            Ok(None) => {
                self.state = State::Finished;
                Ok(None)
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    pub(super) fn corrupt(&self, msg: impl fmt::Display) -> RdbError {
        RdbError::Corrupt(format!("{msg} (near byte offset {})", self.src.offset))
    }

    /// The opcode loop, shared by both modes: reads up to the next item. A
    /// key is returned after its name, with its value still in the stream.
    /// With `keys_only`, every non-key item is consumed (payloads skipped,
    /// not decoded) and the loop goes on to the next key.
    fn read_item(&mut self, keys_only: bool) -> Result<Option<Item>, RdbError> {
        loop {
            let op = self.src.u8()?;
            let entry = match op {
                OP_EOF => {
                    self.read_trailer()?;
                    return Ok(None);
                }
                OP_SELECTDB => {
                    let db = self.read_length()?;
                    self.db = db;
                    RdbEntry::SelectDb(db)
                }
                OP_RESIZEDB => {
                    let db_size = self.read_length()?;
                    let expires_size = self.read_length()?;
                    RdbEntry::ResizeDb {
                        db_size,
                        expires_size,
                    }
                }
                OP_AUX if keys_only => {
                    self.skip_string()?;
                    self.skip_string()?;
                    continue;
                }
                OP_AUX => {
                    let key = self.read_string()?;
                    let value = self.read_string()?;
                    RdbEntry::Aux { key, value }
                }
                OP_EXPIRETIME => {
                    let secs = i32::from_le_bytes(self.src.array()?);
                    self.pending_expire = Some(i64::from(secs) * 1000);
                    continue;
                }
                OP_EXPIRETIME_MS => {
                    self.pending_expire = Some(self.read_ms()?);
                    continue;
                }
                OP_FREQ => {
                    self.src.u8()?;
                    continue;
                }
                OP_IDLE => {
                    self.read_length()?;
                    continue;
                }
                OP_MODULE_AUX => {
                    let module_id = self.read_length()?;
                    let when_opcode = self.read_length()?;
                    if when_opcode != MODULE_OP_UINT {
                        return Err(self.corrupt(format!(
                            "module aux data for {} has a bad 'when' opcode {when_opcode}",
                            module_type_name(module_id)
                        )));
                    }
                    self.read_length()?; // when
                    self.skip_module_value(module_id)?;
                    RdbEntry::ModuleAux { module_id }
                }
                OP_FUNCTION_PRE_GA if keys_only => {
                    self.skip_string()?; // name
                    self.skip_string()?; // engine
                    if self.read_length()? != 0 {
                        self.skip_string()?; // description
                    }
                    self.skip_string()?; // code
                    continue;
                }
                OP_FUNCTION_PRE_GA => {
                    // Redis 7.0 RC1/RC2 layout: name, engine, optional
                    // description, code. Converted like Redis did.
                    let name = self.read_string()?;
                    let engine = self.read_string()?;
                    if self.read_length()? != 0 {
                        self.read_string()?; // description, dropped by Redis too
                    }
                    let code = self.read_string()?;
                    let mut payload = b"#!".to_vec();
                    payload.extend_from_slice(&engine);
                    payload.extend_from_slice(b" name=");
                    payload.extend_from_slice(&name);
                    payload.push(b'\n');
                    payload.extend_from_slice(&code);
                    RdbEntry::Function { payload }
                }
                OP_FUNCTION2 if keys_only => {
                    self.skip_string()?;
                    continue;
                }
                OP_FUNCTION2 => {
                    let payload = self.read_string()?;
                    RdbEntry::Function { payload }
                }
                OP_SLOT_INFO => {
                    let slot_id = self.read_length()?;
                    let slot_size = self.read_length()?;
                    let expires_slot_size = self.read_length()?;
                    RdbEntry::SlotInfo {
                        slot_id,
                        slot_size,
                        expires_slot_size,
                    }
                }
                OP_SLOT_IMPORT if self.flavor == RdbFlavor::Valkey && keys_only => {
                    self.skip_string()?;
                    for _ in 0..self.read_length()? {
                        self.read_length()?;
                        self.read_length()?;
                    }
                    continue;
                }
                OP_SLOT_IMPORT if self.flavor == RdbFlavor::Valkey => {
                    let job_name = self.read_string()?;
                    let n = self.read_length()?;
                    let mut ranges = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                    for _ in 0..n {
                        let start = self.read_length()?;
                        let end = self.read_length()?;
                        ranges.push((start, end));
                    }
                    RdbEntry::SlotImport { job_name, ranges }
                }
                op if op >= FIRST_OPCODE => {
                    return Err(RdbError::UnknownOpcode {
                        opcode: op,
                        version: self.version,
                    });
                }
                type_byte => {
                    if !self.is_value_type(type_byte) {
                        return Err(RdbError::UnknownType {
                            type_byte,
                            version: self.version,
                        });
                    }
                    let key = self.read_string()?;
                    let expire_at_ms = self.pending_expire.take();
                    return Ok(Some(Item::Key(KeyHead {
                        type_byte,
                        key,
                        expire_at_ms,
                    })));
                }
            };
            if !keys_only {
                return Ok(Some(Item::Entry(entry)));
            }
        }
    }

    fn read_trailer(&mut self) -> Result<(), RdbError> {
        if self.version < 5 {
            return Ok(()); // no checksum before RDB 5
        }
        let actual = self.src.crc;
        let expected = u64::from_le_bytes(self.src.array()?);
        if expected != 0 && expected != actual {
            return Err(RdbError::ChecksumMismatch { expected, actual });
        }
        Ok(())
    }

    fn is_value_type(&self, t: u8) -> bool {
        match t {
            0..=7 | 9..=21 => true,
            T_22 => true,
            T_HASH_LISTPACK_EX_PRE_GA | T_HASH_METADATA | T_HASH_LISTPACK_EX => {
                self.flavor == RdbFlavor::Redis
            }
            _ => false,
        }
    }

    /// Reads (`read_value`) or skips (`skip_value`) the value of `head`,
    /// naming the key in corruption errors.
    fn value_of<T>(
        &mut self,
        head: &KeyHead,
        read: fn(&mut Self, u8) -> Result<T, RdbError>,
    ) -> Result<T, RdbError> {
        read(self, head.type_byte).map_err(|e| match e {
            RdbError::Corrupt(m) => RdbError::Corrupt(format!(
                "{m}, in key {} (type {})",
                show_key(&head.key),
                head.type_byte
            )),
            other => other,
        })
    }
}

impl<R: Read> Iterator for RdbReader<R> {
    type Item = Result<RdbEntry, RdbError>;

    /// Yields entries until the end of the RDB; stops after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Failed {
            return None;
        }
        self.next_entry().transpose()
    }
}
