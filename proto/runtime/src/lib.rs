//! Owns what every swarmseed binary repeats: shutdown on SIGTERM/SIGINT, logging setup and format, the admin router (`/livez`, `/readyz`, `/metrics`) and the metrics text encoding.
//! Never holds product logic (no Kubernetes, datasets or transfers): a binary plugs its readiness and its metrics in.
//!
//! - [`shutdown`]: the signals that stop a process, installed at once.
//! - [`logging`]: the global `tracing` subscriber, text or JSON lines.
//! - [`admin`]: the admin port's routes over a [`admin::Health`].
//! - [`metrics`]: a registry encoded as OpenMetrics text.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod shutdown;
