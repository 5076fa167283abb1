//! The RuntimeService: one thin method per RPC that hands the request to the
//! module implementing it. Only the checkpoint RPCs answer UNIMPLEMENTED
//! (see [`checkpoint_unimplemented`] for why).

use tonic::{Request, Response, Status};

use super::Cri;
use super::error::checkpoint_unimplemented;
use super::proto::runtime_service_server::RuntimeService;
use super::proto::*;

type Reply<T> = Result<Response<T>, Status>;
pub type Stream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(&self, req: Request<VersionRequest>) -> Reply<VersionResponse> {
        self.version_info(req.into_inner())
    }
    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusResponse> {
        self.runtime_status(req.into_inner())
    }
    async fn runtime_config(
        &self,
        _req: Request<RuntimeConfigRequest>,
    ) -> Reply<RuntimeConfigResponse> {
        self.runtime_config_info()
    }
    async fn update_runtime_config(
        &self,
        req: Request<UpdateRuntimeConfigRequest>,
    ) -> Reply<UpdateRuntimeConfigResponse> {
        self.set_runtime_config(req.into_inner())
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        self.run_pod(req.into_inner()).await
    }
    async fn stop_pod_sandbox(
        &self,
        req: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        self.stop_pod(req.into_inner()).await
    }
    async fn remove_pod_sandbox(
        &self,
        req: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        self.remove_pod(req.into_inner()).await
    }
    async fn pod_sandbox_status(
        &self,
        req: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        self.pod_status(req.into_inner())
    }
    async fn list_pod_sandbox(
        &self,
        req: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        self.list_pods(req.into_inner())
    }
    type StreamPodSandboxesStream = Stream<StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        req: Request<StreamPodSandboxesRequest>,
    ) -> Reply<Self::StreamPodSandboxesStream> {
        self.stream_pods_rpc(req.into_inner())
    }
    async fn update_pod_sandbox_resources(
        &self,
        req: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Reply<UpdatePodSandboxResourcesResponse> {
        self.update_pod_resources(req.into_inner()).await
    }

    async fn create_container(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        self.create_container_rpc(req.into_inner()).await
    }
    async fn start_container(
        &self,
        req: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        self.start_container_rpc(req.into_inner()).await
    }
    async fn stop_container(
        &self,
        req: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        self.stop_container_rpc(req.into_inner()).await
    }
    async fn remove_container(
        &self,
        req: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        self.remove_container_rpc(req.into_inner()).await
    }
    async fn list_containers(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        self.list_containers_rpc(req.into_inner())
    }
    type StreamContainersStream = Stream<StreamContainersResponse>;
    async fn stream_containers(
        &self,
        req: Request<StreamContainersRequest>,
    ) -> Reply<Self::StreamContainersStream> {
        self.stream_containers_rpc(req.into_inner())
    }
    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        self.container_status_rpc(req.into_inner())
    }
    async fn update_container_resources(
        &self,
        req: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        self.update_container_resources_rpc(req.into_inner()).await
    }
    async fn reopen_container_log(
        &self,
        req: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        self.reopen_container_log_rpc(req.into_inner()).await
    }
    async fn exec_sync(&self, req: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        self.exec_sync_rpc(req.into_inner()).await
    }
    async fn exec(&self, req: Request<ExecRequest>) -> Reply<ExecResponse> {
        self.exec_rpc(req.into_inner()).await
    }
    async fn attach(&self, req: Request<AttachRequest>) -> Reply<AttachResponse> {
        self.attach_rpc(req.into_inner()).await
    }
    async fn port_forward(&self, req: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        self.port_forward_rpc(req.into_inner()).await
    }

    async fn container_stats(
        &self,
        req: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        self.container_stats_rpc(req.into_inner()).await
    }
    async fn list_container_stats(
        &self,
        req: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        self.list_container_stats_rpc(req.into_inner()).await
    }
    type StreamContainerStatsStream = Stream<StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        req: Request<StreamContainerStatsRequest>,
    ) -> Reply<Self::StreamContainerStatsStream> {
        self.stream_container_stats_rpc(req.into_inner()).await
    }
    async fn pod_sandbox_stats(
        &self,
        req: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        self.pod_sandbox_stats_rpc(req.into_inner()).await
    }
    async fn list_pod_sandbox_stats(
        &self,
        req: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        self.list_pod_sandbox_stats_rpc(req.into_inner()).await
    }
    type StreamPodSandboxStatsStream = Stream<StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<StreamPodSandboxStatsRequest>,
    ) -> Reply<Self::StreamPodSandboxStatsStream> {
        self.stream_pod_stats_rpc(req.into_inner()).await
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        self.list_metric_descriptors_rpc()
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        self.list_pod_sandbox_metrics_rpc().await
    }
    type StreamPodSandboxMetricsStream = Stream<StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Reply<Self::StreamPodSandboxMetricsStream> {
        self.stream_pod_metrics_rpc().await
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(checkpoint_unimplemented("CheckpointContainer"))
    }
    async fn checkpoint_pod(
        &self,
        _: Request<CheckpointPodRequest>,
    ) -> Reply<CheckpointPodResponse> {
        Err(checkpoint_unimplemented("CheckpointPod"))
    }
    async fn restore_pod(&self, _: Request<RestorePodRequest>) -> Reply<RestorePodResponse> {
        Err(checkpoint_unimplemented("RestorePod"))
    }
    type GetContainerEventsStream = Stream<ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        self.container_events_rpc()
    }
}
