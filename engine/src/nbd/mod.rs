//! NBD: the server that exports nodes to network clients (QEMU's `nbd-server-*` and
//! `block-export-*` with `type=nbd`), written against the env's network seam so the same code
//! serves real sockets and the simulator's network.
//!
//! `proto` is the wire format (constants, header codecs), `options` parses option payloads,
//! `wire` does exact reads and whole writes on a connection, `handshake` is fixed newstyle
//! negotiation, `transmission` the request loop, `export` one export and its metadata contexts,
//! `server` the listener, the exports and the clients. The client driver lives in
//! `drivers/nbd` and shares `proto` and `wire`.

pub mod addr;
mod export;
mod handshake;
pub mod options;
pub mod proto;
mod server;
mod transmission;
pub mod wire;

pub use export::{Context, Export, ExportArgs};
pub use server::Nbd;
