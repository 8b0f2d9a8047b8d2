//! Real network tests on both backends: unix and TCP round trips, writes larger than the
//! socket buffers (the writer must wait for the reader), end of stream, a listener closed under
//! a pending accept, dropped futures (no fd kept open, no hang at teardown), connect errors.

use std::cell::Cell;
use std::rc::Rc;

use super::RealEnv;
use super::tests::{envs, poll_once_and_drop, sleep};
use super::tests_io::TmpPath;
use crate::env::Env;
use crate::env::net::{Conn, NetAddr};
use crate::io::IoBuf;

const MS: u64 = 1_000_000;

/// Read exactly `len` bytes from `conn` (fails on a short stream).
async fn read_exact(conn: &dyn Conn, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut buf = IoBuf::new(64 * 1024);
    while out.len() < len {
        let (b, r) = conn.read(buf).await;
        let n = r.expect("read");
        assert!(n > 0, "end of stream after {} of {len} bytes", out.len());
        out.extend_from_slice(&b.as_slice()[..n.min(len - out.len())]);
        buf = b;
    }
    out
}

/// Echo server on `addr` for one connection; the client sends `data`, reads it back.
fn echo_round_trip(env: &Rc<RealEnv>, addr: NetAddr, data: Vec<u8>) {
    let listener = env.net().listen(&addr).expect("listen");
    let bound = listener.local_addr();
    let l2 = listener.clone();
    let len = data.len();
    env.spawn(
        "echo",
        Box::pin(async move {
            let conn = l2.accept().await.expect("accept");
            let got = read_exact(&*conn, len).await;
            let (_, r) = conn.write_all(IoBuf::from_slice(&got)).await;
            r.expect("echo write");
        }),
    );
    let back = env.block_on(async {
        let conn = env.net().connect(&bound).await.expect("connect");
        // Write and read at once: a payload larger than both socket buffers only goes through
        // if neither side blocks the loop.
        let writer = conn.write_all(IoBuf::from_slice(&data));
        let reader = read_exact(&*conn, len);
        let ((_, w), back) = futures_join(writer, reader).await;
        w.expect("write");
        back
    });
    assert!(back == data, "echoed bytes differ");
    listener.close();
}

/// Run two futures to completion concurrently on the loop.
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
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    (ra.unwrap(), rb.unwrap())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

#[test]
fn unix_round_trip_larger_than_socket_buffers() {
    for env in envs() {
        let path = TmpPath::new("sock", None);
        echo_round_trip(&env, NetAddr::Unix(path.0.clone()), pattern(8 << 20));
        assert!(
            !std::path::Path::new(&path.0).exists(),
            "close removes the socket file"
        );
        assert_eq!(env.in_flight(), 0);
    }
}

#[test]
fn tcp_round_trip_on_a_chosen_port() {
    for env in envs() {
        let addr = NetAddr::Inet {
            host: "127.0.0.1".into(),
            port: 0,
        };
        echo_round_trip(&env, addr, pattern(4 << 20));
        assert_eq!(env.in_flight(), 0);
    }
}

#[test]
fn listen_on_an_existing_path_fails_and_keeps_it() {
    for env in envs() {
        let path = TmpPath::new("busy", None);
        std::fs::write(&path.0, b"x").unwrap();
        let Err(e) = env.net().listen(&NetAddr::Unix(path.0.clone())) else {
            panic!("listen on an existing path succeeded");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to bind socket to {}: Address already in use",
                path.0
            )
        );
        assert_eq!(std::fs::read(&path.0).unwrap(), b"x");
    }
}

#[test]
fn peer_close_reads_end_of_stream_and_close_fails_accept() {
    for env in envs() {
        let path = TmpPath::new("eof", None);
        let listener = env.net().listen(&NetAddr::Unix(path.0.clone())).unwrap();
        let addr = listener.local_addr();
        let (n, accept_after_close) = env.block_on(async {
            let client = env.net().connect(&addr).await.unwrap();
            let server = listener.accept().await.unwrap();
            client.write_all(IoBuf::from_slice(b"bye")).await.1.unwrap();
            client.shutdown();
            let got = read_exact(&*server, 3).await;
            assert_eq!(got, b"bye");
            let (_, r) = server.read(IoBuf::new(16)).await;
            // A pending accept is woken by close and fails.
            let l2 = listener.clone();
            let env2 = env.clone();
            env.spawn(
                "closer",
                Box::pin(async move {
                    sleep(&env2, 20 * MS).await;
                    l2.close();
                }),
            );
            (r.unwrap(), listener.accept().await.is_err())
        });
        assert_eq!(n, 0, "end of stream after the peer shut down");
        assert!(accept_after_close);
        assert!(!std::path::Path::new(&path.0).exists());
    }
}

#[test]
fn dropped_read_and_accept_release_the_socket() {
    for env in envs() {
        let path = TmpPath::new("drop", None);
        let listener = env.net().listen(&NetAddr::Unix(path.0.clone())).unwrap();
        let addr = listener.local_addr();
        let (client, server) = env.block_on(async {
            let c = env.net().connect(&addr).await.unwrap();
            (c, listener.accept().await.unwrap())
        });
        // A read nobody answers, dropped while waiting: the slot goes, and so does the fd once
        // the server's handle is dropped (the client then sees end of stream).
        poll_once_and_drop(&env, server.read(IoBuf::new(16)));
        poll_once_and_drop(&env, listener.accept());
        drop(server);
        let eof = Rc::new(Cell::new(usize::MAX));
        let e2 = eof.clone();
        env.block_on(async move {
            let (_, r) = client.read(IoBuf::new(16)).await;
            e2.set(r.unwrap());
        });
        assert_eq!(eof.get(), 0);
        assert_eq!(env.in_flight(), 0, "cancelled polls are out of the backend");
        // Teardown with a pending accept in the kernel must not hang.
        poll_once_and_drop(&env, listener.accept());
    }
}

#[test]
fn connect_errors_name_the_address() {
    for env in envs() {
        let path = TmpPath::new("nobody", None);
        let addr = NetAddr::Unix(path.0.clone());
        let Err(e) = env.block_on(env.net().connect(&addr)) else {
            panic!("connect to nothing succeeded");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "Failed to connect to '{}': No such file or directory",
                path.0
            )
        );
    }
}
