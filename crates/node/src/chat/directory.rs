//! Names and presence: claiming our name, publishing where we are, and finding
//! who holds a name and where they are.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use peerchat_chat::{
    ClaimTally, NameClaim, PRESENCE_SALT, Presence, UserKey, Username, beside_claim,
    from_beside_claim,
};
use peerchat_kad::Value;
use peerchat_kad::bep44::MutableItem;
use tokio::task::JoinSet;

use super::views::WhoisView;
use super::{ChatError, Inner, lock, now_ms, wire};
use crate::Fields;
use crate::db::Contact;

/// Claims our name and publishes our presence at login, then keeps both fresh.
///
/// `first_run`: this data dir has never run a node, so our name and presence
/// were never published and nobody could address a message to us (a message
/// is addressed by name): the login's mailbox fetch, a lookup and k requests,
/// is skipped. Should a copied identity have mail waiting after all, the next
/// periodic fetch or a relay's push brings it.
pub(crate) async fn publisher(inner: Arc<Inner>, first_run: bool) {
    let mut shutdown = inner.shutdown.clone();
    let mut last_publish: Option<std::time::Instant> = None;
    let mut last_fetch = first_run.then(std::time::Instant::now);
    loop {
        // The mailbox first: at login what waits for us is what the user wants to
        // see; then every `fetch_every` (relays also push when they see our presence).
        if last_fetch.is_none_or(|t| t.elapsed() >= inner.config.fetch_every) {
            let got = super::delivery::fetch_mailbox(&inner).await;
            if got > 0 {
                tracing::info!("{got} messages from the mailbox");
            }
            last_fetch = Some(std::time::Instant::now());
        }
        let due = last_publish.is_none_or(|t| t.elapsed() >= inner.config.presence_every)
            || !inner.claimed.load(Ordering::Relaxed);
        if due {
            match announce(&inner).await {
                Ok(()) => last_publish = Some(std::time::Instant::now()),
                Err(e) => tracing::debug!("publishing presence: {e}"),
            }
        }
        let wait = if inner.claimed.load(Ordering::Relaxed) {
            std::time::Duration::from_secs(60)
        } else {
            // Not claimed yet (alone on a new network, or no answer): try again soon.
            std::time::Duration::from_secs(5)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Claims our name, handing our presence to the claim's storers with it, then
/// publishes the presence as its BEP 44 item.
pub(crate) async fn announce(inner: &Inner) -> Result<(), ChatError> {
    let item = presence_item(inner).await;
    claim_name(inner, item.as_ref().ok().and_then(Option::as_ref)).await;
    if let Some(item) = item? {
        inner.dht.put_mutable(item, None).await?;
    }
    Ok(())
}

async fn claim_name(inner: &Inner, presence: Option<&MutableItem>) {
    let claim = inner.claim.clone();
    let bytes = claim.to_bytes();
    // We are among the nodes closest to our own name too (find_node never
    // returns us): keep our claim here as any storer would (first claim wins).
    let existing = held_claim(inner, &inner.name).await;
    if matches!(
        peerchat_chat::accept_claim(existing.as_ref(), &claim),
        Ok(peerchat_chat::Accept::New)
    ) && let Err(e) = store_claim(
        inner,
        crate::db::NameClaim {
            name: inner.name.as_str().to_string(),
            claim: bytes.clone(),
            stored_ms: now_ms() as i64,
        },
    )
    .await
    {
        tracing::debug!("storing our own claim: {e}");
    }
    annotate_held(inner, &inner.name, presence.cloned()).await;
    let Ok((nodes, _)) = inner.dht.find_node(inner.name.target()).await else {
        return;
    };
    let mut args = wire::args("claim", Value::Bytes(bytes.clone()));
    args.extend(presence.into_iter().flat_map(beside_claim));
    let mut set = JoinSet::new();
    for n in nodes {
        let dht = inner.dht.clone();
        let args = args.clone();
        set.spawn(async move { dht.request(n.addr, wire::CLAIM, args).await });
    }
    let (mut ours, mut theirs) = (0, 0);
    while let Some(r) = set.join_next().await {
        if let Ok(Ok(Some(Ok(resp)))) = r {
            let held = wire::bytes(&resp.other, "claim");
            if held == Some(bytes.as_slice()) {
                // The claim we just signed, byte for byte: nothing to verify.
                ours += 1;
                continue;
            }
            match held.map(NameClaim::from_bytes) {
                Some(Ok(held)) if held.verify().is_ok() && held.name == inner.name => {
                    if held.key == inner.me {
                        ours += 1
                    } else {
                        theirs += 1
                    }
                }
                _ => {}
            }
        }
    }
    if theirs > ours {
        tracing::warn!(
            "the name {} is already held by another key on this network; pick another name with a new data dir",
            inner.name.as_str()
        );
    }
    inner
        .claimed
        .store(ours > 0 && ours >= theirs, Ordering::Relaxed);
}

/// Our current addresses as others can reach them.
fn our_presence(inner: &Inner, external: Option<std::net::SocketAddr>) -> Presence {
    let addr = if inner.listen.ip().is_unspecified() {
        external.map(|e| std::net::SocketAddr::new(e.ip(), inner.listen.port()))
    } else {
        Some(inner.listen)
    };
    let addrs: Vec<_> = addr.into_iter().collect();
    Presence {
        dht: addrs.clone(),
        chat: addrs,
        node_id: inner.dht.id(),
        timestamp_ms: now_ms(),
    }
}

/// Our presence, signed; `None` while we know no address others can reach.
async fn presence_item(inner: &Inner) -> Result<Option<MutableItem>, ChatError> {
    let snap = inner.dht.snapshot().await?;
    let p = our_presence(inner, snap.external);
    if p.chat.is_empty() {
        return Ok(None);
    }
    // Milliseconds keep `seq` increasing across restarts.
    let item = p
        .to_item(&inner.identity, now_ms() as i64)
        .map_err(|e| ChatError::BadMessage(format!("presence: {e}")))?;
    Ok(Some(item))
}

/// The presence kept in `fields` if it is `key`'s (the claim there is `key`'s).
fn kept_presence(fields: &Fields, key: &UserKey) -> Option<MutableItem> {
    let held = wire::bytes(fields, "claim")
        .map(NameClaim::from_bytes)?
        .ok()?;
    if held.key != *key {
        return None;
    }
    from_beside_claim(fields, key)
}

/// Annotates `name`'s target with the claim held here and the presence kept
/// with it: `offered` instead if it is the holder's, valid, and newer (it is
/// signed by the claim's key: a replay cannot roll it back).
///
/// What a storer tells about a name (the claim it holds, and the newest
/// presence that claim's key handed it) is kept in this one place, the DHT
/// core's annotation of the name's target (bencoded, one per name stored
/// here): the core adds it to its `find_node` answers for that target, and
/// `pc_resolve` answers with the same fields ([`claim_answer`]).
pub(crate) async fn annotate_held(inner: &Inner, name: &Username, offered: Option<MutableItem>) {
    let Ok(Some(held)) = stored_claim(inner, name.as_str()).await else {
        return;
    };
    let Ok(key) = NameClaim::from_bytes(&held).map(|c| c.key) else {
        return;
    };
    // Verified here rather than in the node's task: a signature check takes
    // tens of microseconds.
    let offered = offered.filter(|i| Presence::from_item(i, &key).is_ok());
    let update = move |now: Option<Fields>| {
        let kept = now.as_ref().and_then(|f| kept_presence(f, &key));
        let presence = match (kept, offered) {
            (Some(k), Some(o)) => Some(if o.seq > k.seq { o } else { k }),
            (k, o) => k.or(o),
        };
        let mut fields = wire::args("claim", Value::Bytes(held));
        fields.extend(presence.iter().flat_map(beside_claim));
        Some(fields)
    };
    if let Err(e) = inner
        .dht
        .update_annotation(name.target(), Box::new(update))
        .await
    {
        tracing::debug!("annotating {name}: {e}");
    }
}

/// What this node tells about `name`: the annotation of its target, or the
/// claim alone when there is none (the core's table of annotations was full).
pub(crate) async fn claim_answer(inner: &Inner, name: &Username) -> Option<Fields> {
    if let Ok(Some(fields)) = inner.dht.annotation(name.target()).await {
        return Some(fields);
    }
    let held = stored_claim(inner, name.as_str()).await.ok()??;
    Some(wire::args("claim", Value::Bytes(held)))
}

/// At start, annotates the names whose claims this node stored before (their
/// presence was kept in memory only: it comes back with the next announce).
pub(crate) async fn annotate_stored(inner: &Inner) {
    let rows = match inner.db.name_claims_all().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("reading the stored name claims: {e}");
            return;
        }
    };
    for row in rows {
        let Ok(name) = Username::new(&row.name) else {
            continue;
        };
        let fields = wire::args("claim", Value::Bytes(row.claim));
        if inner
            .dht
            .annotate(name.target(), Some(fields))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The presence record of `key`, verified, if the DHT has one.
pub(crate) async fn presence_of(inner: &Inner, key: &UserKey) -> Option<Presence> {
    let (item, _) = inner
        .dht
        .get_mutable(key.0, PRESENCE_SALT.to_vec(), None)
        .await
        .ok()?;
    Presence::from_item(&item?, key).ok()
}

/// How long a looked-up presence record is trusted before looking again.
const PRESENCE_CACHE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`presence_of`], remembered for a while (sending many messages to one peer
/// must not cost a DHT lookup each).
pub(crate) async fn presence_cached(inner: &Inner, key: &UserKey) -> Option<Presence> {
    if let Some((p, at)) = inner.presence.lock().await.get(key)
        && at.elapsed() < PRESENCE_CACHE
    {
        return Some(p.clone());
    }
    let p = presence_of(inner, key).await?;
    remember_presence(inner, *key, p.clone()).await;
    Some(p)
}

/// Remembers `p` as `key`'s presence for [`PRESENCE_CACHE`].
async fn remember_presence(inner: &Inner, key: UserKey, p: Presence) {
    let mut cache = inner.presence.lock().await;
    if cache.len() >= 4096 {
        cache.clear();
    }
    cache.insert(key, (p, std::time::Instant::now()));
}

/// Drops a remembered presence record (it led nowhere).
pub(crate) async fn forget_presence(inner: &Inner, key: &UserKey) {
    inner.presence.lock().await.remove(key);
}

/// Who holds a name, and where they are as the claim's storers last heard.
pub(crate) struct Resolved {
    /// The key holding the name.
    pub(crate) key: UserKey,
    /// The newest valid presence handed with its claim, if a storer had one.
    pub(crate) presence: Option<Presence>,
}

/// Votes on who holds a name, and the presence items handed with the claims.
struct Tally<'a> {
    name: &'a Username,
    claims: ClaimTally,
    /// Everyone asked (or answering), ourselves included if we hold a claim.
    voters: usize,
    /// Each distinct presence item handed with a claim of the name, and what
    /// it says if it verifies under that claim's key.
    presences: Vec<(MutableItem, Option<Presence>)>,
}

impl<'a> Tally<'a> {
    fn new(name: &'a Username) -> Tally<'a> {
        Tally {
            name,
            claims: ClaimTally::new(name.clone()),
            voters: 0,
            presences: Vec::new(),
        }
    }

    /// Reads a node's answer, checking the signatures of a claim and a
    /// presence not seen before; the claim, if it is one of this name.
    fn check(&mut self, fields: &Fields) -> Option<NameClaim> {
        let c = NameClaim::from_bytes(wire::bytes(fields, "claim")?).ok()?;
        if c.name != *self.name {
            return None;
        }
        self.claims.check(&c);
        if let Some(item) = from_beside_claim(fields, &c.key)
            && !self.presences.iter().any(|(i, _)| *i == item)
        {
            let presence = Presence::from_item(&item, &c.key).ok();
            self.presences.push((item, presence));
        }
        Some(c)
    }

    /// Counts a node's answer; false if it held no claim of this name.
    fn count(&mut self, fields: &Fields) -> bool {
        let Some(c) = self.check(fields) else {
            return false;
        };
        self.claims.add(&c);
        true
    }

    /// Whether one key holds a strict majority of all voters: the answers
    /// still out cannot change the outcome.
    fn decided(&self) -> bool {
        self.claims.leading_votes() * 2 > self.voters
    }

    /// The newest valid presence handed with a claim of `key`.
    fn presence_of(&self, key: &UserKey) -> Option<Presence> {
        self.presences
            .iter()
            .filter(|(item, _)| item.key == key.0)
            .filter_map(|(item, p)| Some((item.seq, p.as_ref()?)))
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, p)| p.clone())
    }
}

/// Asks the nodes closest to `name` who holds it (and where they are).
///
/// One lookup: the nodes that store the name's claim answer the lookup's
/// `find_node` with it (see [`annotate_held`]), so the claims of the `k`
/// closest come back with them. Only those that said nothing (older or
/// restarted nodes, Mainline nodes) are then asked with `pc_resolve`, and only
/// when the claims already in do not decide.
async fn resolve_network(inner: &Inner, name: &Username) -> Result<Option<Resolved>, ChatError> {
    let started = std::time::Instant::now();
    // We may be one of the k closest nodes ourselves (find_node never returns
    // us): what we hold counts too (read while the lookup runs).
    let mut tally = Tally::new(name);
    // The storers' claims and presences come back mostly identical: their
    // signatures are checked as the first answers arrive, while the lookup
    // goes on, and the count at the end finds them checked.
    let (early_tx, mut early) = tokio::sync::mpsc::unbounded_channel();
    let lookup = async {
        let lookup = inner
            .dht
            .find_node_annotated_early(name.target(), Some("claim"), early_tx);
        tokio::pin!(lookup);
        loop {
            tokio::select! {
                biased;
                found = &mut lookup => break found,
                Some(fields) = early.recv() => {
                    tally.check(&fields);
                }
            }
        }
    };
    let (found, own) = tokio::join!(lookup, claim_answer(inner, name));
    let (nodes, _) = found?;
    let looked_up = started.elapsed();
    tally.voters = nodes.len();
    if let Some(own) = own
        && tally.count(&own)
    {
        tally.voters += 1;
    }
    let silent: Vec<_> = nodes
        .into_iter()
        .filter(|(_, fields)| !tally.count(fields))
        .map(|(n, _)| n)
        .collect();
    let asked = silent.len();
    if !tally.decided() && !silent.is_empty() {
        let mut set = JoinSet::new();
        for n in silent {
            let dht = inner.dht.clone();
            let args = wire::args("name", Value::Bytes(name.as_str().as_bytes().to_vec()));
            set.spawn(async move { dht.request(n.addr, wire::RESOLVE, args).await });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(Some(Ok(resp)))) = r
                && tally.count(&resp.other)
                && tally.decided()
            {
                // The slowest storers need not be waited for.
                break;
            }
        }
    }
    tracing::debug!(
        "resolving {}: lookup {looked_up:?}, {asked} asked after it, {:?} in all",
        name.as_str(),
        started.elapsed()
    );
    let Some(key) = tally.claims.winner().map(|c| c.key) else {
        return Ok(None);
    };
    let presence = tally.presence_of(&key);
    Ok(Some(Resolved { key, presence }))
}

/// The valid claim for `name` stored at this node, if any.
async fn held_claim(inner: &Inner, name: &Username) -> Option<NameClaim> {
    let held = stored_claim(inner, name.as_str()).await.ok()??;
    NameClaim::from_bytes(&held)
        .ok()
        .filter(|c| c.verify().is_ok() && c.name == *name)
}

/// Most names whose stored claim (or its absence) is cached; past it the cache
/// starts again (a node stores the claims of about `k` names per `k` users).
const CLAIM_CACHE: usize = 4096;

/// The claim stored here for `name` (its bytes, unverified), from the cache or
/// the database.
pub(crate) async fn stored_claim(
    inner: &Inner,
    name: &str,
) -> Result<Option<Vec<u8>>, crate::db::DbError> {
    if let Some(held) = lock(&inner.claims).get(name) {
        return Ok(held.clone());
    }
    let held = inner.db.name_claim_get(name).await?.map(|h| h.claim);
    let mut cache = lock(&inner.claims);
    if cache.len() >= CLAIM_CACHE {
        cache.clear();
    }
    // A put that raced with this read went to the cache first: keep it.
    Ok(cache.entry(name.to_string()).or_insert(held).clone())
}

/// Stores `row` as the claim held for its name (durable when this returns).
pub(crate) async fn store_claim(
    inner: &Inner,
    row: crate::db::NameClaim,
) -> Result<(), crate::db::DbError> {
    let (name, bytes) = (row.name.clone(), row.claim.clone());
    let stored = inner.db.name_claim_put(row).await;
    let mut cache = lock(&inner.claims);
    match stored {
        Ok(()) => {
            cache.insert(name, Some(bytes));
        }
        // The database may or may not hold it now: read it again next time.
        Err(_) => {
            cache.remove(&name);
        }
    }
    stored
}

/// The key of a name: our pinned contact if we have one, else the network's answer (then pinned).
pub(crate) async fn known_key(inner: &Inner, name: &str) -> Result<UserKey, ChatError> {
    let username = Username::new(name)?;
    if username == inner.name {
        return Ok(inner.me);
    }
    let cached = lock(&inner.pinned).get(username.as_str()).copied();
    if let Some(key) = cached {
        return Ok(key);
    }
    if let Some(c) = inner
        .db
        .contacts_named(username.as_str())
        .await?
        .into_iter()
        .next()
    {
        let key = UserKey(c.key);
        remember_pin(inner, &username, key);
        return Ok(key);
    }
    resolve_and_pin(inner, name).await
}

/// Caches a pinned contact's key by name (pins are never changed).
fn remember_pin(inner: &Inner, username: &Username, key: UserKey) {
    lock(&inner.pinned).insert(username.as_str().to_string(), key);
}

/// Whether we already have a name for `key` (ours, a contact's, or one learned).
pub(crate) async fn is_known(inner: &Inner, key: &UserKey) -> bool {
    if *key == inner.me || inner.names.lock().await.contains_key(key) {
        return true;
    }
    match inner.db.contact(key.0).await {
        Ok(Some(c)) => {
            inner.names.lock().await.insert(*key, c.name);
            true
        }
        _ => false,
    }
}

/// A stranger wrote to us and says they are `name`: when the network's name
/// record gives that name to their key, pin them as a contact under it (as
/// `add` would), so that the conversation shows and answers under the name.
/// A name the network gives to another key (an impersonation, or a name
/// already pinned to someone else) is not used: the sender stays known by key.
pub(crate) async fn learn_name(inner: &Inner, sender: UserKey, name: &str) {
    let Ok(username) = Username::new(name) else {
        return;
    };
    match resolve_network(inner, &username).await {
        Ok(Some(Resolved { key, .. })) if key == sender => {
            if let Err(e) = pin(inner, &username, key).await {
                tracing::info!(%e, "not naming a new sender");
            }
        }
        Ok(_) => tracing::warn!(
            name = username.as_str(),
            "a sender gave a name that the network gives to another key (or to no one)"
        ),
        Err(e) => tracing::info!(%e, "could not check a new sender's name"),
    }
}

/// Resolves `name` on the network and pins its key (trust on first use); a key
/// different from the pinned one is an error, never silently accepted.
pub(crate) async fn resolve_and_pin(inner: &Inner, name: &str) -> Result<UserKey, ChatError> {
    let username = Username::new(name)?;
    let resolved = resolve_network(inner, &username)
        .await?
        .ok_or_else(|| ChatError::NoSuchUser(username.as_str().to_string()))?;
    let key = pin(inner, &username, resolved.key).await?;
    if let Some(p) = resolved.presence {
        remember_presence(inner, key, p).await;
    }
    Ok(key)
}

/// Pins `key` as the contact named `username`, unless that name is pinned to
/// another key already (then [`ChatError::KeyChanged`]).
async fn pin(inner: &Inner, username: &Username, key: UserKey) -> Result<UserKey, ChatError> {
    if let Some(c) = inner
        .db
        .contacts_named(username.as_str())
        .await?
        .into_iter()
        .next()
    {
        if c.key != key.0 {
            return Err(ChatError::KeyChanged {
                name: username.as_str().to_string(),
                pinned: UserKey(c.key).fingerprint(),
                now: key.fingerprint(),
            });
        }
        return Ok(key);
    }
    inner
        .db
        .contact_put(Contact {
            key: key.0,
            name: username.as_str().to_string(),
            fingerprint: key.fingerprint(),
            added_ms: now_ms() as i64,
            presence: None,
            presence_ms: None,
        })
        .await?;
    inner
        .names
        .lock()
        .await
        .insert(key, username.as_str().to_string());
    remember_pin(inner, username, key);
    Ok(key)
}

pub(crate) async fn whois(inner: &Inner, name: &str) -> Result<WhoisView, ChatError> {
    let username = Username::new(name)?;
    let started = std::time::Instant::now();
    let (key, beside) = if username == inner.name {
        (inner.me, None)
    } else {
        let r = resolve_network(inner, &username)
            .await?
            .ok_or_else(|| ChatError::NoSuchUser(username.as_str().to_string()))?;
        (r.key, r.presence)
    };
    let resolved = started.elapsed();
    // The presence came with the claim, or (no storer had one) is looked up.
    let presence = match beside {
        Some(p) => Some(p),
        None => presence_of(inner, &key).await,
    };
    tracing::debug!(
        "whois {}: name resolved in {resolved:?}, presence in {:?}",
        username.as_str(),
        started.elapsed() - resolved
    );
    Ok(WhoisView {
        name: username.as_str().to_string(),
        key: key.to_hex(),
        fingerprint: key.fingerprint(),
        dht_addrs: presence
            .as_ref()
            .map(|p| p.dht.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        chat_addrs: presence
            .as_ref()
            .map(|p| p.chat.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
        presence_ms: presence.map(|p| p.timestamp_ms as i64),
    })
}
