//! Test binary `nbd`: the NBD server, its QMP commands and the `nbd` client driver, on the
//! simulator's network. Each file below is a module.

mod support;

#[path = "nbd_client.rs"]
mod nbd_client;
#[path = "nbd_hostile.rs"]
mod nbd_hostile;
#[path = "nbd_real.rs"]
mod nbd_real;
#[path = "nbd_server.rs"]
mod nbd_server;
#[path = "nbd_support.rs"]
mod nbd_support;
