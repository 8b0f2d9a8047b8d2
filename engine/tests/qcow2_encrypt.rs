//! Encryption on the simulator: LUKS volumes and `encrypt.format=luks` qcow2 images made with
//! the env's seeded random stream (the same seed makes the same bytes, another seed other
//! bytes), guest data round-trips and never reaches the disk in the clear, and a wrong
//! passphrase is refused with QEMU's message. The QEMU interop is in tests/cli_luks.rs.

use crate::qcow2_support;

use engine::backend::BackendOptions;
use engine::crypto::LuksCreate;
use engine::drivers::qcow2::CreateOptions;
use engine::io::{IoBuf, ReqFlags};
use qcow2_support::*;
use serde_json::json;

const PATTERN: u8 = 0x5a;

/// Create `img` on a simulator of `seed` (qcow2 with LUKS, or a LUKS volume), write a
/// pattern, then reopen with `pass` and read it back. The image's bytes, and what the reopen
/// read (or its error).
fn round_trip(seed: u64, qcow2: bool, pass: &str) -> (Vec<u8>, Result<Vec<u8>, String>) {
    let sim = sim_with(seed, &[("img", Vec::new())]);
    let engine = engine_of(&sim);
    let env = sim.env().as_env();
    let out = sim.block_on(async move {
        let secret = json!({"qom-type": "secret", "id": "s0", "data": "right"});
        engine.graph().objects.add(&env, secret).await.unwrap();
        let wrong = json!({"qom-type": "secret", "id": "s1", "data": "wrong"});
        engine.graph().objects.add(&env, wrong).await.unwrap();
        let built = LuksCreate::default().build(&*env, b"right").unwrap();
        let size = 1 << 20;
        let driver = if qcow2 {
            let opts = CreateOptions {
                size,
                encrypt: Some(built),
                ..CreateOptions::default()
            };
            create_on(&engine, "img", &opts).await;
            json!({"driver": "qcow2", "encrypt": {"key-secret": "s0"}})
        } else {
            engine
                .blockdev_add(json!({"driver": "file", "node-name": "f", "filename": "img"}))
                .await
                .unwrap();
            let bb = engine
                .device_add("create", "f", BackendOptions::tool(false))
                .unwrap();
            engine::drivers::luks::create(&bb.root().unwrap(), &built, size)
                .await
                .unwrap();
            engine.device_del("create").await.unwrap();
            json!({"driver": "luks", "key-secret": "s0"})
        };
        let open = |name: &str, secret: &str| {
            let mut o = driver.clone();
            o["node-name"] = json!(name);
            o["file"] = json!({"driver": "file", "filename": "img"});
            match (qcow2, o.get_mut("encrypt")) {
                (true, Some(e)) => e["key-secret"] = json!(secret),
                _ => o["key-secret"] = json!(secret),
            }
            o
        };
        engine.blockdev_add(open("w", "s0")).await.unwrap();
        let bb = engine
            .device_add("dev-w", "w", BackendOptions::tool(false))
            .unwrap();
        let buf = IoBuf::filled(65536 + 512, PATTERN);
        let (_, r) = bb.write(4096, buf, ReqFlags::NONE).await;
        r.unwrap();
        bb.flush().await.unwrap();
        engine.device_del("dev-w").await.unwrap();
        engine.blockdev_del("w").await.unwrap();
        let secret = if pass == "right" { "s0" } else { "s1" };
        match engine.blockdev_add(open("r", secret)).await {
            Err(e) => Err(e.message().to_string()),
            Ok(_) => {
                let bb = engine
                    .device_add("dev-r", "r", BackendOptions::tool(true))
                    .unwrap();
                Ok(read_all(&bb).await)
            }
        }
    });
    (sim.fs().file_bytes("img").unwrap(), out.unwrap())
}

#[test]
fn encrypted_images_round_trip_deterministically() {
    for qcow2 in [false, true] {
        let (bytes, read) = round_trip(7, qcow2, "right");
        let read = read.unwrap();
        assert!(read[4096..4096 + 65536 + 512].iter().all(|&b| b == PATTERN));
        if qcow2 {
            // Unwritten qcow2 clusters read as zeroes; LUKS sectors are ciphertext of zeroes.
            assert!(read[..4096].iter().all(|&b| b == 0));
        }
        // The guest's bytes are nowhere on disk in the clear.
        let run = vec![PATTERN; 512];
        assert!(
            !bytes.windows(512).any(|w| w == run.as_slice()),
            "plaintext on disk"
        );
        // Same seed, same bytes; another seed, another volume (keys, salts, UUID).
        assert_eq!(round_trip(7, qcow2, "right").0, bytes);
        assert_ne!(round_trip(8, qcow2, "right").0, bytes);
    }
}

#[test]
fn a_wrong_passphrase_is_refused() {
    for qcow2 in [false, true] {
        let (_, read) = round_trip(3, qcow2, "wrong");
        assert_eq!(
            read.unwrap_err(),
            "Invalid password, cannot unlock any keyslot"
        );
    }
}
