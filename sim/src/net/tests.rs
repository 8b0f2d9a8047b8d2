//! The virtual network: ordering, latency, end of stream, and each fault.

use std::rc::Rc;

use engine::env::Env;
use engine::env::net::{Conn, NetAddr};
use engine::error::Errno;
use engine::io::IoBuf;

use crate::{Sim, SimConfig};

fn addr() -> NetAddr {
    NetAddr::Unix("/run/nbd.sock".into())
}

async fn read_exact(c: &dyn Conn, n: usize) -> Result<Vec<u8>, engine::error::Error> {
    let mut out = Vec::new();
    while out.len() < n {
        let (buf, r) = c.read(IoBuf::new(n - out.len())).await;
        let got = r?;
        if got == 0 {
            break;
        }
        out.extend_from_slice(&buf.as_slice()[..got]);
    }
    Ok(out)
}

fn bytes(v: &[u8]) -> IoBuf {
    IoBuf::from_slice(v)
}

/// Run a client/server exchange, returning (what the server read, trace hash).
fn echo_run(seed: u64) -> (Vec<u8>, u64, u64) {
    let sim = Sim::new(seed, SimConfig::default());
    let env = sim.env();
    let l = env.net().listen(&addr()).unwrap();
    let server = {
        let l = l.clone();
        async move {
            let c = l.accept().await.unwrap();
            read_exact(&*c, 12).await.unwrap()
        }
    };
    let env2 = env.clone();
    let client = async move {
        let c = env2.net().connect(&addr()).await.unwrap();
        for part in [&b"hello "[..], b"wor", b"ld!"] {
            let (_, r) = c.write_all(bytes(part)).await;
            r.unwrap();
        }
        c
    };
    let (got, _c) = sim
        .block_on(async { futures_join(server, client).await })
        .unwrap();
    (got, sim.now_ns(), sim.trace_hash())
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let std::task::Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let std::task::Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn bytes_arrive_in_order_after_latency_and_replay() {
    let (got, t, h) = echo_run(7);
    assert_eq!(got, b"hello world!");
    assert!(t > 0, "the network took virtual time");
    assert_eq!(echo_run(7), (got.clone(), t, h));
    assert_ne!(echo_run(8).1, t, "another seed draws other latencies");
}

#[test]
fn connect_without_listener_and_refused() {
    let sim = Sim::new(1, SimConfig::default());
    let env = sim.env();
    let e = sim
        .block_on(env.net().connect(&addr()))
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.errno(), Some(Errno::ENOENT));
    let _l = env.net().listen(&addr()).unwrap();
    assert!(env.net().listen(&addr()).is_err(), "address in use");
    sim.net().refuse(&addr());
    let e = sim
        .block_on(env.net().connect(&addr()))
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(e.errno(), Some(Errno::Other(111)));
    sim.net().heal(&addr());
    assert!(sim.block_on(env.net().connect(&addr())).unwrap().is_ok());
}

#[test]
fn shutdown_gives_end_of_stream_and_broken_pipe() {
    let sim = Sim::new(2, SimConfig::default());
    let env = sim.env();
    let l = env.net().listen(&addr()).unwrap();
    let c = sim.block_on(env.net().connect(&addr())).unwrap().unwrap();
    let s = sim.block_on(l.accept()).unwrap().unwrap();
    sim.block_on(c.write_all(bytes(b"bye"))).unwrap().1.unwrap();
    c.shutdown();
    assert_eq!(sim.block_on(read_exact(&*s, 10)).unwrap().unwrap(), b"bye");
    let (_, r) = sim.block_on(s.write_all(bytes(b"x"))).unwrap();
    assert_eq!(r.unwrap_err().errno(), Some(Errno::Other(32)));
}

#[test]
fn partition_holds_bytes_until_heal() {
    let sim = Sim::new(3, SimConfig::default());
    let env = sim.env();
    let l = env.net().listen(&addr()).unwrap();
    let c = sim.block_on(env.net().connect(&addr())).unwrap().unwrap();
    let s: Rc<dyn Conn> = sim.block_on(l.accept()).unwrap().unwrap();
    sim.net().partition(&addr());
    let done = Rc::new(std::cell::Cell::new(false));
    {
        let (c, done) = (c.clone(), done.clone());
        env.spawn(
            "writer",
            Box::pin(async move {
                let (_, r) = c.write_all(bytes(b"data")).await;
                r.unwrap();
                done.set(true);
            }),
        );
    }
    sim.advance(1_000_000_000).unwrap();
    assert!(!done.get(), "a partitioned write waits");
    sim.net().heal(&addr());
    assert_eq!(sim.block_on(read_exact(&*s, 4)).unwrap().unwrap(), b"data");
    assert!(done.get());
}

#[test]
fn reset_mid_message_delivers_a_prefix_then_fails_both_ends() {
    let sim = Sim::new(4, SimConfig::default());
    let env = sim.env();
    let l = env.net().listen(&addr()).unwrap();
    let c = sim.block_on(env.net().connect(&addr())).unwrap().unwrap();
    let s = sim.block_on(l.accept()).unwrap().unwrap();
    sim.net().reset_after(&addr(), 3);
    let (_, r) = sim.block_on(c.write_all(bytes(b"abcdef"))).unwrap();
    assert_eq!(r.unwrap_err().errno(), Some(Errno::Other(104)));
    let got = sim.block_on(read_exact(&*s, 6)).unwrap();
    assert_eq!(got.unwrap_err().errno(), Some(Errno::Other(104)));
    // The prefix was readable before the reset: read it byte by byte on a fresh pair.
    let c2 = sim.block_on(env.net().connect(&addr())).unwrap().unwrap();
    let s2 = sim.block_on(l.accept()).unwrap().unwrap();
    sim.net().reset_after(&addr(), 2);
    let _ = sim.block_on(c2.write_all(bytes(b"xyz"))).unwrap();
    let (buf, n) = sim.block_on(s2.read(IoBuf::new(8))).unwrap();
    assert_eq!(&buf.as_slice()[..n.unwrap()], b"xy");
}

#[test]
fn drop_loses_in_flight_bytes_and_closes() {
    let sim = Sim::new(5, SimConfig::default());
    let env = sim.env();
    let l = env.net().listen(&addr()).unwrap();
    let c = sim.block_on(env.net().connect(&addr())).unwrap().unwrap();
    let s = sim.block_on(l.accept()).unwrap().unwrap();
    sim.block_on(c.write_all(bytes(b"lost")))
        .unwrap()
        .1
        .unwrap();
    assert_eq!(sim.net().drop_links(&addr()), 1);
    assert_eq!(sim.block_on(read_exact(&*s, 4)).unwrap().unwrap(), b"");
    assert_eq!(sim.net().connections(&addr()), 0);
    l.close();
    assert!(sim.block_on(l.accept()).unwrap().is_err());
}
