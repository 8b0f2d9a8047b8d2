//! A power loss at a chosen disk event (`RunOptions::crash_at`, driven by `blk sim crashes`):
//! each step races a probe that notices the scheduled crash; once it struck the run restarts,
//! verifies every device against its model, checks every qcow2 image the scenario created, and
//! ends there. Part of the runner; runs without `crash_at` never take this path.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::outcome::Failure;
use super::syntax::{Action, Step};
use super::world::World;

/// How often (virtual time) the probe looks for a struck crash: every task but the main one is
/// dead by then, so only the main future's own wait is cut short.
const PROBE_NS: u64 = 1_000_000;

impl World<'_> {
    /// The step, or `None` when the scheduled crash struck first.
    pub(super) async fn step_or_crash(&mut self, step: &Step) -> Option<Result<(), Failure>> {
        let sim = self.sim;
        let env = self.env.clone();
        let slot = RefCell::new(None);
        let probe = async move {
            while !sim.fs().has_struck() {
                env.sleep_until(env.now_ns() + PROBE_NS).await;
            }
        };
        First {
            a: Box::pin(async {
                let r = self.step(step).await;
                *slot.borrow_mut() = Some(r);
            }),
            b: Box::pin(probe),
        }
        .await;
        slot.into_inner()
    }

    /// After the struck crash: restart, verify every device, check every qcow2 image.
    pub(super) async fn recover_struck(
        &mut self,
        line: usize,
        steps: &[Step],
    ) -> Result<(), Failure> {
        self.crash_struck = true;
        // The killed tasks' state goes with the world as at a `crash` step.
        self.before_power_loss();
        let report = self.sim.fs().take_struck().unwrap_or_default();
        self.after_power_loss();
        self.note(&format!(
            "scheduled crash: {} cached writes kept, {} lost, {} torn",
            report.kept, report.lost, report.torn
        ));
        self.restart(line).await?;
        let devices: Vec<String> = self.devices.keys().cloned().collect();
        for d in devices {
            self.verify(line, &d, None).await?;
        }
        for s in steps {
            if let Action::ImageCreate { path, format, .. } = &s.action
                && format == "qcow2"
            {
                self.check_file(line, path).await?;
            }
        }
        Ok(())
    }
}

/// Image creation and graph setup (no guest I/O yet).
pub(super) fn is_setup(step: &Step) -> bool {
    matches!(
        step.action,
        Action::ImageCreate { .. } | Action::Qmp { .. } | Action::DeviceAdd { .. }
    )
}

/// Poll two futures until the first completes.
struct First<A, B> {
    a: Pin<Box<A>>,
    b: Pin<Box<B>>,
}

impl<A: Future<Output = ()>, B: Future<Output = ()>> Future for First<A, B> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.a.as_mut().poll(cx).is_ready() || self.b.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
