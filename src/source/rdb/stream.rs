//! Decoding stream values: the listpack nodes with their delta-encoded
//! entries, the stream metadata, and the consumer groups.

use std::collections::BTreeSet;
use std::io::Read;

use super::error::RdbError;
use super::format::{
    STREAM_ITEM_FLAG_DELETED, STREAM_ITEM_FLAG_SAMEFIELDS, T_STREAM_LISTPACKS_2,
    T_STREAM_LISTPACKS_3,
};
use super::listpack::Elem;
use super::reader::RdbReader;
use super::types::{
    RdbStream, StreamConsumer, StreamConsumerGroup, StreamEntry, StreamId, StreamPendingEntry,
};

/// Cursor over decoded listpack elements, for the stream node layout.
struct Cursor<'a, 'b> {
    elems: &'b [Elem<'a>],
    pos: usize,
}

impl<'a> Cursor<'a, '_> {
    fn next(&mut self, what: &str) -> Result<Elem<'a>, String> {
        let e = self
            .elems
            .get(self.pos)
            .copied()
            .ok_or_else(|| format!("stream listpack ends before the {what}"))?;
        self.pos += 1;
        Ok(e)
    }

    fn int(&mut self, what: &str) -> Result<i64, String> {
        self.next(what)?
            .as_i64()
            .ok_or_else(|| format!("stream listpack {what} is not an integer"))
    }

    fn count(&mut self, what: &str) -> Result<u64, String> {
        let v = self.int(what)?;
        u64::try_from(v).map_err(|_| format!("stream listpack {what} is negative ({v})"))
    }
}

/// Decodes one stream listpack node (master entry + delta-encoded entries),
/// appending the live entries to `out`.
fn decode_stream_node(
    master: StreamId,
    elems: &[Elem<'_>],
    out: &mut Vec<StreamEntry>,
) -> Result<(), String> {
    let mut c = Cursor { elems, pos: 0 };
    let live = c.count("entry count")?;
    let deleted = c.count("deleted count")?;
    let nfields = c.count("master field count")?;
    let mut master_fields = Vec::new();
    for _ in 0..nfields {
        master_fields.push(c.next("master field name")?);
    }
    if c.int("master entry terminator")? != 0 {
        return Err("stream master entry is not terminated by 0".to_string());
    }
    let total = live
        .checked_add(deleted)
        .ok_or("stream node entry counts overflow")?;
    let mut live_seen = 0u64;
    for _ in 0..total {
        let flags = c.int("entry flags")?;
        let ms_diff = c.int("entry id ms delta")?;
        let seq_diff = c.int("entry id seq delta")?;
        let id = StreamId {
            ms: master.ms.wrapping_add(ms_diff as u64),
            seq: master.seq.wrapping_add(seq_diff as u64),
        };
        let is_deleted = flags & STREAM_ITEM_FLAG_DELETED != 0;
        let mut fields = Vec::new();
        let expected_lp_count = if flags & STREAM_ITEM_FLAG_SAMEFIELDS != 0 {
            for name in &master_fields {
                let value = c.next("entry value")?;
                if !is_deleted {
                    fields.push((name.to_bytes(), value.to_bytes()));
                }
            }
            (master_fields.len() as u64).checked_add(3)
        } else {
            let n = c.count("entry field count")?;
            for _ in 0..n {
                let name = c.next("entry field name")?;
                let value = c.next("entry value")?;
                if !is_deleted {
                    fields.push((name.to_bytes(), value.to_bytes()));
                }
            }
            n.checked_mul(2).and_then(|v| v.checked_add(4))
        };
        let lp_count = c.count("entry lp-count")?;
        if Some(lp_count) != expected_lp_count {
            return Err(format!(
                "stream entry {id} has lp-count {lp_count}, inconsistent with its fields"
            ));
        }
        if !is_deleted {
            live_seen += 1;
            out.push(StreamEntry { id, fields });
        }
    }
    if live_seen != live {
        return Err(format!(
            "stream node declares {live} live entries but holds {live_seen}"
        ));
    }
    if c.pos != elems.len() {
        return Err("stream listpack has trailing elements after its entries".to_string());
    }
    Ok(())
}

impl<R: Read> RdbReader<R> {
    pub(super) fn read_stream(&mut self, t: u8) -> Result<RdbStream, RdbError> {
        let nodes = self.read_length()?;
        let mut entries = Vec::new();
        for _ in 0..nodes {
            let node_key = self.read_string()?;
            let raw: [u8; 16] = node_key.as_slice().try_into().map_err(|_| {
                self.corrupt(format!(
                    "stream node key has {} bytes, expected a 16-byte id",
                    node_key.len()
                ))
            })?;
            let master = StreamId::from_be_bytes(&raw);
            let blob = self.read_string()?;
            let elems = self.read_blob_elems(&blob, false, "stream listpack")?;
            if elems.is_empty() {
                return Err(self.corrupt("empty listpack inside a stream"));
            }
            decode_stream_node(master, &elems, &mut entries)
                .map_err(|m| self.corrupt(format!("stream node {master}: {m}")))?;
        }
        let length = self.read_length()?;
        let last_id = self.read_stream_id_lens()?;
        let (first_id, max_deleted_id, entries_added) = if t >= T_STREAM_LISTPACKS_2 {
            let first = self.read_stream_id_lens()?;
            let max_deleted = self.read_stream_id_lens()?;
            let added = self.read_length()?;
            (Some(first), Some(max_deleted), Some(added))
        } else {
            (None, None, None)
        };
        let ngroups = self.read_length()?;
        let mut groups = Vec::new();
        for _ in 0..ngroups {
            let name = self.read_string()?;
            let group_last_id = self.read_stream_id_lens()?;
            let entries_read = if t >= T_STREAM_LISTPACKS_2 {
                // Stored as an unsigned length; -1 (unknown) wraps to u64::MAX.
                Some(self.read_length()? as i64)
            } else {
                None
            };
            let npel = self.read_length()?;
            let mut pending = Vec::new();
            let mut pending_ids = BTreeSet::new();
            for _ in 0..npel {
                let id = self.read_raw_stream_id()?;
                let delivery_time_ms = self.read_ms()?;
                let delivery_count = self.read_length()?;
                if !pending_ids.insert(id) {
                    return Err(self.corrupt(format!("duplicate pending entry {id}")));
                }
                pending.push(StreamPendingEntry {
                    id,
                    delivery_time_ms,
                    delivery_count,
                });
            }
            let nconsumers = self.read_length()?;
            let mut consumers = Vec::new();
            for _ in 0..nconsumers {
                let cname = self.read_string()?;
                let seen_time_ms = self.read_ms()?;
                let active_time_ms = if t >= T_STREAM_LISTPACKS_3 {
                    Some(self.read_ms()?)
                } else {
                    None
                };
                let n = self.read_length()?;
                let mut ids = Vec::new();
                for _ in 0..n {
                    let id = self.read_raw_stream_id()?;
                    if !pending_ids.contains(&id) {
                        return Err(self.corrupt(format!(
                            "consumer pending entry {id} is not in the group's pending list"
                        )));
                    }
                    ids.push(id);
                }
                consumers.push(StreamConsumer {
                    name: cname,
                    seen_time_ms,
                    active_time_ms,
                    pending: ids,
                });
            }
            groups.push(StreamConsumerGroup {
                name,
                last_id: group_last_id,
                entries_read,
                pending,
                consumers,
            });
        }
        Ok(RdbStream {
            entries,
            length,
            last_id,
            first_id,
            max_deleted_id,
            entries_added,
            groups,
        })
    }
}
