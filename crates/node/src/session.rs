//! Authenticated, encrypted TCP sessions between chat peers: Noise IK over
//! X25519 static keys derived from the users' ed25519 identity keys.
//!
//! The initiator knows the responder's identity key (from its signed name claim
//! or presence record) and so its X25519 static key; the responder learns the
//! initiator's static key from the handshake, and the initiator's ed25519 key
//! from the handshake payload, and checks that the one maps onto the other. A
//! session is thus bound to both identities: nobody can answer for a user
//! without that user's secret key. Frames are a 2-byte big-endian length and
//! one Noise transport message.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The Noise protocol used.
const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_SHA256";
/// Bound into the handshake so a Peerchat session cannot be confused with another protocol's.
const PROLOGUE: &[u8] = b"peerchat-session-v1";
/// The largest Noise message.
const MAX_NOISE: usize = 65535;
/// The largest plaintext in one frame.
pub const MAX_FRAME: usize = MAX_NOISE - 16;
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Our keys, as a session needs them.
#[derive(Clone)]
pub struct SessionKeys {
    /// The X25519 static secret (derived from the ed25519 secret key).
    pub x25519_secret: [u8; 32],
    /// Our ed25519 public key (the user's identity).
    pub identity: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What can go wrong in a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The TCP connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The Noise handshake or decryption failed.
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    /// The peer is not who it claims to be (its static key does not match its identity key).
    #[error("the peer's session key does not belong to the identity it claims")]
    WrongIdentity,
    /// The handshake did not finish in time.
    #[error("the handshake timed out")]
    Timeout,
    /// A frame was larger than allowed.
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// An identity key is not a valid ed25519 point.
    #[error("invalid identity key")]
    BadKey,
}

/// The X25519 public key bound to an ed25519 identity key.
pub fn x25519_of(identity: &[u8; 32]) -> Result<[u8; 32], SessionError> {
    let vk = VerifyingKey::from_bytes(identity).map_err(|_| SessionError::BadKey)?;
    Ok(vk.to_montgomery().to_bytes())
}

/// The sending half of a session.
#[derive(Debug)]
pub struct SessionWriter {
    stream: OwnedWriteHalf,
    noise: std::sync::Arc<std::sync::Mutex<snow::TransportState>>,
    /// Sealed frames queued and not yet written (each sealed in place here:
    /// no 64 KiB scratch buffer per session).
    out: Vec<u8>,
}

/// Bytes a session reader takes from the socket at once: a stream of small
/// frames costs one read per buffer, not two per frame.
const READ_BUFFER: usize = 64 * 1024;
/// Room for one of our handshake messages (the longest, the initiator's: an
/// ephemeral key, our encrypted static key and identity key, 144 bytes).
/// Sized to them rather than to the largest Noise message (64 KiB, zeroed,
/// three times per handshake).
const HANDSHAKE_MESSAGE: usize = 256;
/// A writer's queue keeps at most this much capacity once flushed.
const KEEP_QUEUE: usize = 64 * 1024;

/// The receiving half of a session.
#[derive(Debug)]
pub struct SessionReader {
    stream: tokio::io::BufReader<OwnedReadHalf>,
    noise: std::sync::Arc<std::sync::Mutex<snow::TransportState>>,
    buf: Vec<u8>,
}

/// An established session: the peer's identity and both halves.
#[derive(Debug)]
pub struct Session {
    /// The peer's ed25519 identity key, proven by the handshake.
    pub peer: [u8; 32],
    /// Sends frames.
    pub writer: SessionWriter,
    /// Receives frames.
    pub reader: SessionReader,
}

async fn write_raw(
    stream: &mut (impl AsyncWriteExt + Unpin),
    msg: &[u8],
) -> Result<(), SessionError> {
    let len = u16::try_from(msg.len()).map_err(|_| SessionError::TooLarge(msg.len()))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await?;
    Ok(())
}

async fn read_raw(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> Result<(), SessionError> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    buf.resize(len, 0);
    stream.read_exact(buf).await?;
    Ok(())
}

fn builder(keys: &SessionKeys) -> Result<snow::Builder<'_>, SessionError> {
    let params: snow::params::NoiseParams = PATTERN.parse()?;
    Ok(snow::Builder::new(params)
        .local_private_key(&keys.x25519_secret)?
        .prologue(PROLOGUE)?)
}

fn split(stream: TcpStream, noise: snow::TransportState, peer: [u8; 32]) -> Session {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let noise = std::sync::Arc::new(std::sync::Mutex::new(noise));
    Session {
        peer,
        writer: SessionWriter {
            stream: w,
            noise: noise.clone(),
            out: Vec::new(),
        },
        reader: SessionReader {
            stream: tokio::io::BufReader::with_capacity(READ_BUFFER, r),
            noise,
            buf: Vec::new(),
        },
    }
}

/// The responder's reading of the initiator's first handshake message (`msg`,
/// without its length prefix): the payload must be an ed25519 identity key whose
/// X25519 form is the static key the handshake proved. Returns the handshake, ready
/// to answer, and that identity key.
pub fn read_hello(
    keys: &SessionKeys,
    msg: &[u8],
) -> Result<(snow::HandshakeState, [u8; 32]), SessionError> {
    let mut hs = builder(keys)?.build_responder()?;
    // The payload is shorter than the message that carries it.
    let mut payload = vec![0u8; msg.len()];
    let n = hs.read_message(msg, &mut payload)?;
    let peer: [u8; 32] = payload
        .get(..n)
        .and_then(|p| <[u8; 32]>::try_from(p).ok())
        .ok_or(SessionError::WrongIdentity)?;
    let remote_static = hs.get_remote_static().ok_or(SessionError::WrongIdentity)?;
    if x25519_of(&peer)? != remote_static {
        return Err(SessionError::WrongIdentity);
    }
    Ok((hs, peer))
}

/// Splits one frame off the front of `bytes`: a 2-byte big-endian length and that
/// many bytes. Returns the frame's message and the rest, or `None` if `bytes` does
/// not hold a whole frame yet.
pub fn split_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Decrypts one transport message (a frame without its length prefix).
pub fn open_frame(noise: &mut snow::TransportState, msg: &[u8]) -> Result<Vec<u8>, SessionError> {
    let mut out = vec![0u8; msg.len()];
    let n = noise.read_message(msg, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Opens a session to the user with identity key `peer` at `stream`'s other end.
pub async fn connect(
    mut stream: TcpStream,
    keys: &SessionKeys,
    peer: [u8; 32],
) -> Result<Session, SessionError> {
    let remote = x25519_of(&peer)?;
    let fut = async {
        let mut hs = builder(keys)?
            .remote_public_key(&remote)?
            .build_initiator()?;
        let mut buf = vec![0u8; HANDSHAKE_MESSAGE];
        // -> e, es, s, ss; payload: our identity key.
        let n = hs.write_message(&keys.identity, &mut buf)?;
        write_raw(&mut stream, &buf[..n]).await?;
        // <- e, ee, se
        let mut msg = Vec::new();
        read_raw(&mut stream, &mut msg).await?;
        let mut payload = vec![0u8; msg.len()];
        hs.read_message(&msg, &mut payload)?;
        Ok::<_, SessionError>(hs.into_transport_mode()?)
    };
    let noise = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::Timeout)??;
    Ok(split(stream, noise, peer))
}

/// Accepts a session on an incoming connection; the peer's identity comes back in [`Session::peer`].
pub async fn accept(mut stream: TcpStream, keys: &SessionKeys) -> Result<Session, SessionError> {
    let fut = async {
        let mut msg = Vec::new();
        read_raw(&mut stream, &mut msg).await?;
        let (mut hs, peer) = read_hello(keys, &msg)?;
        let mut buf = vec![0u8; HANDSHAKE_MESSAGE];
        let n = hs.write_message(&[], &mut buf)?;
        write_raw(&mut stream, &buf[..n]).await?;
        Ok::<_, SessionError>((hs.into_transport_mode()?, peer))
    };
    let (noise, peer) = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| SessionError::Timeout)??;
    Ok(split(stream, noise, peer))
}

impl SessionWriter {
    /// Encrypts and sends one frame.
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), SessionError> {
        self.queue(plaintext)?;
        self.flush().await
    }

    /// Encrypts one frame into the queue; [`SessionWriter::flush`] sends what
    /// is queued in one write (a burst of frames costs one system call).
    pub fn queue(&mut self, plaintext: &[u8]) -> Result<(), SessionError> {
        if plaintext.len() > MAX_FRAME {
            return Err(SessionError::TooLarge(plaintext.len()));
        }
        // Room for the length prefix, the ciphertext and its 16-byte tag.
        let start = self.out.len();
        self.out.resize(start + 2 + plaintext.len() + 16, 0);
        let sealed = match self.noise.lock() {
            Ok(mut noise) => noise
                .write_message(plaintext, &mut self.out[start + 2..])
                .map_err(SessionError::from),
            Err(_) => Err(SessionError::WrongIdentity),
        };
        let len = sealed
            .and_then(|n| u16::try_from(n).map_err(|_| SessionError::TooLarge(plaintext.len())));
        match len {
            Ok(len) => {
                self.out.truncate(start + 2 + usize::from(len));
                self.out[start..start + 2].copy_from_slice(&len.to_be_bytes());
                Ok(())
            }
            Err(e) => {
                self.out.truncate(start);
                Err(e)
            }
        }
    }

    /// Bytes queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Sends every queued frame.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
            self.out.shrink_to(KEEP_QUEUE);
        }
        Ok(())
    }
}

impl SessionReader {
    /// Whether a whole frame has already arrived, so that [`SessionReader::recv`]
    /// returns it without waiting: lets a reader take a burst in one go.
    pub fn frame_ready(&self) -> bool {
        split_frame(self.stream.buffer()).is_some()
    }

    /// Receives and decrypts one frame.
    pub async fn recv(&mut self) -> Result<Vec<u8>, SessionError> {
        read_raw(&mut self.stream, &mut self.buf).await?;
        let mut noise = self.noise.lock().map_err(|_| SessionError::WrongIdentity)?;
        open_frame(&mut noise, &self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tokio::net::TcpListener;

    fn keys(seed: u8) -> SessionKeys {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        SessionKeys {
            x25519_secret: sk.to_scalar_bytes(),
            identity: sk.verifying_key().to_bytes(),
        }
    }

    #[test]
    fn frames_split_and_garbage_hellos_are_refused() {
        assert_eq!(split_frame(&[]), None);
        assert_eq!(split_frame(&[0]), None);
        assert_eq!(split_frame(&[0, 3, 1, 2]), None);
        let empty: &[u8] = &[];
        assert_eq!(split_frame(&[0, 0]), Some((empty, empty)));
        assert_eq!(
            split_frame(&[0, 2, 1, 2, 9]),
            Some((&[1u8, 2][..], &[9u8][..]))
        );
        for len in [0, 1, 32, 95, 96, 128, 200] {
            assert!(read_hello(&keys(2), &vec![0x42; len]).is_err());
        }
    }

    #[tokio::test]
    async fn handshake_binds_identities_and_carries_frames() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = (keys(1), keys(2));
        let b2 = b.clone();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut sess = accept(s, &b2).await.unwrap();
            let got = sess.reader.recv().await.unwrap();
            sess.writer.send(&got).await.unwrap();
            sess.peer
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut sess = connect(stream, &a, b.identity).await.unwrap();
        sess.writer.send(b"hello").await.unwrap();
        assert_eq!(sess.reader.recv().await.unwrap(), b"hello");
        assert_eq!(server.await.unwrap(), a.identity);
    }

    /// A session from user 1 to user 2 on loopback: (user 1's end, user 2's end).
    async fn session_pair() -> (Session, Session) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = (keys(1), keys(2));
        let identity = b.identity;
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, &b).await.unwrap()
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let client = connect(stream, &a, identity).await.unwrap();
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn queued_frames_arrive_in_order_and_a_refused_one_leaves_no_trace() {
        let (mut sess, mut far) = session_pair().await;
        let big = vec![7u8; MAX_FRAME];
        sess.writer.queue(b"one").unwrap();
        let before = sess.writer.queued();
        assert!(matches!(
            sess.writer.queue(&vec![0u8; MAX_FRAME + 1]),
            Err(SessionError::TooLarge(_))
        ));
        assert_eq!(sess.writer.queued(), before);
        sess.writer.queue(&big).unwrap();
        sess.writer.queue(b"").unwrap();
        sess.writer.flush().await.unwrap();
        assert_eq!(sess.writer.queued(), 0);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(far.reader.recv().await.unwrap());
        }
        assert_eq!(got, vec![b"one".to_vec(), big, Vec::new()]);
    }

    #[tokio::test]
    async fn connecting_to_the_wrong_identity_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b, c) = (keys(1), keys(2), keys(3));
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, &b).await.is_err()
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        // We think we talk to c, but b answers: b cannot decrypt our first message.
        let r = connect(stream, &a, c.identity).await;
        assert!(r.is_err());
        assert!(server.await.unwrap());
    }

    #[tokio::test]
    async fn claiming_another_identity_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b, c) = (keys(1), keys(2), keys(3));
        let b2 = b.clone();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            matches!(accept(s, &b2).await, Err(SessionError::WrongIdentity))
        });
        // a's static key, but c's identity in the payload.
        let liar = SessionKeys {
            x25519_secret: a.x25519_secret,
            identity: c.identity,
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let _ = connect(stream, &liar, b.identity).await;
        assert!(server.await.unwrap());
    }
}
