//! Re-creating the SysV IPC objects of a generation (see runtime/src/sysv.rs for the dump
//! side and the id translation).
//!
//! Each object (by kind and virtual id) is created once, with its key and mode, and filled:
//! semaphore values, messages in order with their types, the bytes of a segment nobody
//! mapped (a mapped segment is filled by the restored processes from their mappings).
//! The objects of the checkpointed incarnation stay in the kernel after it was killed;
//! they are removed here (and their keys so freed) when no process of that incarnation is
//! alive any more. While one is, restoring an object with a key in use is refused.

use anyhow::{bail, Context};
use ckpt_image::{ProcessMeta, SysvObject};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Whether process `pid` is alive and runs ckpt's runtime (a process of a job).
fn runs_runtime(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| {
            m.lines().any(|l| {
                let name = l.rsplit('/').next().unwrap_or("");
                name.starts_with("libckpt") && name.ends_with(".so")
            })
        })
        .unwrap_or(false)
}

fn remove(kind: &str, id: i32) {
    // SAFETY: IPC_RMID of an object id; harmless when it does not exist.
    unsafe {
        match kind {
            "sem" => libc::semctl(id, 0, libc::IPC_RMID),
            "msg" => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            _ => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
        };
    }
}

/// The key of object `id` of `kind`, if it exists.
fn key_of(kind: &str, id: i32) -> Option<i32> {
    // SAFETY: IPC_STAT into zeroed plain-data buffers.
    unsafe {
        match kind {
            "sem" => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                (libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) == 0)
                    .then_some(ds.sem_perm.__key)
            }
            "msg" => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                (libc::msgctl(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds.msg_perm.__key)
            }
            _ => {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                (libc::shmctl(id, libc::IPC_STAT, &mut ds) == 0).then_some(ds.shm_perm.__key)
            }
        }
    }
}

fn get(key: i32, flags: i32, o: &SysvObject) -> i32 {
    // SAFETY: the *get calls with integer arguments.
    unsafe {
        match o {
            SysvObject::Sem { values, .. } => libc::semget(key, values.len() as i32, flags),
            SysvObject::Msg { .. } => libc::msgget(key, flags),
            SysvObject::Shm { size, .. } => libc::shmget(key, *size as usize, flags),
        }
    }
}

/// Creates and fills every SysV object of the images; returns (kind, vid, new id).
pub fn recreate(metas: &[&ProcessMeta]) -> anyhow::Result<Vec<(String, i32, i32)>> {
    let v: Vec<(i32, &[SysvObject])> = metas.iter().map(|m| (m.real_pid, &m.sysv[..])).collect();
    recreate_objects(&v)
}

/// `recreate` for (real pid at checkpoint, objects) of each process.
fn recreate_objects(procs: &[(i32, &[SysvObject])]) -> anyhow::Result<Vec<(String, i32, i32)>> {
    let mut objs: Vec<&SysvObject> = Vec::new();
    for (_, list) in procs {
        for o in list.iter() {
            match objs
                .iter_mut()
                .find(|x| x.kind() == o.kind() && x.vid() == o.vid())
            {
                // A segment's bytes: from whichever process did not map it.
                Some(x) => {
                    if matches!(o, SysvObject::Shm { data: Some(_), .. }) {
                        *x = o;
                    }
                }
                None => objs.push(o),
            }
        }
    }
    if objs.is_empty() {
        return Ok(Vec::new());
    }
    let old_alive = procs.iter().any(|(pid, _)| runs_runtime(*pid));
    let mut out = Vec::new();
    for o in objs {
        let (kind, vid) = (o.kind(), o.vid());
        let (real, key, mode) = match o {
            SysvObject::Sem {
                real, key, mode, ..
            }
            | SysvObject::Msg {
                real, key, mode, ..
            }
            | SysvObject::Shm {
                real, key, mode, ..
            } => (*real, *key, *mode),
        };
        // The checkpointed incarnation's own object, left behind when it was killed.
        if !old_alive && key_of(kind, real) == Some(key) {
            remove(kind, real);
        }
        if key != libc::IPC_PRIVATE {
            let existing = get(key, 0, o);
            if existing >= 0 {
                if old_alive {
                    bail!(
                        "SysV {kind} key {key:#x} (the program's id {vid}) is in use (id {existing}) and the checkpointed job still runs; end it first"
                    );
                }
                remove(kind, existing);
            }
        }
        let id = get(key, libc::IPC_CREAT | libc::IPC_EXCL | mode as i32, o);
        if id < 0 {
            bail!(
                "creating SysV {kind} key {key:#x} (the program's id {vid}): {}",
                err()
            );
        }
        fill(o, id)
            .with_context(|| format!("filling SysV {kind} {vid} (new id {id})"))
            .inspect_err(|_| remove(kind, id))?;
        out.push((kind.to_string(), vid, id));
    }
    Ok(out)
}

fn fill(o: &SysvObject, id: i32) -> anyhow::Result<()> {
    // SAFETY: the SysV calls below get buffers of the sizes they are told.
    unsafe {
        match o {
            SysvObject::Sem { values, .. } => {
                if libc::semctl(id, 0, libc::SETALL, values.as_ptr()) != 0 {
                    bail!("SETALL: {}", err());
                }
            }
            SysvObject::Msg {
                qbytes, messages, ..
            } => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                if libc::msgctl(id, libc::IPC_STAT, &mut ds) == 0 && ds.msg_qbytes as u64 != *qbytes
                {
                    ds.msg_qbytes = *qbytes as _;
                    // Raising it above the system's limit needs privilege: then the
                    // messages must fit in the default size (checked by msgsnd below).
                    libc::msgctl(id, libc::IPC_SET, &mut ds);
                }
                for (i, m) in messages.iter().enumerate() {
                    let text = unhex(&m.data);
                    let mut buf = Vec::with_capacity(8 + text.len());
                    buf.extend_from_slice(&m.mtype.to_ne_bytes());
                    buf.extend_from_slice(&text);
                    if libc::msgsnd(
                        id,
                        buf.as_ptr() as *const libc::c_void,
                        text.len(),
                        libc::IPC_NOWAIT,
                    ) != 0
                    {
                        bail!("queueing message {i} of {}: {}", messages.len(), err());
                    }
                }
            }
            SysvObject::Shm { data, size, .. } => {
                if let Some(d) = data {
                    let bytes = unhex(d);
                    if bytes.len() as u64 != *size {
                        bail!(
                            "the image holds {} bytes of a {size}-byte segment",
                            bytes.len()
                        );
                    }
                    let p = libc::shmat(id, std::ptr::null(), 0);
                    if p as isize == -1 {
                        bail!("shmat: {}", err());
                    }
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), p as *mut u8, bytes.len());
                    libc::shmdt(p);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckpt_image::SysvMessage;

    #[test]
    fn objects_are_created_and_filled() {
        let objs = [
            SysvObject::Sem {
                vid: 11,
                real: -1,
                key: 0,
                mode: 0o600,
                values: vec![1, 0, 32767],
            },
            SysvObject::Msg {
                vid: 12,
                real: -1,
                key: 0,
                mode: 0o600,
                qbytes: 16384,
                messages: vec![
                    SysvMessage {
                        mtype: 3,
                        data: "6869".into(),
                    },
                    SysvMessage {
                        mtype: 1,
                        data: "".into(),
                    },
                ],
            },
            SysvObject::Shm {
                vid: 13,
                real: -1,
                key: 0,
                mode: 0o600,
                size: 3,
                data: Some("010203".into()),
            },
        ];
        let ids = recreate_objects(&[(-1, &objs[..])]).unwrap();
        assert_eq!(ids.len(), 3);
        let id = |k: &str| ids.iter().find(|x| x.0 == k).unwrap().2;
        // SAFETY: reading back our new test objects, then removing them.
        unsafe {
            let mut v = [0u16; 3];
            assert_eq!(libc::semctl(id("sem"), 0, libc::GETALL, v.as_mut_ptr()), 0);
            assert_eq!(v, [1, 0, 32767]);
            let mut buf = [0u8; 64];
            let n = libc::msgrcv(id("msg"), buf.as_mut_ptr() as _, 56, 0, libc::IPC_NOWAIT);
            assert_eq!(n, 2);
            assert_eq!(i64::from_ne_bytes(buf[..8].try_into().unwrap()), 3);
            assert_eq!(&buf[8..10], b"hi");
            let n = libc::msgrcv(id("msg"), buf.as_mut_ptr() as _, 56, 0, libc::IPC_NOWAIT);
            assert_eq!(n, 0);
            assert_eq!(i64::from_ne_bytes(buf[..8].try_into().unwrap()), 1);
            let p = libc::shmat(id("shm"), std::ptr::null(), libc::SHM_RDONLY) as *const u8;
            assert_eq!(std::slice::from_raw_parts(p, 3), &[1, 2, 3]);
            libc::shmdt(p as _);
        }
        for (k, _, i) in &ids {
            remove(k, *i);
        }
    }
}
