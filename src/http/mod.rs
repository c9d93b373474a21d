//! HTTP: the accept loop with graceful shutdown, the public webhook handler and the private
//! admin handler.

pub mod admin;
pub mod handler;
pub mod server;
