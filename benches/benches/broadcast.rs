//! One application event broadcast to 1, 100 and 10,000 subscribers of a device, each an
//! in-memory connection served by the hub's real pump. An iteration ends when every
//! subscriber's pump has written the frame. Throughput in deliveries per second.
//!
//! Run: `cargo bench -p benches --bench broadcast`

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Deliveries, MemorySocket};
use bridge_hub::{ConnectionInfo, DeviceAccess, FixedSubscriptions, Frame, LocalHub, UserId};
use bridge_protocol::{AppEvent, DeviceId, EventType, ServerToUser};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn broadcast(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let device = DeviceId::new("lock-1").expect("valid");
    let event = ServerToUser::Event(AppEvent {
        event_type: EventType::new("state_changed").expect("valid"),
        device_id: device.clone(),
        data: Some(serde_json_value()),
    });

    let mut group = c.benchmark_group("broadcast");
    for subscribers in [1_u64, 100, 10_000] {
        let hub = LocalHub::builder()
            .subscriptions(FixedSubscriptions::new([device.clone()]))
            .build();
        let deliveries = Arc::new(Deliveries::default());
        runtime.block_on(async {
            for i in 0..subscribers {
                let hub = hub.clone();
                let socket = MemorySocket::new(Arc::clone(&deliveries));
                let info =
                    ConnectionInfo::user(UserId::new(&format!("user-{i}")), DeviceAccess::All);
                tokio::spawn(async move { hub.serve(socket, info).await });
            }
            // Every connection got its initial snapshot: all are registered and subscribed.
            deliveries.wait_for(subscribers).await;
        });

        group.throughput(Throughput::Elements(subscribers));
        group.bench_function(format!("{subscribers}_subscribers"), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let hub = hub.clone();
                let deliveries = Arc::clone(&deliveries);
                let device = device.clone();
                let event = event.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let target = deliveries.count() + subscribers;
                        // Serialized once, shared by every subscriber's queue.
                        let frame = Frame::from(&event);
                        let queued = hub.broadcast(&device, &frame);
                        assert_eq!(queued as u64, subscribers);
                        deliveries.wait_for(target).await;
                    }
                    start.elapsed()
                }
            });
        });
        runtime.block_on(async {
            let report = hub.shutdown(Duration::from_secs(10)).await;
            assert_eq!(report.still_running, 0);
        });
    }
    group.finish();
}

fn serde_json_value() -> serde_json::Value {
    serde_json::json!({"locked": false, "battery": 87})
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
