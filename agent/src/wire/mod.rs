//! The peer protocol: compact frames over plain TCP.
//!
//! Every frame is `[kind: u8][len: u32 LE][payload: len bytes]`.
//!
//! ```text
//! server → client  SERVER_HELLO  magic[8] nonce[32]
//! client → server  HELLO         magic[8] revision[32] mac[32] ns name node (u16-prefixed)
//! server → client  WELCOME       chunk_count u32            (or ERROR, then close)
//! server → client  HAVE          n × ChunkRecord            (initial set, then each new chunk)
//! client → server  REQUEST       index u32                  (many in flight)
//! client → server  CANCEL        index u32                  (endgame)
//! server → client  PIECE         index u32, then the chunk's bytes (sent with sendfile)
//! server → client  REJECT        index u32                  (not held / cancelled)
//! ```
//!
//! [`frame`] is the codec: one [`Kind`] per frame kind, one [`Frame`] with
//! `encode`/`decode` for every control frame. [`handshake`] is the first
//! three frames, both ends of them. [`socket`] holds the socket options of
//! peer connections and the PIECE body reader.
//!
//! Every length a peer declares is checked against what its frame kind may
//! hold ([`Kind::payload_limit`]) before a byte of the payload is read or
//! a buffer allocated: a HELLO is at most [`MAX_HELLO`] bytes, so an
//! unauthenticated client can make a server hold a few hundred bytes, not
//! the megabyte a HAVE may fill.

pub mod frame;
pub mod handshake;
pub mod socket;

pub use frame::{
    Frame, HAVE_BATCH, HEADER_LEN, Header, Hello, Kind, MAGIC, MAX_ERROR, MAX_HAVE, MAX_HELLO,
    MAX_NAME_LEN, MAX_NAMESPACE_LEN, MAX_NODE_NAME_LEN, MIN_HELLO, SERVER_HELLO_LEN, encode_haves,
    kind_name, piece_head, read_frame, read_header, read_payload, write_frame,
};
pub use socket::{congestion_control, read_body, set_congestion_control, set_unsent_limit};
