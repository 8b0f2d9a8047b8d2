//! The QMP monitor over a byte stream (`blk serve`'s sockets, or the simulator's network): the
//! greeting, capability negotiation, the monitor's own commands (`query-version`,
//! `query-commands`, `quit`), every engine command through [`super::execute`], `id` echoed, and
//! the engine's events, timestamped, to every negotiated session.
//!
//! Written against `env::net` only. As a QEMU socket chardev does, a monitor serves one client
//! at a time and takes the next when it leaves; several monitors (listeners) run at once.
//! Submodules: `stream` cuts the byte stream into messages, `json` is QEMU's JSON dialect.

pub mod json;
pub mod stream;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::engine::Engine;
use crate::env::net::{Conn, Listener};
use crate::error::{Error, ErrorClass};
use crate::io::IoBuf;
use crate::util::{Notify, Options};
use stream::JsonStream;

/// The QEMU version whose QMP interface this monitor speaks.
pub const QEMU_VERSION: (u32, u32, u32) = (10, 0, 2);

/// Commands the monitor answers itself, added to the engine's for `query-commands`.
const MONITOR_COMMANDS: &[&str] = &["query-version", "quit"];

/// The `version` object of the greeting and of `query-version`.
fn version() -> Value {
    let (major, minor, micro) = QEMU_VERSION;
    json!({
        "qemu": {"micro": micro, "minor": minor, "major": major},
        "package": format!("blk {}", env!("CARGO_PKG_VERSION")),
    })
}

/// Every monitor of one engine.
pub struct Monitors {
    engine: Rc<Engine>,
    /// Connected sessions (negotiated or not).
    sessions: RefCell<Vec<Rc<Session>>>,
    /// The listeners, closed at shutdown.
    listeners: RefCell<Vec<Rc<dyn Listener>>>,
    /// A client said `quit`.
    quit: Cell<bool>,
    /// Notified on `quit`.
    quit_notify: Notify,
}

impl Monitors {
    /// Monitors for `engine`; starts the task that hands events to the sessions.
    pub fn new(engine: Rc<Engine>) -> Rc<Monitors> {
        let m = Rc::new(Monitors {
            engine,
            sessions: RefCell::default(),
            listeners: RefCell::default(),
            quit: Cell::new(false),
            quit_notify: Notify::new(),
        });
        let m2 = m.clone();
        m.engine.env().spawn(
            "qmp-events",
            Box::pin(async move { m2.forward_events().await }),
        );
        m
    }

    /// Serve a monitor on `listener`: one client at a time, until [`Monitors::close`].
    pub fn add(self: &Rc<Self>, listener: Rc<dyn Listener>) {
        self.listeners.borrow_mut().push(listener.clone());
        let m = self.clone();
        let name = format!("qmp-monitor {}", listener.local_addr());
        self.engine.env().spawn(
            &name,
            Box::pin(async move {
                while let Ok(conn) = listener.accept().await {
                    if m.quit.get() {
                        conn.shutdown();
                        break;
                    }
                    m.serve(conn).await;
                }
            }),
        );
    }

    /// Completes when a client has said `quit`.
    pub async fn quit_requested(&self) {
        while !self.quit.get() {
            self.quit_notify.wait().await;
        }
    }

    /// Stop: no new clients, the replies already queued are sent, then every connection ends.
    pub async fn close(&self) {
        let listeners = std::mem::take(&mut *self.listeners.borrow_mut());
        for l in listeners {
            l.close();
        }
        let sessions = self.sessions.borrow().clone();
        for s in sessions {
            s.finish().await;
        }
    }

    /// One client, from the greeting to its end of stream.
    async fn serve(self: &Rc<Self>, conn: Rc<dyn Conn>) {
        let session = Session::start(self.engine.env().as_ref(), conn.clone());
        self.sessions.borrow_mut().push(session.clone());
        session.push(&json!({"QMP": {"version": version(), "capabilities": []}}));
        let mut stream = JsonStream::new();
        let mut buf = IoBuf::new(64 * 1024);
        loop {
            let (b, r) = conn.read(buf).await;
            buf = b;
            let n = match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for msg in stream.feed(&buf.as_slice()[..n]) {
                let reply = self.handle(&session, msg).await;
                session.push(&reply);
            }
            if session.closed.get() {
                break;
            }
        }
        // Finish while still listed, so a concurrent `close` waits for the last replies.
        session.finish().await;
        self.sessions
            .borrow_mut()
            .retain(|s| !Rc::ptr_eq(s, &session));
    }

    /// The reply to one message.
    async fn handle(&self, session: &Session, msg: Result<Value, String>) -> Value {
        let cmd = match msg {
            Ok(v) => v,
            Err(text) => return super::error_reply(&Error::generic(text)),
        };
        let id = cmd.get("id").cloned();
        let reply = match envelope(&cmd) {
            // A malformed envelope: the engine's dispatcher words the error.
            None => super::execute(&self.engine, &cmd).await,
            Some((name, args)) => self.run(session, name, args, &cmd).await,
        };
        with_id(reply, id)
    }

    /// Run command `name`: the negotiation rules first, then the monitor's own commands, then
    /// the engine's.
    async fn run(&self, session: &Session, name: &str, args: Options, cmd: &Value) -> Value {
        let not_found =
            |msg: &str| super::error_reply(&Error::with_class(ErrorClass::CommandNotFound, msg));
        let negotiated = session.negotiated.get();
        match name {
            "qmp_capabilities" if negotiated => {
                not_found("Capabilities negotiation is already complete, command ignored")
            }
            "qmp_capabilities" => reply(capabilities(args).map(|()| {
                session.negotiated.set(true);
                json!({})
            })),
            _ if !negotiated => {
                not_found("Expecting capabilities negotiation with 'qmp_capabilities'")
            }
            "query-version" => reply(args.finish().map(|()| version())),
            "query-commands" => reply(args.finish().map(|()| query_commands())),
            "quit" => reply(args.finish().map(|()| {
                self.quit.set(true);
                self.quit_notify.notify_all();
                session.closed.set(true);
                json!({})
            })),
            _ => super::execute(&self.engine, cmd).await,
        }
    }

    /// Hand every event the engine emits to every negotiated session, in order, with its
    /// wall-clock timestamp.
    async fn forward_events(&self) {
        let env = self.engine.env().clone();
        loop {
            let events = self.engine.take_events();
            if !events.is_empty() {
                // Events carry the monotonic clock; QMP stamps them with the time of day.
                let offset = env.wall_clock_ns().saturating_sub(env.now_ns());
                for mut ev in events {
                    ev.time_ns += offset;
                    let wire = ev.to_qmp();
                    for s in self.sessions.borrow().iter() {
                        if s.negotiated.get() {
                            s.push(&wire);
                        }
                    }
                }
            }
            self.engine.graph().events.wait().await;
        }
    }
}

/// `execute` and `arguments` of a well-formed command object; `None` when the envelope is
/// malformed (the caller lets the dispatcher word the error).
fn envelope(cmd: &Value) -> Option<(&str, Options)> {
    let obj = cmd.as_object()?;
    if obj
        .keys()
        .any(|k| !matches!(k.as_str(), "execute" | "arguments" | "id"))
    {
        return None;
    }
    let name = obj.get("execute")?.as_str()?;
    let args = match obj.get("arguments") {
        None => Options::default(),
        Some(v @ Value::Object(_)) => Options::new(v.clone()).ok()?,
        Some(_) => return None,
    };
    Some((name, args))
}

/// The arguments of `qmp_capabilities`: no capability is offered, so `enable` may only name
/// none.
fn capabilities(mut args: Options) -> crate::error::Result<()> {
    match args.take("enable") {
        None => {}
        Some(Value::Array(caps)) => {
            if let Some(c) = caps.first() {
                let name = c.as_str().unwrap_or("?");
                return Err(Error::generic(format!(
                    "Parameter 'enable' does not accept value '{name}'"
                )));
            }
        }
        Some(_) => return Err(Error::param_invalid("enable", "expects an array")),
    }
    args.finish()
}

fn query_commands() -> Value {
    let mut names: Vec<&str> = super::COMMANDS.to_vec();
    names.extend(MONITOR_COMMANDS);
    Value::Array(names.into_iter().map(|c| json!({ "name": c })).collect())
}

fn reply(r: crate::error::Result<Value>) -> Value {
    match r {
        Ok(v) => json!({ "return": v }),
        Err(e) => super::error_reply(&e),
    }
}

/// Echo the command's `id`: after `return`, before `error` (QEMU's order).
fn with_id(reply: Value, id: Option<Value>) -> Value {
    let (Some(id), Value::Object(map)) = (id, &reply) else {
        return reply;
    };
    let mut out = Map::new();
    if map.contains_key("error") {
        out.insert("id".into(), id);
        out.extend(map.clone());
    } else {
        out.extend(map.clone());
        out.insert("id".into(), id);
    }
    Value::Object(out)
}

/// One connected client: its negotiation state and its outgoing lines, written in order by
/// the session's writer task (replies and events interleave on one stream).
struct Session {
    conn: Rc<dyn Conn>,
    /// `qmp_capabilities` succeeded.
    negotiated: Cell<bool>,
    /// The session ends once its queue is written (`quit`, end of stream, shutdown).
    closed: Cell<bool>,
    /// Lines not yet written.
    out: RefCell<VecDeque<String>>,
    /// Wakes the writer (new line, or closing).
    wake: Notify,
    /// Notified when the writer has stopped.
    done: Notify,
    /// The writer has stopped.
    stopped: Cell<bool>,
}

impl Session {
    fn start(env: &dyn crate::env::Env, conn: Rc<dyn Conn>) -> Rc<Session> {
        let s = Rc::new(Session {
            conn,
            negotiated: Cell::new(false),
            closed: Cell::new(false),
            out: RefCell::default(),
            wake: Notify::new(),
            done: Notify::new(),
            stopped: Cell::new(false),
        });
        let s2 = s.clone();
        env.spawn("qmp-writer", Box::pin(async move { s2.write_loop().await }));
        s
    }

    /// Queue a message (a reply, an event, the greeting).
    fn push(&self, v: &Value) {
        if self.stopped.get() {
            return;
        }
        let mut line = json::to_wire(v);
        line.push_str("\r\n");
        self.out.borrow_mut().push_back(line);
        self.wake.notify_all();
    }

    async fn write_loop(&self) {
        loop {
            let next = self.out.borrow_mut().pop_front();
            match next {
                Some(line) => {
                    let (_, r) = self
                        .conn
                        .write_all(IoBuf::from_slice(line.as_bytes()))
                        .await;
                    if r.is_err() {
                        break;
                    }
                }
                None if self.closed.get() => break,
                None => self.wake.wait().await,
            }
        }
        self.stopped.set(true);
        self.out.borrow_mut().clear();
        self.conn.shutdown();
        self.done.notify_all();
    }

    /// Write what is queued, then end the connection.
    async fn finish(&self) {
        self.closed.set(true);
        self.wake.notify_all();
        while !self.stopped.get() {
            self.done.wait().await;
        }
    }
}
