//! Decoding a key's value, per type and encoding, into an [`RdbValue`]
//! (streams are in `stream.rs`).

use std::io::Read;

use super::error::RdbError;
use super::format::{
    PREALLOC_CAP, QUICKLIST_NODE_PACKED, QUICKLIST_NODE_PLAIN, T_22, T_HASH, T_HASH_LISTPACK,
    T_HASH_LISTPACK_EX, T_HASH_LISTPACK_EX_PRE_GA, T_HASH_METADATA, T_HASH_ZIPLIST, T_HASH_ZIPMAP,
    T_LIST, T_LIST_QUICKLIST, T_LIST_QUICKLIST_2, T_LIST_ZIPLIST, T_MODULE_2, T_MODULE_PRE_GA,
    T_SET, T_SET_INTSET, T_SET_LISTPACK, T_STREAM_LISTPACKS, T_STREAM_LISTPACKS_2,
    T_STREAM_LISTPACKS_3, T_STRING, T_ZSET, T_ZSET_2, T_ZSET_LISTPACK, T_ZSET_ZIPLIST,
};
use super::listpack::{self, Elem};
use super::module::module_pre_ga_unsupported;
use super::reader::RdbReader;
use super::types::{HashField, RdbFlavor, RdbValue, module_type_name};
use super::{intset, ziplist};

fn pairs<T>(items: Vec<T>, what: &str) -> Result<Vec<(T, T)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(format!(
            "{what} has an odd number of elements ({})",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        out.push((a, b));
    }
    Ok(out)
}

fn zset_from_elems(elems: Vec<Elem<'_>>, what: &str) -> Result<RdbValue, String> {
    let mut out = Vec::with_capacity(elems.len() / 2);
    for (member, score) in pairs(elems, what)? {
        let score = score
            .as_f64()
            .ok_or_else(|| format!("{what} has an invalid score for a member"))?;
        out.push((member.to_bytes(), score));
    }
    Ok(RdbValue::SortedSet(out))
}

fn hash_from_elems(elems: Vec<Elem<'_>>, what: &str) -> Result<RdbValue, String> {
    Ok(RdbValue::Hash(
        pairs(elems, what)?
            .into_iter()
            .map(|(f, v)| HashField {
                field: f.to_bytes(),
                value: v.to_bytes(),
                expire_at_ms: None,
            })
            .collect(),
    ))
}

impl<R: Read> RdbReader<R> {
    pub(super) fn read_blob_elems<'b>(
        &self,
        blob: &'b [u8],
        ziplist_format: bool,
        what: &str,
    ) -> Result<Vec<Elem<'b>>, RdbError> {
        let res = if ziplist_format {
            ziplist::decode(blob)
        } else {
            listpack::decode(blob)
        };
        res.map_err(|m| self.corrupt(format!("{what}: {m}")))
    }

    pub(super) fn read_value(&mut self, t: u8) -> Result<RdbValue, RdbError> {
        match t {
            T_STRING => Ok(RdbValue::String(self.read_string()?)),
            T_LIST => Ok(RdbValue::List(self.read_string_seq()?)),
            T_SET => Ok(RdbValue::Set(self.read_string_seq()?)),
            T_ZSET | T_ZSET_2 => {
                let n = self.read_length()?;
                let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                for _ in 0..n {
                    let member = self.read_string()?;
                    let score = self.read_zset_score(t)?;
                    out.push((member, score));
                }
                Ok(RdbValue::SortedSet(out))
            }
            T_HASH => {
                let n = self.read_length()?;
                let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
                for _ in 0..n {
                    let field = self.read_string()?;
                    let value = self.read_string()?;
                    out.push(HashField {
                        field,
                        value,
                        expire_at_ms: None,
                    });
                }
                Ok(RdbValue::Hash(out))
            }
            T_MODULE_PRE_GA => Err(module_pre_ga_unsupported()),
            T_MODULE_2 => {
                let module_id = self.read_length()?;
                self.skip_module_value(module_id)?;
                Ok(RdbValue::Module {
                    module_name: module_type_name(module_id),
                })
            }
            T_HASH_ZIPMAP => {
                let blob = self.read_string()?;
                let pairs = ziplist::decode_zipmap(&blob)
                    .map_err(|m| self.corrupt(format!("hash zipmap: {m}")))?;
                Ok(RdbValue::Hash(
                    pairs
                        .into_iter()
                        .map(|(f, v)| HashField {
                            field: f.to_vec(),
                            value: v.to_vec(),
                            expire_at_ms: None,
                        })
                        .collect(),
                ))
            }
            T_LIST_ZIPLIST => {
                let blob = self.read_string()?;
                let elems = self.read_blob_elems(&blob, true, "list ziplist")?;
                Ok(RdbValue::List(
                    elems.into_iter().map(Elem::to_bytes).collect(),
                ))
            }
            T_SET_INTSET => {
                let blob = self.read_string()?;
                let ints =
                    intset::decode(&blob).map_err(|m| self.corrupt(format!("set intset: {m}")))?;
                Ok(RdbValue::Set(
                    ints.into_iter()
                        .map(|v| v.to_string().into_bytes())
                        .collect(),
                ))
            }
            T_ZSET_ZIPLIST | T_ZSET_LISTPACK => {
                let blob = self.read_string()?;
                let what = if t == T_ZSET_ZIPLIST {
                    "sorted set ziplist"
                } else {
                    "sorted set listpack"
                };
                let elems = self.read_blob_elems(&blob, t == T_ZSET_ZIPLIST, what)?;
                zset_from_elems(elems, what).map_err(|m| self.corrupt(m))
            }
            T_HASH_ZIPLIST | T_HASH_LISTPACK => {
                let blob = self.read_string()?;
                let what = if t == T_HASH_ZIPLIST {
                    "hash ziplist"
                } else {
                    "hash listpack"
                };
                let elems = self.read_blob_elems(&blob, t == T_HASH_ZIPLIST, what)?;
                hash_from_elems(elems, what).map_err(|m| self.corrupt(m))
            }
            T_LIST_QUICKLIST | T_LIST_QUICKLIST_2 => self.read_quicklist(t),
            T_SET_LISTPACK => {
                let blob = self.read_string()?;
                let elems = self.read_blob_elems(&blob, false, "set listpack")?;
                Ok(RdbValue::Set(
                    elems.into_iter().map(Elem::to_bytes).collect(),
                ))
            }
            T_STREAM_LISTPACKS | T_STREAM_LISTPACKS_2 | T_STREAM_LISTPACKS_3 => {
                Ok(RdbValue::Stream(self.read_stream(t)?))
            }
            T_22 if self.flavor == RdbFlavor::Valkey => self.read_valkey_hash2(),
            T_22 => self.read_hash_with_ttls(false),
            T_HASH_METADATA => self.read_hash_with_ttls(true),
            T_HASH_LISTPACK_EX_PRE_GA => self.read_listpack_hash_with_ttls(false),
            T_HASH_LISTPACK_EX => self.read_listpack_hash_with_ttls(true),
            _ => Err(RdbError::UnknownType {
                type_byte: t,
                version: self.version,
            }),
        }
    }

    fn read_string_seq(&mut self) -> Result<Vec<Vec<u8>>, RdbError> {
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            out.push(self.read_string()?);
        }
        Ok(out)
    }

    fn read_quicklist(&mut self, t: u8) -> Result<RdbValue, RdbError> {
        let nodes = self.read_length()?;
        let mut out = Vec::new();
        for _ in 0..nodes {
            let container = if t == T_LIST_QUICKLIST_2 {
                self.read_length()?
            } else {
                QUICKLIST_NODE_PACKED
            };
            let blob = self.read_string()?;
            if blob.is_empty() {
                return Err(self.corrupt("empty quicklist node"));
            }
            match container {
                QUICKLIST_NODE_PLAIN => out.push(blob),
                QUICKLIST_NODE_PACKED => {
                    let is_ziplist = t == T_LIST_QUICKLIST;
                    let what = if is_ziplist {
                        "quicklist ziplist node"
                    } else {
                        "quicklist listpack node"
                    };
                    let elems = self.read_blob_elems(&blob, is_ziplist, what)?;
                    out.extend(elems.into_iter().map(Elem::to_bytes));
                }
                other => {
                    return Err(self.corrupt(format!("unknown quicklist container type {other}")));
                }
            }
        }
        Ok(RdbValue::List(out))
    }

    /// Redis types 22 (7.4 RC, absolute TTLs) and 24 (min-expire + relative
    /// TTLs): per field a length-encoded TTL (0 = none), field, value.
    fn read_hash_with_ttls(&mut self, relative: bool) -> Result<RdbValue, RdbError> {
        let min_expire = if relative {
            Some(u64::from_le_bytes(self.src.array()?))
        } else {
            None
        };
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            let ttl = self.read_length()?;
            let field = self.read_string()?;
            let value = self.read_string()?;
            let expire_at_ms = self.field_expiry(ttl, min_expire)?;
            out.push(HashField {
                field,
                value,
                expire_at_ms,
            });
        }
        Ok(RdbValue::Hash(out))
    }

    /// Redis types 23 (7.4 RC) and 25 (with a leading min-expire): a listpack
    /// of field, value, expiry triples (expiry 0 = none).
    fn read_listpack_hash_with_ttls(&mut self, with_min: bool) -> Result<RdbValue, RdbError> {
        if with_min {
            self.src.array::<8>()?; // min expire, informational
        }
        let blob = self.read_string()?;
        let elems = self.read_blob_elems(&blob, false, "hash listpack with TTLs")?;
        if !elems.len().is_multiple_of(3) {
            return Err(self.corrupt(format!(
                "hash listpack with TTLs has {} elements, not a multiple of 3",
                elems.len()
            )));
        }
        let mut out = Vec::with_capacity(elems.len() / 3);
        for triple in elems.chunks_exact(3) {
            let ttl = triple[2].as_i64().filter(|v| *v >= 0).ok_or_else(|| {
                self.corrupt("hash listpack with TTLs has an invalid expiry element")
            })?;
            out.push(HashField {
                field: triple[0].to_bytes(),
                value: triple[1].to_bytes(),
                expire_at_ms: if ttl == 0 { None } else { Some(ttl) },
            });
        }
        Ok(RdbValue::Hash(out))
    }

    /// Valkey 9 RDB_TYPE_HASH_2: per field: field, value, 8-byte LE expiry
    /// in ms (-1 = none).
    fn read_valkey_hash2(&mut self) -> Result<RdbValue, RdbError> {
        let n = self.read_length()?;
        let mut out = Vec::with_capacity((n as usize).min(PREALLOC_CAP));
        for _ in 0..n {
            let field = self.read_string()?;
            let value = self.read_string()?;
            let expiry = self.read_ms()?;
            out.push(HashField {
                field,
                value,
                expire_at_ms: if expiry == -1 { None } else { Some(expiry) },
            });
        }
        Ok(RdbValue::Hash(out))
    }
}
