//! Throughput of a server-push metrics stream over UDP (or TCP / hybrid) on loopback, in
//! one process (server and client share the machine's cores).
//!
//! ```text
//! cargo run --release -p xtmp --example udp_stream_bench -- [udp|tcp|hybrid] [messages] [body bytes] [rate]
//! ```
//! `rate` paces the producer (messages per second; 0, the default, pushes as fast as the
//! queue takes them). UDP streams have no congestion control: an unpaced producer on one
//! machine outruns the receiving process and the kernel drops datagrams (counted as lost).
//! Prints the messages per second delivered to the subscriber, the loss, and for UDP how
//! many datagrams and send system calls carried them (segmentation offload batches many
//! datagrams per call).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use xtmp::{
    ClientOptions, Overflow, Reply, RouteOptions, ServerOptions, TransportStep, XTMPClient,
    XTMPMessageRouter, XTMPServer,
};
use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
use xtmp_proto::MessageType;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let transport = args.get(1).map_or("udp", String::as_str).to_string();
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let body_len: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    let pace: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);

    let key = Arc::new(XWingSecretKey::from_seed(&[9; 32]));
    let mut opts = ServerOptions::new(key.clone());
    opts.bind_address = "127.0.0.1:0".parse().unwrap();
    opts.udp_bind_address = Some("127.0.0.1:0".parse().unwrap());
    opts.enable_compression = false;
    let mut router = XTMPMessageRouter::new();
    router.register_with(
        MessageType::MetricsStream,
        RouteOptions::stream(Overflow::Backpressure, 8192),
        move |ctx, _req| async move {
            let sink = ctx.push_sink().unwrap();
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                for i in 0..n {
                    if pace > 0 && i % 1000 == 0 {
                        tokio::time::sleep_until(
                            t0 + Duration::from_secs_f64(i as f64 / pace as f64),
                        )
                        .await;
                    }
                    let mut body = i.to_be_bytes().to_vec();
                    body.resize(body_len.max(8), 0x42);
                    loop {
                        match sink.push(body.clone()).await {
                            Ok(_) => break,
                            // Pushes start once the subscribe reply is out.
                            Err(xtmp::PushError::NotStarted) => {
                                tokio::time::sleep(Duration::from_millis(1)).await
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
            Ok(Reply::Response(b"ok".to_vec()))
        },
    );
    let server = XTMPServer::bind(opts, router).await.unwrap();
    let mut co = ClientOptions::new(key.public_key().clone());
    co.enable_compression = false;
    co.subscription_capacity = 1 << 16;
    co.transport_order = match transport.as_str() {
        "udp" => vec![TransportStep::udp_to(server.udp_local_addr().unwrap())],
        "hybrid" => vec![TransportStep::hybrid()],
        _ => vec![TransportStep::tcp()],
    };
    let client = XTMPClient::connect(server.local_addr(), co).await.unwrap();
    if transport == "hybrid" {
        while client.datagram_metrics().is_none_or(|m| m.state != "up") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut sub = client
        .subscribe(MessageType::MetricsStream, b"go".to_vec())
        .await
        .unwrap();
    let mut got = 0u64;
    let mut first = None;
    let mut last = Instant::now();
    while got < n {
        match tokio::time::timeout(Duration::from_secs(1), sub.recv()).await {
            Ok(Some(Ok(_))) => {
                got += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            Ok(Some(Err(_))) => {}
            _ => break,
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let rate = if secs > 0.0 { got as f64 / secs } else { 0.0 };
    println!("transport         {transport}");
    println!(
        "messages pushed   {n} x {body_len} B body{}",
        if pace > 0 {
            format!(", paced at {pace}/s")
        } else {
            String::new()
        }
    );
    println!(
        "messages received {got} ({:.3} % lost)",
        100.0 * (n - got) as f64 / n as f64
    );
    println!("time              {secs:.3} s");
    println!("throughput        {rate:.0} msgs/s");
    if let Some(u) = server.status().udp {
        println!(
            "UDP               {} datagrams in {} send calls ({:.1} datagrams per call)",
            u.datagrams_sent,
            u.send_calls,
            u.datagrams_sent as f64 / u.send_calls.max(1) as f64
        );
    }
    if let Some((late, full)) = client.datagram_pushes_dropped() {
        println!("client drops      {late} late, {full} subscription full");
    }
    client.close().await;
    server.shutdown().await;
}
