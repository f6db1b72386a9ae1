//! Owns what every swarmseed binary repeats: shutdown on SIGTERM/SIGINT, logging setup and format, the admin router (`/livez`, `/readyz`, `/metrics`), the metrics text encoding, and the token bucket that byte-rate limits share.
//! Never holds product logic (no Kubernetes, datasets or transfers): a binary plugs its readiness and its metrics in.
//!
//! - [`shutdown`]: the signals that stop a process, installed at once.
//! - [`logging`]: the global `tracing` subscriber, text or JSON lines.
//! - [`admin`]: the admin port's routes over a [`admin::Health`].
//! - [`metrics`]: a registry encoded as OpenMetrics text.
//! - [`ratelimit`]: the token bucket every byte-rate limit uses.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod shutdown;
