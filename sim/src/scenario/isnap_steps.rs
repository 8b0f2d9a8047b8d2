//! `isnap DEV create|apply|delete|taken NAME`: qcow2 internal snapshots of the image under a
//! device, through the engine (`snapshot_internal_create`, `_goto`, `_delete`), with the
//! runner's oracle: `create` keeps a copy of the device model, `apply` makes it the device's
//! model again (the device must then read the data of snapshot time, which `verify` checks),
//! `delete` drops it; `taken` adopts a snapshot a QMP transaction just took (it must exist;
//! the model copy is made as for `create`). Steps come while no guest write is in flight (the swarm stops its workload first).
//! A snapshot outlives a restart (it is on disk): its model copy stays.

use super::model::DeviceModel;
use super::outcome::{Failure, fail};
use super::syntax::SnapVerb;
use super::world::World;

/// The key of an internal snapshot's model copy among the saved models.
fn key(device: &str, name: &str) -> String {
    format!("isnap:{device}:{name}")
}

impl World<'_> {
    /// One `isnap` step.
    pub(super) async fn isnap_step(
        &mut self,
        line: usize,
        device: &str,
        verb: SnapVerb,
        name: &str,
    ) -> Result<(), Failure> {
        let model = self
            .devices
            .get(device)
            .ok_or_else(|| fail("setup", line, format!("no device '{device}'")))?
            .model
            .clone();
        let engine = self.engine.clone();
        let k = key(device, name);
        match verb {
            SnapVerb::Create => {
                let sn = engine
                    .snapshot_internal_create(device, name)
                    .await
                    .map_err(|e| fail("isnap", line, format!("create {name}: {e}")))?;
                let copy: DeviceModel = model.borrow().clone();
                self.snapshots.insert(k, std::cell::RefCell::new(copy));
                self.note(&format!("isnap {device}: created {name} (id {})", sn.id));
            }
            SnapVerb::Apply => {
                let saved = self
                    .snapshots
                    .get(&k)
                    .ok_or_else(|| fail("isnap", line, format!("no snapshot '{name}'")))?;
                engine
                    .snapshot_internal_goto(device, name)
                    .await
                    .map_err(|e| fail("isnap", line, format!("apply {name}: {e}")))?;
                model.borrow_mut().restore_contents(&saved.borrow());
                self.note(&format!("isnap {device}: applied {name}"));
            }
            SnapVerb::Taken => {
                let list = engine
                    .snapshot_internal_list(device)
                    .map_err(|e| fail("isnap", line, format!("list: {e}")))?;
                if !list.iter().any(|s| s.name == name) {
                    return Err(fail(
                        "isnap",
                        line,
                        format!("no snapshot '{name}' was taken"),
                    ));
                }
                let copy: DeviceModel = model.borrow().clone();
                self.snapshots.insert(k, std::cell::RefCell::new(copy));
                self.note(&format!("isnap {device}: {name} taken"));
            }
            SnapVerb::Delete => {
                engine
                    .snapshot_internal_delete(device, None, Some(name))
                    .await
                    .map_err(|e| fail("isnap", line, format!("delete {name}: {e}")))?;
                self.snapshots.remove(&k);
                self.note(&format!("isnap {device}: deleted {name}"));
            }
        }
        Ok(())
    }
}
