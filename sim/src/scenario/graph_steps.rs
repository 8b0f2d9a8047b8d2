//! Steps that build and change the graph: `image create`, `qmp` (with `expect error` /
//! `expect return`), `device add`. Graph setup is recorded for `restart` (`Setup`).

use std::cell::RefCell;
use std::rc::Rc;

use engine::qmp;
use serde_json::Value;

use super::checks::json_contains;
use super::device_args::device_options;
use super::model::DeviceModel;
use super::outcome::{Failure, fail};
use super::syntax::{Arg, Step};
use super::world::{DeviceState, Setup, World};

impl World<'_> {
    /// `image create PATH FORMAT SIZE [options]`.
    pub(super) async fn image_create(
        &mut self,
        line: usize,
        path: &str,
        format: &str,
        size: u64,
        options: &[Arg],
    ) -> Result<(), Failure> {
        super::image::create_image(&self.engine, &self.env, path, format, size, options)
            .await
            .map_err(|e| fail("setup", line, e))?;
        self.note(&format!("image create {path} {format} {size}"));
        Ok(())
    }

    /// `qmp JSON`: the reply must be a success (containing `expect_return`, if given) or the
    /// error `expect_error` names.
    pub(super) async fn qmp(
        &mut self,
        line: usize,
        command: &Value,
        expect_error: Option<&(String, String)>,
        expect_return: Option<&Value>,
    ) -> Result<(), Failure> {
        self.note(&format!("qmp {command}"));
        let reply = qmp::execute(&self.engine, command).await;
        self.note(&format!("<- {reply}"));
        let err = reply.get("error");
        match (err, expect_error) {
            (None, None) => {
                if let Some(want) = expect_return {
                    if !json_contains(&reply["return"], want) {
                        return Err(fail(
                            "qmp",
                            line,
                            format!("reply {} does not contain {want}", reply["return"]),
                        ));
                    }
                    self.note("expect return ok");
                }
                let execute = command.get("execute").and_then(Value::as_str);
                if execute == Some("blockdev-del") {
                    // Nodes deleted later lose their chance to be followed at the restart:
                    // record every current chain now (a job may have moved them off the
                    // deleted node), so the replayed blockdev-del finds it unused again.
                    self.follow_chains(false);
                }
                // The NBD server and its exports are part of the machine's setup too: a
                // restarted daemon serves them again before its clients reconnect. So are
                // objects (a throttle node names its group, which must exist again first).
                if matches!(
                    execute,
                    Some(
                        "object-add"
                            | "object-del"
                            | "blockdev-add"
                            | "blockdev-del"
                            | "nbd-server-start"
                            | "nbd-server-stop"
                            | "block-export-add"
                            | "block-export-del"
                    )
                ) {
                    self.setup.push(Setup::Qmp(command.clone()));
                }
                Ok(())
            }
            (Some(e), None) => Err(fail("qmp", line, format!("unexpected error reply {e}"))),
            (None, Some((class, _))) => Err(fail(
                "qmp",
                line,
                format!("expected a {class} error, got success"),
            )),
            (Some(e), Some((class, text))) => {
                let got_class = e["class"].as_str().unwrap_or("");
                let desc = e["desc"].as_str().unwrap_or("");
                if got_class != class || !desc.contains(text.as_str()) {
                    return Err(fail(
                        "qmp",
                        line,
                        format!("expected {class} containing '{text}', got {e}"),
                    ));
                }
                Ok(())
            }
        }
    }

    /// `device add NAME node=NODE ...`.
    pub(super) fn device_add_step(
        &mut self,
        step: &Step,
        name: &str,
        args: &[Arg],
    ) -> Result<(), Failure> {
        self.device_add(name, args)
            .map_err(|e| fail("setup", step.line, e))?;
        self.setup
            .push(Setup::Device(name.to_string(), args.to_vec()));
        self.note(&step.text);
        Ok(())
    }

    /// Attach device `name` as `args` say (also at a restart's replay).
    pub(super) fn device_add(&mut self, name: &str, args: &[Arg]) -> Result<(), String> {
        let (node, opts) = device_options(args)?;
        self.engine
            .device_add(name, &node, opts)
            .map_err(|e| e.to_string())?;
        self.devices
            .entry(name.to_string())
            .or_insert_with(|| DeviceState {
                model: Rc::new(RefCell::new(DeviceModel::new())),
                activity: Rc::default(),
            });
        Ok(())
    }
}
