//! Profile, meta facts, contacts, routing snapshot, DHT records, name claims, counts.

use std::net::SocketAddr;

use rusqlite::{OptionalExtension, params};

use super::types::{
    CONTACT_COLS, Contact, Counts, DhtRecord, NameClaim, NodeId, Profile, UserKey, blob,
    contact_from_row, count,
};
use super::{Db, DbError};

/// Well-known keys of the `meta` table.
pub mod meta_keys {
    /// The last address the node listened on (`IP:PORT`).
    pub const LISTEN_ADDR: &str = "listen_addr";
    /// The node id used at that address (hex).
    pub const NODE_ID: &str = "node_id";
    /// The last external address others saw (`IP:PORT`).
    pub const EXTERNAL_ADDR: &str = "external_addr";
    /// When the routing table was last saved (unix ms).
    pub const ROUTING_SAVED_MS: &str = "routing_saved_ms";
}

impl Db {
    /// This user's profile, if `init` made one.
    pub async fn profile(&self) -> Result<Option<Profile>, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT name, user_key, created_ms FROM profile WHERE id = 1")?
                .query_row([], |r| {
                    Ok(Profile {
                        name: r.get(0)?,
                        key: blob(r, 1)?,
                        created_ms: r.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Sets this user's profile (replacing any).
    pub async fn set_profile(&self, p: Profile) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO profile (id, name, user_key, created_ms) VALUES (1, ?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, user_key = excluded.user_key, \
                 created_ms = excluded.created_ms",
            )?
            .execute(params![p.name, &p.key[..], p.created_ms])?;
            Ok(())
        })
        .await
    }

    /// A `meta` value (see [`meta_keys`]).
    pub async fn meta_get(&self, key: &str) -> Result<Option<String>, DbError> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT v FROM meta WHERE k = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    /// Sets a `meta` value.
    pub async fn meta_set(&self, key: &str, value: &str) -> Result<(), DbError> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )?
            .execute([key, value])?;
            Ok(())
        })
        .await
    }

    /// Removes a `meta` value; returns whether it existed.
    pub async fn meta_delete(&self, key: &str) -> Result<bool, DbError> {
        let key = key.to_owned();
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM meta WHERE k = ?1")?
                .execute([key])?;
            Ok(n > 0)
        })
        .await
    }

    /// Adds or updates a contact. On update the name, fingerprint and presence
    /// are replaced; `added_ms` keeps its first value; a `None` presence keeps
    /// the stored one.
    pub async fn contact_put(&self, c: Contact) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO contacts (user_key, name, fingerprint, added_ms, presence, presence_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (user_key) DO UPDATE SET name = excluded.name, \
                   fingerprint = excluded.fingerprint, \
                   presence = coalesce(excluded.presence, presence), \
                   presence_ms = coalesce(excluded.presence_ms, presence_ms)",
            )?
            .execute(params![
                &c.key[..],
                c.name,
                c.fingerprint,
                c.added_ms,
                c.presence,
                c.presence_ms
            ])?;
            Ok(())
        })
        .await
    }

    /// One contact by key.
    pub async fn contact(&self, key: UserKey) -> Result<Option<Contact>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {CONTACT_COLS} FROM contacts WHERE user_key = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([&key[..]], contact_from_row)
                .optional()?)
        })
        .await
    }

    /// The contacts with this name (normally at most one), oldest first.
    pub async fn contacts_named(&self, name: &str) -> Result<Vec<Contact>, DbError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let sql =
                format!("SELECT {CONTACT_COLS} FROM contacts WHERE name = ?1 ORDER BY added_ms");
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([name], contact_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Every contact, by name.
    pub async fn contacts(&self) -> Result<Vec<Contact>, DbError> {
        self.read(move |conn| {
            let sql = format!("SELECT {CONTACT_COLS} FROM contacts ORDER BY name, added_ms");
            let mut st = conn.prepare_cached(&sql)?;
            let rows = st.query_map([], contact_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Removes a contact (not its messages); returns whether it existed.
    pub async fn contact_remove(&self, key: UserKey) -> Result<bool, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM contacts WHERE user_key = ?1")?
                .execute([&key[..]])?;
            Ok(n > 0)
        })
        .await
    }

    /// Stores a contact's latest presence record; returns whether the contact exists.
    pub async fn contact_set_presence(
        &self,
        key: UserKey,
        presence: Vec<u8>,
        at_ms: i64,
    ) -> Result<bool, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE contacts SET presence = ?2, presence_ms = ?3 WHERE user_key = ?1",
                )?
                .execute(params![&key[..], presence, at_ms])?;
            Ok(n > 0)
        })
        .await
    }

    /// Replaces the routing-table snapshot wholesale (a duplicate id keeps the last address).
    pub async fn save_routing(&self, nodes: Vec<(NodeId, SocketAddr)>) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM routing")?.execute([])?;
            upsert_routing(conn, &nodes)?;
            Ok(())
        })
        .await
    }

    /// Updates the routing-table snapshot in place: `upsert` holds the contacts
    /// that are new or have a new address; with `keep`, every row whose id is
    /// not in it is removed. Costs what changed rather than the whole table.
    pub async fn update_routing(
        &self,
        upsert: Vec<(NodeId, SocketAddr)>,
        keep: Option<Vec<NodeId>>,
    ) -> Result<(), DbError> {
        self.write(move |conn| {
            upsert_routing(conn, &upsert)?;
            if let Some(mut keep) = keep {
                keep.sort_unstable();
                let ids: Vec<Vec<u8>> = conn
                    .prepare_cached("SELECT node_id FROM routing")?
                    .query_map([], |r| r.get::<_, Vec<u8>>(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut del = conn.prepare_cached("DELETE FROM routing WHERE node_id = ?1")?;
                for id in ids {
                    let kept = NodeId::try_from(id.as_slice())
                        .is_ok_and(|i| keep.binary_search(&i).is_ok());
                    if !kept {
                        del.execute([&id])?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// The routing-table snapshot. Rows that do not parse are skipped (and logged):
    /// a snapshot is a hint, not a record.
    pub async fn load_routing(&self) -> Result<Vec<(NodeId, SocketAddr)>, DbError> {
        self.read(move |conn| {
            let mut st = conn.prepare_cached("SELECT node_id, addr FROM routing")?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, addr) = row?;
                match (NodeId::try_from(id.as_slice()), addr.parse::<SocketAddr>()) {
                    (Ok(id), Ok(addr)) => out.push((id, addr)),
                    _ => tracing::warn!("skipping a malformed routing snapshot row ({addr:?})"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Stores (or replaces) the DHT item at `target`.
    pub async fn dht_put(&self, record: DhtRecord) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO dht_records (target, item, stored_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (target) DO UPDATE SET item = excluded.item, stored_ms = excluded.stored_ms",
            )?
            .execute(params![&record.target[..], record.item, record.stored_ms])?;
            Ok(())
        })
        .await
    }

    /// The DHT item at `target`.
    pub async fn dht_get(&self, target: NodeId) -> Result<Option<DhtRecord>, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT item, stored_ms FROM dht_records WHERE target = ?1")?
                .query_row([&target[..]], |r| {
                    Ok(DhtRecord {
                        target,
                        item: r.get(0)?,
                        stored_ms: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Every stored DHT item (to reload the DHT store at start).
    pub async fn dht_all(&self) -> Result<Vec<DhtRecord>, DbError> {
        self.read(move |conn| {
            let mut st = conn.prepare_cached("SELECT target, item, stored_ms FROM dht_records")?;
            let rows = st.query_map([], |r| {
                Ok(DhtRecord {
                    target: blob(r, 0)?,
                    item: r.get(1)?,
                    stored_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Drops DHT items stored before `before_ms`; returns how many.
    pub async fn dht_expire(&self, before_ms: i64) -> Result<u64, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM dht_records WHERE stored_ms < ?1")?
                .execute([before_ms])?;
            Ok(n as u64)
        })
        .await
    }

    /// Stores (or replaces) the claim for a name. Which claim wins is the chat
    /// layer's decision; this only stores it.
    pub async fn name_claim_put(&self, claim: NameClaim) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO name_claims (name, claim, stored_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET claim = excluded.claim, stored_ms = excluded.stored_ms",
            )?
            .execute(params![claim.name, claim.claim, claim.stored_ms])?;
            Ok(())
        })
        .await
    }

    /// The claim stored for a name.
    pub async fn name_claim_get(&self, name: &str) -> Result<Option<NameClaim>, DbError> {
        let name = name.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT claim, stored_ms FROM name_claims WHERE name = ?1")?
                .query_row([&name], |r| {
                    Ok(NameClaim {
                        name: name.clone(),
                        claim: r.get(0)?,
                        stored_ms: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Every stored name claim (read once, at start: the statement is not
    /// kept in the connection's cache).
    pub async fn name_claims_all(&self) -> Result<Vec<NameClaim>, DbError> {
        self.read(move |conn| {
            let mut st = conn.prepare("SELECT name, claim, stored_ms FROM name_claims")?;
            let rows = st.query_map([], |r| {
                Ok(NameClaim {
                    name: r.get(0)?,
                    claim: r.get(1)?,
                    stored_ms: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Drops name claims stored before `before_ms`; returns how many.
    pub async fn name_claim_expire(&self, before_ms: i64) -> Result<u64, DbError> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM name_claims WHERE stored_ms < ?1")?
                .execute([before_ms])?;
            Ok(n as u64)
        })
        .await
    }

    /// Row counts, for `status` (one consistent snapshot).
    pub async fn counts(&self) -> Result<Counts, DbError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM messages), \
                     (SELECT count(*) FROM messages WHERE direction = 'in' AND state <> 'read'), \
                     (SELECT count(*) FROM outbox), (SELECT count(*) FROM relay_queue), \
                     (SELECT count(*) FROM seen), (SELECT count(*) FROM dht_records), \
                     (SELECT count(*) FROM name_claims), (SELECT count(*) FROM routing)",
                )?
                .query_row([], |r| {
                    Ok(Counts {
                        contacts: count(r.get(0)?),
                        messages: count(r.get(1)?),
                        unread: count(r.get(2)?),
                        outbox: count(r.get(3)?),
                        relay_queue: count(r.get(4)?),
                        seen: count(r.get(5)?),
                        dht_records: count(r.get(6)?),
                        name_claims: count(r.get(7)?),
                        routing: count(r.get(8)?),
                    })
                })?)
        })
        .await
    }
}

/// Writes these contacts into the routing snapshot (a known id gets the new address).
fn upsert_routing(
    conn: &rusqlite::Connection,
    nodes: &[(NodeId, SocketAddr)],
) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT INTO routing (node_id, addr) VALUES (?1, ?2) \
         ON CONFLICT (node_id) DO UPDATE SET addr = excluded.addr",
    )?;
    for (id, addr) in nodes {
        st.execute(params![&id[..], addr.to_string()])?;
    }
    Ok(())
}
