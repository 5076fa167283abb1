//! GetContainerEvents: a subscription to [`crate::events`], each event with
//! the pod's status and its containers' statuses. A subscriber that falls
//! too far behind gets an error (RESOURCE_EXHAUSTED) and its stream ends;
//! at shutdown every stream ends with UNAVAILABLE.

use tonic::{Response, Status};

use super::Cri;
use super::container_rpc::container_status;
use super::error::status;
use super::pod::pod_sandbox_status;
use super::proto::*;
use super::runtime::Stream;
use crate::events::{Event, Type};

impl Cri {
    pub(super) fn container_events_rpc(
        &self,
    ) -> Result<Response<Stream<ContainerEventResponse>>, Status> {
        let subscriber = self.daemon.events.subscribe();
        tracing::debug!("container events subscriber");
        let stream = futures::stream::unfold(Some(subscriber), |subscriber| async move {
            let mut subscriber = subscriber?;
            match subscriber.next().await {
                Ok(event) => Some((Ok(response(&event)), Some(subscriber))),
                Err(err) => {
                    if matches!(err, crate::events::Error::Lagged(..)) {
                        tracing::warn!(error = %err, "container events subscriber dropped");
                    }
                    Some((Err(status(err)), None))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn event_type(t: Type) -> ContainerEventType {
    match t {
        Type::Created => ContainerEventType::ContainerCreatedEvent,
        Type::Started => ContainerEventType::ContainerStartedEvent,
        Type::Stopped => ContainerEventType::ContainerStoppedEvent,
        Type::Deleted => ContainerEventType::ContainerDeletedEvent,
    }
}

fn response(e: &Event) -> ContainerEventResponse {
    ContainerEventResponse {
        container_id: e.id.clone(),
        container_event_type: event_type(e.kind) as i32,
        created_at: e.at,
        pod_sandbox_status: e.pod.as_ref().map(pod_sandbox_status),
        containers_statuses: e.containers.iter().map(container_status).collect(),
    }
}
