//! Child processes (etcd, kube-apiserver) that cannot outlive the testbed.
//!
//! Children are killed and reaped on drop, which covers normal teardown and panics. If the
//! whole test process dies (SIGKILL, abort), the kernel kills them too: each child is
//! started through util-linux's `setpriv --pdeathsig KILL`, which sets
//! `PR_SET_PDEATHSIG(SIGKILL)` and then execs the program (same pid), so no code of ours
//! has to run between fork and exec (no `unsafe` `pre_exec`). That signal fires when the
//! *thread* that forked the child exits, so all children are forked from one dedicated
//! thread that lives as long as the process. Children stay in the caller's process group,
//! so Ctrl-C reaches them as well.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;

use crate::error::{Error, Result};

/// Sets the parent-death signal, then execs the program it is given.
const SETPRIV: &str = "setpriv";
/// Bytes of log shown when a process fails.
const LOG_TAIL_BYTES: u64 = 4096;

/// A running child process whose output goes to a log file.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `program args…`, appending stdout and stderr to `log`.
    pub(crate) fn spawn(name: String, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("opening log {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("duplicating log {}", log.display())))?;
        let mut command = Command::new(SETPRIV);
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_from_spawner_thread(command).map_err(Error::io(format!(
            "starting {name} ({} through {SETPRIV}, Debian: util-linux)",
            program.display()
        )))?;
        tracing::debug!(process = %name, pid = child.id(), log = %log.display(), "started");
        Ok(ChildProcess {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error describing this process's failure, with the end of its log.
    pub(crate) fn failure(&self, reason: impl Into<String>) -> Error {
        Error::Process {
            process: self.name.clone(),
            reason: reason.into(),
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        if self.exited().is_none() {
            // Errors mean it is already gone; `wait` below reaps it either way.
            let _ = self.child.kill();
        }
        match self.child.wait() {
            Ok(status) => tracing::debug!(process = %self.name, %status, "stopped"),
            Err(error) => tracing::warn!(process = %self.name, %error, "reaping failed"),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Forks `command` from the long-lived spawner thread (see the module docs).
fn spawn_from_spawner_thread(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testbed-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the testbed spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    spawner
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("testbed spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("testbed spawner thread is gone"))?
}

/// The last few KiB of a log file, or a note why it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read log: {e})"))
}
