//! The scripts that let a collection too large for one script travel:
//! copy it to a private key (scripts/freeze.lua), read the copy a piece at a
//! time (scripts/piece.lua), record its stamp if nothing moved meanwhile
//! (scripts/claim.lua), and drop the copy.

use redis::Value as RValue;

use super::connection::{Store, StoreError};
use super::layout::{floor_key, meta_bucket};
use super::lua::Which;
use super::reply::bulk;
use crate::base::change::Collection;

/// What the freeze script did with a key.
#[derive(Debug)]
pub enum Freeze {
    /// The key was copied.
    Frozen(Frozen),
    /// The floor or the key's record holds this newer stamp.
    Retry(String),
    /// The key is gone, or travels whole.
    Whole,
}

/// A collection copied for reading in pieces.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// Its type.
    pub kind: Collection,
    /// Its absolute expiry.
    pub expire_at_ms: Option<i64>,
    /// Its number of elements.
    pub len: u64,
    /// Its metadata record when it was copied ("" when none).
    pub record: String,
}

/// One piece of a frozen copy.
#[derive(Debug)]
pub enum Piece {
    /// Flat items, and where to go on (None: this was the last piece).
    Items {
        /// Where the next piece starts.
        next: Option<String>,
        /// The piece's flat items.
        items: Vec<Vec<u8>>,
    },
    /// The copy cannot be shipped: `gone`, or `hash+ttl`.
    Refused(String),
}

impl Store {
    /// Copies a collection too large to read in one script to `copy`, if it
    /// still is one and (with `stamp`) nothing newer is recorded for it
    /// (scripts/freeze.lua).
    pub async fn freeze(
        &mut self,
        db: u32,
        key: &[u8],
        copy: &[u8],
        stamp: Option<&str>,
    ) -> Result<Freeze, StoreError> {
        let keys = vec![
            floor_key(db).into_bytes(),
            key.to_vec(),
            meta_bucket(db, key).into_bytes(),
            copy.to_vec(),
        ];
        let reply = self
            .run_one(db, Which::Freeze, keys, vec![stamp.unwrap_or("").into()])
            .await?;
        let bad = || StoreError::BadReply(format!("freeze: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        let word = parts.first().and_then(bulk).ok_or_else(bad)?;
        match word.as_slice() {
            b"whole" => Ok(Freeze::Whole),
            b"retry" => {
                let s = parts.get(1).and_then(bulk).ok_or_else(bad)?;
                Ok(Freeze::Retry(String::from_utf8_lossy(&s).into_owned()))
            }
            b"frozen" => {
                let [_, t, RValue::Int(exp), RValue::Int(len), record] = parts.as_slice() else {
                    return Err(bad());
                };
                let t = bulk(t).ok_or_else(bad)?;
                let kind =
                    Collection::from_type_name(&String::from_utf8_lossy(&t)).ok_or_else(bad)?;
                let record = bulk(record).ok_or_else(bad)?;
                Ok(Freeze::Frozen(Frozen {
                    kind,
                    expire_at_ms: (*exp > 0).then_some(*exp),
                    len: u64::try_from(*len).map_err(|_| bad())?,
                    record: String::from_utf8(record).map_err(|_| bad())?,
                }))
            }
            _ => Err(bad()),
        }
    }

    /// One piece of a frozen copy from position `pos` ("0" to start):
    /// the position to go on from (None after the last piece) and the flat
    /// items (scripts/piece.lua).
    pub async fn piece(
        &mut self,
        db: u32,
        copy: &[u8],
        kind: Collection,
        pos: &str,
        elements: usize,
    ) -> Result<Piece, StoreError> {
        let args = vec![
            kind.type_name().into(),
            pos.into(),
            elements.to_string().into_bytes(),
        ];
        let reply = self
            .run_one(db, Which::Piece, vec![copy.to_vec()], args)
            .await?;
        let bad = || StoreError::BadReply(format!("piece: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        let [next, RValue::Array(items), refusal] = parts.as_slice() else {
            return Err(bad());
        };
        let refusal = bulk(refusal).ok_or_else(bad)?;
        if !refusal.is_empty() {
            return Ok(Piece::Refused(
                String::from_utf8_lossy(&refusal).into_owned(),
            ));
        }
        let next = String::from_utf8(bulk(next).ok_or_else(bad)?).map_err(|_| bad())?;
        let items = items
            .iter()
            .map(bulk)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok(Piece::Items {
            next: (!next.is_empty()).then_some(next),
            items,
        })
    }

    /// Records `stamp` and `digest` for a frozen collection, unless its
    /// record is no longer `seen` (scripts/claim.lua). Err(newer stamp, or
    /// "" when the record went away) when it must be tried again.
    pub async fn claim(
        &mut self,
        db: u32,
        key: &[u8],
        stamp: &str,
        seen: &str,
        digest: &str,
        expire_at_ms: Option<i64>,
    ) -> Result<Result<(), String>, StoreError> {
        let keys = vec![
            floor_key(db).into_bytes(),
            key.to_vec(),
            meta_bucket(db, key).into_bytes(),
        ];
        let args = vec![
            stamp.into(),
            seen.into(),
            digest.into(),
            expire_at_ms.unwrap_or(-1).to_string().into_bytes(),
        ];
        let reply = self.run_one(db, Which::Claim, keys, args).await?;
        let bad = || StoreError::BadReply(format!("claim: {reply:?}"));
        let RValue::Array(parts) = &reply else {
            return Err(bad());
        };
        match parts.as_slice() {
            [ok] if bulk(ok).as_deref() == Some(b"ok") => Ok(Ok(())),
            [word, newer] if bulk(word).as_deref() == Some(b"retry") => Ok(Err(
                String::from_utf8_lossy(&bulk(newer).ok_or_else(bad)?).into_owned(),
            )),
            _ => Err(bad()),
        }
    }

    /// Deletes a private copy (in the background: it may be large).
    pub async fn drop_copy(&mut self, db: u32, copy: &[u8]) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        redis::pipe()
            .cmd("SELECT")
            .arg(db)
            .ignore()
            .cmd("UNLINK")
            .arg(copy)
            .ignore()
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }
}
