//! The persistence layer: schema, exactly-once, states, outbox, relay queue,
//! data dir lock and files, corruption, durability, and kill -9.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerchat_node::datadir::{ApiInfo, DataDir, DataDirError};
use peerchat_node::db::{
    Contact, Db, DbError, DhtRecord, Direction, IncomingMessage, MessageState, NameClaim,
    OutgoingMessage, Profile, RelayEntry, RelayLimits, RelayPut, meta_keys,
};

const ME: [u8; 32] = [0xAA; 32];

fn id(n: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[8..].copy_from_slice(&n.to_be_bytes());
    out
}

fn key(n: u8) -> [u8; 32] {
    [n; 32]
}

fn incoming(n: u64, from: u8, sent_ms: i64) -> IncomingMessage {
    IncomingMessage {
        id: id(n),
        from: key(from),
        text: format!("hello {n}"),
        sent_ms,
        received_ms: sent_ms + 5,
    }
}

fn outgoing(n: u64, to: u8, sent_ms: i64) -> OutgoingMessage {
    OutgoingMessage {
        id: id(n),
        to: key(to),
        from: ME,
        text: format!("to {to}: {n}"),
        sent_ms,
    }
}

fn relay_entry(n: u64, recipient: u8, sender: u8, expires_ms: i64) -> RelayEntry {
    RelayEntry {
        id: id(n),
        recipient: key(recipient),
        sender: key(sender),
        envelope: vec![n as u8; 40],
        source_ip: Some(IpAddr::from([127, 0, 0, sender])),
        stored_ms: 1000 + n as i64,
        expires_ms,
    }
}

fn open_db(dir: &Path) -> Db {
    match Db::open(dir.join("peerchat.db")) {
        Ok(db) => db,
        Err(e) => panic!("open: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_created_and_reopened() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peerchat.db");
    {
        let db = Db::open(&path)?;
        assert_eq!(db.profile().await?, None);
        db.set_profile(Profile {
            name: "alice".into(),
            key: ME,
            created_ms: 42,
        })
        .await?;
        db.meta_set(meta_keys::LISTEN_ADDR, "127.0.0.1:4000")
            .await?;
        db.meta_set(meta_keys::NODE_ID, &"ab".repeat(20)).await?;
    }
    // The raw file: WAL mode, versioned schema, every table.
    {
        let conn = rusqlite::Connection::open(&path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        assert_eq!(mode, "wal");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        assert_eq!(version, 1);
        for table in [
            "profile",
            "meta",
            "contacts",
            "messages",
            "outbox",
            "relay_queue",
            "seen",
            "dht_records",
            "name_claims",
            "routing",
        ] {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )?;
            assert_eq!(n, 1, "table {table}");
        }
    }
    let db = Db::open(&path)?;
    let p = db.profile().await?.expect("profile kept");
    assert_eq!((p.name.as_str(), p.key, p.created_ms), ("alice", ME, 42));
    assert_eq!(
        db.meta_get(meta_keys::LISTEN_ADDR).await?.as_deref(),
        Some("127.0.0.1:4000")
    );
    assert_eq!(db.meta_get("nothing").await?, None);
    assert!(db.meta_delete(meta_keys::NODE_ID).await?);
    assert_eq!(db.meta_get(meta_keys::NODE_ID).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("peerchat.db");
    drop(Db::open(&path)?);
    rusqlite::Connection::open(&path)?.pragma_update(None, "user_version", 99)?;
    match Db::open(&path) {
        Err(e @ DbError::TooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade peerchat"), "{e}");
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_is_stored_exactly_once() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    assert!(db.insert_incoming(incoming(1, 2, 100)).await?);
    assert!(db.is_seen(id(1)).await?);
    // A replay, even with other content, changes nothing.
    let mut replay = incoming(1, 2, 100);
    replay.text = "forged".into();
    assert!(!db.insert_incoming(replay).await?);
    let m = db.message(id(1)).await?.expect("stored");
    assert_eq!(m.text, "hello 1");
    assert_eq!(m.direction, Direction::In);
    assert_eq!(m.state, MessageState::Delivered);

    // Many copies at once (several relays handing over): exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.insert_incoming(incoming(7, 3, 200)).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        if t.await.expect("task")? {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(db.history(key(3), 10).await?.len(), 1);

    // An id seen as a receipt is not shown as a message either.
    assert!(db.seen_insert(id(9), 1).await?);
    assert!(!db.seen_insert(id(9), 2).await?);
    assert!(!db.insert_incoming(incoming(9, 2, 300)).await?);
    assert_eq!(db.message(id(9)).await?, None);
    assert_eq!(db.seen_prune(2).await?, 1);
    assert!(!db.is_seen(id(9)).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_only_move_forward() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    db.insert_outgoing(outgoing(1, 2, 100), b"env".to_vec())
        .await?;
    let state = |db: Db| async move { db.message(id(1)).await.map(|m| m.map(|m| m.state)) };
    assert_eq!(state(db.clone()).await?, Some(MessageState::Queued));
    assert!(db.set_state(id(1), MessageState::Delivered).await?);
    assert!(!db.set_state(id(1), MessageState::Relayed).await?);
    assert!(!db.set_state(id(1), MessageState::Queued).await?);
    assert!(!db.set_state(id(1), MessageState::Delivered).await?);
    assert_eq!(state(db.clone()).await?, Some(MessageState::Delivered));
    assert!(db.set_state(id(1), MessageState::Read).await?);
    assert!(!db.set_state(id(1), MessageState::Delivered).await?);
    assert_eq!(state(db.clone()).await?, Some(MessageState::Read));
    assert!(!db.set_state(id(99), MessageState::Read).await?);
    assert!(MessageState::Queued < MessageState::Relayed);
    assert!(MessageState::Delivered < MessageState::Read);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_due_reschedule_remove() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    for n in 1..=3 {
        db.insert_outgoing(outgoing(n, 2, 100 * n as i64), vec![n as u8; 8])
            .await?;
    }
    // The same id twice is refused, and leaves nothing behind.
    assert!(db.insert_outgoing(outgoing(1, 9, 5), vec![]).await.is_err());
    assert_eq!(db.history(key(9), 10).await?.len(), 0);

    // New entries are left to the sender's fast path for a grace period first.
    const GRACE: i64 = 3_000;
    assert!(db.outbox_due(200, 10).await?.is_empty());
    let due = db.outbox_due(200 + GRACE, 10).await?;
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), [id(1), id(2)]);
    assert_eq!(due[0].envelope, vec![1u8; 8]);
    assert_eq!(due[0].attempts, 0);
    assert!(!due[0].relayed);
    assert_eq!(db.outbox_due(1000 + GRACE, 1).await?.len(), 1);

    assert!(db.outbox_reschedule(id(1), 5000).await?);
    let due = db.outbox_due(400 + GRACE, 10).await?;
    assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), [id(2), id(3)]);
    let e = db.outbox_get(id(1)).await?.expect("kept");
    assert_eq!((e.attempts, e.next_attempt_ms), (1, 5000));

    assert!(db.outbox_set_relayed(id(2), 9000).await?);
    let e = db.outbox_get(id(2)).await?.expect("kept");
    assert!(e.relayed);
    assert_eq!(
        db.message(id(2)).await?.map(|m| m.state),
        Some(MessageState::Relayed)
    );

    assert!(db.outbox_remove(id(3)).await?);
    assert!(!db.outbox_remove(id(3)).await?);
    assert!(!db.outbox_reschedule(id(3), 1).await?);
    assert!(db.message(id(3)).await?.is_some(), "history stays");

    // Only the recipient's ack counts.
    assert!(!db.ack_delivered(id(2), key(9)).await?);
    assert!(db.outbox_get(id(2)).await?.is_some());
    assert!(db.ack_delivered(id(2), key(2)).await?);
    assert_eq!(db.outbox_get(id(2)).await?, None);
    assert_eq!(
        db.message(id(2)).await?.map(|m| m.state),
        Some(MessageState::Delivered)
    );
    assert_eq!(db.outbox_recipients().await?, vec![key(2)]);
    assert_eq!(db.outbox_all().await?.len(), 1);
    assert_eq!(db.counts().await?.outbox, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dedup_and_expiry() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    assert!(db.relay_put(relay_entry(1, 5, 6, 10_000)).await?);
    assert!(!db.relay_put(relay_entry(1, 5, 6, 99_999)).await?);
    assert!(db.relay_put(relay_entry(2, 5, 7, 20_000)).await?);
    assert!(db.relay_put(relay_entry(3, 8, 7, 30_000)).await?);
    assert_eq!(db.relay_count().await?, 3);

    let held = db.relay_for(key(5), 0, 100).await?;
    assert_eq!(
        held.iter().map(|e| e.id).collect::<Vec<_>>(),
        [id(1), id(2)]
    );
    assert_eq!(held[0].expires_ms, 10_000, "the duplicate changed nothing");
    assert_eq!(held[0].source_ip, Some(IpAddr::from([127, 0, 0, 6])));
    // Expired entries are not handed out, and expiry removes them.
    assert_eq!(db.relay_for(key(5), 15_000, 100).await?.len(), 1);
    let mut recipients = db.relay_recipients(15_000).await?;
    recipients.sort();
    assert_eq!(recipients, vec![key(5), key(8)]);
    assert_eq!(db.relay_expire(20_000).await?, 2);
    assert_eq!(
        db.relay_all()
            .await?
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        [id(3)]
    );
    assert_eq!(db.relay_remove(vec![id(3), id(4)]).await?, 1);
    assert_eq!(db.relay_count().await?, 0);

    // Quotas, checked in the writer's transaction.
    let limits = RelayLimits {
        per_sender: 2,
        per_source_ip: 2,
        total: 5,
    };
    let put = |n, sender| {
        let db = db.clone();
        async move {
            db.relay_put_limited(relay_entry(n, 1, sender, 1 << 40), limits)
                .await
        }
    };
    assert_eq!(put(10, 1).await?, RelayPut::Stored);
    assert_eq!(put(10, 1).await?, RelayPut::Duplicate);
    assert_eq!(put(11, 1).await?, RelayPut::Stored);
    assert_eq!(put(12, 1).await?, RelayPut::SenderQuota);
    let mut other_ip = relay_entry(13, 1, 2, 1 << 40);
    other_ip.source_ip = Some(IpAddr::from([127, 0, 0, 1]));
    assert_eq!(
        db.relay_put_limited(other_ip, limits).await?,
        RelayPut::SourceQuota
    );
    assert_eq!(put(14, 2).await?, RelayPut::Stored);
    assert_eq!(put(15, 3).await?, RelayPut::Stored);
    assert_eq!(put(16, 3).await?, RelayPut::Stored);
    assert_eq!(put(17, 4).await?, RelayPut::Full);
    assert_eq!(db.relay_count().await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_inbox_conversations_unread() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    db.insert_incoming(incoming(1, 2, 100)).await?;
    db.insert_outgoing(outgoing(2, 2, 200), vec![1]).await?;
    db.insert_incoming(incoming(3, 2, 300)).await?;
    db.insert_incoming(incoming(4, 3, 250)).await?;

    let h = db.history(key(2), 10).await?;
    assert_eq!(
        h.iter().map(|m| m.id).collect::<Vec<_>>(),
        [id(1), id(2), id(3)]
    );
    assert_eq!(h[1].direction, Direction::Out);
    assert_eq!(h[1].sender, ME);
    assert_eq!(h[0].sender, key(2));
    let h = db.history(key(2), 2).await?;
    assert_eq!(h.iter().map(|m| m.id).collect::<Vec<_>>(), [id(2), id(3)]);

    let inbox = db.inbox(10).await?;
    assert_eq!(
        inbox.iter().map(|m| m.id).collect::<Vec<_>>(),
        [id(1), id(4), id(3)]
    );

    let convs = db.conversations().await?;
    assert_eq!(convs.len(), 2);
    assert_eq!(
        (convs[0].peer, convs[0].last.id, convs[0].unread),
        (key(2), id(3), 2)
    );
    assert_eq!(
        (convs[1].peer, convs[1].last.id, convs[1].unread),
        (key(3), id(4), 1)
    );
    assert_eq!(db.counts().await?.unread, 3);

    assert_eq!(db.mark_read(key(2)).await?, 2);
    assert_eq!(db.mark_read(key(2)).await?, 0);
    let convs = db.conversations().await?;
    assert_eq!(convs[0].unread, 0);
    assert_eq!(
        db.message(id(2)).await?.map(|m| m.state),
        Some(MessageState::Queued),
        "mark_read leaves outgoing messages alone"
    );
    let c = db.counts().await?;
    assert_eq!((c.messages, c.unread, c.seen), (4, 1, 3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_routing_dht_names() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    let bob = Contact {
        key: key(2),
        name: "bob".into(),
        fingerprint: "fp-bob".into(),
        added_ms: 10,
        presence: None,
        presence_ms: None,
    };
    db.contact_put(bob.clone()).await?;
    assert_eq!(db.contact(key(2)).await?, Some(bob.clone()));
    assert!(db.contact_set_presence(key(2), vec![1, 2, 3], 50).await?);
    assert!(!db.contact_set_presence(key(9), vec![], 50).await?);
    // An update keeps added_ms and (when not given) the presence.
    db.contact_put(Contact {
        name: "bobby".into(),
        added_ms: 999,
        ..bob.clone()
    })
    .await?;
    let c = db.contact(key(2)).await?.expect("kept");
    assert_eq!((c.name.as_str(), c.added_ms), ("bobby", 10));
    assert_eq!((c.presence, c.presence_ms), (Some(vec![1, 2, 3]), Some(50)));
    assert_eq!(db.contacts_named("bobby").await?.len(), 1);
    db.contact_put(Contact {
        key: key(3),
        name: "carol".into(),
        ..bob.clone()
    })
    .await?;
    assert_eq!(db.contacts().await?.len(), 2);
    assert!(db.contact_remove(key(3)).await?);
    assert!(!db.contact_remove(key(3)).await?);
    assert_eq!(db.contacts().await?.len(), 1);

    let a: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
    let b: SocketAddr = "[::1]:5000".parse().expect("addr");
    db.save_routing(vec![([1; 20], a), ([2; 20], b)]).await?;
    db.save_routing(vec![([2; 20], a), ([3; 20], b)]).await?;
    let mut r = db.load_routing().await?;
    r.sort();
    assert_eq!(r, vec![([2; 20], a), ([3; 20], b)], "replaced wholesale");
    // In place: a new address, a new contact, and one gone.
    db.update_routing(
        vec![([3; 20], a), ([4; 20], b)],
        Some(vec![[3; 20], [4; 20]]),
    )
    .await?;
    let mut r = db.load_routing().await?;
    r.sort();
    assert_eq!(r, vec![([3; 20], a), ([4; 20], b)], "updated in place");
    // Without `keep`, nothing is removed.
    db.update_routing(vec![([5; 20], a)], None).await?;
    assert_eq!(db.load_routing().await?.len(), 3);

    let rec = DhtRecord {
        target: [7; 20],
        item: vec![9; 30],
        stored_ms: 100,
    };
    db.dht_put(rec.clone()).await?;
    assert_eq!(db.dht_get([7; 20]).await?, Some(rec.clone()));
    db.dht_put(DhtRecord {
        target: [8; 20],
        stored_ms: 300,
        ..rec.clone()
    })
    .await?;
    assert_eq!(db.dht_all().await?.len(), 2);
    assert_eq!(db.dht_expire(200).await?, 1);
    assert_eq!(db.dht_get([7; 20]).await?, None);

    let claim = NameClaim {
        name: "alice".into(),
        claim: vec![5; 64],
        stored_ms: 7,
    };
    db.name_claim_put(claim.clone()).await?;
    assert_eq!(db.name_claim_get("alice").await?, Some(claim.clone()));
    assert_eq!(db.name_claim_get("nobody").await?, None);
    assert_eq!(db.name_claims_all().await?, vec![claim]);
    assert_eq!(db.name_claim_expire(8).await?, 1);

    let c = db.counts().await?;
    assert_eq!(
        (c.contacts, c.routing, c.dht_records, c.name_claims),
        (1, 3, 1, 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_does_not_spoil_its_batch() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path());
    db.insert_outgoing(outgoing(0, 2, 1), vec![]).await?;
    // Many writes at once land in few transactions; the duplicate among them
    // fails alone.
    let mut tasks = Vec::new();
    for n in 0..200u64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.insert_outgoing(outgoing(n, 2, n as i64 + 10), vec![])
                .await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.expect("task").is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(db.history(key(2), 1000).await?.len(), 200);
    assert_eq!(db.counts().await?.outbox, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_across_reopen() -> Result<(), DbError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open_db(dir.path());
        for n in 0..50 {
            db.insert_incoming(incoming(n, 2, n as i64)).await?;
        }
        db.insert_outgoing(outgoing(100, 2, 100), vec![7; 10])
            .await?;
        db.relay_put(relay_entry(200, 4, 5, 1 << 40)).await?;
    }
    let db = open_db(dir.path());
    assert_eq!(db.history(key(2), 1000).await?.len(), 51);
    assert_eq!(
        db.outbox_get(id(100)).await?.map(|e| e.envelope),
        Some(vec![7; 10])
    );
    assert_eq!(db.relay_count().await?, 1);
    assert!(
        !db.insert_incoming(incoming(3, 2, 3)).await?,
        "seen ids kept"
    );
    Ok(())
}

/// A clean close leaves one file: the last connection to close checkpoints
/// the WAL into the database and removes it. With the writer and a reader
/// closing at once, each could see the other still open and leave the WAL
/// behind (the database file then held only its header).
#[test]
fn a_closed_database_is_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for i in 0..40u64 {
        let path = dir.path().join(format!("db-{i}.db"));
        let db = Db::open(&path).expect("open");
        rt.block_on(db.insert_incoming(incoming(i + 1, 2, 3)))
            .expect("insert");
        drop(db);
        let wal = dir.path().join(format!("db-{i}.db-wal"));
        assert!(!wal.exists(), "close {i} left {}", wal.display());
        let len = std::fs::metadata(&path).expect("metadata").len();
        assert!(len > 4096, "close {i}: the database holds {len} bytes");
    }
}

#[test]
fn corrupt_database_gives_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Not a database at all.
    let path = dir.path().join("peerchat.db");
    std::fs::write(
        &path,
        b"this is not a database, just some text. ".repeat(200),
    )
    .expect("write");
    match Db::open(&path) {
        Err(e @ DbError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("is corrupt"), "{msg}");
            assert!(msg.contains("move it away to start fresh"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A real database whose first page (the schema) was overwritten.
    let path = dir.path().join("damaged.db");
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let db = Db::open(&path).expect("open");
        rt.block_on(db.insert_incoming(incoming(1, 2, 3)))
            .expect("insert");
    }
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 4096);
    for b in &mut bytes[100..4096] {
        *b = 0x5A;
    }
    std::fs::write(&path, &bytes).expect("write");
    match Db::open(&path) {
        Err(e @ DbError::Corrupt { .. }) => {
            assert!(e.to_string().contains("move it away"), "{e}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn second_open_of_a_data_dir_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user");
    let first = DataDir::open(&path).expect("first open");
    match DataDir::open(&path) {
        Err(e @ DataDirError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("another peerchat is already running with data dir"),
                "{msg}"
            );
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("--data-dir"), "{msg}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Another process is refused too.
    let out = child_output(&path, "lock");
    assert!(out.contains("LOCKED"), "child said: {out}");
    drop(first);
    let again = DataDir::open(&path).expect("open after drop");
    assert_eq!(again.path(), path);
    assert_eq!(again.db_path(), path.join("peerchat.db"));
    drop(again);
    let out = child_output(&path, "lock");
    assert!(out.contains("OPENED"), "child said: {out}");
}

#[cfg(unix)]
#[test]
fn identity_and_api_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;

    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("a/b");
    let dd = DataDir::open(&path).expect("open");
    assert_eq!(mode(&path), 0o700);

    match dd.read_secret() {
        Err(e @ DataDirError::NoIdentity { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!(
                    "run `peerchat --data-dir {} init --name NAME` first",
                    path.display()
                )),
                "{msg}"
            );
        }
        other => panic!("expected NoIdentity, got {other:?}"),
    }
    assert!(!dd.has_identity());
    let secret = [0x42u8; 32];
    dd.write_secret(&secret).expect("write secret");
    assert_eq!(mode(&dd.identity_path()), 0o600);
    assert_eq!(dd.read_secret().expect("read"), secret);
    assert!(matches!(
        dd.write_secret(&[1; 32]),
        Err(DataDirError::IdentityExists { .. })
    ));
    assert_eq!(dd.read_secret().expect("read"), secret, "not overwritten");

    // Too open: narrowed on read.
    std::fs::set_permissions(dd.identity_path(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    assert_eq!(dd.read_secret().expect("read"), secret);
    assert_eq!(mode(&dd.identity_path()), 0o600);

    // Malformed.
    std::fs::write(dd.identity_path(), b"not a key\n").expect("write");
    match dd.read_secret() {
        Err(e @ DataDirError::BadIdentity { .. }) => {
            assert!(e.to_string().contains("malformed"), "{e}")
        }
        other => panic!("expected BadIdentity, got {other:?}"),
    }

    // api.json: 0600, readable without the lock, removed at shutdown.
    assert!(matches!(
        DataDir::read_api_info(&path),
        Err(DataDirError::NotRunning { .. })
    ));
    let info = ApiInfo {
        addr: "127.0.0.1:7777".parse().expect("addr"),
        token: peerchat_node::datadir::make_token(&[9; 32]),
        pid: std::process::id(),
    };
    dd.write_api_info(&info).expect("write api");
    assert_eq!(mode(&dd.api_path()), 0o600);
    assert_eq!(DataDir::read_api_info(&path).expect("read api"), info);
    dd.remove_api_info().expect("remove");
    assert!(!dd.api_path().exists());
    dd.write_api_info(&info).expect("write api");
    let api_path = dd.api_path();
    drop(dd);
    assert!(!api_path.exists(), "removed when the data dir is dropped");
    std::fs::write(&api_path, b"{").expect("write");
    assert!(matches!(
        DataDir::read_api_info(&path),
        Err(DataDirError::BadApiInfo { .. })
    ));
}

// ---- kill -9 ----------------------------------------------------------------

const CHILD_ENV: &str = "PEERCHAT_DB_TEST_CHILD";
const CHILD_DIR_ENV: &str = "PEERCHAT_DB_TEST_DIR";

/// Runs this test binary's `child_helper` in another process and returns its output.
fn child_output(dir: &Path, mode: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(CHILD_DIR_ENV, dir)
        .output()
        .expect("spawn child");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Not a test of its own: the body of the child processes the other tests spawn.
#[test]
fn child_helper() {
    let (Ok(mode), Some(dir)) = (std::env::var(CHILD_ENV), std::env::var_os(CHILD_DIR_ENV)) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    match mode.as_str() {
        "lock" => match DataDir::open(&dir) {
            Ok(_) => println!("OPENED"),
            Err(DataDirError::Locked { .. }) => println!("LOCKED"),
            Err(e) => println!("ERROR {e}"),
        },
        "writer" => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .expect("runtime");
            rt.block_on(crash_writer(&dir));
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Inserts messages from 8 tasks forever (well, for a minute), printing each id
/// only after its insert returned.
async fn crash_writer(dir: &Path) {
    let db = open_db(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let i = (t << 32) | n;
                if t % 2 == 0 {
                    db.insert_incoming(incoming(i, 2, i as i64))
                        .await
                        .expect("insert");
                    println!("IN {}", hex::encode(id(i)));
                } else {
                    db.insert_outgoing(outgoing(i, 3, i as i64), vec![1; 64])
                        .await
                        .expect("insert");
                    println!("OUT {}", hex::encode(id(i)));
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_message() -> Result<(), DbError> {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "writer")
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: Vec<(bool, [u8; 16])> = Vec::new();
    let mut parse = |line: &str| {
        let (incoming, hexid) = if let Some(h) = line.strip_prefix("IN ") {
            (true, h)
        } else if let Some(h) = line.strip_prefix("OUT ") {
            (false, h)
        } else {
            return;
        };
        // A line cut by the kill is not an acknowledgement.
        let bytes = hex::decode(hexid.trim()).unwrap_or_default();
        if let Ok(mid) = <[u8; 16]>::try_from(bytes.as_slice()) {
            acked.push((incoming, mid));
        }
    };
    // Let it get well into its stride, then kill it mid-write.
    let mut seen = 0;
    for line in lines.by_ref() {
        let line = line.expect("read child");
        parse(&line);
        if line.starts_with("IN ") || line.starts_with("OUT ") {
            seen += 1;
            if seen == 3000 {
                break;
            }
        }
    }
    child.kill().expect("kill -9");
    // Whatever it printed before dying was acknowledged too.
    for line in lines.map_while(Result::ok) {
        parse(&line);
    }
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child was killed, not finished"
    );
    assert!(acked.len() >= 3000, "only {} acknowledged", acked.len());

    let db = open_db(dir.path());
    let mut missing = 0;
    for (incoming, mid) in &acked {
        let m = db.message(*mid).await?;
        match m {
            Some(m) => {
                assert_eq!(m.direction == Direction::In, *incoming);
                if !incoming {
                    assert!(db.outbox_get(*mid).await?.is_some(), "outbox entry kept");
                } else {
                    assert!(db.is_seen(*mid).await?);
                }
            }
            None => missing += 1,
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages lost",
        acked.len()
    );
    Ok(())
}
