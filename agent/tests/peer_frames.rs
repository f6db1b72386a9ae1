//! Property tests of every parser of peer bytes (`agent/src/wire.rs`, as
//! both the peer server and the download sessions use it): whatever bytes
//! arrive, nothing panics, no buffer larger than the frame kind allows is
//! ever allocated (measured by this test binary's allocator), and valid
//! frames round-trip.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use futures::executor::block_on;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use swarmseed_agent::store::ChunkRecord;
use swarmseed_agent::wire::{self, Hello};
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
const READERS: &[&[u8]] = &[
    &[wire::HELLO],
    &[wire::REQUEST, wire::CANCEL],
    &[wire::SERVER_HELLO, wire::ERROR],
    &[wire::WELCOME, wire::ERROR],
    &[wire::HAVE, wire::REJECT, wire::ERROR],
];

const KINDS: &[u8] = &[
    wire::SERVER_HELLO,
    wire::WELCOME,
    wire::HAVE,
    wire::PIECE,
    wire::ERROR,
    wire::REJECT,
    wire::HELLO,
    wire::REQUEST,
    wire::CANCEL,
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

/// Something like a frame: a header of a known or any kind and a length
/// near a bound or anything, then bytes that may or may not match it.
fn frameish() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![select(KINDS.to_vec()), any::<u8>()],
        lengths(),
        vec(any::<u8>(), 0..1024),
    )
        .prop_map(|(kind, len, body)| {
            let mut f = wire::header(kind, len).to_vec();
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

/// Parses `p` as its kind's parser does; checks what a parse that succeeds
/// says against the bytes.
fn parse_payload(kind: u8, p: &[u8]) -> Result<(), TestCaseError> {
    match kind {
        wire::SERVER_HELLO => {
            if let Ok(nonce) = wire::parse_server_hello(p) {
                prop_assert_eq!(&wire::server_hello(&nonce)[..], p);
            }
        }
        wire::HELLO => {
            if let Ok(h) = Hello::decode(p) {
                // Only the canonical encoding decodes.
                prop_assert_eq!(h.encode(), p);
            }
        }
        wire::WELCOME | wire::REJECT | wire::REQUEST | wire::CANCEL => {
            let v = wire::parse_u32(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&wire::u32_payload(v)[..], p);
        }
        wire::HAVE => {
            let records = wire::decode_haves(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(wire::encode_haves(&records), p);
        }
        wire::ERROR => prop_assert!(p.len() <= wire::MAX_ERROR as usize),
        other => prop_assert!(false, "read a frame of kind {}", other),
    }
    Ok(())
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Every reader, fed any stream: frames come out within their kind's
    /// bounds and parse consistently, and no allocation is larger than the
    /// frame just read (a refused header allocates nothing of its length).
    #[test]
    fn any_stream_is_read_within_the_bounds_of_each_frame_kind(
        bytes in stream(),
        reader in 0..READERS.len(),
    ) {
        let expected = READERS[reader];
        let most_expected = expected
            .iter()
            .filter_map(|&k| wire::control_payload_limit(k))
            .map(|(_, most)| most as usize)
            .max()
            .unwrap_or(0);
        let mut r = &bytes[..];
        for _ in 0..16 {
            let header: Option<(u8, u32)> = (r.len() >= 5)
                .then(|| (r[0], u32::from_le_bytes([r[1], r[2], r[3], r[4]])));
            let (read, largest) = largest_allocation(|| block_on(wire::read_frame_of(&mut r, expected)));
            match read {
                Ok((kind, p)) => {
                    prop_assert!(expected.contains(&kind));
                    let (least, most) = wire::control_payload_limit(kind).unwrap_or((1, 0));
                    prop_assert!((least as usize..=most as usize).contains(&p.len()));
                    prop_assert!(largest <= p.len().max(SMALL), "{} bytes for a {}-byte frame", largest, p.len());
                    let (parsed, largest) = largest_allocation(|| parse_payload(kind, &p));
                    parsed?;
                    // Decoded HAVE records are the payload's size again.
                    prop_assert!(largest <= (2 * p.len()).max(SMALL), "{} bytes to parse {}", largest, p.len());
                }
                Err(_) => {
                    let acceptable = header.is_some_and(|(kind, len)| {
                        expected.contains(&kind) && wire::check_control(kind, len).is_ok()
                    });
                    let bound = if acceptable { most_expected.max(SMALL) } else { SMALL };
                    prop_assert!(largest <= bound, "{} bytes for a refused header {:?}", largest, header);
                    break;
                }
            }
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
        let allowed = wire::check_control(kind, len).is_ok();
        let mut r = &tail[..];
        let (read, largest) = largest_allocation(|| block_on(wire::read_control(&mut r, kind, len)));
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
        let mut frame = wire::header(wire::HELLO, e.len() as u32).to_vec();
        frame.extend_from_slice(&e);
        let (kind, p) = block_on(wire::read_frame_of(&mut &frame[..], &[wire::HELLO]))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(kind, wire::HELLO);
        prop_assert_eq!(Hello::decode(&p).map_err(|e| TestCaseError::fail(e.to_string()))?, h);
    }

    #[test]
    fn have_records_round_trip(records in vec(record(), 0..64)) {
        let p = wire::encode_haves(&records);
        prop_assert!(wire::check_control(wire::HAVE, p.len() as u32).is_ok());
        prop_assert_eq!(wire::decode_haves(&p).map_err(|e| TestCaseError::fail(e.to_string()))?, records);
    }

    #[test]
    fn a_server_hello_round_trips(nonce in any::<[u8; 32]>()) {
        let p = wire::server_hello(&nonce);
        prop_assert!(wire::check_control(wire::SERVER_HELLO, p.len() as u32).is_ok());
        prop_assert_eq!(wire::parse_server_hello(&p).map_err(|e| TestCaseError::fail(e.to_string()))?, nonce);
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
    let (r, largest) =
        largest_allocation(|| block_on(wire::read_control(&mut &[][..], wire::HELLO, 1 << 30)));
    assert!(r.is_err());
    assert!(largest <= SMALL, "{largest}");
    let have = vec![0u8; wire::MAX_HAVE as usize];
    let (r, largest) = largest_allocation(|| {
        block_on(wire::read_control(
            &mut &have[..],
            wire::HAVE,
            wire::MAX_HAVE,
        ))
    });
    assert_eq!(r.unwrap().len(), wire::MAX_HAVE as usize);
    assert_eq!(largest, wire::MAX_HAVE as usize);
}
