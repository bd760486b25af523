//! `s3-test-server`: a real S3-compatible server for the tests, s3s-fs
//! serving a folder (one subfolder per bucket) over HTTP/1.1 on a loopback
//! port, with SigV4 signatures checked against one static key pair.
//!
//! Tests start it through `multir_tests::S3Server`. It prints
//! `listening on HOST:PORT` on stdout once the socket is bound (so `--port 0`
//! picks a free port and tells which), and with `--exit-on-stdin-eof` it
//! stops when its parent closes stdin or dies, so a killed test run leaves
//! no server behind.

use std::path::PathBuf;

use clap::Parser;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Command line.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port, printed on stdout).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Access key clients must sign with.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    access_key: String,
    /// Secret key clients must sign with.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Exit when stdin reaches end of file (the parent closed it or died).
    #[arg(long)]
    exit_on_stdin_eof: bool,
    /// Folder holding the buckets (created if missing).
    root: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.root)?;
    let fs = s3s_fs::FileSystem::new(&args.root)
        .map_err(|e| format!("cannot serve {}: {e:?}", args.root.display()))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(args.access_key, args.secret_key));
    let service = builder.build();

    let listener = TcpListener::bind((args.host.as_str(), args.port)).await?;
    println!("listening on {}", listener.local_addr()?);

    if args.exit_on_stdin_eof {
        tokio::spawn(async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }

    loop {
        let (socket, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("s3-test-server: accept failed: {e}");
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            // A client that hangs up mid-request is no concern of the server.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
