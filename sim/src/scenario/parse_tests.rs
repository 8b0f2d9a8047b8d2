//! Tests of the scenario parser: every directive's syntax and its errors.
use super::*;

#[test]
fn parses_every_directive() {
    let text = "# purpose\nexpect-failure verify\nseed 7\nscheduler fifo\nlatency 1us..2us\n\
        image create d.img raw 1M\nqmp {\"execute\": \"blockdev-add\",\n  \"arguments\": {}}\n\
        expect error GenericError \"in use\"\ndevice add d0 node=n werror=stop\n\
        io d0 write -P 0xab 0 4k\nworkload start w device=d0 mix=write:1\nworkload stop w\n\
        fault inject f eio path=d.img once\nfault clear\ndrain begin n subtree\ndrain end n\n\
        advance 10ms\nwait event STOP timeout=1s\nexpect event BLOCK_JOB_ERROR device=j\nexpect iostatus d0 ok\n\
        expect running no\nexpect output \"wrote 4096\"\nverify d0\ncrash\nrestart\n\
        limit time 5s\nlimit steps 99\nworkload wait w\nio? d0 read -P 1 0 1\n";
    let sc = parse("t", text).unwrap();
    assert_eq!(sc.purpose, "purpose");
    assert_eq!(sc.expect_failure.as_deref(), Some("verify"));
    assert_eq!(
        (sc.seed, sc.fifo, sc.latency),
        (7, true, Some((1000, 2000)))
    );
    assert_eq!(sc.steps.len(), 21);
    assert_eq!((sc.time_limit_ns, sc.step_limit), (5_000_000_000, 99));
    assert!(matches!(&sc.steps[19].action, Action::WorkloadWait { name } if name == "w"));
    assert!(matches!(
        &sc.steps[20].action,
        Action::Io { may_fail: true, .. }
    ));
    assert!(
        matches!(&sc.steps[15].action, Action::Expect(Expectation::Output(t)) if t == "wrote 4096")
    );
    assert!(
        matches!(&sc.steps[1].action, Action::Qmp { expect_error: Some((c, t)), .. } if c == "GenericError" && t == "in use")
    );
    assert!(
        matches!(&sc.steps[3].action, Action::Io { command, may_fail: false, .. } if command == "write -P 0xab 0 4k")
    );
    assert!(matches!(
        &sc.steps[11].action,
        Action::WaitEvent {
            timeout_ns: 1_000_000_000,
            ..
        }
    ));
}

#[test]
fn parses_expect_rate() {
    let sc = parse(
        "t",
        "# p\nexpect rate w1 group=t0\nexpect rate w2 group=t1 drained\n",
    )
    .unwrap();
    assert!(matches!(
        &sc.steps[0].action,
        Action::Expect(Expectation::Rate { workload, group, drained: false }) if workload == "w1" && group == "t0"
    ));
    assert!(matches!(
        &sc.steps[1].action,
        Action::Expect(Expectation::Rate { drained: true, .. })
    ));
    let err = parse("t", "# p\nexpect rate w1 group=t0 now\n").unwrap_err();
    assert_eq!(err.to_string(), "t:2:25: expected drained, not 'now'");
    let err = parse("t", "# p\nexpect rate w1 t0\n").unwrap_err();
    assert_eq!(err.to_string(), "t:2:16: expected group=GROUP, not 't0'");
    let err = parse("t", "# p\nexpect rate w1\n").unwrap_err();
    assert!(err.message.contains("group=GROUP"), "{err}");
}

#[test]
fn errors_name_file_line_and_column() {
    let err = parse("s.scn", "# p\nimage create x raw 12Q\n").unwrap_err();
    assert_eq!((err.line, err.column), (2, 20));
    assert_eq!(err.to_string(), "s.scn:2:20: bad size '12Q'");
    let err = parse("s.scn", "# p\n  frobnicate\n").unwrap_err();
    assert_eq!(err.to_string(), "s.scn:2:3: unknown directive 'frobnicate'");
    let err = parse("s.scn", "no purpose\n").unwrap_err();
    assert_eq!((err.line, err.column), (1, 1));
    let err = parse("s.scn", "# p\nexpect error GenericError\n").unwrap_err();
    assert!(err.message.contains("must follow a 'qmp'"));
    let err = parse("s.scn", "# p\nqmp {\"execute\": }\n").unwrap_err();
    assert!(err.message.starts_with("bad QMP JSON"), "{err}");
    let err = parse("s.scn", "# p\nverify d\nexpect return {}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "s.scn:3:1: 'expect return' must follow a 'qmp' step"
    );
    let sc = parse(
        "s.scn",
        "# p\nqmp {\"execute\": \"x\"}\nexpect return {\"a\":\n 1}\nverify d\n",
    )
    .unwrap();
    assert!(
        matches!(&sc.steps[0].action, Action::Qmp { expect_return: Some(v), .. } if v["a"] == 1)
    );
    assert_eq!(sc.steps.len(), 2);
    let err = parse("s.scn", "# p\nadvance 10 ms\n").unwrap_err();
    assert_eq!(err.to_string(), "s.scn:2:9: bad duration '10'");
}

/// Regression (issue: `wait event BLOCK_JOB_READY job=m0`, as the README documented, never
/// matched because block-job events carry `device`, and the run grew without bound): an event
/// key the event does not have, or an event the engine never emits, is a parse error naming
/// what the event has.
#[test]
fn event_steps_name_real_events_and_fields() {
    let err = parse("t", "# p\nwait event BLOCK_JOB_READY job=m0 timeout=60s\n").unwrap_err();
    assert_eq!((err.line, err.column), (2, 28));
    assert!(
        err.message
            .contains("event BLOCK_JOB_READY has no field 'job'")
            && err.message.contains("type, device, len, offset, speed"),
        "{}",
        err.message
    );
    let err = parse("t", "# p\n  expect event BLOCK_IO_EROR device=d0\n").unwrap_err();
    assert_eq!((err.line, err.column), (2, 16));
    assert!(
        err.message.contains("unknown event 'BLOCK_IO_EROR'"),
        "{}",
        err.message
    );
    let err = parse("t", "# p\nexpect no-event NOPE\n").unwrap_err();
    assert!(
        err.message.contains("unknown event 'NOPE'"),
        "{}",
        err.message
    );
    assert!(
        parse(
            "t",
            "# p\nwait event BLOCK_JOB_READY device=m0 timeout=1s\n"
        )
        .is_ok()
    );
}

/// Regression (issue 10 bug 11): these were found only when the run reached the step.
#[test]
fn run_time_errors_are_parse_errors() {
    let cases = [
        (
            "fault inject f eoi path=d.img\n",
            3,
            16,
            "unknown fault kind 'eoi'",
        ),
        (
            "device add d0 node=n werorr=stop\n",
            3,
            15,
            "unknown device argument 'werorr=stop'",
        ),
        (
            "workload start w device=d0 mix=wrte:1\n",
            3,
            18,
            "unknown operation 'wrte'",
        ),
        (
            "workload start w device=d0 bs=64k..4k\n",
            3,
            18,
            "bad block size range '64k..4k'",
        ),
    ];
    for (line, l, c, msg) in cases {
        let text = format!("# p\nimage create d.img raw 1M\n{line}");
        let err = parse("s.scn", &text).unwrap_err();
        assert_eq!((err.line, err.column), (l, c), "{err}");
        assert!(err.message.contains(msg), "{err}");
    }
    let err = parse("s.scn", "# p\nexpect-failure verfy\n").unwrap_err();
    assert_eq!(err.column, 16, "{err}");
    assert!(err.message.contains("unknown check 'verfy'"), "{err}");
}

/// `CHECKS` names every check a run can fail (so `expect-failure` accepts each one).
#[test]
fn every_failing_check_is_listed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/scenario");
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join("");
        for part in flat.split("fail(\"").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                super::super::outcome::CHECKS.contains(&name),
                "{name} missing from CHECKS"
            );
        }
    }
}

/// The stricter parse-time checks accept every shipped scenario.
#[test]
fn shipped_scenarios_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "scn") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(err) = parse(&path.display().to_string(), &text) {
                panic!("{err}");
            }
        }
    }
}

#[test]
fn parses_bitmap_steps_and_refuses_bad_ones() {
    let text = "# p\nbitmap add d0 b1 granularity=4096 disabled\nbitmap add d0 b2\n\
        bitmap merge b1 b2 b1\nbitmap check\nbitmap check b2\nbitmap clear b1\n\
        bitmap add d0 p persistent\nshutdown\n";
    let sc = parse("t", text).unwrap();
    assert_eq!(
        sc.steps[0].action,
        Action::Bitmap(BitmapStep::Add {
            device: "d0".into(),
            name: "b1".into(),
            granularity: Some(4096),
            disabled: true,
            persistent: false
        })
    );
    assert_eq!(
        sc.steps[2].action,
        Action::Bitmap(BitmapStep::Merge {
            target: "b1".into(),
            sources: vec!["b2".into(), "b1".into()]
        })
    );
    assert_eq!(
        sc.steps[3].action,
        Action::Bitmap(BitmapStep::Check(vec![]))
    );
    assert_eq!(
        sc.steps[6].action,
        Action::Bitmap(BitmapStep::Add {
            device: "d0".into(),
            name: "p".into(),
            granularity: None,
            disabled: false,
            persistent: true
        })
    );
    assert_eq!(sc.steps[7].action, Action::Shutdown);
    for (bad, msg) in [
        (
            "bitmap add d0 b granularity=1000",
            "t:2:17: bad granularity '1000'",
        ),
        (
            "bitmap add d0 b persistent=yes",
            "t:2:17: unknown argument 'persistent'",
        ),
        ("bitmap merge b1", "t:2:16: 'bitmap' needs source bitmaps"),
        ("bitmap frob b1", "t:2:8: unknown bitmap verb 'frob'"),
    ] {
        let e = parse("t", &format!("# p\n{bad}\n")).unwrap_err();
        assert_eq!(e.to_string(), msg, "{bad}");
    }
}

#[test]
fn model_snapshot_and_verify_against_it() {
    let sc = parse(
        "t",
        "# p\nmodel d0 snapshot s1\nverify bk snapshot=s1\nverify d0\n",
    )
    .unwrap();
    assert!(matches!(&sc.steps[0].action,
        Action::ModelSnapshot { device, name } if device == "d0" && name == "s1"));
    assert!(matches!(&sc.steps[1].action,
        Action::Verify { device, snapshot: Some(s) } if device == "bk" && s == "s1"));
    assert!(matches!(
        &sc.steps[2].action,
        Action::Verify { snapshot: None, .. }
    ));
    let err = parse("s.scn", "# p\nverify bk s1\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "s.scn:2:11: expected snapshot=NAME, got 's1'"
    );
    let err = parse("s.scn", "# p\nmodel d0 snap s1\n").unwrap_err();
    assert!(err.message.contains("'model DEV snapshot NAME'"), "{err}");
}
