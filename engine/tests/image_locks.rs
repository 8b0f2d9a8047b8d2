//! Image locks on real files (QEMU's OFD byte locks, taken by the file driver from the node's
//! permissions): two nodes of one engine on the same host file conflict as two processes do
//! (each node locks through a handle of its own), with QEMU's words; `locking=off` opts out;
//! closing a node releases its locks; a reopen to read-write that another user's locks refuse
//! changes nothing, and succeeds once that user is gone; image creation refuses a file in use
//! and leaves it untouched.

use std::rc::Rc;

use engine::Engine;
use engine::env::real::RealEnv;
use serde_json::{Value, json};

/// A scratch directory with a 1 MiB qcow2 image `img.qcow2` made by the engine.
fn setup(tag: &str) -> (std::path::PathBuf, String) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("image-locks-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("img.qcow2").display().to_string();
    (dir, img)
}

async fn exec(e: &Engine, cmd: Value) -> Value {
    engine::qmp::execute(e, &cmd).await
}

/// `blockdev-add` of a qcow2 node `name` on `img`; the error's `desc`, or "" on success.
async fn add(e: &Engine, name: &str, img: &str, read_only: bool, file_extra: Value) -> String {
    let mut file = json!({"driver": "file", "filename": img});
    if let (Value::Object(f), Value::Object(x)) = (&mut file, file_extra) {
        f.extend(x);
    }
    let r = exec(
        e,
        json!({"execute": "blockdev-add", "arguments": {"driver": "qcow2",
        "node-name": name, "read-only": read_only, "file": file}}),
    )
    .await;
    r["error"]["desc"].as_str().unwrap_or_default().to_string()
}

fn run(body: impl AsyncFnOnce(Rc<Engine>)) {
    let env = RealEnv::new();
    let engine = Rc::new(Engine::new(env.clone()));
    env.block_on(body(engine.clone()));
    env.block_on(engine.shutdown()).unwrap();
    env.shutdown();
}

async fn create(e: &Engine, img: &str) -> engine::Result<()> {
    e.create_image(&engine::engine::ImageSpec {
        path: img.to_string(),
        format: "qcow2".into(),
        size: 1 << 20,
        backing_file: None,
        backing_fmt: None,
    })
    .await
}

#[test]
fn a_second_user_of_an_image_is_refused_with_qemus_words() {
    let (dir, img) = setup("second");
    run(async |e| {
        create(&e, &img).await.unwrap();
        assert_eq!(add(&e, "w", &img, false, json!({})).await, "");
        // A reader may not leave writing shared; a writer may not write.
        let reader = add(&e, "r", &img, true, json!({})).await;
        assert_eq!(reader, "Failed to get shared \"write\" lock");
        assert_eq!(
            add(&e, "w2", &img, false, json!({})).await,
            "Failed to get \"write\" lock"
        );
        // Creating the image anew is refused too, and leaves it as it was.
        let before = std::fs::read(&img).unwrap();
        let err = create(&e, &img).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Failed to get \"write\" lock\nIs another process using the image [{img}]?")
        );
        assert_eq!(std::fs::read(&img).unwrap(), before);
        // locking=off opts out (as QEMU's file option does).
        assert_eq!(
            add(&e, "r", &img, true, json!({"locking": "off"})).await,
            ""
        );
        // Once the writer is gone, its locks are too.
        let del = json!({"execute": "blockdev-del", "arguments": {"node-name": "w"}});
        assert_eq!(exec(&e, del).await, json!({"return": {}}));
        assert_eq!(add(&e, "w2", &img, false, json!({})).await, "");
    });
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_reopen_the_locks_refuse_changes_nothing() {
    let (dir, img) = setup("reopen");
    run(async |e| {
        create(&e, &img).await.unwrap();
        assert_eq!(add(&e, "a", &img, true, json!({})).await, "");
        assert_eq!(add(&e, "b", &img, true, json!({})).await, "");
        let reopen = json!({"execute": "blockdev-reopen", "arguments": {"options": [
            {"node-name": "a", "driver": "qcow2", "file": e.node("a").unwrap()
                .children()[0].child_node().name(), "read-only": false}]}});
        let r = exec(&e, reopen.clone()).await;
        assert_eq!(r["error"]["desc"], "Failed to get \"write\" lock");
        assert!(e.node("a").unwrap().is_read_only());
        // Still a reader holding its locks: a writer is refused as before.
        assert_eq!(
            add(&e, "w", &img, false, json!({})).await,
            "Failed to get \"write\" lock"
        );
        let del = json!({"execute": "blockdev-del", "arguments": {"node-name": "b"}});
        assert_eq!(exec(&e, del).await, json!({"return": {}}));
        assert_eq!(exec(&e, reopen).await, json!({"return": {}}));
        assert!(!e.node("a").unwrap().is_read_only());
        // Now a writer: a reader is refused.
        assert_eq!(
            add(&e, "c", &img, true, json!({})).await,
            "Failed to get shared \"write\" lock"
        );
    });
    let _ = std::fs::remove_dir_all(dir);
}
