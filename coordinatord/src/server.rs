//! Sockets and threads around the [`Machine`]: one accept thread, one reader thread per
//! connection, and the core loop that owns the machine. All state changes happen on the
//! core loop, fed through one channel, so the machine needs no locks.
//!
//! Writes to processes are done by the core loop directly with a send timeout; a process
//! that does not read its socket for [`WRITE_TIMEOUT`] is disconnected (which aborts a
//! running checkpoint it takes part in).

use crate::events::{Event, Journal};
use crate::machine::{CommittedImage, ConnId, CtlId, Env, Machine};
use crate::store::GenerationStore;
use ckpt_protocol::{
    read_msg, write_msg, CheckpointSummary, FrameError, Message, Role, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How long a client may take to send its Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to one connection may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The core loop wakes at least this often.
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// What the threads tell the core loop.
pub enum Input {
    Joined {
        conn: ConnId,
        info: ckpt_protocol::ProcessInfo,
        writer: UnixStream,
    },
    Msg {
        conn: ConnId,
        msg: Message,
    },
    Left {
        conn: ConnId,
        reason: String,
    },
    Control {
        msg: Message,
        reply: Sender<Message>,
    },
    Signal(i32),
}

/// The effects of the machine, for real.
struct Live {
    conns: HashMap<ConnId, UnixStream>,
    ctls: HashMap<CtlId, Sender<Message>>,
    store: Box<dyn GenerationStore>,
    journal: Journal,
}

impl Env for Live {
    fn send(&mut self, conn: ConnId, msg: Message) {
        let Some(stream) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(e) = write_msg(stream, &msg) {
            tracing::warn!("cannot send to connection {conn}: {e}; disconnecting it");
            // The reader thread sees the end of the stream and reports the process as left.
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn reply(&mut self, ctl: CtlId, msg: Message) {
        if let Some(tx) = self.ctls.remove(&ctl) {
            let _ = tx.send(msg);
        }
    }

    fn begin_generation(&mut self) -> anyhow::Result<(u64, PathBuf)> {
        self.store.begin()
    }

    fn commit_generation(
        &mut self,
        generation: u64,
        images: &[CommittedImage],
        summary: &CheckpointSummary,
    ) -> anyhow::Result<()> {
        self.store.commit(generation, images, summary)
    }

    fn abandon_generation(&mut self, generation: u64) {
        if let Err(e) = self.store.abandon(generation) {
            tracing::warn!("cannot remove the abandoned generation {generation}: {e:#}");
        }
    }

    fn prune(&mut self, keep: usize) {
        if let Err(e) = self.store.prune(keep) {
            tracing::warn!("cannot prune old generations: {e:#}");
        }
    }

    fn event(&mut self, ev: Event) {
        self.journal.record(&ev);
    }
}

/// Runs the coordinator on `listener` until it should exit; returns why it exited.
pub fn serve(
    listener: UnixListener,
    mut machine: Machine,
    store: Box<dyn GenerationStore>,
    journal: Journal,
    tx: Sender<Input>,
    rx: Receiver<Input>,
) -> String {
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(listener, tx))
            .expect("spawn the accept thread");
    }
    drop(tx);
    let mut env = Live {
        conns: HashMap::new(),
        ctls: HashMap::new(),
        store,
        journal,
    };
    let mut next_ctl: CtlId = 1;
    loop {
        let now = Instant::now();
        let sleep = machine
            .next_wakeup()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        match rx.recv_timeout(sleep) {
            Ok(input) => {
                let now = Instant::now();
                match input {
                    Input::Joined { conn, info, writer } => {
                        env.conns.insert(conn, writer);
                        machine.process_joined(now, &mut env, conn, info);
                    }
                    Input::Msg { conn, msg } => machine.process_message(now, &mut env, conn, msg),
                    Input::Left { conn, reason } => {
                        machine.process_left(now, &mut env, conn, &reason);
                        env.conns.remove(&conn);
                    }
                    Input::Control { msg, reply } => {
                        let ctl = next_ctl;
                        next_ctl += 1;
                        env.ctls.insert(ctl, reply);
                        machine.control(now, &mut env, ctl, msg);
                    }
                    Input::Signal(sig) => {
                        let reason = format!("received signal {sig}");
                        machine.shutdown(now, &mut env, reason);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return "the listening socket failed".into();
            }
        }
        machine.tick(Instant::now(), &mut env);
        if let Some(reason) = machine.exit_reason() {
            let reason = reason.to_string();
            env.event(Event::CoordinatorStopped {
                reason: reason.clone(),
            });
            return reason;
        }
    }
}

fn accept_loop(listener: UnixListener, tx: Sender<Input>) {
    let mut next_conn: ConnId = 1;
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let conn = next_conn;
                next_conn += 1;
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("conn-{conn}"))
                    .spawn(move || connection(conn, stream, tx));
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for a new connection: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reason text for a closed or broken connection.
fn frame_error_text(e: &FrameError) -> String {
    match e {
        FrameError::Closed => "connection closed".into(),
        other => other.to_string(),
    }
}

fn connection(conn: ConnId, mut stream: UnixStream, tx: Sender<Input>) {
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let hello = match read_msg(&mut stream) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!("connection {conn}: no hello: {}", frame_error_text(&e));
            return;
        }
    };
    let role = match hello {
        Message::Hello {
            protocol_version,
            role,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                let reason = format!(
                    "protocol version mismatch: the client speaks version {protocol_version}, \
                     this coordinator (ckpt-coordinatord {}) speaks version {PROTOCOL_VERSION}; \
                     use ckpt tools of the same release",
                    env!("CARGO_PKG_VERSION")
                );
                tracing::warn!("connection {conn} refused: {reason}");
                let _ = write_msg(&mut stream, &Message::Refused { reason });
                return;
            }
            role
        }
        other => {
            let reason = format!("the first message must be Hello, got {other:?}");
            tracing::warn!("connection {conn} refused: {reason}");
            let _ = write_msg(&mut stream, &Message::Refused { reason });
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    match role {
        Role::Process(info) => {
            let writer = match stream.try_clone() {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("connection {conn}: cannot clone the socket: {e}");
                    return;
                }
            };
            if tx.send(Input::Joined { conn, info, writer }).is_err() {
                return;
            }
            let reason = loop {
                match read_msg(&mut stream) {
                    Ok(msg) => {
                        if tx.send(Input::Msg { conn, msg }).is_err() {
                            return;
                        }
                    }
                    Err(e) => break frame_error_text(&e),
                }
            };
            let _ = tx.send(Input::Left { conn, reason });
        }
        Role::Control => {
            let welcome = Message::Welcome {
                protocol_version: PROTOCOL_VERSION,
                coordinator_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            if write_msg(&mut stream, &welcome).is_err() {
                return;
            }
            loop {
                let msg = match read_msg(&mut stream) {
                    Ok(m) => m,
                    Err(_) => return,
                };
                let (reply_tx, reply_rx) = channel();
                if tx
                    .send(Input::Control {
                        msg,
                        reply: reply_tx,
                    })
                    .is_err()
                {
                    return;
                }
                let Ok(reply) = reply_rx.recv() else { return };
                if write_msg(&mut stream, &reply).is_err() {
                    return;
                }
            }
        }
    }
}
