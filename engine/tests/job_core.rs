//! The job core on the simulator, with a test job that writes units to a `testmem` node through
//! its own edge: status and event sequences, user verbs and their errors, pause by the user and
//! by drain, cancel before and after ready, set-speed on the virtual clock, on-error policies,
//! grouped completion of a transaction, and op blockers.

use crate::support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use engine::env::{Env, LocalBoxFuture};
use engine::error::Errno;
use engine::io::{IoBuf, ReqFlags};
use engine::job::{ErrorAction, Job, JobDriver, JobOptions, JobStatus, JobTxn};
use engine::types::{OnError, Perms};
use engine::{Engine, Error, Result};
use serde_json::{Value, json};
use support::{add_mem, mem, run};

const UNIT: u64 = 64 << 10;

/// Writes `units` chunks of UNIT bytes to its node, one per iteration.
struct WriteJob {
    node: String,
    units: u64,
    /// Become ready after the last unit and wait for complete or cancel.
    wait_for_complete: bool,
    /// Fail with EIO at this unit.
    fail_at: Option<u64>,
    on_error: OnError,
    should_complete: Cell<bool>,
    log: RefCell<Vec<&'static str>>,
    child: RefCell<Option<engine::graph::Child>>,
}

impl WriteJob {
    fn new(node: &str, units: u64) -> WriteJob {
        WriteJob {
            node: node.to_string(),
            units,
            wait_for_complete: false,
            fail_at: None,
            on_error: OnError::Report,
            should_complete: Cell::new(false),
            log: RefCell::new(Vec::new()),
            child: RefCell::new(None),
        }
    }

    async fn work(self: Rc<Self>, job: Rc<Job>) -> Result<()> {
        let child = self.child.borrow().clone().expect("attached");
        job.set_progress_total(self.units * UNIT);
        let mut i = 0;
        let mut last = 0;
        while i < self.units {
            job.rate_limit(last).await;
            if job.is_cancelled() {
                return Ok(());
            }
            let r = if self.fail_at == Some(i) {
                Err(Error::io(Errno::EIO))
            } else {
                let (_, r) = child
                    .write(i * UNIT, IoBuf::filled(UNIT as usize, 0x5a), ReqFlags::NONE)
                    .await;
                r
            };
            if let Err(e) = r {
                match job.error_action(self.on_error, &e, false) {
                    ErrorAction::Report => return Err(e),
                    ErrorAction::Ignore => {}
                    ErrorAction::Stop => {
                        // Retry this unit once resumed. A one-shot failure: clear it.
                        self.log.borrow_mut().push("stopped");
                        continue;
                    }
                }
            }
            job.add_progress(UNIT);
            last = UNIT;
            i += 1;
        }
        if self.wait_for_complete {
            job.set_ready();
            while !self.should_complete.get() && !job.is_cancelled() && !job.is_soft_cancelled() {
                job.wait_kick().await;
                job.pause_point().await;
            }
        }
        Ok(())
    }
}

impl JobDriver for WriteJob {
    fn job_type(&self) -> &'static str {
        "test"
    }

    fn run(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(self.work(job))
    }

    fn can_complete(&self) -> bool {
        self.wait_for_complete
    }

    fn complete(&self, _job: &Rc<Job>) -> Result<()> {
        self.should_complete.set(true);
        Ok(())
    }

    fn prepare(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, Result<()>> {
        self.log.borrow_mut().push("prepare");
        Box::pin(async { Ok(()) })
    }

    fn commit(self: Rc<Self>, job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        self.log.borrow_mut().push(if job.is_soft_cancelled() {
            "commit-no-pivot"
        } else {
            "commit"
        });
        Box::pin(async {})
    }

    fn abort(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        self.log.borrow_mut().push("abort");
        Box::pin(async {})
    }

    fn clean(self: Rc<Self>, _job: Rc<Job>) -> LocalBoxFuture<'static, ()> {
        self.log.borrow_mut().push("clean");
        Box::pin(async {})
    }
}

/// Create (and start) a WriteJob on `node`.
async fn start(
    engine: &Engine,
    opts: JobOptions,
    drv: WriteJob,
    txn: Option<Rc<JobTxn>>,
) -> Result<(Rc<Job>, Rc<WriteJob>)> {
    let drv = Rc::new(drv);
    let node = engine.node(&drv.node)?;
    node.check_op_blockers()?;
    let job = engine.jobs().create(&opts, drv.clone(), txn)?;
    match job.add_node(&node, "target", Perms::WRITE, Perms::ALL) {
        Ok(child) => *drv.child.borrow_mut() = Some(child),
        Err(e) => {
            // Setup failed after the job existed: it vanishes without a trace.
            job.abandon().await;
            return Err(e);
        }
    }
    job.start();
    Ok((job, drv))
}

async fn settle(env: &Rc<dyn Env>) {
    env.sleep_until(env.now_ns() + 1_000_000).await;
}

/// The job-related events so far, as "NAME status/extra" strings.
fn job_events(engine: &Engine) -> Vec<String> {
    engine
        .take_events()
        .into_iter()
        .filter_map(|e| {
            let d = &e.data;
            Some(match e.name {
                "JOB_STATUS_CHANGE" => d["status"].as_str()?.to_string(),
                "BLOCK_JOB_COMPLETED" if d.get("error").is_some() => {
                    format!("COMPLETED error={}", d["error"].as_str()?)
                }
                "BLOCK_JOB_ERROR" => format!(
                    "ERROR {} {}",
                    d["operation"].as_str()?,
                    d["action"].as_str()?
                ),
                n if n.starts_with("BLOCK_JOB_") => n["BLOCK_JOB_".len()..].to_string(),
                _ => return None,
            })
        })
        .collect()
}

async fn qmp(engine: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(engine, &cmd).await
}

fn err_desc(reply: &Value) -> String {
    format!(
        "{}: {}",
        reply["error"]["class"].as_str().unwrap_or("?"),
        reply["error"]["desc"].as_str().unwrap_or("(no error)")
    )
}

#[test]
fn a_job_runs_through_the_whole_lifecycle_with_qemus_events() {
    for seed in 0..4 {
        run(seed, |engine| async move {
            add_mem(&engine, "m", json!({"size": 8 << 20})).await;
            let (job, drv) = start(&engine, JobOptions::new("j0"), WriteJob::new("m", 8), None)
                .await
                .unwrap();
            job.wait_concluded().await;
            assert_eq!(
                job_events(&engine),
                [
                    "created",
                    "running",
                    "waiting",
                    "pending",
                    "COMPLETED",
                    "concluded",
                    "null"
                ]
            );
            assert_eq!(*drv.log.borrow(), ["prepare", "commit", "clean"]);
            assert_eq!(job.progress(), (8 * UNIT, 8 * UNIT));
            assert_eq!(engine.query_jobs(), json!([]), "auto-dismissed");
            // The job's edge and blocker are gone: the node can be deleted.
            assert!(engine.node("m").unwrap().check_op_blockers().is_ok());
            engine.blockdev_del("m").await.unwrap();
        });
    }
}

#[test]
fn manual_finalize_and_dismiss_wait_for_the_user() {
    run(1, |engine| async move {
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            auto_finalize: false,
            auto_dismiss: false,
            ..JobOptions::new("j0")
        };
        let (job, drv) = start(&engine, opts, WriteJob::new("m", 4), None)
            .await
            .unwrap();
        job.wait_status(|s| s == JobStatus::Pending).await;
        assert_eq!(
            job_events(&engine),
            ["created", "running", "waiting", "pending", "PENDING"]
        );
        assert!(drv.log.borrow().is_empty(), "nothing finalized yet");
        let q = qmp(&engine, json!({"execute": "query-jobs"})).await;
        assert_eq!(
            q["return"],
            json!([{"id": "j0", "type": "test", "status": "pending",
                    "current-progress": 4 * UNIT, "total-progress": 4 * UNIT}])
        );
        // Verbs the status does not accept are refused with QEMU's wording.
        let r = qmp(
            &engine,
            json!({"execute": "job-dismiss", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: Job 'j0' in state 'pending' cannot accept command verb 'dismiss'"
        );
        let r = qmp(
            &engine,
            json!({"execute": "job-pause", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: Job 'j0' in state 'pending' cannot accept command verb 'pause'"
        );
        let r = qmp(
            &engine,
            json!({"execute": "job-finalize", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(r, json!({"return": {}}));
        assert_eq!(job.status(), JobStatus::Concluded);
        assert_eq!(job_events(&engine), ["COMPLETED", "concluded"]);
        let r = qmp(
            &engine,
            json!({"execute": "block-job-dismiss", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(r, json!({"return": {}}));
        assert_eq!(job_events(&engine), ["null"]);
        assert_eq!(engine.query_block_jobs(), json!([]));
    });
}

#[test]
fn user_pause_parks_the_job_and_resume_continues_it() {
    run(2, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: 4 * UNIT, // 4 units per virtual second: slow enough to catch running
            ..JobOptions::new("j0")
        };
        let (job, _) = start(&engine, opts, WriteJob::new("m", 40), None)
            .await
            .unwrap();
        settle(&env).await;
        qmp(
            &engine,
            json!({"execute": "block-job-pause", "arguments": {"device": "j0"}}),
        )
        .await;
        job.wait_status(|s| s == JobStatus::Paused).await;
        let writes = mem("m").take_log().len();
        env.sleep_until(env.now_ns() + 5_000_000_000).await;
        assert!(
            mem("m").take_log().is_empty(),
            "a paused job issues nothing"
        );
        assert!(writes > 0);
        let q = engine.query_block_jobs();
        assert_eq!(q[0]["paused"], json!(true));
        assert_eq!(q[0]["status"], json!("paused"));
        let r = qmp(
            &engine,
            json!({"execute": "job-pause", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(err_desc(&r), "GenericError: Job is already paused");
        qmp(
            &engine,
            json!({"execute": "block-job-resume", "arguments": {"device": "j0"}}),
        )
        .await;
        let r = qmp(
            &engine,
            json!({"execute": "job-resume", "arguments": {"id": "j0"}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: Can't resume a job that was not paused"
        );
        job.wait_concluded().await;
        let ev = job_events(&engine);
        assert_eq!(&ev[..4], ["created", "running", "paused", "running"]);
        assert_eq!(ev.last().unwrap(), "null");
    });
}

#[test]
fn a_drained_node_pauses_its_job_and_no_job_request_reaches_it() {
    for seed in 0..8 {
        run(seed, |engine| async move {
            let env = engine.env().clone();
            let node = add_mem(&engine, "m", json!({"size": 8 << 20})).await;
            let opts = JobOptions {
                speed: 8 * UNIT,
                ..JobOptions::new("j0")
            };
            let (job, _) = start(&engine, opts, WriteJob::new("m", 32), None)
                .await
                .unwrap();
            settle(&env).await;
            let section = node.drained_begin().await;
            assert_eq!(node.in_flight(), 0);
            mem("m").take_log();
            // The job parks at its next pause point (it may have been sleeping for the limit).
            job.wait_status(|s| s == JobStatus::Paused).await;
            env.sleep_until(env.now_ns() + 3_000_000_000).await;
            assert!(
                mem("m").take_log().is_empty(),
                "seed {seed}: a request reached a drained node"
            );
            assert_eq!(engine.query_block_jobs()[0]["paused"], json!(true));
            drop(section);
            job.wait_concluded().await;
            assert!(job.error().is_none());
        });
    }
}

#[test]
fn cancel_while_running_aborts_and_reports_cancelled() {
    run(3, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: 4 * UNIT,
            ..JobOptions::new("j0")
        };
        let (job, drv) = start(&engine, opts, WriteJob::new("m", 100), None)
            .await
            .unwrap();
        settle(&env).await;
        let r = qmp(
            &engine,
            json!({"execute": "block-job-cancel", "arguments": {"device": "j0"}}),
        )
        .await;
        assert_eq!(r, json!({"return": {}}));
        job.wait_concluded().await;
        assert_eq!(
            job_events(&engine),
            [
                "created",
                "running",
                "aborting",
                "CANCELLED",
                "concluded",
                "null"
            ]
        );
        assert_eq!(*drv.log.borrow(), ["abort", "clean"]);
        assert!(job.progress().0 < 100 * UNIT, "stopped early");
    });
}

#[test]
fn a_paused_block_job_is_cancelled_only_with_force() {
    run(4, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: 4 * UNIT,
            ..JobOptions::new("j0")
        };
        let (job, _) = start(&engine, opts, WriteJob::new("m", 100), None)
            .await
            .unwrap();
        settle(&env).await;
        job.user_pause().unwrap();
        let r = qmp(
            &engine,
            json!({"execute": "block-job-cancel", "arguments": {"device": "j0"}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: The block job for device 'j0' is currently paused"
        );
        let r = qmp(
            &engine,
            json!({"execute": "block-job-cancel", "arguments": {"device": "j0", "force": true}}),
        )
        .await;
        assert_eq!(r, json!({"return": {}}));
        job.wait_concluded().await;
        assert!(job.is_cancelled());
    });
}

#[test]
fn a_ready_job_completes_on_request_or_finishes_without_completing_on_cancel() {
    // complete: COMPLETED after commit; cancel (no force): COMPLETED, no pivot;
    // cancel with force: CANCELLED, abort.
    for (verb, force, want_event, want_log) in [
        ("job-complete", false, "COMPLETED", "commit"),
        ("block-job-cancel", false, "COMPLETED", "commit-no-pivot"),
        ("block-job-cancel", true, "CANCELLED", "abort"),
    ] {
        run(5, move |engine| async move {
            add_mem(&engine, "m", json!({"size": 8 << 20})).await;
            let drv = WriteJob {
                wait_for_complete: true,
                ..WriteJob::new("m", 4)
            };
            let (job, drv) = start(&engine, JobOptions::new("j0"), drv, None)
                .await
                .unwrap();
            job.wait_status(|s| s == JobStatus::Ready).await;
            let args = if verb == "job-complete" {
                json!({"id": "j0"})
            } else {
                json!({"device": "j0", "force": force})
            };
            let r = qmp(&engine, json!({"execute": verb, "arguments": args})).await;
            assert_eq!(r, json!({"return": {}}), "{verb}");
            job.wait_concluded().await;
            let ev = job_events(&engine);
            assert!(ev.contains(&"READY".to_string()), "{ev:?}");
            assert!(
                ev.contains(&want_event.to_string()),
                "{verb} force={force}: {ev:?}"
            );
            assert!(
                drv.log.borrow().contains(&want_log),
                "{:?}",
                drv.log.borrow()
            );
        });
    }
}

#[test]
fn complete_is_refused_before_ready_and_for_jobs_that_cannot_complete() {
    run(6, |engine| async move {
        let env = engine.env().clone();
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: 4 * UNIT,
            ..JobOptions::new("j0")
        };
        let (job, _) = start(&engine, opts, WriteJob::new("m", 100), None)
            .await
            .unwrap();
        settle(&env).await;
        let r = qmp(
            &engine,
            json!({"execute": "block-job-complete", "arguments": {"device": "j0"}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: Job 'j0' in state 'running' cannot accept command verb 'complete'"
        );
        job.cancel(true).await.unwrap();
        job.wait_concluded().await;
    });
}

#[test]
fn set_speed_stretches_virtual_time_not_wall_time() {
    // 64 units of 64 KiB = 4 MiB. Unlimited: well under a virtual second. At 1 MiB/s: about 4 s
    // (the first slice's burst is free). The same on every seed: the clock is virtual.
    let elapsed = |speed: u64, seed: u64| {
        run(seed, move |engine| async move {
            let env = engine.env().clone();
            add_mem(&engine, "m", json!({"size": 8 << 20})).await;
            let t0 = env.now_ns();
            let (job, _) = start(&engine, JobOptions::new("j0"), WriteJob::new("m", 64), None)
                .await
                .unwrap();
            if speed > 0 {
                let r = qmp(
                    &engine,
                    json!({"execute": "block-job-set-speed",
                           "arguments": {"device": "j0", "speed": speed}}),
                )
                .await;
                assert_eq!(r, json!({"return": {}}));
            }
            job.wait_concluded().await;
            env.now_ns() - t0
        })
    };
    let fast = elapsed(0, 1);
    assert!(fast < 1_000_000_000, "unlimited took {fast} ns");
    for seed in 0..3 {
        let slow = elapsed(1 << 20, seed);
        assert!(
            (3_800_000_000..=4_200_000_000).contains(&slow),
            "seed {seed}: 4 MiB at 1 MiB/s took {slow} ns"
        );
    }
}

#[test]
fn set_speed_rejects_negative_values_and_unknown_jobs() {
    run(7, |engine| async move {
        let r = qmp(
            &engine,
            json!({"execute": "block-job-set-speed", "arguments": {"device": "nope", "speed": 1}}),
        )
        .await;
        assert_eq!(err_desc(&r), "DeviceNotActive: Block job 'nope' not found");
        let r = qmp(
            &engine,
            json!({"execute": "job-cancel", "arguments": {"id": "nope"}}),
        )
        .await;
        assert_eq!(err_desc(&r), "GenericError: Job not found");
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: UNIT,
            ..JobOptions::new("j0")
        };
        let (job, _) = start(&engine, opts, WriteJob::new("m", 100), None)
            .await
            .unwrap();
        let r = qmp(
            &engine,
            json!({"execute": "block-job-set-speed", "arguments": {"device": "j0", "speed": -1}}),
        )
        .await;
        assert_eq!(err_desc(&r), "GenericError: Invalid parameter 'speed'");
        assert_eq!(job.speed(), UNIT, "unchanged");
        job.cancel(true).await.unwrap();
        job.wait_concluded().await;
    });
}

#[test]
fn on_error_policies_report_ignore_and_stop() {
    // report: the job fails; ignore: it carries on; stop: it pauses, io-status failed, and
    // resumes (retrying) on block-job-resume; enospc with EIO: report.
    for (policy, want) in [
        (OnError::Report, "report"),
        (OnError::Ignore, "ignore"),
        (OnError::Stop, "stop"),
        (OnError::Enospc, "report"),
    ] {
        run(8, move |engine| async move {
            add_mem(&engine, "m", json!({"size": 8 << 20})).await;
            let drv = WriteJob {
                on_error: policy,
                fail_at: Some(2),
                ..WriteJob::new("m", 6)
            };
            let (job, drv) = start(&engine, JobOptions::new("j0"), drv, None)
                .await
                .unwrap();
            if policy == OnError::Stop {
                job.wait_status(|s| s == JobStatus::Paused).await;
                let q = engine.query_block_jobs();
                assert_eq!(q[0]["io-status"], json!("failed"));
                let r = qmp(
                    &engine,
                    json!({"execute": "block-job-resume", "arguments": {"device": "j0"}}),
                )
                .await;
                assert_eq!(r, json!({"return": {}}));
                // The unit fails again (the test job's failure is permanent): stop again,
                // then give up by cancelling.
                let stops = || drv.log.borrow().iter().filter(|l| **l == "stopped").count();
                while stops() < 2 {
                    settle(engine.env()).await;
                }
                job.wait_status(|s| s == JobStatus::Paused).await;
                assert_eq!(stops(), 2);
                job.cancel(true).await.unwrap();
            }
            job.wait_concluded().await;
            let ev = job_events(&engine);
            assert!(
                ev.contains(&format!("ERROR write {want}")),
                "{policy:?}: {ev:?}"
            );
            match want {
                "report" => assert!(
                    ev.contains(&"COMPLETED error=Input/output error".to_string()),
                    "{ev:?}"
                ),
                "ignore" => {
                    assert!(ev.contains(&"COMPLETED".to_string()));
                    assert_eq!(job.progress().0, 6 * UNIT);
                }
                _ => assert!(ev.contains(&"CANCELLED".to_string())),
            }
        });
    }
}

#[test]
fn a_transaction_commits_together_or_aborts_together() {
    for seed in 0..4 {
        // Success: neither job commits before both are done.
        run(seed, move |engine| async move {
            add_mem(&engine, "a", json!({"size": 8 << 20})).await;
            add_mem(&engine, "b", json!({"size": 8 << 20})).await;
            let txn = JobTxn::new();
            let (ja, da) = start(
                &engine,
                JobOptions::new("ja"),
                WriteJob::new("a", 2),
                Some(txn.clone()),
            )
            .await
            .unwrap();
            let (jb, db) = start(
                &engine,
                JobOptions::new("jb"),
                WriteJob::new("b", 12),
                Some(txn),
            )
            .await
            .unwrap();
            ja.wait_status(|s| s == JobStatus::Waiting).await;
            assert!(da.log.borrow().is_empty(), "seed {seed}: a waits for b");
            jb.wait_concluded().await;
            ja.wait_concluded().await;
            assert_eq!(*da.log.borrow(), ["prepare", "commit", "clean"]);
            assert_eq!(*db.log.borrow(), ["prepare", "commit", "clean"]);
        });
        // Failure of one: the other is cancelled and both abort.
        run(seed, move |engine| async move {
            add_mem(&engine, "a", json!({"size": 8 << 20})).await;
            add_mem(&engine, "b", json!({"size": 8 << 20})).await;
            let txn = JobTxn::new();
            let slow = JobOptions {
                speed: 4 * UNIT,
                ..JobOptions::new("ja")
            };
            let (ja, da) = start(&engine, slow, WriteJob::new("a", 100), Some(txn.clone()))
                .await
                .unwrap();
            let failing = WriteJob {
                fail_at: Some(1),
                ..WriteJob::new("b", 4)
            };
            let (jb, db) = start(&engine, JobOptions::new("jb"), failing, Some(txn))
                .await
                .unwrap();
            ja.wait_concluded().await;
            jb.wait_concluded().await;
            assert_eq!(*da.log.borrow(), ["abort", "clean"], "seed {seed}");
            assert_eq!(*db.log.borrow(), ["abort", "clean"]);
            let ev = job_events(&engine);
            assert!(ev.contains(&"CANCELLED".to_string()), "{ev:?}");
            assert!(ev.contains(&"COMPLETED error=Input/output error".to_string()));
            assert!(ja.is_cancelled() && !jb.is_cancelled());
        });
    }
}

#[test]
fn ids_are_checked_and_a_busy_node_refuses_a_second_job() {
    run(9, |engine| async move {
        add_mem(&engine, "m", json!({"size": 8 << 20})).await;
        let opts = JobOptions {
            speed: UNIT,
            ..JobOptions::new("j0")
        };
        let (job, _) = start(&engine, opts, WriteJob::new("m", 100), None)
            .await
            .unwrap();
        let e = start(&engine, JobOptions::new("j0"), WriteJob::new("m", 1), None)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            e.message(),
            "Node 'm' is busy: block device is in use by block job: test"
        );
        add_mem(&engine, "n", json!({"size": 8 << 20})).await;
        let e = start(&engine, JobOptions::new("j0"), WriteJob::new("n", 1), None)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.message(), "Job ID 'j0' already in use");
        let e = start(
            &engine,
            JobOptions::new("0bad"),
            WriteJob::new("n", 1),
            None,
        )
        .await
        .err()
        .expect("refused");
        assert_eq!(e.message(), "Invalid job ID '0bad'");
        let e = start(&engine, JobOptions::new(""), WriteJob::new("n", 1), None)
            .await
            .err()
            .expect("refused");
        assert_eq!(e.message(), "An explicit job ID is required");
        // Graph commands on the job's node are refused while it runs.
        let r = qmp(
            &engine,
            json!({"execute": "block_resize",
                                    "arguments": {"node-name": "m", "size": 4096}}),
        )
        .await;
        assert_eq!(
            err_desc(&r),
            "GenericError: Node 'm' is busy: block device is in use by block job: test"
        );
        assert_eq!(engine.query_jobs().as_array().unwrap().len(), 1);
        job.cancel(true).await.unwrap();
        job.wait_concluded().await;
        assert!(engine.node("m").unwrap().check_op_blockers().is_ok());
    });
}
