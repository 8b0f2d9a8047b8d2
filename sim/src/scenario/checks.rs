//! The run's checks: `verify` (the device's bytes against the reference model), `expect`,
//! `wait event`, and the matching rules they share. A family of steps (see `step`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use engine::env::Env;
use engine::io::IoBuf;
use serde_json::Value;

use super::model::SECTOR;
use super::outcome::{Failure, fail};
use super::syntax::{Arg, Expectation};
use super::world::World;

impl World<'_> {
    pub(super) async fn wait_event(
        &mut self,
        line: usize,
        name: &str,
        fields: &[Arg],
        timeout_ns: u64,
    ) -> Result<(), Failure> {
        let deadline = self.env.now_ns() + timeout_ns;
        loop {
            self.collect_events();
            if let Some(pos) = self
                .pending
                .iter()
                .position(|e| e.name == name && field_matches(&e.data, fields))
            {
                self.pending.remove(pos);
                self.note(&format!("waited for {name}"));
                return Ok(());
            }
            if self.env.now_ns() >= deadline {
                return Err(fail(
                    "wait",
                    line,
                    format!("no {name} event within {} ms", timeout_ns / 1_000_000),
                ));
            }
            let engine = self.engine.clone();
            race(engine.graph().events.wait(), self.env.sleep_until(deadline)).await;
        }
    }
    pub(super) fn expect(&mut self, line: usize, e: &Expectation) -> Result<(), Failure> {
        self.collect_events();
        let ok = match e {
            Expectation::Event { name, fields } => {
                match self
                    .pending
                    .iter()
                    .position(|ev| ev.name == name && field_matches(&ev.data, fields))
                {
                    Some(pos) => {
                        self.pending.remove(pos);
                        Ok(())
                    }
                    None => Err(format!("no pending {name} event with the given fields")),
                }
            }
            Expectation::NoEvent { name, fields } => match self
                .pending
                .iter()
                .find(|ev| ev.name == name && field_matches(&ev.data, fields))
            {
                Some(ev) => Err(format!("unexpected {name} event {}", ev.data)),
                None => Ok(()),
            },
            Expectation::Iostatus { device, status } => {
                let bb = self
                    .engine
                    .backend(device)
                    .map_err(|e| fail("expect", line, e.to_string()))?;
                let got = bb.iostatus().as_str();
                if got == status {
                    Ok(())
                } else {
                    Err(format!("io-status of {device} is {got}, not {status}"))
                }
            }
            Expectation::Running(want) => {
                let got = self.engine.machine().is_running();
                if got == *want {
                    Ok(())
                } else {
                    Err(format!("machine running = {got}"))
                }
            }
            Expectation::Rate {
                workload,
                group,
                drained,
            } => self.expect_rate(workload, group, *drained),
            Expectation::Output(text) => {
                if self.last_output.iter().any(|l| l.contains(text.as_str())) {
                    Ok(())
                } else {
                    Err(format!(
                        "last output {:?} does not contain '{text}'",
                        self.last_output
                    ))
                }
            }
        };
        match ok {
            Ok(()) => {
                self.note(&format!("expect {} ok", describe(e)));
                Ok(())
            }
            Err(m) => Err(fail("expect", line, m)),
        }
    }
    pub(super) async fn verify(
        &mut self,
        line: usize,
        device: &str,
        snapshot: Option<&str>,
    ) -> Result<(), Failure> {
        self.collect_io_output();
        let bb = self
            .engine
            .backend(device)
            .map_err(|e| fail("verify", line, e.to_string()))?;
        let dev = self
            .devices
            .get(device)
            .ok_or_else(|| fail("verify", line, format!("no device '{device}'")))?;
        let model = match snapshot {
            None => &dev.model,
            Some(name) => self
                .snapshots
                .get(name)
                .ok_or_else(|| fail("verify", line, format!("no snapshot '{name}'")))?,
        };
        let size = bb.len().map_err(|e| fail("verify", line, e.to_string()))?;
        let chunk = 1u64 << 20;
        let mut offset = 0;
        let mut ambiguous = 0u64;
        // One buffer for the whole device, kept for the next verify (a fresh zeroed 1 MiB
        // costs more than the check itself; every read fills it whole).
        let mut spare = take_verify_buf(chunk.min(size) as usize);
        while offset < size {
            let n = chunk.min(size - offset);
            if spare.len() as u64 != n {
                spare = IoBuf::new(n as usize);
            }
            let (buf, r) = bb.read(offset, spare).await;
            r.map_err(|e| {
                fail(
                    "verify",
                    line,
                    format!("read of {device} at {offset} failed: {e}"),
                )
            })?;
            let checked = model
                .borrow_mut()
                .verify_and_pin(offset / SECTOR, buf.as_slice());
            match checked {
                Ok(pinned) => ambiguous += pinned,
                Err((sector, candidates)) => {
                    let want: Vec<String> = candidates.iter().map(|v| v.to_string()).collect();
                    return Err(fail(
                        "verify",
                        line,
                        format!(
                            "{device}: sector {sector} (offset {}) holds none of [{}]",
                            sector * SECTOR,
                            want.join(", ")
                        ),
                    ));
                }
            }
            offset += n;
            spare = buf;
        }
        keep_verify_buf(spare);
        let against = snapshot.map_or(String::new(), |s| format!(" against snapshot {s}"));
        self.note(&format!(
            "verify {device}{against}: ok ({} bytes, {} sectors modelled, {ambiguous} uncertain sectors pinned)",
            size,
            model.borrow().touched()
        ));
        Ok(())
    }
}

/// `f`'s output, or `None` if `ns` of virtual time pass first (`f` is then dropped).
pub(super) async fn within<F: Future>(env: &Rc<dyn Env>, ns: u64, f: F) -> Option<F::Output> {
    let slot = RefCell::new(None);
    let finished = race(
        async { *slot.borrow_mut() = Some(f.await) },
        env.sleep_until(env.now_ns() + ns),
    )
    .await;
    if finished { slot.into_inner() } else { None }
}
/// Poll two futures; finish with the first to complete (true if it was `a`).
async fn race<A: Future, B: Future>(a: A, b: B) -> bool {
    struct Race<A, B> {
        a: Pin<Box<A>>,
        b: Pin<Box<B>>,
    }
    impl<A: Future, B: Future> Future for Race<A, B> {
        type Output = bool;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
            if self.a.as_mut().poll(cx).is_ready() {
                return Poll::Ready(true);
            }
            if self.b.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        }
    }
    Race {
        a: Box::pin(a),
        b: Box::pin(b),
    }
    .await
}
/// True when `have` contains `want`: objects by subset (recursively), arrays element by element
/// with equal lengths, scalars exactly.
pub(super) fn json_contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| json_contains(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| json_contains(a, b))
        }
        _ => have == want,
    }
}
fn field_matches(data: &Value, fields: &[Arg]) -> bool {
    fields.iter().all(|f| {
        let want = f.value.as_deref().unwrap_or("");
        match data.get(&f.key) {
            Some(Value::String(s)) => s == want,
            // Numbers and booleans are written bare in scenarios: `nospace=true`, `len=4096`.
            Some(Value::Bool(b)) => want == if *b { "true" } else { "false" },
            Some(Value::Number(n)) => n.to_string() == want,
            Some(_) => false,
            None => false,
        }
    })
}
fn describe(e: &Expectation) -> String {
    match e {
        Expectation::Event { name, .. } => format!("event {name}"),
        Expectation::NoEvent { name, .. } => format!("no-event {name}"),
        Expectation::Iostatus { device, status } => format!("iostatus {device} {status}"),
        Expectation::Running(r) => format!("running {}", if *r { "yes" } else { "no" }),
        Expectation::Output(t) => format!("output '{t}'"),
        Expectation::Rate {
            workload, group, ..
        } => format!("rate {workload} group={group}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arg(k: &str, v: &str) -> Arg {
        Arg {
            key: k.into(),
            value: Some(v.into()),
            column: 1,
        }
    }

    #[test]
    fn replies_match_by_subset() {
        let have =
            json!([{"node-name": "a", "ro": false, "image": {"virtual-size": 1, "format": "raw"}}]);
        assert!(json_contains(
            &have,
            &json!([{"node-name": "a", "image": {"virtual-size": 1}}])
        ));
        assert!(!json_contains(&have, &json!([{"node-name": "b"}])));
        assert!(
            !json_contains(&have, &json!([])),
            "array lengths must agree"
        );
    }

    #[test]
    fn event_fields_match_strings_numbers_and_booleans_as_written() {
        let data = json!({"device": "d0", "nospace": true, "len": 4096, "node": null});
        assert!(field_matches(
            &data,
            &[
                arg("device", "d0"),
                arg("nospace", "true"),
                arg("len", "4096")
            ]
        ));
        assert!(!field_matches(&data, &[arg("nospace", "false")]));
        assert!(!field_matches(&data, &[arg("len", "4097")]));
        assert!(!field_matches(&data, &[arg("missing", "x")]));
        assert!(!field_matches(&data, &[arg("node", "null")]));
    }
}

thread_local! {
    /// The buffer `verify` reads through, between verifies (runs on this thread reuse it).
    static VERIFY_BUF: std::cell::RefCell<Option<IoBuf>> = const { std::cell::RefCell::new(None) };
}

/// A buffer of `len` bytes for `verify`: the kept one if it has that size.
fn take_verify_buf(len: usize) -> IoBuf {
    VERIFY_BUF
        .with(|b| b.borrow_mut().take())
        .filter(|b| b.len() == len)
        .unwrap_or_else(|| IoBuf::new(len))
}

/// Keep `buf` for the next `verify`.
fn keep_verify_buf(buf: IoBuf) {
    VERIFY_BUF.with(|b| *b.borrow_mut() = Some(buf));
}
