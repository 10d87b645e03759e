//! The plugin socket: a unix listener served by hyper (HTTP/1.1 only) on the
//! daemon's event loop. Each connection is its own task; a call that needs no
//! state is answered there, the others go to the engine thread
//! ([`crate::daemon::worker::Worker::docker`]).

use crate::daemon::worker::Worker;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use lanyard_core::{Error, Result};
use lanyard_docker::{Call, Reply, CONTENT_TYPE, MAX_BODY};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::net::UnixListener;

/// Binds the plugin socket at `path` (root only, mode 0600), replacing a stale one.
/// A socket someone still answers on (another lanyard daemon) is left alone: an
/// error says so.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Other(format!(
            "daemon: docker plugin socket {}: {what}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail("making its directory", e))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(Error::Conflict(format!(
            "daemon: docker plugin socket {}: another process serves it (another lanyard \
             daemon?); stop it or give this one --docker-socket PATH",
            path.display()
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("removing the old one", e)),
    }
    let l = UnixListener::bind(path).map_err(|e| fail("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("setting its mode", e))?;
    Ok(l)
}

/// Serves connections until the loop stops; each connection is its own task.
pub async fn run(listener: UnixListener, worker: Worker) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("daemon: docker plugin socket: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let worker = worker.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, worker.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("daemon: docker plugin connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    worker: Worker,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let reply = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => {
            let raw = b.to_bytes();
            tracing::debug!("docker: {path} {}", String::from_utf8_lossy(&raw));
            match Call::parse(&path, &raw) {
                Ok(call) => match call.fixed() {
                    Some(r) => r,
                    None => worker.docker(call).await,
                },
                Err(r) => r,
            }
        }
        Err(e) => Reply::err(400, format!("lanyard: {path}: reading the request: {e}")),
    };
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    let resp = Response::builder()
        .status(reply.status)
        .header("Content-Type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"{}"))));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_left_alone_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins").join("lanyard.sock");
        let live = bind(&path).unwrap();
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another process serves it"), "{err}");
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(live);
        // Nobody answers now: the file is stale and gets replaced.
        let _again = bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    }
}
