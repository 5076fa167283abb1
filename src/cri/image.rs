//! The ImageService: one thin method per RPC that hands the request to the
//! image module (crate::image) and converts its records back to CRI types.
//! StreamImages is ListImages sent in batches.

use tonic::{Request, Response, Status};

use super::Cri;
use super::error::{missing, status};
use super::proto::image_service_server::ImageService;
use super::proto::*;
use super::runtime::Stream;
use crate::image::{Auth, ImageRecord, Images};

type Reply<T> = Result<Response<T>, Status>;

/// Images per StreamImages message.
const STREAM_BATCH: usize = 100;

fn to_cri(images: &Images, r: ImageRecord) -> Image {
    let (uid, username) = r.user();
    Image {
        pinned: images.is_pinned(&r),
        id: r.id.clone(),
        repo_tags: r.repo_tags,
        repo_digests: r.repo_digests,
        size: r.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec {
            image: r.id,
            annotations: r.annotations.into_iter().collect(),
            ..Default::default()
        }),
    }
}

impl From<AuthConfig> for Auth {
    fn from(a: AuthConfig) -> Auth {
        Auth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        }
    }
}

fn image_name(spec: Option<ImageSpec>) -> Result<String, Status> {
    match spec {
        Some(s) if !s.image.is_empty() => Ok(s.image),
        _ => Err(missing("image.image")),
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(&self, req: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image);
        let images = &self.daemon.images;
        let list = images.list(filter.as_deref()).map_err(status)?;
        Ok(Response::new(ListImagesResponse {
            images: list.into_iter().map(|r| to_cri(images, r)).collect(),
        }))
    }

    type StreamImagesStream = Stream<StreamImagesResponse>;
    /// ListImages as a stream, in batches (for nodes with many images).
    async fn stream_images(
        &self,
        req: Request<StreamImagesRequest>,
    ) -> Reply<Self::StreamImagesStream> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image);
        let images = &self.daemon.images;
        let list: Vec<Image> = images
            .list(filter.as_deref())
            .map_err(status)?
            .into_iter()
            .map(|r| to_cri(images, r))
            .collect();
        let batches: Vec<Result<StreamImagesResponse, Status>> = list
            .chunks(STREAM_BATCH)
            .map(|c| Ok(StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn image_status(&self, req: Request<ImageStatusRequest>) -> Reply<ImageStatusResponse> {
        let req = req.into_inner();
        let name = image_name(req.image)?;
        super::record_field("image", name.as_str());
        let images = &self.daemon.images;
        let Some(record) = images.lookup(&name).map_err(status)? else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let config = images.raw_config(&record).map_err(status)?;
            let config: serde_json::Value = serde_json::from_slice(&config)
                .map_err(|e| Status::internal(format!("stored image config: {e}")))?;
            let dirs = images.layer_dirs(&record).map_err(status)?;
            let value = serde_json::json!({
                "imageSpec": config,
                "chainIDs": record.layers.iter().map(|l| &l.chain_id).collect::<Vec<_>>(),
                "layerDirs": dirs,
            });
            info.insert("info".to_string(), value.to_string());
        }
        Ok(Response::new(ImageStatusResponse {
            image: Some(to_cri(images, record)),
            info,
        }))
    }

    async fn pull_image(&self, req: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image)?;
        super::record_field("image", name.as_str());
        let auth = req.auth.map(Auth::from).unwrap_or_default();
        let id = self.daemon.images.pull(&name, auth).await.map_err(status)?;
        Ok(Response::new(PullImageResponse { image_ref: id }))
    }

    async fn remove_image(&self, req: Request<RemoveImageRequest>) -> Reply<RemoveImageResponse> {
        let name = image_name(req.into_inner().image)?;
        super::record_field("image", name.as_str());
        self.daemon.images.remove(&name).await.map_err(status)?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        let images = &self.daemon.images;
        let usage = images.fs_usage().await.map_err(status)?;
        let fs = FilesystemUsage {
            timestamp: usage.timestamp_ns,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: images.dirs().root.display().to_string(),
            }),
            used_bytes: Some(UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        }))
    }
}
