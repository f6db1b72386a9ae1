//! Property tests of the peer frame codec (`agent/src/wire/`, as both the
//! peer server and the download sessions use it): whatever bytes arrive,
//! nothing panics, no buffer larger than the frame kind allows is ever
//! allocated (measured by this test binary's allocator), and every frame
//! round-trips.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use futures::executor::block_on;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use swarmseed_agent::attest::ChunkRecord;
use swarmseed_agent::wire::{self, Frame, Header, Hello, Kind};
use swarmseed_proto::{ChunkDigest, RevisionId};

/// Records the largest allocation each thread asks for.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while a thread is torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed to the system allocator unchanged; only
// the requested size is noted, in a thread-local cell that never
// allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// What `f` returns, and the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Bookkeeping any read may allocate whatever the declared length (an
/// error message, the executor's waker): far below a payload's bound.
const SMALL: usize = 512;

/// The kinds each reader of the protocol accepts at some point: the
/// server before and after authentication, the client during its
/// handshake and in its session.
const READERS: &[&[Kind]] = &[
    &[Kind::Hello],
    &[Kind::Request, Kind::Cancel],
    &[Kind::ServerHello, Kind::Error],
    &[Kind::Welcome, Kind::Error],
    &[Kind::Have, Kind::Reject, Kind::Error],
];

/// Every control frame kind.
const CONTROL: &[Kind] = &[
    Kind::ServerHello,
    Kind::Welcome,
    Kind::Have,
    Kind::Error,
    Kind::Reject,
    Kind::Hello,
    Kind::Request,
    Kind::Cancel,
];

/// Lengths at and around every bound.
fn lengths() -> impl Strategy<Value = u32> {
    let edges = vec![
        0,
        3,
        4,
        5,
        39,
        40,
        41,
        wire::MIN_HELLO - 1,
        wire::MIN_HELLO,
        wire::MAX_HELLO,
        wire::MAX_HELLO + 1,
        ChunkRecord::LEN as u32,
        2 * ChunkRecord::LEN as u32 + 1,
        wire::MAX_HAVE,
        wire::MAX_HAVE + ChunkRecord::LEN as u32,
        wire::MAX_ERROR,
        wire::MAX_ERROR + 1,
        1 << 20,
        u32::MAX,
    ];
    prop_oneof![select(edges), 0u32..2048, any::<u32>()]
}

/// A kind byte: a known one or any.
fn kind_byte() -> impl Strategy<Value = u8> {
    prop_oneof![select(Kind::ALL.map(|k| k as u8).to_vec()), any::<u8>()]
}

/// Something like a frame: a header of a known or any kind and a length
/// near a bound or anything, then bytes that may or may not match it.
fn frameish() -> impl Strategy<Value = Vec<u8>> {
    (kind_byte(), lengths(), vec(any::<u8>(), 0..1024)).prop_map(|(kind, len, body)| {
        let mut f = Header { kind, len }.to_bytes().to_vec();
        f.extend_from_slice(&body);
        f
    })
}

/// A stream of such frames, or of plain noise.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(frameish(), 0..6).prop_map(|fs| fs.concat()),
        vec(any::<u8>(), 0..2048),
    ]
}

fn record() -> impl Strategy<Value = ChunkRecord> {
    (
        any::<u32>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        vec(any::<u8>(), 64),
    )
        .prop_map(|(index, digest, signer, sig)| ChunkRecord {
            index,
            digest: ChunkDigest(digest),
            signer,
            signature: sig.try_into().unwrap_or([0; 64]),
        })
}

fn dns_chars(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    let chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789-.".chars().collect();
    vec(select(chars), len).prop_map(|c| c.into_iter().collect())
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        dns_chars(0..=wire::MAX_NAMESPACE_LEN),
        dns_chars(0..=wire::MAX_NAME_LEN),
        dns_chars(0..=wire::MAX_NODE_NAME_LEN),
    )
        .prop_map(|(revision, mac, namespace, name, node)| Hello {
            revision: RevisionId(revision),
            mac,
            namespace,
            name,
            node,
        })
}

/// A reason that fits an ERROR: any text of at most `MAX_ERROR` bytes.
fn reason() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..300).prop_map(|cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() > wire::MAX_ERROR as usize {
                break;
            }
            s.push(c);
        }
        s
    })
}

/// Any control frame within its kind's bounds.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Frame::ServerHello { nonce }),
        hello().prop_map(Frame::Hello),
        any::<u32>().prop_map(|chunk_count| Frame::Welcome { chunk_count }),
        vec(record(), 0..64).prop_map(Frame::Have),
        any::<u32>().prop_map(Frame::Request),
        any::<u32>().prop_map(Frame::Cancel),
        any::<u32>().prop_map(Frame::Reject),
        reason().prop_map(Frame::Error),
    ]
}

/// Checks what a successful read says against the bytes it consumed:
/// only the canonical encoding decodes (an ERROR's invalid UTF-8 aside,
/// which comes out one `?` per byte).
fn check_canonical(f: &Frame, consumed: &[u8]) -> Result<(), TestCaseError> {
    match f {
        Frame::Error(why) => {
            prop_assert_eq!(why.len() + wire::HEADER_LEN, consumed.len());
            if std::str::from_utf8(&consumed[wire::HEADER_LEN..]).is_ok() {
                prop_assert_eq!(f.encode(), consumed);
            }
        }
        _ => prop_assert_eq!(f.encode(), consumed),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Every reader, fed any stream: frames come out of the kinds it asked
    /// for, within their bounds, canonically encoded, and no allocation is
    /// larger than the frame just read (a refused header allocates nothing
    /// of its length).
    #[test]
    fn any_stream_is_read_within_the_bounds_of_each_frame_kind(
        bytes in stream(),
        reader in 0..READERS.len(),
    ) {
        let expected = READERS[reader];
        let most_expected = expected
            .iter()
            .filter_map(|k| k.payload_limit())
            .map(|(_, most)| most as usize)
            .max()
            .unwrap_or(0);
        let mut r = &bytes[..];
        for _ in 0..16 {
            let before = r;
            let header: Option<Header> = (r.len() >= wire::HEADER_LEN)
                .then(|| Header::from_bytes(r[..wire::HEADER_LEN].try_into().unwrap()));
            let (read, largest) = largest_allocation(|| block_on(wire::read_frame(&mut r, expected)));
            match read {
                Ok(f) => {
                    prop_assert!(expected.contains(&f.kind()));
                    let consumed = &before[..before.len() - r.len()];
                    let len = consumed.len() - wire::HEADER_LEN;
                    let (least, most) = f.kind().payload_limit().unwrap_or((1, 0));
                    prop_assert!((least as usize..=most as usize).contains(&len));
                    // The payload, then what it decodes to (HAVE records
                    // are the payload's size again).
                    prop_assert!(largest <= len.max(SMALL), "{} bytes for a {}-byte frame", largest, len);
                    check_canonical(&f, consumed)?;
                }
                Err(_) => {
                    let acceptable = header.is_some_and(|h| h.check_expected(expected).is_ok());
                    let bound = if acceptable { most_expected.max(SMALL) } else { SMALL };
                    prop_assert!(largest <= bound, "{} bytes for a refused header {:?}", largest, header);
                    break;
                }
            }
        }
    }

    /// Any payload for any control kind decodes or is refused without
    /// panicking, allocating at most about its own size.
    #[test]
    fn any_payload_decodes_within_its_size(
        kind in select(CONTROL.to_vec()),
        p in prop_oneof![vec(any::<u8>(), 0..2048), (0usize..64).prop_map(|n| vec![7u8; n * ChunkRecord::LEN])],
    ) {
        let (decoded, largest) = largest_allocation(|| Frame::decode(kind, &p));
        prop_assert!(largest <= p.len().max(SMALL), "{} bytes to decode {}", largest, p.len());
        if let Ok(f) = decoded {
            prop_assert_eq!(f.kind(), kind);
            let mut framed = Header::new(kind, p.len() as u32).to_bytes().to_vec();
            framed.extend_from_slice(&p);
            check_canonical(&f, &framed)?;
        }
    }

    /// A declared length is checked before anything of it is allocated or
    /// read; one within its kind's bound is read exactly.
    #[test]
    fn declared_lengths_are_checked_before_allocating(
        kind in any::<u8>(),
        len in lengths(),
        tail in vec(any::<u8>(), 0..1024),
    ) {
        let header = Header { kind, len };
        let allowed = header.check_control().is_ok();
        let mut r = &tail[..];
        let (read, largest) = largest_allocation(|| block_on(wire::read_payload(&mut r, header)));
        if allowed {
            prop_assert!(largest <= (len as usize).max(SMALL));
            prop_assert_eq!(read.is_ok(), tail.len() >= len as usize);
            if let Ok(p) = read {
                prop_assert_eq!(&p[..], &tail[..len as usize]);
            }
        } else {
            prop_assert!(read.is_err());
            prop_assert!(largest <= SMALL, "{} bytes for a refused {}-byte {}", largest, len, wire::kind_name(kind));
        }
    }

    #[test]
    fn any_hello_bytes_decode_without_panic_or_large_allocation(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..1024),
            (hello(), any::<usize>(), any::<u8>(), 0usize..4).prop_map(|(h, at, b, how)| {
                let mut e = h.encode();
                let at = at % (e.len() + 1);
                match how {
                    0 => e.truncate(at),
                    1 => e.insert(at, b),
                    2 => if let Some(x) = e.get_mut(at) { *x ^= b | 1 },
                    _ => e.extend(std::iter::repeat_n(b, at)),
                }
                e
            }),
        ],
    ) {
        let (decoded, largest) = largest_allocation(|| Hello::decode(&bytes));
        prop_assert!(largest <= SMALL);
        if let Ok(h) = decoded {
            prop_assert!(bytes.len() <= wire::MAX_HELLO as usize);
            prop_assert_eq!(h.encode(), bytes);
        }
    }

    #[test]
    fn a_valid_hello_round_trips_within_max_hello(h in hello()) {
        let e = h.encode();
        prop_assert!(e.len() <= wire::MAX_HELLO as usize);
        let frame = Frame::Hello(h.clone()).encode();
        let read = block_on(wire::read_frame(&mut &frame[..], &[Kind::Hello]))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read, Frame::Hello(h));
    }

    /// Every frame round-trips, alone and in a stream of frames, read by a
    /// reader that takes any control kind.
    #[test]
    fn every_frame_round_trips(frames in vec(frame(), 1..8)) {
        let mut bytes = Vec::new();
        for f in &frames {
            let one = f.encode();
            let header = Header::from_bytes(one[..wire::HEADER_LEN].try_into().unwrap());
            prop_assert_eq!(header.kind, f.kind() as u8);
            prop_assert!(header.check_control().is_ok());
            prop_assert_eq!(&Frame::decode(f.kind(), &one[wire::HEADER_LEN..]).map_err(|e| TestCaseError::fail(e.to_string()))?, f);
            bytes.extend_from_slice(&one);
        }
        let mut r = &bytes[..];
        for f in &frames {
            let read = block_on(wire::read_frame(&mut r, CONTROL)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&read, f);
        }
        prop_assert!(r.is_empty());
    }

    #[test]
    fn have_records_round_trip(records in vec(record(), 0..64)) {
        let f = Frame::Have(records.clone()).encode();
        let read = block_on(wire::read_frame(&mut &f[..], &[Kind::Have])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read, Frame::Have(records));
    }
}

/// The bound on an unauthenticated client: the longest HELLO there can be
/// is [`wire::MAX_HELLO`] bytes.
#[test]
fn the_longest_hello_is_max_hello() {
    let h = Hello {
        revision: RevisionId([1; 32]),
        mac: [2; 32],
        namespace: "n".repeat(wire::MAX_NAMESPACE_LEN),
        name: "d".repeat(wire::MAX_NAME_LEN),
        node: "g".repeat(wire::MAX_NODE_NAME_LEN),
    };
    assert_eq!(h.encode().len(), wire::MAX_HELLO as usize);
    assert_eq!(wire::MAX_HELLO, 647);
    assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
    // One string too long, the HELLO itself short.
    let h = Hello {
        namespace: "ml".into(),
        name: "llama".into(),
        node: "gpu-1".into(),
        ..h
    };
    for long in [
        Hello {
            namespace: "n".repeat(wire::MAX_NAMESPACE_LEN + 1),
            ..h.clone()
        },
        Hello {
            name: "d".repeat(wire::MAX_NAME_LEN + 1),
            ..h.clone()
        },
        Hello {
            node: "g".repeat(wire::MAX_NODE_NAME_LEN + 1),
            ..h.clone()
        },
    ] {
        let e = Hello::decode(&long.encode()).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
    }
}

/// The tracking allocator sees what it must: a refused 1 GiB declaration
/// allocates nothing of it, and an accepted HAVE allocates its payload.
#[test]
fn the_allocation_probe_sees_payloads() {
    let (r, largest) = largest_allocation(|| {
        block_on(wire::read_payload(
            &mut &[][..],
            Header::new(Kind::Hello, 1 << 30),
        ))
    });
    assert!(r.is_err());
    assert!(largest <= SMALL, "{largest}");
    let have = vec![0u8; wire::MAX_HAVE as usize];
    let (r, largest) = largest_allocation(|| {
        block_on(wire::read_payload(
            &mut &have[..],
            Header::new(Kind::Have, wire::MAX_HAVE),
        ))
    });
    assert_eq!(r.unwrap().len(), wire::MAX_HAVE as usize);
    assert_eq!(largest, wire::MAX_HAVE as usize);
}
