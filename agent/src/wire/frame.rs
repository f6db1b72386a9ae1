//! The frame codec: every frame kind, its payload bounds, its encoding and
//! its decoding, in one place.

use std::io;

use swarmseed_proto::RevisionId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::attest::ChunkRecord;

pub const MAGIC: [u8; 8] = *b"SWSEED\x00\x01";

/// HAVE records per frame.
pub const HAVE_BATCH: usize = 4096;
/// Largest HAVE payload: a full batch of records (528 KiB).
pub const MAX_HAVE: u32 = (HAVE_BATCH * ChunkRecord::LEN) as u32;
/// SERVER_HELLO payload: magic and nonce.
pub const SERVER_HELLO_LEN: u32 = 8 + 32;
/// Longest namespace in a HELLO (a Kubernetes namespace is a DNS label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest dataset name in a HELLO (a Kubernetes object name is a DNS
/// subdomain).
pub const MAX_NAME_LEN: usize = 253;
/// Longest node name in a HELLO (a DNS subdomain too).
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Shortest HELLO: magic, revision, MAC and three empty strings.
pub const MIN_HELLO: u32 = 8 + 32 + 32 + 3 * 2;
/// Longest HELLO: every string at its longest (647 bytes).
pub const MAX_HELLO: u32 =
    MIN_HELLO + (MAX_NAMESPACE_LEN + MAX_NAME_LEN + MAX_NODE_NAME_LEN) as u32;
/// Longest ERROR payload: a short reason.
pub const MAX_ERROR: u32 = 1024;
/// Bytes of a frame header: kind and payload length.
pub const HEADER_LEN: usize = 5;

/// A frame kind: the first byte of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    ServerHello = 1,
    Welcome = 2,
    Have = 3,
    Piece = 4,
    Error = 5,
    Reject = 6,
    Hello = 16,
    Request = 17,
    Cancel = 18,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::ServerHello,
        Kind::Welcome,
        Kind::Have,
        Kind::Piece,
        Kind::Error,
        Kind::Reject,
        Kind::Hello,
        Kind::Request,
        Kind::Cancel,
    ];

    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::ServerHello => "SERVER_HELLO",
            Kind::Welcome => "WELCOME",
            Kind::Have => "HAVE",
            Kind::Piece => "PIECE",
            Kind::Error => "ERROR",
            Kind::Reject => "REJECT",
            Kind::Hello => "HELLO",
            Kind::Request => "REQUEST",
            Kind::Cancel => "CANCEL",
        }
    }

    /// The payload lengths a control frame of this kind may declare
    /// (least, most); `None` for PIECE, whose length the receiver checks
    /// against the chunk it asked for.
    pub fn payload_limit(self) -> Option<(u32, u32)> {
        match self {
            Kind::ServerHello => Some((SERVER_HELLO_LEN, SERVER_HELLO_LEN)),
            Kind::Hello => Some((MIN_HELLO, MAX_HELLO)),
            Kind::Welcome | Kind::Reject | Kind::Request | Kind::Cancel => Some((4, 4)),
            Kind::Have => Some((0, MAX_HAVE)),
            Kind::Error => Some((0, MAX_ERROR)),
            Kind::Piece => None,
        }
    }
}

/// The name of a frame kind byte, for messages.
pub fn kind_name(kind: u8) -> &'static str {
    Kind::from_byte(kind).map_or("unknown", Kind::name)
}

/// A frame header as it arrived: the kind byte may be any, the length
/// anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub len: u32,
}

impl Header {
    pub fn new(kind: Kind, len: u32) -> Self {
        Self {
            kind: kind as u8,
            len,
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = self.kind;
        h[1..].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    pub fn from_bytes(h: [u8; HEADER_LEN]) -> Self {
        Self {
            kind: h[0],
            len: u32::from_le_bytes([h[1], h[2], h[3], h[4]]),
        }
    }

    /// The control frame kind of this header if its declared length is one
    /// that kind can have; refused otherwise (before a byte of the payload
    /// is read or a buffer allocated).
    pub fn check_control(self) -> io::Result<Kind> {
        let kind = Kind::from_byte(self.kind);
        match kind.and_then(|k| k.payload_limit().map(|l| (k, l))) {
            Some((Kind::Have, _)) if !(self.len as usize).is_multiple_of(ChunkRecord::LEN) => Err(
                invalid(format!("HAVE of {} bytes: not whole records", self.len)),
            ),
            Some((k, (least, most))) if (least..=most).contains(&self.len) => Ok(k),
            Some((k, (least, most))) => Err(invalid(format!(
                "{} of {} bytes (expected {least} to {most})",
                k.name(),
                self.len
            ))),
            None => Err(invalid(format!("unexpected frame {}", self.kind))),
        }
    }

    /// As [`Header::check_control`], and the kind must be one of
    /// `expected`: any other is refused on its header.
    pub fn check_expected(self, expected: &[Kind]) -> io::Result<Kind> {
        if !expected.iter().any(|k| *k as u8 == self.kind) {
            let names: Vec<&str> = expected.iter().map(|k| k.name()).collect();
            return Err(invalid(format!(
                "expected {}, got frame {}",
                names.join(" or "),
                self.kind
            )));
        }
        self.check_control()
    }
}

/// The header of a PIECE of chunk `index` whose body is `len` bytes, and
/// the index (the body follows, sent separately).
pub fn piece_head(index: u32, len: u64) -> io::Result<[u8; HEADER_LEN + 4]> {
    let frame_len = u32::try_from(len + 4).map_err(|_| io::Error::other("chunk too large"))?;
    let mut head = [0u8; HEADER_LEN + 4];
    head[..HEADER_LEN].copy_from_slice(&Header::new(Kind::Piece, frame_len).to_bytes());
    head[HEADER_LEN..].copy_from_slice(&index.to_le_bytes());
    Ok(head)
}

/// One control frame (every kind but PIECE, whose body is streamed: see
/// [`piece_head`] and [`super::read_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// server → client: the nonce the client's MAC covers.
    ServerHello { nonce: [u8; 32] },
    /// client → server: who asks for what, and the proof it may.
    Hello(Hello),
    /// server → client: the handshake succeeded.
    Welcome { chunk_count: u32 },
    /// server → client: verified chunks and their attestations.
    Have(Vec<ChunkRecord>),
    /// client → server: send this chunk (many in flight).
    Request(u32),
    /// client → server: no longer send this chunk (endgame).
    Cancel(u32),
    /// server → client: this chunk will not come (not held, cancelled).
    Reject(u32),
    /// either way: a refusal and its reason, then the connection closes.
    Error(String),
}

impl Frame {
    pub fn kind(&self) -> Kind {
        match self {
            Frame::ServerHello { .. } => Kind::ServerHello,
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome { .. } => Kind::Welcome,
            Frame::Have(_) => Kind::Have,
            Frame::Request(_) => Kind::Request,
            Frame::Cancel(_) => Kind::Cancel,
            Frame::Reject(_) => Kind::Reject,
            Frame::Error(_) => Kind::Error,
        }
    }

    /// Appends the frame, header and payload, to `out`. A HAVE of more than
    /// [`HAVE_BATCH`] records goes as one frame per batch; an ERROR's reason
    /// is cut to [`MAX_ERROR`] bytes (at a character boundary).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let u32_frame = |out: &mut Vec<u8>, kind: Kind, v: u32| {
            out.extend_from_slice(&Header::new(kind, 4).to_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        };
        match self {
            Frame::ServerHello { nonce } => {
                out.extend_from_slice(&Header::new(Kind::ServerHello, SERVER_HELLO_LEN).to_bytes());
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(nonce);
            }
            Frame::Hello(h) => {
                let p = h.encode();
                out.extend_from_slice(&Header::new(Kind::Hello, p.len() as u32).to_bytes());
                out.extend_from_slice(&p);
            }
            Frame::Welcome { chunk_count } => u32_frame(out, Kind::Welcome, *chunk_count),
            Frame::Request(i) => u32_frame(out, Kind::Request, *i),
            Frame::Cancel(i) => u32_frame(out, Kind::Cancel, *i),
            Frame::Reject(i) => u32_frame(out, Kind::Reject, *i),
            Frame::Have(records) if records.is_empty() => {
                out.extend_from_slice(&Header::new(Kind::Have, 0).to_bytes());
            }
            Frame::Have(records) => encode_haves(records, out),
            Frame::Error(why) => {
                let mut end = why.len().min(MAX_ERROR as usize);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&Header::new(Kind::Error, end as u32).to_bytes());
                out.extend_from_slice(&why.as_bytes()[..end]);
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes the payload of a frame of `kind`, refusing a length the kind
    /// cannot have and anything but the canonical encoding. Allocates at
    /// most about the payload's size.
    pub fn decode(kind: Kind, p: &[u8]) -> io::Result<Self> {
        let len = u32::try_from(p.len()).map_err(|_| invalid("frame too large".into()))?;
        Header::new(kind, len).check_control()?;
        Ok(match kind {
            Kind::ServerHello => Frame::ServerHello {
                nonce: parse_server_hello(p)?,
            },
            Kind::Hello => Frame::Hello(Hello::decode(p)?),
            Kind::Welcome => Frame::Welcome {
                chunk_count: parse_u32(p)?,
            },
            Kind::Request => Frame::Request(parse_u32(p)?),
            Kind::Cancel => Frame::Cancel(parse_u32(p)?),
            Kind::Reject => Frame::Reject(parse_u32(p)?),
            Kind::Have => Frame::Have(decode_haves(p)?),
            Kind::Error => Frame::Error(reason(p)),
            Kind::Piece => return Err(invalid("PIECE is not a control frame".into())),
        })
    }
}

/// Appends one HAVE frame per [`HAVE_BATCH`] of `records` (none for none).
pub fn encode_haves(records: &[ChunkRecord], out: &mut Vec<u8>) {
    out.reserve(records.len() * ChunkRecord::LEN + records.len().div_ceil(HAVE_BATCH) * 5);
    for batch in records.chunks(HAVE_BATCH) {
        let len = (batch.len() * ChunkRecord::LEN) as u32;
        out.extend_from_slice(&Header::new(Kind::Have, len).to_bytes());
        for r in batch {
            r.encode(out);
        }
    }
}

fn decode_haves(payload: &[u8]) -> io::Result<Vec<ChunkRecord>> {
    if !payload.len().is_multiple_of(ChunkRecord::LEN) {
        return Err(invalid("torn HAVE frame".into()));
    }
    // Sized up front: the records take about the payload's size, never the
    // capacity a growing vector would round up to.
    let mut records = Vec::with_capacity(payload.len() / ChunkRecord::LEN);
    records.extend(
        payload
            .chunks_exact(ChunkRecord::LEN)
            .filter_map(ChunkRecord::decode),
    );
    Ok(records)
}

fn parse_server_hello(p: &[u8]) -> io::Result<[u8; 32]> {
    match p.split_first_chunk::<8>() {
        Some((magic, nonce)) if *magic == MAGIC => nonce
            .try_into()
            .map_err(|_| invalid("malformed SERVER_HELLO".into())),
        _ => Err(invalid("not a swarmseed peer (bad magic)".into())),
    }
}

fn parse_u32(p: &[u8]) -> io::Result<u32> {
    p.try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| invalid("expected a u32 payload".into()))
}

/// An ERROR's reason: its bytes as text, each invalid byte a `?` (so the
/// text is never longer than the payload).
fn reason(p: &[u8]) -> String {
    let mut s = String::with_capacity(p.len());
    for chunk in p.utf8_chunks() {
        s.push_str(chunk.valid());
        s.extend(std::iter::repeat_n('?', chunk.invalid().len()));
    }
    s
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Header> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).await?;
    Ok(Header::from_bytes(h))
}

/// Reads the payload a control frame's header declares, refusing a length
/// its kind cannot have before allocating anything.
pub async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, header: Header) -> io::Result<Vec<u8>> {
    header.check_control()?;
    let mut buf = vec![0u8; header.len as usize];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads and decodes one whole control frame that must be one of
/// `expected`: any other kind, or a length its kind cannot have, is
/// refused on its header, before its payload is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, expected: &[Kind]) -> io::Result<Frame> {
    let header = read_header(r).await?;
    let kind = header.check_expected(expected)?;
    let payload = read_payload(r, header).await?;
    Frame::decode(kind, &payload)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> io::Result<()> {
    w.write_all(&frame.encode()).await
}

/// The client's HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub revision: RevisionId,
    pub mac: [u8; 32],
    pub namespace: String,
    pub name: String,
    pub node: String,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.revision.0);
        out.extend_from_slice(&self.mac);
        for s in [&self.namespace, &self.name, &self.node] {
            let b = s.as_bytes();
            let len = b.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&b[..len]);
        }
        out
    }

    /// Decodes a HELLO payload: at most [`MAX_HELLO`] bytes, each string
    /// within its Kubernetes limit, nothing after the last.
    pub fn decode(p: &[u8]) -> io::Result<Self> {
        let bad = |what: &str| invalid(format!("malformed HELLO: {what}"));
        if p.len() > MAX_HELLO as usize {
            return Err(bad("too long"));
        }
        let Some((magic, rest)) = p.split_first_chunk::<8>() else {
            return Err(bad("too short"));
        };
        if *magic != MAGIC {
            return Err(bad("bad magic"));
        }
        let (revision, rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("too short"))?;
        let (mac, mut rest) = rest
            .split_first_chunk::<32>()
            .ok_or_else(|| bad("too short"))?;
        let mut string = |most: usize, what: &str| -> io::Result<String> {
            let (len, tail) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| bad("too short"))?;
            let len = usize::from(u16::from_le_bytes(*len));
            if len > most {
                return Err(bad(&format!("{what} longer than {most} bytes")));
            }
            let (s, tail) = tail.split_at_checked(len).ok_or_else(|| bad("too short"))?;
            rest = tail;
            String::from_utf8(s.to_vec()).map_err(|_| bad(&format!("{what} is not UTF-8")))
        };
        let namespace = string(MAX_NAMESPACE_LEN, "namespace")?;
        let name = string(MAX_NAME_LEN, "name")?;
        let node = string(MAX_NODE_NAME_LEN, "node name")?;
        if !rest.is_empty() {
            return Err(bad("bytes after the node name"));
        }
        Ok(Self {
            revision: RevisionId(*revision),
            mac: *mac,
            namespace,
            name,
            node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = Hello {
            revision: RevisionId([5; 32]),
            mac: [6; 32],
            namespace: "ml".into(),
            name: "llama".into(),
            node: "gpu-1".into(),
        };
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(Hello::decode(&h.encode()[..80]).is_err());
    }

    #[test]
    fn kinds_are_their_bytes() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_byte(k as u8), Some(k));
            assert_eq!(kind_name(k as u8), k.name());
        }
        assert_eq!(Kind::from_byte(0), None);
        assert_eq!(kind_name(99), "unknown");
    }

    #[test]
    fn an_error_is_cut_at_a_character_boundary_and_invalid_bytes_are_marked() {
        let long = "é".repeat(MAX_ERROR as usize);
        let f = Frame::Error(long).encode();
        let Frame::Error(back) = Frame::decode(Kind::Error, &f[HEADER_LEN..]).expect("decodes")
        else {
            panic!("not an ERROR");
        };
        assert_eq!(back, "é".repeat(MAX_ERROR as usize / 2));
        assert_eq!(reason(b"a\xffb"), "a?b");
    }

    #[test]
    fn a_long_have_goes_in_batches() {
        let rec = ChunkRecord {
            index: 1,
            digest: swarmseed_proto::ChunkDigest([2; 32]),
            signer: [3; 32],
            signature: [4; 64],
        };
        let mut out = Vec::new();
        encode_haves(&vec![rec; HAVE_BATCH + 1], &mut out);
        let first = Header::from_bytes(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!(first, Header::new(Kind::Have, MAX_HAVE));
        let at = HEADER_LEN + MAX_HAVE as usize;
        let second = Header::from_bytes(out[at..at + HEADER_LEN].try_into().unwrap());
        assert_eq!(second, Header::new(Kind::Have, ChunkRecord::LEN as u32));
        assert_eq!(out.len(), at + HEADER_LEN + ChunkRecord::LEN);
    }
}
