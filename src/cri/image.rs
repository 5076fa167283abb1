//! The ImageService: one thin method per RPC that hands the request to the
//! image module. RPCs whose issue has not landed answer UNIMPLEMENTED.

use tonic::{Request, Response, Status};

use super::Cri;
use super::error::unimplemented;
use super::proto::image_service_server::ImageService;
use super::proto::*;
use super::runtime::Stream;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, _: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        Err(unimplemented("ListImages"))
    }
    type StreamImagesStream = Stream<StreamImagesResponse>;
    async fn stream_images(
        &self,
        _: Request<StreamImagesRequest>,
    ) -> Reply<Self::StreamImagesStream> {
        Err(unimplemented("StreamImages"))
    }
    async fn image_status(&self, _: Request<ImageStatusRequest>) -> Reply<ImageStatusResponse> {
        Err(unimplemented("ImageStatus"))
    }
    async fn pull_image(&self, _: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        Err(unimplemented("PullImage"))
    }
    async fn remove_image(&self, _: Request<RemoveImageRequest>) -> Reply<RemoveImageResponse> {
        Err(unimplemented("RemoveImage"))
    }
    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        Err(unimplemented("ImageFsInfo"))
    }
}
