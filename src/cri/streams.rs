//! The Stream* list RPCs (StreamPodSandboxes, StreamContainers,
//! StreamContainerStats, StreamPodSandboxStats, StreamPodSandboxMetrics):
//! the answer of their List counterpart, sent in batches of at most
//! [`BATCH`] items so that no message nears the gRPC size limit however
//! many pods a node runs. An empty list is a stream with no message.

use tonic::{Response, Status};

use super::Cri;
use super::proto::*;
use super::runtime::Stream;

/// Items per streamed message.
pub const BATCH: usize = 100;

type Reply<T> = Result<Response<Stream<T>>, Status>;

/// `items` as a stream of messages of at most [`BATCH`] items each.
pub fn batches<T, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> Stream<R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let mut messages = Vec::with_capacity(items.len().div_ceil(BATCH));
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(BATCH).collect();
        if chunk.is_empty() {
            break;
        }
        messages.push(Ok(wrap(chunk)));
    }
    Box::pin(futures::stream::iter(messages))
}

impl Cri {
    pub(super) fn stream_pods_rpc(
        &self,
        req: StreamPodSandboxesRequest,
    ) -> Reply<StreamPodSandboxesResponse> {
        let items = self
            .list_pods(ListPodSandboxRequest { filter: req.filter })?
            .into_inner()
            .items;
        Ok(Response::new(batches(items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    pub(super) fn stream_containers_rpc(
        &self,
        req: StreamContainersRequest,
    ) -> Reply<StreamContainersResponse> {
        let items = self
            .list_containers_rpc(ListContainersRequest { filter: req.filter })?
            .into_inner()
            .containers;
        Ok(Response::new(batches(items, |containers| {
            StreamContainersResponse { containers }
        })))
    }

    pub(super) async fn stream_container_stats_rpc(
        &self,
        req: StreamContainerStatsRequest,
    ) -> Reply<StreamContainerStatsResponse> {
        let items = self.container_stats_filtered(req.filter).await?;
        Ok(Response::new(batches(items, |container_stats| {
            StreamContainerStatsResponse { container_stats }
        })))
    }

    pub(super) async fn stream_pod_stats_rpc(
        &self,
        req: StreamPodSandboxStatsRequest,
    ) -> Reply<StreamPodSandboxStatsResponse> {
        let items = self.pod_stats_filtered(req.filter).await?;
        Ok(Response::new(batches(items, |pod_sandbox_stats| {
            StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    pub(super) async fn stream_pod_metrics_rpc(&self) -> Reply<StreamPodSandboxMetricsResponse> {
        let items = self.pod_metrics().await?;
        Ok(Response::new(batches(items, |pod_sandbox_metrics| {
            StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn batches_are_bounded_and_complete() {
        let sizes = |n: usize| async move {
            let s = batches((0..n).collect::<Vec<_>>(), |v| v);
            s.map(|m| m.unwrap()).collect::<Vec<Vec<usize>>>().await
        };
        assert!(sizes(0).await.is_empty());
        let two = sizes(BATCH + 1).await;
        assert_eq!(two.iter().map(Vec::len).collect::<Vec<_>>(), [BATCH, 1]);
        assert_eq!(two.concat(), (0..BATCH + 1).collect::<Vec<_>>());
    }
}
