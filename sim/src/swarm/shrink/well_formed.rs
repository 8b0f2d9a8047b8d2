//! The rules a shrink candidate must keep before it is run: a reduction may not make the
//! scenario misuse the runner (and so fail, or hang, for a reason of its own).

use super::Split;
use super::reduce::Data;

/// A reduction must not make the scenario misuse the runner: a `verify` while a workload still
/// writes the device reads a moving target and would fail for the wrong reason.
/// Nor may it verify while qemu-io aio requests are in flight (before `aio_flush`), or drop
/// the `model` declaration of data written into a lower layer through a deleted device.
/// Likewise a `model` declaration must keep the write it declares and the flush that made that
/// write durable (the declaration says it is: without the flush a restart may rightly lose it),
/// a drained section its end and a blkdebug breakpoint its resume: without them the run fails
/// or hangs for that reason. A `resume` needs the `wait_break` that saw the request parked:
/// without it the resume races the request to the breakpoint and fails when it loses. And a
/// `wait_break` needs a request issued after its `break`, or it waits for nothing, forever.
pub(super) fn well_formed(s: &Split) -> bool {
    let mut usage = Usage::default();
    for st in &s.steps {
        let w: Vec<&str> = st[0].split_whitespace().collect();
        if !usage.step(&w) {
            return false;
        }
    }
    usage.ends_clean()
}

/// What [`well_formed`] tracks through a scenario's steps.
#[derive(Default)]
struct Usage<'a> {
    /// Workloads running.
    running: Vec<&'a str>,
    /// qemu-io aio writes issued and not yet flushed with `aio_flush`.
    aio: bool,
    /// Writes not yet flushed, by device; `written` holds the flushed (durable) data.
    unflushed: Vec<(&'a str, Data<'a>)>,
    written: Vec<Data<'a>>,
    /// Writes through each device, devices deleted, data declared with `model ... fill`.
    lower: Vec<(&'a str, Data<'a>)>,
    deleted: Vec<&'a str>,
    fills: Vec<Data<'a>>,
    /// Drained sections open.
    drained: Vec<&'a str>,
    /// Breakpoints set, parked on (`wait_break` seen), and whether a request came after each.
    breaks: Vec<&'a str>,
    parked: Vec<&'a str>,
    armed: Vec<(&'a str, bool)>,
}

impl<'a> Usage<'a> {
    /// Take one step; false when the scenario misuses the runner there.
    fn step(&mut self, w: &[&'a str]) -> bool {
        if matches!(
            w,
            ["io", _, "aio_write" | "write" | "aio_read" | "read", ..] | ["workload", "start", ..]
        ) {
            self.armed.iter_mut().for_each(|a| a.1 = true);
        }
        match w {
            ["crash"] => {
                self.aio = false;
                self.running.clear();
                self.drained.clear();
                self.breaks.clear();
                self.parked.clear();
                true
            }
            ["workload", ..] | ["verify", ..] => self.guest(w),
            ["drain", ..] => self.drain(w),
            ["io", _, "break" | "wait_break" | "resume", ..] => self.breakpoint(w),
            _ => self.data(w),
        }
    }

    /// Workloads, aio and verifies: no verify reads a moving target.
    fn guest(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["workload", "start", name, ..] => self.running.push(name),
            ["workload", "stop" | "wait", name] => self.running.retain(|r| *r != name),
            ["verify", ..] => return self.running.is_empty() && !self.aio,
            _ => {}
        }
        true
    }

    /// Writes, flushes, fills and declarations: a declaration needs its data durable.
    fn data(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["io", _, "aio_write", ..] => self.aio = true,
            ["io", dev, op @ ("aio_flush" | "flush")] => {
                self.aio &= op != "aio_flush";
                let (now, still): (Vec<_>, Vec<_>) =
                    self.unflushed.drain(..).partition(|(d, _)| *d == dev);
                self.written.extend(now.into_iter().map(|(_, w)| w));
                self.unflushed = still;
            }
            ["io", dev, "write", "-P", p, off, len] => {
                self.unflushed.push((dev, (p, off, len)));
                self.lower.push((dev, (p, off, len)));
            }
            ["image", "create", ..] => {
                for f in w.iter().filter_map(|a| a.strip_prefix("fill=")) {
                    let mut p = f.split(':');
                    if let (Some(pat), Some(off), Some(len)) = (p.next(), p.next(), p.next()) {
                        self.written.push((pat, off, len));
                    }
                }
            }
            ["device", "del", dev] => self.deleted.push(dev),
            ["model", _, "fill", p, off, len] => {
                if !self.written.contains(&(p, off, len)) {
                    return false;
                }
                self.fills.push((p, off, len));
            }
            _ => {}
        }
        true
    }

    /// Drained sections: each end closes a section that was begun.
    fn drain(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["drain", "begin", node, ..] => self.drained.push(node),
            ["drain", "end", node] => match self.drained.iter().rposition(|d| *d == node) {
                Some(i) => {
                    self.drained.remove(i);
                }
                None => return false,
            },
            _ => {}
        }
        true
    }

    /// Breakpoints: a wait needs a request after its break, a resume its wait.
    fn breakpoint(&mut self, w: &[&'a str]) -> bool {
        match *w {
            ["io", _, "break", _, tag] => {
                self.breaks.push(tag);
                self.armed.push((tag, false));
            }
            ["io", _, "wait_break", tag] => {
                if !self.armed.contains(&(tag, true)) || !self.breaks.contains(&tag) {
                    return false;
                }
                self.parked.push(tag);
            }
            ["io", _, "resume", tag] => {
                if !self.parked.contains(&tag) {
                    return false;
                }
                self.breaks.retain(|b| *b != tag);
                self.parked.retain(|b| *b != tag);
            }
            _ => {}
        }
        true
    }

    /// At the end: every section ended, every breakpoint resumed, and data written through a
    /// device that is gone (a lower layer) still declared.
    fn ends_clean(&self) -> bool {
        let undeclared = self
            .lower
            .iter()
            .any(|(dev, w)| self.deleted.contains(dev) && !self.fills.contains(w));
        self.drained.is_empty() && self.breaks.is_empty() && !undeclared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_model_fill_may_come_from_an_image_fill() {
        let fill = "image create l0.qcow2 qcow2 4M fill=0x11:0:4096";
        let tail = "model d0 fill 0x11 0 4096\n";
        assert!(well_formed(&Split::parse(&format!("# p\n{fill}\n{tail}"))));
        assert!(!well_formed(&Split::parse(&format!(
            "# p\nimage create l0.qcow2 qcow2 4M\n{tail}"
        ))));
    }

    #[test]
    fn a_model_fill_needs_its_write_flushed() {
        let setup = "# p\ndevice add d1 node=l1\nio d1 write -P 0x11 0 4096\n";
        let tail = "device del d1\nmodel d0 fill 0x11 0 4096\n";
        assert!(well_formed(&Split::parse(&format!(
            "{setup}io d1 flush\n{tail}"
        ))));
        assert!(!well_formed(&Split::parse(&format!("{setup}{tail}"))));
        // Another device's flush does not make it durable.
        assert!(!well_formed(&Split::parse(&format!(
            "{setup}io d0 flush\n{tail}"
        ))));
    }

    #[test]
    fn a_resume_needs_its_wait_break() {
        assert!(!well_formed(&Split::parse(
            "# p\nio d break pwritev B1\nio d wait_break B1\nio d resume B1\n"
        )));
        let head = "# p\nio d break pwritev B1\nio d aio_write -P 1 0 512\n";
        assert!(!well_formed(&Split::parse(&format!(
            "{head}io d resume B1\n"
        ))));
        assert!(well_formed(&Split::parse(&format!(
            "{head}io d wait_break B1\nio d resume B1\n"
        ))));
    }
}
