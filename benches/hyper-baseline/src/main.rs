//! The physical limit for `GET /json` on this machine: hyper on one current-thread tokio runtime
//! returning `{"message":"Hello, World!"}` with no routing, no Python. percore's results are read as a
//! fraction of this server's, measured in the same run. `GET /sleep` answers after a 10 ms timer, the
//! concurrency limit for the `/sleep` endpoint; every other path gets the `/json` bytes (benches/run.py
//! measures only those two: the other endpoints need Python work this server does not do).
//!
//! usage: hyper-baseline [PORT]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"message":"Hello, World!"}"#;
const SLEPT: &[u8] = br#"{"slept":0.01}"#;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        eprintln!("hyper-baseline listening on 127.0.0.1:{port}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn(async move {
                let service = service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let body = if request.uri().path() == "/sleep" {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            SLEPT
                        } else {
                            BODY
                        };
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(body)));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
