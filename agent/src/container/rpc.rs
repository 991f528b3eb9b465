//! The container RPCs of `carapace.agent.v1.Agent`: thin adapters from the
//! gRPC messages to [`Containers`]; [`crate::service`] delegates to them.

use std::pin::Pin;
use std::time::Duration;

use carapace_agent_client::pb;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::table::Containers;

/// The stream ReadStdio answers with.
pub type StdioStream = Pin<Box<dyn Stream<Item = Result<pb::StdioChunk, Status>> + Send + 'static>>;

/// Longest stop grace period accepted.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

type R<T> = Result<Response<T>, Status>;

pub async fn create_container(
    c: &Containers,
    req: Request<pb::CreateContainerRequest>,
) -> R<pb::CreateContainerResponse> {
    let pid = c.create(req.into_inner()).await?;
    Ok(Response::new(pb::CreateContainerResponse { pid }))
}

pub async fn start_container(
    c: &Containers,
    req: Request<pb::StartContainerRequest>,
) -> R<pb::StartContainerResponse> {
    c.start(&req.into_inner().id).await?;
    Ok(Response::new(pb::StartContainerResponse {}))
}

pub async fn exec_process(
    c: &Containers,
    req: Request<pb::ExecProcessRequest>,
) -> R<pb::ExecProcessResponse> {
    let (exec_id, pid) = c.exec(req.into_inner()).await?;
    Ok(Response::new(pb::ExecProcessResponse { exec_id, pid }))
}

pub async fn signal_process(
    c: &Containers,
    req: Request<pb::SignalProcessRequest>,
) -> R<pb::SignalProcessResponse> {
    c.signal(req.get_ref())?;
    Ok(Response::new(pb::SignalProcessResponse {}))
}

pub async fn wait_process(
    c: &Containers,
    req: Request<pb::WaitProcessRequest>,
) -> R<pb::WaitProcessResponse> {
    let r = req.into_inner();
    Ok(Response::new(c.wait(&r.container_id, &r.exec_id).await?))
}

pub async fn wait_container(
    c: &Containers,
    req: Request<pb::WaitContainerRequest>,
) -> R<pb::WaitProcessResponse> {
    Ok(Response::new(c.wait(&req.into_inner().id, "").await?))
}

pub async fn stop_container(
    c: &Containers,
    req: Request<pb::StopContainerRequest>,
) -> R<pb::WaitProcessResponse> {
    let r = req.into_inner();
    let grace = Duration::from_millis(r.timeout_ms).min(MAX_GRACE);
    Ok(Response::new(c.stop(&r.id, r.signal, grace).await?))
}

pub async fn container_stats(
    c: &Containers,
    req: Request<pb::ContainerStatsRequest>,
) -> R<pb::ContainerStatsResponse> {
    Ok(Response::new(c.stats(&req.into_inner().id)?))
}

pub async fn update_resources(
    c: &Containers,
    req: Request<pb::UpdateContainerResourcesRequest>,
) -> R<pb::UpdateContainerResourcesResponse> {
    let r = req.into_inner();
    c.update(&r.id, &r.resources.unwrap_or_default())?;
    Ok(Response::new(pb::UpdateContainerResourcesResponse {}))
}

pub async fn remove_container(
    c: &Containers,
    req: Request<pb::RemoveContainerRequest>,
) -> R<pb::RemoveContainerResponse> {
    let r = req.into_inner();
    c.remove(&r.id, r.force).await?;
    Ok(Response::new(pb::RemoveContainerResponse {}))
}

pub async fn list_containers(
    c: &Containers,
    _req: Request<pb::ListContainersRequest>,
) -> R<pb::ListContainersResponse> {
    Ok(Response::new(pb::ListContainersResponse { containers: c.list()? }))
}

pub async fn read_stdio(c: &Containers, req: Request<pb::ReadStdioRequest>) -> R<StdioStream> {
    let r = req.into_inner();
    let lease = c.take_output(&r.container_id, &r.exec_id)?;
    let s: StdioStream = Box::pin(lease.map(Ok));
    Ok(Response::new(s))
}

pub async fn resize_tty(
    c: &Containers,
    req: Request<pb::ResizeTtyRequest>,
) -> R<pb::ResizeTtyResponse> {
    c.resize_tty(req.get_ref())?;
    Ok(Response::new(pb::ResizeTtyResponse {}))
}

pub async fn write_stdin(
    c: &Containers,
    req: Request<pb::WriteStdinRequest>,
) -> R<pb::WriteStdinResponse> {
    c.write_stdin(req.into_inner()).await?;
    Ok(Response::new(pb::WriteStdinResponse {}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::Config;
    use crate::reaper::Reaper;

    fn enabled_in(t: &tempfile::TempDir) -> Containers {
        Containers::build(Reaper::new(), Config::under(t.path()), None)
    }

    #[tokio::test]
    async fn disabled_agent_refuses_containers() {
        let c = Containers::disabled("dev mode");
        let e = list_containers(&c, Request::new(pb::ListContainersRequest {})).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let e = create_container(&c, Request::new(pb::CreateContainerRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }

    // Hostile or malformed requests are refused before anything is created
    // (no namespaces, no bundle, no cgroup), and the service keeps working.
    #[tokio::test]
    async fn malformed_requests_get_errors() {
        let t = tempfile::tempdir().unwrap();
        let c = enabled_in(&t);
        let root = t.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let good = pb::CreateContainerRequest {
            id: "c1".into(),
            process: Some(pb::Process { args: vec!["/bin/sh".into()], ..Default::default() }),
            rootfs_path: root.display().to_string(),
            ..Default::default()
        };
        let cases: Vec<(pb::CreateContainerRequest, tonic::Code)> = vec![
            (
                pb::CreateContainerRequest { id: "../../etc".into(), ..good.clone() },
                tonic::Code::InvalidArgument,
            ),
            (
                pb::CreateContainerRequest { id: String::new(), ..good.clone() },
                tonic::Code::InvalidArgument,
            ),
            (
                pb::CreateContainerRequest { rootfs_path: "/".into(), ..good.clone() },
                tonic::Code::InvalidArgument,
            ),
            (
                pb::CreateContainerRequest {
                    rootfs_path: format!("{}/../rootfs", root.display()),
                    ..good.clone()
                },
                tonic::Code::InvalidArgument,
            ),
            (
                pb::CreateContainerRequest { process: None, ..good.clone() },
                tonic::Code::InvalidArgument,
            ),
            (
                pb::CreateContainerRequest {
                    mounts: vec![pb::Mount {
                        destination: "/x/../../..".into(),
                        source: "/".into(),
                        ..Default::default()
                    }],
                    ..good.clone()
                },
                tonic::Code::InvalidArgument,
            ),
        ];
        for (req, code) in cases {
            let e = create_container(&c, Request::new(req.clone())).await.unwrap_err();
            assert_eq!(e.code(), code, "{req:?}: {e:?}");
        }
        assert!(!t.path().join("bundles").exists());
        assert!(!t.path().join("ns").exists());
        // Unknown ids and bad signals.
        let e = start_container(&c, Request::new(pb::StartContainerRequest { id: "nope".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = signal_process(
            &c,
            Request::new(pb::SignalProcessRequest {
                container_id: "nope".into(),
                signal: 999,
                ..Default::default()
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = update_resources(
            &c,
            Request::new(pb::UpdateContainerResourcesRequest {
                id: "nope".into(),
                resources: Some(pb::Resources { memory_limit_bytes: -1, ..Default::default() }),
            }),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = read_stdio(
            &c,
            Request::new(pb::ReadStdioRequest {
                container_id: "nope".into(),
                exec_id: String::new(),
            }),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(list_containers(&c, Request::new(pb::ListContainersRequest {}))
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty());
    }
}
