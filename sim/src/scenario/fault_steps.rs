//! `fault inject NAME KIND ...` / `fault clear [NAME]`: faults of the virtual disk, by name.

use super::faults::fault_spec;
use super::outcome::{Failure, fail};
use super::syntax::{Arg, Step};
use super::world::World;

impl World<'_> {
    /// `fault inject NAME KIND key=value...`.
    pub(super) fn fault_inject(
        &mut self,
        step: &Step,
        name: &str,
        kind: &str,
        args: &[Arg],
    ) -> Result<(), Failure> {
        let line = step.line;
        let spec = fault_spec(kind, args).map_err(|e| fail("setup", line, e))?;
        if spec.kind.class().family == crate::fault::Family::LostFlush {
            for dev in self.devices.values() {
                dev.model.borrow_mut().lossy_flush = true;
            }
        }
        let id = self
            .sim
            .fs()
            .inject(spec)
            .map_err(|e| fail("setup", line, e.to_string()))?;
        self.faults.insert(name.to_string(), id);
        self.note(&step.text);
        Ok(())
    }

    /// `fault clear [NAME]`: one fault, or all.
    pub(super) fn fault_clear(&mut self, step: &Step, name: Option<&str>) -> Result<(), Failure> {
        let line = step.line;
        match name {
            None => {
                self.sim.fs().clear_faults();
                self.faults.clear();
            }
            Some(n) => {
                let id = self
                    .faults
                    .remove(n)
                    .ok_or_else(|| fail("setup", line, format!("no fault named '{n}'")))?;
                self.sim.fs().remove_fault(id);
            }
        }
        self.note(&step.text);
        Ok(())
    }
}
