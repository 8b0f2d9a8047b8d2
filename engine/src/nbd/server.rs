//! The NBD server of one engine: the listening socket and its accept loop, the exports by id,
//! and the clients connected. Each client runs as its own task (negotiation, then the request
//! loop), so a hostile or vanished client never holds up the others. Deleting an export refuses
//! while clients use it (`mode=safe`) or disconnects them (`mode=hard`), then detaches its
//! backend and emits `BLOCK_EXPORT_DELETED`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Value, json};

use super::export::{Export, ExportArgs};
use super::handshake::{Session, negotiate};
use super::transmission::serve;
use crate::backend::Machine;
use crate::env::net::{Conn, Listener, NetAddr};
use crate::error::{Error, Result};
use crate::graph::{GraphCtx, Node};
use crate::util::{Either, Notify, race};

/// The engine's NBD state.
pub struct Nbd {
    reg: Rc<Registry>,
}

/// Exports and the running server, shared with the server's tasks.
pub(super) struct Registry {
    ctx: Rc<GraphCtx>,
    /// Exports, oldest first.
    exports: RefCell<Vec<Rc<Export>>>,
    server: RefCell<Option<Rc<Server>>>,
}

struct Server {
    listener: Rc<dyn Listener>,
    max_connections: u32,
    /// A client still negotiating after this long is disconnected (0: never).
    handshake_max_ns: u64,
    clients: RefCell<BTreeMap<u64, Rc<Client>>>,
    next_client: Cell<u64>,
    gone: Notify,
}

struct Client {
    conn: Rc<dyn Conn>,
    export: RefCell<Option<Rc<Export>>>,
}

impl Registry {
    /// The export clients know by `name`, unless it is being deleted.
    pub(super) fn find(&self, name: &str) -> Option<Rc<Export>> {
        self.exports
            .borrow()
            .iter()
            .find(|e| e.name == name && !e.is_shutting_down())
            .cloned()
    }

    /// Every export, oldest first.
    pub(super) fn exports(&self) -> Vec<Rc<Export>> {
        self.exports.borrow().clone()
    }
}

impl Nbd {
    /// No server, no export.
    pub fn new(ctx: &Rc<GraphCtx>) -> Nbd {
        Nbd {
            reg: Rc::new(Registry {
                ctx: ctx.clone(),
                exports: RefCell::new(Vec::new()),
                server: RefCell::new(None),
            }),
        }
    }

    /// The address the server listens on, if it runs.
    pub fn address(&self) -> Option<NetAddr> {
        self.reg
            .server
            .borrow()
            .as_ref()
            .map(|s| s.listener.local_addr())
    }

    /// `nbd-server-start`: listen on `addr`; `max_connections` 0 means no limit; a client
    /// that has not finished negotiating after `handshake_max_secs` is dropped (0: never).
    pub fn start(
        &self,
        addr: &NetAddr,
        max_connections: u32,
        handshake_max_secs: u64,
    ) -> Result<()> {
        if self.reg.server.borrow().is_some() {
            return Err(Error::generic("NBD server already running"));
        }
        let listener = self.reg.ctx.env().net().listen(addr)?;
        let server = Rc::new(Server {
            listener,
            max_connections,
            handshake_max_ns: handshake_max_secs.saturating_mul(1_000_000_000),
            clients: RefCell::new(BTreeMap::new()),
            next_client: Cell::new(1),
            gone: Notify::new(),
        });
        *self.reg.server.borrow_mut() = Some(server.clone());
        let fut = accept_loop(self.reg.clone(), server);
        self.reg.ctx.env().spawn("nbd-accept", Box::pin(fut));
        Ok(())
    }

    fn running(&self) -> Result<Rc<Server>> {
        self.reg
            .server
            .borrow()
            .clone()
            .ok_or_else(|| Error::generic("NBD server not running"))
    }

    /// `nbd-server-stop`: delete every export (disconnecting their clients), stop listening and
    /// close every connection still negotiating.
    pub async fn stop(&self) -> Result<()> {
        let server = self.running()?;
        let ids: Vec<String> = self
            .reg
            .exports()
            .iter()
            .rev()
            .map(|e| e.id.clone())
            .collect();
        for id in ids {
            self.delete(&id, true).await?;
        }
        server.listener.close();
        *self.reg.server.borrow_mut() = None;
        let clients: Vec<Rc<Client>> = server.clients.borrow().values().cloned().collect();
        for c in clients {
            c.conn.shutdown();
        }
        while !server.clients.borrow().is_empty() {
            server.gone.wait().await;
        }
        Ok(())
    }

    /// `block-export-add type=nbd` (and `nbd-server-add`).
    pub fn add(&self, args: &ExportArgs, node: &Rc<Node>, machine: &Rc<Machine>) -> Result<()> {
        self.running()?;
        let exports = self.reg.exports();
        if exports.iter().any(|e| e.id == args.id) {
            return Err(Error::generic(format!(
                "Block export id '{}' is already in use",
                args.id
            )));
        }
        let name = args.name.as_deref().unwrap_or(&args.node_name);
        if exports.iter().any(|e| e.name == name) {
            return Err(Error::generic(format!(
                "NBD server already has export named '{name}'"
            )));
        }
        let export = Export::new(args, node, machine)?;
        self.reg.exports.borrow_mut().push(export);
        Ok(())
    }

    /// `block-export-del` (and `nbd-server-remove`): refuse while clients are connected unless
    /// `hard`, which disconnects them.
    pub async fn delete(&self, id: &str, hard: bool) -> Result<()> {
        let export = self
            .reg
            .exports()
            .into_iter()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::generic(format!("Export '{id}' is not found")))?;
        if export.is_shutting_down() {
            return Err(Error::generic(format!("Export '{id}' is not found")));
        }
        if !hard && export.connections() > 0 {
            return Err(Error::generic(format!("export '{id}' still in use"))
                .hint("Use mode='hard' to force client disconnect"));
        }
        export.set_shutting_down();
        if let Ok(server) = self.running() {
            for c in server.clients.borrow().values() {
                if c.export
                    .borrow()
                    .as_ref()
                    .is_some_and(|e| Rc::ptr_eq(e, &export))
                {
                    c.conn.shutdown();
                }
            }
        }
        export.finish().await;
        self.reg
            .exports
            .borrow_mut()
            .retain(|e| !Rc::ptr_eq(e, &export));
        self.reg
            .ctx
            .emit("BLOCK_EXPORT_DELETED", json!({ "id": id }));
        Ok(())
    }

    /// `query-block-exports`: newest first, as QEMU lists them.
    pub fn query(&self) -> Value {
        Value::Array(
            self.reg
                .exports()
                .iter()
                .rev()
                .map(|e| e.describe())
                .collect(),
        )
    }

    /// Clients connected now (negotiating or transmitting).
    pub fn clients(&self) -> usize {
        self.reg
            .server
            .borrow()
            .as_ref()
            .map_or(0, |s| s.clients.borrow().len())
    }

    /// Stop the server if it runs (end of the engine's life).
    pub async fn shutdown(&self) {
        if self.reg.server.borrow().is_some() {
            let _ = self.stop().await;
        }
    }
}

async fn accept_loop(reg: Rc<Registry>, server: Rc<Server>) {
    while let Ok(conn) = server.listener.accept().await {
        let limit = server.max_connections as usize;
        if limit > 0 && server.clients.borrow().len() >= limit {
            conn.shutdown();
            continue;
        }
        let id = server.next_client.get();
        server.next_client.set(id + 1);
        let client = Rc::new(Client {
            conn,
            export: RefCell::new(None),
        });
        server.clients.borrow_mut().insert(id, client.clone());
        let fut = run_client(reg.clone(), server.clone(), id, client);
        reg.ctx
            .env()
            .spawn(&format!("nbd-client-{id}"), Box::pin(fut));
    }
}

/// Negotiate, giving up after the server's handshake limit (a silent client holds no slot).
async fn negotiate_in_time(reg: &Registry, server: &Server, conn: &dyn Conn) -> Option<Session> {
    let talk = negotiate(conn, reg);
    if server.handshake_max_ns == 0 {
        return talk.await.ok().flatten();
    }
    let env = reg.ctx.env();
    let limit = env.sleep_until(env.now_ns().saturating_add(server.handshake_max_ns));
    match race(talk, limit).await {
        Either::Left(r) => r.ok().flatten(),
        Either::Right(()) => None,
    }
}

async fn run_client(reg: Rc<Registry>, server: Rc<Server>, id: u64, client: Rc<Client>) {
    if let Some(session) = negotiate_in_time(&reg, &server, &*client.conn).await
        && !session.export.is_shutting_down()
    {
        let export = session.export.clone();
        export.client_enter();
        *client.export.borrow_mut() = Some(export.clone());
        let _ = serve(reg.ctx.env().clone(), client.conn.clone(), Rc::new(session)).await;
        *client.export.borrow_mut() = None;
        export.client_leave();
    }
    client.conn.shutdown();
    server.clients.borrow_mut().remove(&id);
    server.gone.notify_all();
}
