//! The firm's gateway to other messaging networks (issue 17, ADR 0029).
//!
//! ```text
//!  firm user's device ──sealed──▶ server ──▶ gateway device (role gateway,
//!       (DLP, capture)                        member of the bridged room;
//!                                             KM key release, logged)
//!                                  relay ──▶ connector ──▶ network (Matrix AS)
//!  network ──push (txn id)──▶ webhook ──▶ inbox (store) ──▶ relay ──▶ `relayed`
//!                                                          message, captured
//! ```
//!
//! End-to-end encryption ends here on purpose: the gateway reads what
//! crosses, as the firm's boundary, and nothing else (the KM gives it the
//! keys of the bridged rooms it is the gateway of, and of no other room).

pub mod connector;
pub mod matrix;
pub mod relay;

pub use connector::{Body, Connector, ConnectorError, Delivery, Inbound, Pushed, Sink};
pub use relay::{Gateway, GatewayError, Pass};
