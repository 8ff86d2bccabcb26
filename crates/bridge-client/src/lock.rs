//! A toy BLE smart lock, for demos, tests and load: its byte protocol and a simulated set of
//! locks that answers `ble_write` frames as real ones would.
//!
//! # The smart-lock byte protocol
//!
//! Every command is one opcode byte; every reply starts with the opcode with its high bit set.
//!
//! | command | bytes | reply |
//! |---|---|---|
//! | lock   | `01` | `81 SS` |
//! | unlock | `02` | `82 SS` |
//! | status | `03` | `83 SS BB` |
//!
//! `SS` is the state after the command (`01` locked, `00` unlocked) and `BB` the battery
//! level in percent. Anything else is answered with the error `unsupported_command`; a write
//! to a service or characteristic a lock does not have, with `characteristic_not_found`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bridge_protocol::{BleWrite, DeviceConfig, DeviceErrorCode, DeviceId, HexPayload, Stage};

use crate::{BleHandler, Progress};

/// Opcode: lock.
pub const LOCK: u8 = 0x01;
/// Opcode: unlock.
pub const UNLOCK: u8 = 0x02;
/// Opcode: status.
pub const STATUS: u8 = 0x03;

/// One lock's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockState {
    /// Whether the bolt is thrown.
    pub locked: bool,
    /// Battery level in percent.
    pub battery: u8,
}

impl Default for LockState {
    fn default() -> Self {
        Self {
            locked: true,
            battery: 100,
        }
    }
}

impl LockState {
    /// Applies one command and returns the reply (the byte protocol above).
    pub fn apply(&mut self, command: &[u8]) -> Result<Vec<u8>, &'static str> {
        let state = |locked: bool| u8::from(locked);
        match command {
            [LOCK] => {
                self.locked = true;
                Ok(vec![0x80 | LOCK, state(self.locked)])
            }
            [UNLOCK] => {
                self.locked = false;
                Ok(vec![0x80 | UNLOCK, state(self.locked)])
            }
            [STATUS] => Ok(vec![0x80 | STATUS, state(self.locked), self.battery]),
            _ => Err("unsupported_command"),
        }
    }
}

/// Behaviour knobs of [`SimulatedLocks`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LockBehaviour {
    /// Time a BLE round trip takes (default 0).
    pub latency: Duration,
    /// Probability in `[0, 1]` that a write fails with `gatt_write_failed` (default 0).
    pub failure_rate: f64,
    /// `Some(stage)`: every write gets as far as `stage` and no further, and is never
    /// answered (default `None`: writes complete). `Sent`: the phone never acknowledges
    /// (no `ble_progress` at all); `Received`: the BLE link never comes up; `Connected`:
    /// the GATT write never completes; `Written`: the lock takes the write and never
    /// answers. The server's timeout then says which (`stage`, PROTOCOL.md 4.1).
    pub stuck_after: Option<Stage>,
}

impl Default for LockBehaviour {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            failure_rate: 0.0,
            stuck_after: None,
        }
    }
}

/// A set of simulated smart locks behind one phone.
#[derive(Debug)]
pub struct SimulatedLocks {
    /// Ordered rather than hashed: a phone holds a handful of locks, and a few comparisons
    /// of short ids cost less than hashing the id with SipHash on every write.
    locks: Mutex<BTreeMap<DeviceId, LockState>>,
    config: DeviceConfig,
    behaviour: LockBehaviour,
}

impl SimulatedLocks {
    /// Locks with the given ids, all locked and fully charged, using the built-in
    /// `smart-lock` UUIDs.
    pub fn new(ids: impl IntoIterator<Item = DeviceId>, behaviour: LockBehaviour) -> Self {
        Self {
            locks: Mutex::new(
                ids.into_iter()
                    .map(|id| (id, LockState::default()))
                    .collect(),
            ),
            config: DeviceConfig::SMART_LOCK,
            behaviour,
        }
    }

    /// A lock's state now.
    pub fn state(&self, id: &DeviceId) -> Option<LockState> {
        self.locks.lock().ok()?.get(id).copied()
    }

    /// The steps of [`BleHandler::write_with_progress`] after `received`, when none of them
    /// waits (no latency, never stuck), in the same order.
    fn write_at_once(
        &self,
        request: &BleWrite,
        progress: &Progress,
    ) -> Result<HexPayload, DeviceErrorCode> {
        let reply = {
            let mut locks = self.locked()?;
            // A lock this phone does not have: no link comes up.
            let lock = Self::lock_of(&mut locks, &request.device_id)?;
            progress.report(Stage::Connected);
            self.attempt(request)?;
            // The write lands: the lock applies it (and its reply, an error included, is
            // what the phone then waits for).
            lock.apply(request.payload.as_bytes())
        };
        progress.report(Stage::Written);
        reply.map(HexPayload::from_bytes).map_err(Self::error)
    }

    /// The write's attempt once the link is up: it fails at the behaviour's failure rate,
    /// and on characteristics other than the device type's.
    fn attempt(&self, request: &BleWrite) -> Result<(), DeviceErrorCode> {
        if self.behaviour.failure_rate > 0.0 && fastrand::f64() < self.behaviour.failure_rate {
            return Err(Self::error("gatt_write_failed"));
        }
        if request.service_uuid != self.config.service_uuid
            || request.write_uuid != self.config.write_uuid
            || request.listen_uuid != self.config.listen_uuid
        {
            return Err(Self::error("characteristic_not_found"));
        }
        Ok(())
    }

    /// The locks, held (a poisoned mutex fails the write as a failed GATT write).
    fn locked(&self) -> Result<MutexGuard<'_, BTreeMap<DeviceId, LockState>>, DeviceErrorCode> {
        self.locks
            .lock()
            .map_err(|_| Self::error("gatt_write_failed"))
    }

    /// The lock `id` among `locks`, or `device_not_found`.
    fn lock_of<'a>(
        locks: &'a mut BTreeMap<DeviceId, LockState>,
        id: &DeviceId,
    ) -> Result<&'a mut LockState, DeviceErrorCode> {
        locks
            .get_mut(id)
            .ok_or_else(|| Self::error("device_not_found"))
    }

    fn error(code: &str) -> DeviceErrorCode {
        // The codes used here are all valid names.
        DeviceErrorCode::new(code).unwrap_or_else(|_| unreachable!("valid error code"))
    }
}

#[async_trait]
impl BleHandler for SimulatedLocks {
    async fn write(&self, request: &BleWrite) -> Result<HexPayload, DeviceErrorCode> {
        self.write_with_progress(request, &Progress::detached(request))
            .await
    }

    /// Reports `received`, `connected` (the simulated link comes up for every write to a
    /// lock it has) and `written` (after the simulated latency, once the lock applied the
    /// write), stopping for good after [`LockBehaviour::stuck_after`] if set.
    async fn write_with_progress(
        &self,
        request: &BleWrite,
        progress: &Progress,
    ) -> Result<HexPayload, DeviceErrorCode> {
        let stuck_after = self.behaviour.stuck_after;
        // Reports `stage`, unless the write is stuck before it: then it never ends (the
        // task is parked until the simulator exits; the server times the command out).
        let reach = |stage: Stage| async move {
            if stuck_after.is_some_and(|last| stage > last) {
                std::future::pending::<()>().await;
            }
            progress.report(stage);
        };
        reach(Stage::Received).await;
        if stuck_after.is_none() && self.behaviour.latency.is_zero() {
            // Nothing to wait for: the same steps under one hold of the lock and one
            // lookup, since this is the simulator's every write under load.
            return self.write_at_once(request, progress);
        }
        // A lock this phone does not have: no link comes up.
        let known = self.locked()?.contains_key(&request.device_id);
        if !known {
            return Err(Self::error("device_not_found"));
        }
        reach(Stage::Connected).await;
        if !self.behaviour.latency.is_zero() {
            tokio::time::sleep(self.behaviour.latency).await;
        }
        self.attempt(request)?;
        // The write lands: the lock applies it (and its reply, an error included, is what
        // the phone then waits for).
        let reply = {
            let mut locks = self.locked()?;
            Self::lock_of(&mut locks, &request.device_id)?.apply(request.payload.as_bytes())
        };
        reach(Stage::Written).await;
        if stuck_after.is_some() {
            // Stuck after `written`: the lock took the write and never answers.
            std::future::pending::<()>().await;
        }
        reply.map(HexPayload::from_bytes).map_err(Self::error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_protocol_locks_unlocks_and_reports() {
        let mut lock = LockState::default();
        assert_eq!(lock.apply(&[UNLOCK]), Ok(vec![0x82, 0x00]));
        assert_eq!(lock.apply(&[STATUS]), Ok(vec![0x83, 0x00, 100]));
        assert_eq!(lock.apply(&[LOCK]), Ok(vec![0x81, 0x01]));
        assert_eq!(lock.apply(&[0x7f]), Err("unsupported_command"));
        assert_eq!(lock.apply(&[]), Err("unsupported_command"));
        assert_eq!(lock.apply(&[LOCK, LOCK]), Err("unsupported_command"));
    }

    #[tokio::test]
    async fn the_simulated_locks_answer_writes_with_the_byte_protocol() {
        let id = DeviceId::new("lock-1").unwrap();
        let locks = SimulatedLocks::new([id.clone()], LockBehaviour::default());
        let config = DeviceConfig::SMART_LOCK;
        let write = |payload: &[u8]| BleWrite {
            request_id: bridge_protocol::RequestId::new("r-1").unwrap(),
            device_id: id.clone(),
            device_type: bridge_protocol::DeviceType::new("smart-lock").unwrap(),
            service_uuid: config.service_uuid,
            write_uuid: config.write_uuid,
            listen_uuid: config.listen_uuid,
            payload: HexPayload::from_bytes(payload.to_vec()),
            timeout_ms: bridge_protocol::TimeoutMs::DEFAULT,
        };
        let answer = |payload: &'static [u8]| {
            let request = write(payload);
            let locks = &locks;
            async move { locks.write(&request).await.map(|p| p.as_bytes().to_vec()) }
        };
        assert_eq!(answer(&[UNLOCK]).await, Ok(vec![0x82, 0x00]));
        assert_eq!(answer(&[STATUS]).await, Ok(vec![0x83, 0x00, 100]));
        assert_eq!(answer(&[LOCK]).await, Ok(vec![0x81, 0x01]));
        assert_eq!(
            answer(&[0x7f]).await,
            Err(DeviceErrorCode::new("unsupported_command").unwrap())
        );
        assert_eq!(
            locks.state(&id),
            Some(LockState {
                locked: true,
                battery: 100
            })
        );
    }

    /// What one write did: its answer, the stages it reported, and the lock's state after.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        answer: Option<Result<Vec<u8>, String>>,
        stages: Vec<Stage>,
        state: Option<LockState>,
    }

    /// Writes `payload` to `lock-1` of locks with `behaviour` holding only `holds`, through
    /// the lock's write characteristic or, if `wrong_uuid`, another one. A write still running once the simulated time
    /// has gone far past its latency has no answer.
    async fn one_write(
        behaviour: LockBehaviour,
        holds: &str,
        wrong_uuid: bool,
        payload: u8,
    ) -> Outcome {
        let holds = DeviceId::new(holds).unwrap();
        let locks = SimulatedLocks::new([holds], behaviour);
        let config = DeviceConfig::SMART_LOCK;
        let request = BleWrite {
            request_id: bridge_protocol::RequestId::new("r-1").unwrap(),
            device_id: DeviceId::new("lock-1").unwrap(),
            device_type: bridge_protocol::DeviceType::new("smart-lock").unwrap(),
            service_uuid: config.service_uuid,
            write_uuid: if wrong_uuid {
                config.listen_uuid
            } else {
                config.write_uuid
            },
            listen_uuid: config.listen_uuid,
            payload: HexPayload::from_bytes(vec![payload]),
            timeout_ms: bridge_protocol::TimeoutMs::DEFAULT,
        };
        let (frames, mut reported) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress::to_channel(&request, frames);
        let answer = tokio::time::timeout(
            Duration::from_hours(1),
            locks.write_with_progress(&request, &progress),
        )
        .await
        .ok()
        .map(|answer| {
            answer
                .map(|payload| payload.as_bytes().to_vec())
                .map_err(|code| code.as_str().to_owned())
        });
        let mut stages = Vec::new();
        while let Ok(frame) = reported.try_recv() {
            match frame {
                bridge_protocol::BridgeToServer::BleProgress(p) => stages.push(p.stage),
                other => panic!("not a progress frame: {other:?}"),
            }
        }
        Outcome {
            answer,
            stages,
            state: locks.state(&DeviceId::new("lock-1").unwrap()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulated_locks_take_the_same_steps_with_and_without_latency() {
        use Stage::{Connected, Received, Written};
        let (write_uuid, other_uuid) = (false, true);
        let locked = Some(LockState::default());
        let unlocked = Some(LockState {
            locked: false,
            battery: 100,
        });
        let err = |code: &str| Some(Err(code.to_owned()));
        for latency in [Duration::ZERO, Duration::from_millis(80)] {
            let behaviour = |failure_rate: f64| LockBehaviour {
                latency,
                failure_rate,
                stuck_after: None,
            };
            let cases = [
                // A write that lands: every stage, the reply, the new state.
                (
                    one_write(behaviour(0.0), "lock-1", write_uuid, UNLOCK).await,
                    Some(Ok(vec![0x82, 0x00])),
                    vec![Received, Connected, Written],
                    unlocked,
                ),
                // A command the lock refuses: it took the write, and answers an error.
                (
                    one_write(behaviour(0.0), "lock-1", write_uuid, 0x7f).await,
                    err("unsupported_command"),
                    vec![Received, Connected, Written],
                    locked,
                ),
                // A lock the phone does not have: no link comes up.
                (
                    one_write(behaviour(0.0), "lock-9", write_uuid, UNLOCK).await,
                    err("device_not_found"),
                    vec![Received],
                    None,
                ),
                // A characteristic the lock does not have: linked, nothing written.
                (
                    one_write(behaviour(0.0), "lock-1", other_uuid, UNLOCK).await,
                    err("characteristic_not_found"),
                    vec![Received, Connected],
                    locked,
                ),
                // A failed GATT write, checked before the characteristic.
                (
                    one_write(behaviour(1.0), "lock-1", other_uuid, UNLOCK).await,
                    err("gatt_write_failed"),
                    vec![Received, Connected],
                    locked,
                ),
            ];
            for (outcome, answer, stages, state) in cases {
                assert_eq!(
                    outcome,
                    Outcome {
                        answer,
                        stages,
                        state
                    },
                    "latency {latency:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulated_latency_and_a_stuck_lock_are_honoured() {
        let start = tokio::time::Instant::now();
        let slow = LockBehaviour {
            latency: Duration::from_millis(80),
            ..LockBehaviour::default()
        };
        let write_uuid = false;
        let outcome = one_write(slow, "lock-1", write_uuid, UNLOCK).await;
        assert_eq!(outcome.answer, Some(Ok(vec![0x82, 0x00])));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(80),
            "the simulated clock went on by the latency"
        );
        let stuck = LockBehaviour {
            stuck_after: Some(Stage::Written),
            ..LockBehaviour::default()
        };
        let outcome = one_write(stuck, "lock-1", write_uuid, UNLOCK).await;
        assert_eq!(outcome.answer, None, "a stuck lock never answers");
        assert_eq!(
            outcome.stages,
            [Stage::Received, Stage::Connected, Stage::Written]
        );
        assert_eq!(
            outcome.state.map(|s| s.locked),
            Some(false),
            "it took the write"
        );
    }
}
