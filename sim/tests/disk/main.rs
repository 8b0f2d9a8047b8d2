//! Virtual disk tests: a randomized byte model, every fault class, crash outcomes, export, and
//! the `HostFs`/`HostFile` contract details (open flags, O_DIRECT, stale handles, orphans).

mod crash;
mod faults;
mod faults_io;
mod misc;
mod model;

use std::rc::Rc;

use engine::env::{Env, HostFile, OpenOptions};
use engine::io::IoBuf;
use engine::{Errno, Result};
use sim::{Sim, SimConfig};

pub fn new_sim(seed: u64) -> Sim {
    Sim::new(seed, SimConfig::default())
}

pub fn rw() -> OpenOptions {
    OpenOptions {
        write: true,
        create: true,
        ..OpenOptions::default()
    }
}

pub fn open(env: &Rc<dyn Env>, path: &str) -> Rc<dyn HostFile> {
    env.fs().open(path, rw()).expect("open")
}

pub async fn write(f: &dyn HostFile, offset: u64, data: &[u8]) -> Result<()> {
    f.write_at(IoBuf::from_slice(data), offset, false).await.1
}

pub async fn write_fua(f: &dyn HostFile, offset: u64, data: &[u8]) -> Result<()> {
    f.write_at(IoBuf::from_slice(data), offset, true).await.1
}

pub async fn read(f: &dyn HostFile, offset: u64, len: usize) -> Result<Vec<u8>> {
    let (buf, res) = f.read_at(IoBuf::new(len), offset).await;
    res.map(|()| buf.as_slice().to_vec())
}

pub fn errno<T>(r: Result<T>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.errno().expect("errno"),
    }
}
