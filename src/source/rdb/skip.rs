//! Key-only mode's value skipping: every value type consumed with the same
//! framing checks as decoding, through fixed-size buffers, holding none of it.

use std::io::Read;

use super::error::RdbError;
use super::format::{
    QUICKLIST_NODE_PACKED, QUICKLIST_NODE_PLAIN, T_22, T_HASH, T_HASH_LISTPACK, T_HASH_LISTPACK_EX,
    T_HASH_LISTPACK_EX_PRE_GA, T_HASH_METADATA, T_HASH_ZIPLIST, T_HASH_ZIPMAP, T_LIST,
    T_LIST_QUICKLIST, T_LIST_QUICKLIST_2, T_LIST_ZIPLIST, T_MODULE_2, T_MODULE_PRE_GA, T_SET,
    T_SET_INTSET, T_SET_LISTPACK, T_STREAM_LISTPACKS, T_STREAM_LISTPACKS_2, T_STREAM_LISTPACKS_3,
    T_STRING, T_ZSET, T_ZSET_2, T_ZSET_LISTPACK, T_ZSET_ZIPLIST,
};
use super::module::module_pre_ga_unsupported;
use super::reader::RdbReader;
use super::types::RdbFlavor;
use super::{intset, listpack, ziplist};

impl<R: Read> RdbReader<R> {
    /// Key-only counterpart of [`Self::read_value`] (keep the two in step):
    /// consumes a value of type `t` with the same framing checks, holding
    /// none of it. Returns whether the value has elements, i.e. false for
    /// the empty collections `next_entry` drops.
    pub(super) fn skip_value(&mut self, t: u8) -> Result<bool, RdbError> {
        match t {
            T_STRING => {
                self.skip_string()?;
                Ok(true)
            }
            T_LIST | T_SET => self.skip_elements(|r| {
                r.skip_string()?;
                Ok(())
            }),
            T_ZSET | T_ZSET_2 => self.skip_elements(|r| {
                r.skip_string()?;
                r.read_zset_score(t)?;
                Ok(())
            }),
            T_HASH => self.skip_elements(|r| {
                r.skip_string()?;
                r.skip_string()?;
                Ok(())
            }),
            T_MODULE_PRE_GA => Err(module_pre_ga_unsupported()),
            T_MODULE_2 => {
                let module_id = self.read_length()?;
                self.skip_module_value(module_id)?;
                Ok(true)
            }
            T_HASH_ZIPMAP => self.skip_blob(ziplist::EMPTY_ZIPMAP_LEN, "hash zipmap"),
            T_LIST_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "list ziplist"),
            T_ZSET_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "sorted set ziplist"),
            T_HASH_ZIPLIST => self.skip_blob(ziplist::EMPTY_LEN, "hash ziplist"),
            T_SET_INTSET => self.skip_blob(intset::EMPTY_LEN, "set intset"),
            T_SET_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "set listpack"),
            T_ZSET_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "sorted set listpack"),
            T_HASH_LISTPACK => self.skip_blob(listpack::EMPTY_LEN, "hash listpack"),
            T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => self.skip_quicklist(t),
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                self.skip_stream(t)?;
                Ok(true)
            }
            T_22 if self.flavor == RdbFlavor::Valkey => self.skip_elements(|r| {
                r.skip_string()?;
                r.skip_string()?;
                r.read_ms()?;
                Ok(())
            }),
            T_22 | T_HASH_METADATA => {
                let min_expire = if t == T_HASH_METADATA {
                    Some(u64::from_le_bytes(self.src.array()?))
                } else {
                    None
                };
                self.skip_elements(|r| {
                    let ttl = r.read_length()?;
                    r.skip_string()?;
                    r.skip_string()?;
                    r.field_expiry(ttl, min_expire)?;
                    Ok(())
                })
            }
            T_HASH_LISTPACK_EX_PRE_GA | T_HASH_LISTPACK_EX => {
                if t == T_HASH_LISTPACK_EX {
                    self.src.array::<8>()?; // min expire
                }
                self.skip_blob(listpack::EMPTY_LEN, "hash listpack with TTLs")
            }
            _ => Err(RdbError::UnknownType {
                type_byte: t,
                version: self.version,
            }),
        }
    }

    /// Reads an element count, then consumes that many elements with
    /// `skip_one`; returns whether there were any.
    fn skip_elements(
        &mut self,
        mut skip_one: impl FnMut(&mut Self) -> Result<(), RdbError>,
    ) -> Result<bool, RdbError> {
        let n = self.read_length()?;
        for _ in 0..n {
            skip_one(self)?;
        }
        Ok(n > 0)
    }

    /// Skips a listpack / ziplist / intset / zipmap blob whose empty form is
    /// `empty_len` bytes; returns whether it holds elements. A valid blob
    /// longer than its empty form holds at least one, so the decoded length
    /// (known without decompressing an LZF blob) tells.
    fn skip_blob(&mut self, empty_len: u64, what: &str) -> Result<bool, RdbError> {
        let len = self.skip_string()?;
        self.blob_has_elems(len, empty_len, what)
    }

    fn blob_has_elems(&self, len: u64, empty_len: u64, what: &str) -> Result<bool, RdbError> {
        if len < empty_len {
            return Err(self.corrupt(format!("{what} of {len} bytes is too short")));
        }
        Ok(len > empty_len)
    }

    /// Key-only counterpart of [`Self::read_quicklist`].
    fn skip_quicklist(&mut self, t: u8) -> Result<bool, RdbError> {
        let nodes = self.read_length()?;
        let mut any = false;
        for _ in 0..nodes {
            let container = if t == T_LIST_QUICKLIST_2 {
                self.read_length()?
            } else {
                QUICKLIST_NODE_PACKED
            };
            let len = self.skip_string()?;
            if len == 0 {
                return Err(self.corrupt("empty quicklist node"));
            }
            any |= match container {
                QUICKLIST_NODE_PLAIN => true,
                QUICKLIST_NODE_PACKED if t == T_LIST_QUICKLIST => {
                    self.blob_has_elems(len, ziplist::EMPTY_LEN, "quicklist ziplist node")?
                }
                QUICKLIST_NODE_PACKED => {
                    self.blob_has_elems(len, listpack::EMPTY_LEN, "quicklist listpack node")?
                }
                other => {
                    return Err(self.corrupt(format!("unknown quicklist container type {other}")));
                }
            };
        }
        Ok(any)
    }

    /// Key-only counterpart of [`Self::read_stream`]: node keys and listpacks,
    /// metadata, and consumer groups with their pending lists and consumers.
    fn skip_stream(&mut self, t: u8) -> Result<(), RdbError> {
        let nodes = self.read_length()?;
        for _ in 0..nodes {
            let key_len = self.skip_string()?;
            if key_len != 16 {
                return Err(self.corrupt(format!(
                    "stream node key has {key_len} bytes, expected a 16-byte id"
                )));
            }
            if self.skip_string()? <= listpack::EMPTY_LEN {
                return Err(self.corrupt("empty listpack inside a stream"));
            }
        }
        self.read_length()?; // length
        self.read_stream_id_lens()?; // last id
        if t >= T_STREAM_LISTPACKS_2 {
            self.read_stream_id_lens()?; // first id
            self.read_stream_id_lens()?; // max deleted id
            self.read_length()?; // entries added
        }
        let ngroups = self.read_length()?;
        for _ in 0..ngroups {
            self.skip_string()?; // name
            self.read_stream_id_lens()?; // last delivered id
            if t >= T_STREAM_LISTPACKS_2 {
                self.read_length()?; // entries read
            }
            let npel = self.read_length()?;
            for _ in 0..npel {
                self.src.skip(16 + 8)?; // id, delivery time
                self.read_length()?; // delivery count
            }
            let nconsumers = self.read_length()?;
            for _ in 0..nconsumers {
                self.skip_string()?; // name
                // Seen time, and active time from type 21 on.
                self.src
                    .skip(if t >= T_STREAM_LISTPACKS_3 { 16 } else { 8 })?;
                // Pending ids, 16 bytes each. A count too large to multiply
                // cannot be satisfied either: the stream ends first.
                let n = self.read_length()?;
                self.src.skip(n.saturating_mul(16))?;
            }
        }
        Ok(())
    }
}
