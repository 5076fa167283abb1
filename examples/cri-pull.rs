//! A minimal CRI image client for benchmarks and manual checks where crictl
//! is not installed: `cri-pull SOCKET IMAGE` pulls IMAGE through the crius
//! socket and prints the image id and the seconds it took;
//! `cri-pull SOCKET --fsinfo` prints ImageFsInfo.

use std::time::Instant;

use anyhow::Context;
use crius::cri::proto::image_service_client::ImageServiceClient;
use crius::cri::proto::*;
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, what] = &args[..] else {
        anyhow::bail!("usage: cri-pull SOCKET IMAGE|--fsinfo");
    };
    let socket = socket.clone();
    let channel = Endpoint::from_static("http://crius.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .context("connect to crius")?;
    let mut client = ImageServiceClient::new(channel);
    if what == "--fsinfo" {
        let r = client
            .image_fs_info(ImageFsInfoRequest {})
            .await?
            .into_inner();
        println!("{r:?}");
        return Ok(());
    }
    let start = Instant::now();
    let r = client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: what.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!("{} {:.2}", r.image_ref, start.elapsed().as_secs_f64());
    Ok(())
}
