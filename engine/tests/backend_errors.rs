//! BlockBackend error policies: report, ignore, stop (then `cont`), enospc.

use crate::support;

use std::cell::Cell;
use std::rc::Rc;

use engine::Errno;
use engine::backend::{BackendOptions, IoStatus};
use engine::env::Env;
use engine::io::{IoBuf, ReqFlags};
use engine::types::OnError;
use serde_json::json;
use support::{add_mem, mem, run};

async fn settle(env: &Rc<dyn Env>) {
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

fn device(
    engine: &engine::Engine,
    name: &str,
    node: &str,
    werror: OnError,
) -> Rc<engine::backend::BlockBackend> {
    let bb = engine
        .device_add(name, node, BackendOptions::guest_device(false, false))
        .unwrap();
    bb.set_on_error(OnError::Report, werror);
    bb
}

#[test]
fn werror_stop_stops_the_machine_and_cont_retries_the_request() {
    run(1, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({})).await;
        let bb = device(&engine, "d", "m", OnError::Stop);
        mem("m").fail_writes.set(Some(Errno::EIO));
        let done = Rc::new(Cell::new(false));
        {
            let (bb, done) = (bb.clone(), done.clone());
            env.spawn(
                "guest",
                Box::pin(async move {
                    let (_, r) = bb.write(0, IoBuf::filled(512, 0x5a), ReqFlags::NONE).await;
                    r.unwrap();
                    done.set(true);
                }),
            );
        }
        settle(&env).await;
        assert!(
            !done.get(),
            "the request waits while the machine is stopped"
        );
        assert_eq!(bb.iostatus(), IoStatus::Failed);
        assert!(!engine.machine().is_running());
        let events: Vec<_> = engine
            .take_events()
            .into_iter()
            .map(|e| (e.name, e.data))
            .collect();
        assert_eq!(events[0].0, "BLOCK_IO_ERROR");
        assert_eq!(events[0].1["action"], "stop");
        assert_eq!(events[0].1["operation"], "write");
        assert_eq!(events[0].1["nospace"], false);
        assert_eq!(events[1].0, "STOP");
        // New guest requests wait too (the machine is stopped).
        mem("m").fail_writes.set(None);
        engine.cont();
        settle(&env).await;
        assert!(done.get(), "retried after cont");
        assert_eq!(bb.iostatus(), IoStatus::Ok);
        assert_eq!(mem("m").data.borrow()[..512], [0x5a; 512]);
        let names: Vec<_> = engine.take_events().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec!["RESUME"]);
    });
}

#[test]
fn report_ignore_and_enospc_policies() {
    run(2, |engine| async move {
        add_mem(&engine, "m", json!({})).await;
        let bb = device(&engine, "d", "m", OnError::Report);
        mem("m").fail_writes.set(Some(Errno::EIO));
        let (_, r) = bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        assert_eq!(r.unwrap_err().errno(), Some(Errno::EIO));
        let ev = engine.take_events();
        assert_eq!(
            (ev[0].name, ev[0].data["action"].as_str()),
            ("BLOCK_IO_ERROR", Some("report"))
        );

        bb.set_on_error(OnError::Report, OnError::Ignore);
        let (_, r) = bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        r.unwrap();
        assert_eq!(engine.take_events()[0].data["action"], "ignore");

        // enospc: EIO is reported, ENOSPC stops.
        bb.set_on_error(OnError::Report, OnError::Enospc);
        let (_, r) = bb.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
        assert!(r.is_err());
        assert_eq!(engine.take_events()[0].data["action"], "report");
        mem("m").fail_writes.set(Some(Errno::ENOSPC));
        let env = engine.env().clone();
        let bb2 = bb.clone();
        env.spawn(
            "guest",
            Box::pin(async move {
                let (_, r) = bb2.write(0, IoBuf::filled(512, 1), ReqFlags::NONE).await;
                r.unwrap();
            }),
        );
        settle(&env).await;
        assert_eq!(bb.iostatus(), IoStatus::Nospace);
        let ev = engine.take_events();
        assert_eq!(ev[0].data["nospace"], true);
        assert_eq!(ev[0].data["action"], "stop");
        mem("m").fail_writes.set(None);
        engine.cont();
        settle(&env).await;
        assert_eq!(bb.iostatus(), IoStatus::Ok);
    });
}

#[test]
fn bad_error_policy_names_are_rejected() {
    let err = OnError::parse("sometimes", "werror").unwrap_err();
    assert_eq!(err.message(), "'sometimes' invalid werror error action");
}
