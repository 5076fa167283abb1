//! The RuntimeService: one thin method per RPC that hands the request to the
//! module implementing it. RPCs whose issue has not landed answer UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::Cri;
use super::error::unimplemented;
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
        _: Request<StreamPodSandboxesRequest>,
    ) -> Reply<Self::StreamPodSandboxesStream> {
        Err(unimplemented("StreamPodSandboxes"))
    }
    async fn update_pod_sandbox_resources(
        &self,
        _: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Reply<UpdatePodSandboxResourcesResponse> {
        Err(unimplemented("UpdatePodSandboxResources"))
    }

    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        Err(unimplemented("CreateContainer"))
    }
    async fn start_container(
        &self,
        _: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        Err(unimplemented("StartContainer"))
    }
    async fn stop_container(
        &self,
        _: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        Err(unimplemented("StopContainer"))
    }
    async fn remove_container(
        &self,
        _: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        Err(unimplemented("RemoveContainer"))
    }
    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        Err(unimplemented("ListContainers"))
    }
    type StreamContainersStream = Stream<StreamContainersResponse>;
    async fn stream_containers(
        &self,
        _: Request<StreamContainersRequest>,
    ) -> Reply<Self::StreamContainersStream> {
        Err(unimplemented("StreamContainers"))
    }
    async fn container_status(
        &self,
        _: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        Err(unimplemented("ContainerStatus"))
    }
    async fn update_container_resources(
        &self,
        _: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        Err(unimplemented("UpdateContainerResources"))
    }
    async fn reopen_container_log(
        &self,
        _: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        Err(unimplemented("ReopenContainerLog"))
    }
    async fn exec_sync(&self, _: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        Err(unimplemented("ExecSync"))
    }
    async fn exec(&self, _: Request<ExecRequest>) -> Reply<ExecResponse> {
        Err(unimplemented("Exec"))
    }
    async fn attach(&self, _: Request<AttachRequest>) -> Reply<AttachResponse> {
        Err(unimplemented("Attach"))
    }
    async fn port_forward(&self, _: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        Err(unimplemented("PortForward"))
    }

    async fn container_stats(
        &self,
        _: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        Err(unimplemented("ContainerStats"))
    }
    async fn list_container_stats(
        &self,
        _: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        Err(unimplemented("ListContainerStats"))
    }
    type StreamContainerStatsStream = Stream<StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        _: Request<StreamContainerStatsRequest>,
    ) -> Reply<Self::StreamContainerStatsStream> {
        Err(unimplemented("StreamContainerStats"))
    }
    async fn pod_sandbox_stats(
        &self,
        _: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        Err(unimplemented("PodSandboxStats"))
    }
    async fn list_pod_sandbox_stats(
        &self,
        _: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        Err(unimplemented("ListPodSandboxStats"))
    }
    type StreamPodSandboxStatsStream = Stream<StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        _: Request<StreamPodSandboxStatsRequest>,
    ) -> Reply<Self::StreamPodSandboxStatsStream> {
        Err(unimplemented("StreamPodSandboxStats"))
    }
    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        Err(unimplemented("ListMetricDescriptors"))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        Err(unimplemented("ListPodSandboxMetrics"))
    }
    type StreamPodSandboxMetricsStream = Stream<StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        _: Request<StreamPodSandboxMetricsRequest>,
    ) -> Reply<Self::StreamPodSandboxMetricsStream> {
        Err(unimplemented("StreamPodSandboxMetrics"))
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }
    async fn checkpoint_pod(
        &self,
        _: Request<CheckpointPodRequest>,
    ) -> Reply<CheckpointPodResponse> {
        Err(unimplemented("CheckpointPod"))
    }
    async fn restore_pod(&self, _: Request<RestorePodRequest>) -> Reply<RestorePodResponse> {
        Err(unimplemented("RestorePod"))
    }
    type GetContainerEventsStream = Stream<ContainerEventResponse>;
    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Err(unimplemented("GetContainerEvents"))
    }
}
