//! `peerchat dht ...`: a bare DHT node, and one-shot BEP 44 clients.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use peerchat_kad::bep44::MutableItem;
use peerchat_kad::{Config, NodeId, Value, bep42};
use peerchat_node::{NodeConfig, NodeHandle, spawn};

/// DHT commands.
#[derive(Subcommand, Debug)]
pub(crate) enum DhtCommand {
    /// Run a bare DHT node in the foreground until Ctrl-C (SIGINT) or SIGTERM.
    Serve(ServeArgs),
    /// Store VALUE (as a bencoded byte string) as a BEP 44 immutable item; prints its target.
    Put {
        /// The value to store (at most about 990 bytes).
        value: String,
        #[command(flatten)]
        net: ClientArgs,
    },
    /// Fetch the BEP 44 immutable item with this target (40 hex characters) and print its value.
    Get {
        /// The item's target, as printed by `peerchat dht put`.
        target: String,
        #[command(flatten)]
        net: ClientArgs,
    },
    /// Store VALUE as a BEP 44 mutable item signed with an ed25519 key; prints the public key and target.
    PutMutable {
        /// The value to store.
        value: String,
        /// The ed25519 secret key (seed), 64 hex characters.
        #[arg(long, value_name = "HEX32")]
        secret_key: String,
        /// Optional salt, so one key can hold several items.
        #[arg(long)]
        salt: Option<String>,
        /// Sequence number; default: one more than the item's current one (1 if new).
        #[arg(long)]
        seq: Option<i64>,
        #[command(flatten)]
        net: ClientArgs,
    },
    /// Fetch the most recent BEP 44 mutable item of a public key (and salt); verifies its signature.
    GetMutable {
        /// The ed25519 public key, 64 hex characters.
        pubkey: String,
        /// The salt it was stored with, if any.
        #[arg(long)]
        salt: Option<String>,
        #[command(flatten)]
        net: ClientArgs,
    },
}

/// Options of `peerchat dht serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// UDP address to listen on.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881")]
    listen: SocketAddr,
    /// A node of the network to join (repeat for several). Without any, this node starts a new network.
    #[arg(long, value_name = "IP:PORT")]
    bootstrap: Vec<String>,
    /// Bucket size and replication factor.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_K, value_parser = crate::at_least_one)]
    k: usize,
    /// Requests in flight per lookup.
    #[arg(long, default_value_t = peerchat_kad::DEFAULT_ALPHA, value_parser = crate::at_least_one)]
    alpha: usize,
}

/// Network options of the one-shot clients.
#[derive(Args, Debug)]
pub(crate) struct ClientArgs {
    /// A node of the network to ask (repeat for several).
    #[arg(long, value_name = "IP:PORT", required = true)]
    bootstrap: Vec<String>,
    /// Seconds to wait for the whole operation.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

pub(crate) async fn run(cmd: DhtCommand) -> Result<()> {
    match cmd {
        DhtCommand::Serve(a) => serve(a).await,
        DhtCommand::Put { value, net } => {
            let node = client(&net).await?;
            let (target, stored, _) =
                within(&net, node.put_immutable(Value::Bytes(value.into_bytes()))).await??;
            if stored == 0 {
                bail!("no node accepted the item; is the network reachable?");
            }
            println!("{target}");
            eprintln!("stored at {stored} nodes");
            Ok(())
        }
        DhtCommand::Get { target, net } => {
            let target = NodeId::from_hex(&target).ok_or_else(|| {
                anyhow!("the target must be 40 hex characters, as printed by `peerchat dht put`")
            })?;
            let node = client(&net).await?;
            match within(&net, node.get_immutable(target)).await??.0 {
                Some(v) => {
                    print_value(&v);
                    Ok(())
                }
                None => bail!("not found: no node of the network has an item with target {target}"),
            }
        }
        DhtCommand::PutMutable {
            value,
            secret_key,
            salt,
            seq,
            net,
        } => {
            let secret: [u8; 32] = parse_hex(&secret_key, "--secret-key")?;
            let salt = salt.map(String::into_bytes).unwrap_or_default();
            let node = client(&net).await?;
            let probe = MutableItem::sign(&secret, salt.clone(), 0, Value::Int(0))?;
            let seq = match seq {
                Some(s) => s,
                None => {
                    let (current, _) =
                        within(&net, node.get_mutable(probe.key, salt.clone(), None)).await??;
                    current.map(|m| m.seq.saturating_add(1)).unwrap_or(1)
                }
            };
            let item = MutableItem::sign(&secret, salt, seq, Value::Bytes(value.into_bytes()))?;
            let (target, stored, errors, _) =
                within(&net, node.put_mutable(item.clone(), None)).await??;
            if stored == 0 {
                match errors.first() {
                    Some(e) => bail!(
                        "no node accepted the item: error {} ({})",
                        e.code,
                        e.message
                    ),
                    None => bail!("no node accepted the item; is the network reachable?"),
                }
            }
            println!("public key: {}", hex::encode(item.key));
            println!("target: {target}");
            println!("seq: {seq}");
            eprintln!("stored at {stored} nodes");
            Ok(())
        }
        DhtCommand::GetMutable { pubkey, salt, net } => {
            let key: [u8; 32] = parse_hex(&pubkey, "the public key")?;
            let salt = salt.map(String::into_bytes).unwrap_or_default();
            let node = client(&net).await?;
            match within(&net, node.get_mutable(key, salt, None)).await??.0 {
                // The core only returns items whose signature and target it verified.
                Some(m) => {
                    println!("seq: {}", m.seq);
                    print!("value: ");
                    print_value(&m.value);
                    Ok(())
                }
                None => bail!(
                    "not found: no node of the network has a valid item for this key and salt"
                ),
            }
        }
    }
}

fn print_value(v: &Value) {
    match v {
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => println!("{s}"),
            Err(_) => println!("{}", hex::encode(b)),
        },
        other => println!("{}", String::from_utf8_lossy(&other.encode())),
    }
}

fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let bytes = hex::decode(s.trim()).with_context(|| format!("{what} is not hex"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow!("{what} must be {} hex characters", 2 * N))
}

async fn within<T>(net: &ClientArgs, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(net.timeout), f)
        .await
        .map_err(|_| {
            anyhow!(
                "no answer within {} s (raise --timeout, or check the bootstrap address)",
                net.timeout
            )
        })
}

pub(crate) async fn resolve(addrs: &[String]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in addrs {
        let found = tokio::net::lookup_host(a.as_str())
            .await
            .with_context(|| format!("bootstrap address {a:?} must be IP:PORT or HOST:PORT"))?;
        out.extend(found);
    }
    if out.is_empty() && !addrs.is_empty() {
        bail!("the bootstrap addresses resolve to nothing");
    }
    Ok(out)
}

/// A short-lived, read-only (BEP 43) node that joins through `--bootstrap`.
async fn client(net: &ClientArgs) -> Result<NodeHandle> {
    let boot = resolve(&net.bootstrap).await?;
    let any: IpAddr = match boot.first() {
        Some(SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
        _ => Ipv4Addr::UNSPECIFIED.into(),
    };
    let mut cfg = NodeConfig::new(SocketAddr::new(any, 0));
    cfg.dht.read_only = true;
    let (node, _task) = spawn(cfg).await?;
    within(net, node.bootstrap(&boot)).await??;
    Ok(node)
}

/// The id a node listening on `listen` should have: BEP 42 for a public address.
pub(crate) fn node_id_for(listen: SocketAddr) -> Option<NodeId> {
    let ip = listen.ip();
    if ip.is_unspecified() || bep42::is_exempt(ip) {
        None
    } else {
        Some(bep42::id_for_ip(ip, &mut rand::rng()))
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let boot = resolve(&a.bootstrap).await?;
    let mut cfg = NodeConfig::new(a.listen);
    cfg.id = node_id_for(a.listen);
    cfg.dht = Config {
        k: a.k.max(1),
        alpha: a.alpha.max(1),
        ..Config::default()
    };
    let (node, task) = spawn(cfg).await?;
    eprintln!(
        "DHT node {} listening on UDP {}",
        node.id(),
        node.local_addr()
    );
    if boot.is_empty() {
        eprintln!(
            "no --bootstrap given: this node starts a new network; others join with --bootstrap {}",
            node.local_addr()
        );
    } else {
        match node.bootstrap(&boot).await {
            Ok(n) => eprintln!("joined the network: {n} contacts"),
            Err(e) => eprintln!("warning: {e}; retrying in the background"),
        }
    }
    let mut status = tokio::time::interval(Duration::from_secs(60));
    status.tick().await;
    loop {
        tokio::select! {
            _ = crate::shutdown_signal() => break,
            _ = status.tick() => {
                if let Ok(s) = node.snapshot().await {
                    eprintln!("{} contacts, {} records stored, {} queries answered", s.contacts.len(), s.items, s.stats.queries_received);
                }
            }
        }
    }
    eprintln!("shutting down");
    node.shutdown().await;
    let _ = task.await;
    Ok(())
}
