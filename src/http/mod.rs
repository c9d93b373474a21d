//! HTTP: the accept loop (limits, TLS, graceful shutdown), the public webhook handler and the
//! private admin handler.

pub mod admin;
pub mod answer;
pub mod body;
pub mod descriptors;
mod evict;
pub mod handler;
pub mod outbound;
pub mod server;
pub mod tls;
