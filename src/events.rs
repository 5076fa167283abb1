//! Container events: what CRI's GetContainerEvents streams to kubelet's
//! evented PLEG and `crictl events`.
//!
//! An event is emitted right after the state change it reports is written
//! to the store, by the code that wrote it: a container's CREATED when its
//! CreateContainer caller claims it (it becomes visible), STARTED when
//! StartContainer records RUNNING, STOPPED when its exit is recorded (the
//! monitor reported it, or StartContainer failed), DELETED when
//! RemoveContainer deleted the record. A pod sandbox has the same four,
//! with the pod's id as the container id (what kubelet's evented PLEG and
//! containerd's CRI plugin expect): CREATED and STARTED when RunPodSandbox's
//! caller claims it, STOPPED when it is recorded NOTREADY (StopPodSandbox,
//! a lost monitor, the start-up reconcile), DELETED when RemovePodSandbox
//! deleted it. A container's exit is written and then announced by its
//! exit watcher, which holds no lock: a stop or removal that reads the
//! written exit waits for the watcher's end, so the events it causes (a
//! pod's STOPPED, the container's DELETED) come after that STOPPED.
//! Records nobody ever saw (intents, unclaimed creations) emit
//! nothing. Nothing is replayed: a restart of crius sends no event for a
//! state that did not change.
//!
//! Each event carries the pod's status and its containers' statuses as
//! recorded right after the change (a removed pod: its last record), as
//! kubelet builds the pod's status from them.
//!
//! Subscribers share one bounded broadcast buffer: emitting never waits
//! for a subscriber. One that falls more than the buffer behind is dropped
//! with an error at its next read (it must subscribe again and relist).

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::container::record::{CONTAINERS, ContainerRecord};
use crate::pod::record::{PODS, PodRecord};
use crate::record::Record;
use crate::store::Store;

/// CRI's ContainerEventType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One state change, with the pod's state right after it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The container's id, or the pod's for a pod event.
    pub id: String,
    pub kind: Type,
    /// Nanoseconds since the Unix epoch.
    pub at: i64,
    /// The pod (effective state); `None` only when its record is gone.
    pub pod: Option<PodRecord>,
    /// The pod's visible containers (effective states).
    pub containers: Vec<ContainerRecord>,
}

/// Why a subscriber's stream ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this GetContainerEvents subscriber fell {0} events behind (more than the buffer of {1}) and was dropped: subscribe again and relist"
    )]
    Lagged(u64, usize),
    #[error("crius is shutting down")]
    Closed,
}

impl crate::error::Classify for Error {
    fn kind(&self) -> crate::error::Kind {
        match self {
            Error::Lagged(..) => crate::error::Kind::ResourceExhausted,
            Error::Closed => crate::error::Kind::Unavailable,
        }
    }
}

/// The event hub: a field of [`crate::daemon::Daemon`], shared by the pod
/// and container services.
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    store: Arc<Store>,
    buffer: usize,
    /// Set at shutdown: every subscription ends (a stream that never ends
    /// would hold the server's graceful shutdown for its whole grace).
    closed: watch::Sender<bool>,
}

/// A subscription: [`Subscriber::next`] yields events in emission order.
pub struct Subscriber {
    rx: broadcast::Receiver<Arc<Event>>,
    buffer: usize,
    closed: watch::Receiver<bool>,
}

impl Subscriber {
    /// The next event; an error ends the subscription.
    pub async fn next(&mut self) -> Result<Arc<Event>, Error> {
        tokio::select! {
            biased;
            r = self.rx.recv() => match r {
                Ok(e) => Ok(e),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Error::Lagged(n, self.buffer)),
                Err(broadcast::error::RecvError::Closed) => Err(Error::Closed),
            },
            _ = self.closed.wait_for(|closed| *closed) => Err(Error::Closed),
        }
    }
}

impl Events {
    /// A hub whose subscribers may fall `buffer` events behind.
    pub fn new(store: Arc<Store>, buffer: usize) -> Events {
        let buffer = buffer.max(1);
        let (tx, _) = broadcast::channel(buffer);
        Events {
            tx,
            store,
            buffer,
            closed: watch::Sender::new(false),
        }
    }

    pub fn subscribe(&self) -> Subscriber {
        Subscriber {
            rx: self.tx.subscribe(),
            buffer: self.buffer,
            closed: self.closed.subscribe(),
        }
    }

    /// Ends every subscription, present and future (shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// A container's state change, just recorded.
    pub fn container(&self, kind: Type, rec: &ContainerRecord) {
        self.emit(rec.id.clone(), kind, &rec.pod_id, None);
    }

    /// A pod's state change, just recorded; `last` is the record of a pod
    /// just deleted.
    pub fn pod(&self, kind: Type, rec: &PodRecord) {
        let last = (kind == Type::Deleted).then(|| rec.clone());
        self.emit(rec.id.clone(), kind, &rec.id, last);
    }

    fn emit(&self, id: String, kind: Type, pod_id: &str, last: Option<PodRecord>) {
        // No subscriber: no snapshot to read.
        if self.tx.receiver_count() == 0 {
            return;
        }
        let at = crate::pod::now_ns();
        let (pod, containers) = self.snapshot(pod_id, last);
        tracing::debug!(%id, ?kind, "container event");
        let _ = self.tx.send(Arc::new(Event {
            id,
            kind,
            at,
            pod,
            containers,
        }));
    }

    /// The pod and its visible containers as the store holds them now.
    fn snapshot(
        &self,
        pod_id: &str,
        last: Option<PodRecord>,
    ) -> (Option<PodRecord>, Vec<ContainerRecord>) {
        let pod = match self.store.get(PODS, pod_id) {
            Ok(Some(mut p)) => {
                p.state = p.effective_state();
                Some(p)
            }
            Ok(None) => last,
            Err(e) => {
                tracing::warn!(pod_id, error = %crate::error::chain(&e), "read the pod for an event");
                last
            }
        };
        let containers = match self.store.list(CONTAINERS) {
            Ok(all) => all
                .into_iter()
                .map(|(_, c)| c)
                .filter(|c| c.pod_id == pod_id && c.visible())
                .map(ContainerRecord::effective)
                .collect(),
            Err(e) => {
                tracing::warn!(pod_id, error = %crate::error::chain(&e), "read the containers for an event");
                Vec::new()
            }
        };
        (pod, containers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize) -> (tempfile::TempDir, Events) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&tmp.path().join("db")).unwrap());
        (tmp, Events::new(store, buffer))
    }

    fn pod(id: &str) -> PodRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "spec": crate::pod::PodSpec::default(), "created_at": 1,
            "state": "not_ready", "reason": "", "claimed": true, "finished_at": 1,
            "dir": crate::monitor::PodDir::new(std::path::Path::new("/nonexistent"), id),
            "netns": null, "ipcns": null, "utsns": null, "shm": null, "cgroup": null,
            "cgroup_created": false, "init_cgroup": null, "monitor": null, "init": null,
            "network": null, "boot_id": "",
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let (_tmp, events) = hub(16);
        let (mut a, mut b) = (events.subscribe(), events.subscribe());
        let p = pod("p1");
        events.pod(Type::Created, &p);
        events.pod(Type::Started, &p);
        events.pod(Type::Deleted, &p);
        for s in [&mut a, &mut b] {
            let kinds: Vec<Type> = [
                s.next().await.unwrap(),
                s.next().await.unwrap(),
                s.next().await.unwrap(),
            ]
            .iter()
            .map(|e| e.kind)
            .collect();
            assert_eq!(kinds, [Type::Created, Type::Started, Type::Deleted]);
        }
    }

    #[tokio::test]
    async fn a_deleted_pod_carries_its_last_record() {
        let (_tmp, events) = hub(4);
        let mut s = events.subscribe();
        events.pod(Type::Deleted, &pod("gone"));
        let e = s.next().await.unwrap();
        assert_eq!(e.id, "gone");
        assert_eq!(e.pod.as_ref().unwrap().id, "gone", "the last record");
        assert!(e.containers.is_empty());
        // Any other event of a pod the store does not hold: no status.
        events.pod(Type::Stopped, &pod("other"));
        assert!(s.next().await.unwrap().pod.is_none());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_dropped_and_never_blocks_emitters() {
        let (_tmp, events) = hub(4);
        let mut slow = events.subscribe();
        let mut fast = events.subscribe();
        let p = pod("p");
        for _ in 0..10 {
            // Never waits, whoever reads.
            events.pod(Type::Stopped, &p);
            assert_eq!(fast.next().await.unwrap().kind, Type::Stopped);
        }
        let err = slow.next().await.unwrap_err();
        assert!(matches!(err, Error::Lagged(6, 4)), "{err}");
        assert!(err.to_string().contains("subscribe again"));
    }

    #[tokio::test]
    async fn closing_ends_every_subscription() {
        let (_tmp, events) = hub(4);
        let mut s = events.subscribe();
        let waiting = tokio::spawn(async move { s.next().await });
        tokio::task::yield_now().await;
        events.close();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("ended at once")
            .unwrap();
        assert!(matches!(r, Err(Error::Closed)));
        assert!(matches!(
            events.subscribe().next().await,
            Err(Error::Closed)
        ));
    }

    #[tokio::test]
    async fn without_subscribers_nothing_is_read_or_kept() {
        let (_tmp, events) = hub(4);
        events.pod(Type::Created, &pod("early"));
        let mut late = events.subscribe();
        events.pod(Type::Started, &pod("later"));
        let e = late.next().await.unwrap();
        assert_eq!(
            (e.id.as_str(), e.kind),
            ("later", Type::Started),
            "no replay"
        );
    }
}
